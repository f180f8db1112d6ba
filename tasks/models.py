import uuid

from django.db import models
from django.db.models import Q
from django.tasks.base import TaskResultStatus


class TaskRecord(models.Model):
    """One enqueued task: the durable truth the runner works from.

    The channel layer only carries a bell saying "look at queue X"; whatever
    happens to a bell, this row says what is left to do.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_path = models.CharField(max_length=255)
    backend = models.CharField(max_length=100, default="default")
    queue_name = models.CharField(max_length=100)
    priority = models.SmallIntegerField(default=0)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)

    status = models.CharField(max_length=10, choices=TaskResultStatus.choices, default=TaskResultStatus.READY)
    enqueued_at = models.DateTimeField()
    # What the caller asked for with .using(run_after=...).
    run_after = models.DateTimeField(null=True, blank=True)
    # When the next attempt may start: run_after, or a retry's backoff.
    available_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Retry policy, copied from the task at enqueue time.
    max_attempts = models.PositiveSmallIntegerField(default=1)
    retry_backoff = models.FloatField(default=1.0)
    retry_backoff_max = models.FloatField(default=300.0)

    # One entry per attempt (so attempts == len(worker_ids), as in django.tasks).
    worker_ids = models.JSONField(default=list)
    # [{"exception_class_path": ..., "traceback": ...}], every attempt's error kept.
    errors = models.JSONField(default=list)
    return_value = models.JSONField(null=True, blank=True)

    # The worker holding a RUNNING task, and its proof of life.
    worker_id = models.CharField(max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)

    progress_done = models.BigIntegerField(null=True, blank=True)
    progress_total = models.BigIntegerField(null=True, blank=True)
    progress_note = models.CharField(max_length=200, blank=True, default="")
    progress_at = models.DateTimeField(null=True, blank=True)

    # tasks.backends.enqueue_unique(): at most one unfinished task holds a key
    # (the partial unique index below; a cancelled task holds none). A task enqueued with
    # while_running=False gives its key up when it is claimed, so a new one
    # may wait while it runs.
    unique_key = models.CharField(max_length=200, null=True, blank=True)
    unique_while_running = models.BooleanField(default=True)

    class Meta:
        verbose_name = "task result"
        ordering = ["-enqueued_at"]
        indexes = [
            # The claim: the next READY task of a queue, by priority then age.
            models.Index(
                "queue_name",
                models.F("priority").desc(),
                "available_at",
                "enqueued_at",
                name="tasks_ready_idx",
                condition=Q(status="READY"),
            ),
            # The sweep for tasks whose worker stopped beating.
            models.Index("heartbeat_at", name="tasks_running_idx", condition=Q(status="RUNNING")),
            models.Index("finished_at", name="tasks_finished_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["unique_key"], name="tasks_unique_key",
                condition=Q(status__in=["READY", "RUNNING"], cancel_requested=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_path} [{self.status}] {self.id}"

    @property
    def attempts(self) -> int:
        return len(self.worker_ids)


class PausedQueue(models.Model):
    """A queue whose tasks are accepted but not run: workers leave it out of their claims."""

    queue_name = models.CharField(max_length=100, primary_key=True)
    paused_at = models.DateTimeField()
    paused_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["queue_name"]

    def __str__(self) -> str:
        return self.queue_name


class Schedule(models.Model):
    """A periodic schedule declared in code (tasks.schedules), as the workers share it.

    The code says when; this row says how far the ticks have got and whether an
    operator paused it. A schedule removed from code keeps its row (shown as
    removed) and is never ticked again.
    """

    name = models.CharField(max_length=200, unique=True)
    # The code's timetable ("cron 0 3 * * * Europe/London"); a change in code moves
    # next_tick to the new timetable.
    spec = models.CharField(max_length=300)
    # When the process that wrote `spec` loaded its code: a process that loaded
    # earlier (older code, in a rolling deploy) does not write its own back over it.
    code_loaded_at = models.DateTimeField(null=True, blank=True)
    paused = models.BooleanField(default=False)
    # The next tick not yet enqueued (or skipped); workers enqueue it once it is due.
    next_tick = models.DateTimeField(null=True, blank=True)
    last_tick = models.DateTimeField(null=True, blank=True)
    # The task of the last tick (no foreign key: finished tasks are pruned).
    last_task_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.spec}{', paused' if self.paused else ''})"


class ScheduleTick(models.Model):
    """One enqueued tick. The unique constraint makes each tick enqueue exactly once,
    whichever workers race for it; the row commits with its task or not at all."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="ticks")
    at = models.DateTimeField()
    task_id = models.UUIDField()
    # Earlier ticks this one stands for (coalesced after downtime); 0 when on time.
    coalesced = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint("schedule", "at", name="tasks_one_task_per_tick")]
        indexes = [models.Index("at", name="tasks_tick_at_idx")]


class QueueMinute(models.Model):
    """What one queue finished in one closed minute: the /tasks/ dashboard's charts.

    Written by the `tasks.tasks.aggregate_minutes` schedule, never on the runner's
    path, and kept in the database so the charts' history survives restarts.
    Each row is recomputed whole from the task rows (an upsert, not an
    increment), so a repeated tick or two workers cannot count a task twice.
    """

    queue_name = models.CharField(max_length=100)
    minute = models.DateTimeField()
    succeeded = models.PositiveIntegerField(default=0)
    # Cancelled tasks end FAILED too, but are no failures: counted in neither.
    failed = models.PositiveIntegerField(default=0)
    # Seconds, nearest-rank percentiles: run time (the last attempt's start to its
    # end) and wait (when the task was due, run_after or enqueue, to its first start).
    run_p50 = models.FloatField(default=0)
    run_p95 = models.FloatField(default=0)
    wait_p50 = models.FloatField(default=0)
    wait_p95 = models.FloatField(default=0)

    class Meta:
        ordering = ["minute", "queue_name"]
        constraints = [models.UniqueConstraint("queue_name", "minute", name="tasks_one_row_per_queue_minute")]
        indexes = [models.Index("minute", name="tasks_queue_minute_idx")]

    def __str__(self) -> str:
        return f"{self.queue_name} {self.minute:%Y-%m-%d %H:%M}: {self.succeeded} ok, {self.failed} failed"


class WorkerRecord(models.Model):
    """A live runworker process and its slots, written by its heartbeat (tasks.registry).

    RUNNING tasks say which slots are in use; only the worker knows how many it
    has, and that it is there while idle. A row whose beat is older than the
    lease is a worker gone without a goodbye (SIGKILL): it is deleted.
    """

    worker_id = models.CharField(max_length=200, primary_key=True)
    # {queue: {"sync": threads, "async": coroutine slots}}
    slots = models.JSONField(default=dict)
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()

    class Meta:
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return self.worker_id
