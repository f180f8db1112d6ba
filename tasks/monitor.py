"""What operators see and do: queue depths, running tasks, recent failures, schedules;
pruning, re-running failed tasks, pausing queues.

One snapshot, computed here, feeds `manage.py tasks`, the /tasks/ page and its
live socket, so all three always agree; the admin, the command and the page
act through the same functions.
"""

import logging
import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.apps import AppConfig
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .backends import bell_layer_alias, load_task, ring_on_commit, task_queues
from .exceptions import WORKER_LOST
from .models import PausedQueue, QueueMinute, ScheduleTick, TaskRecord
from .registry import live_slots
from .runner import FAILED, READY, RUNNING, SUCCESSFUL
from .schedules import listing

logger = logging.getLogger(__name__)

RUNNING_SHOWN = 50
FAILURES_SHOWN = 20
CHART_HOURS = 24
CHART_BUCKET_MINUTES = 30
# Minutes before the current one that every aggregation recomputes: a task's row
# commits a moment after its finished_at, so a minute is only settled a little later.
SETTLE_MINUTES = 2
OPERATORS_GROUP = "Task operators"
# View and change: task results and schedules in the admin, with cancel, re-run, pause and resume.
# (A pause is added and deleted, never changed.)
OPERATOR_PERMISSIONS = ["view_taskrecord", "change_taskrecord", "view_schedule", "change_schedule",
                        "view_pausedqueue", "add_pausedqueue", "delete_pausedqueue"]  # fmt: skip


def by_queue(worker: dict[str, Any]) -> str:
    """`compute=3/8, default=0/4`: each queue's slots in use, out of the worker's slots for it (if known)."""
    queues = {**dict.fromkeys(worker["limits"], 0), **worker["queues"]}
    return ", ".join(
        f"{queue}={count}" + (f"/{worker['limits'][queue]}" if queue in worker["limits"] else "")
        for queue, count in queues.items()
    )


def overview(now: datetime | None = None) -> dict[str, Any]:
    """The state of the task system as JSON-ready data.

    - queues: per queue, tasks ready to run now, deferred (run_after or a
      retry's backoff still ahead) and running, and whether it is paused;
    - running: running tasks with their worker and how old its last heartbeat is;
    - workers: per live worker or worker holding tasks, its slots in use (its RUNNING
      tasks) by queue, and its slots (None if unknown: it has not beaten yet, or is gone);
    - failures: the most recent failed tasks with their last error (cancelled ones are no failures);
    - schedules: every periodic schedule, its next and last tick and that tick's outcome.
    """
    now = now or timezone.now()
    paused = paused_queues()
    depths = {name: {"queue": name, "ready": 0, "deferred": 0, "running": 0} for name in task_queues()}
    rows = (
        TaskRecord.objects.filter(status__in=[READY, RUNNING])
        .values("queue_name")
        .annotate(
            ready=Count("pk", filter=Q(status=READY, available_at__lte=now)),
            deferred=Count("pk", filter=Q(status=READY, available_at__gt=now)),
            running=Count("pk", filter=Q(status=RUNNING)),
        )
        .order_by()
    )
    for row in rows:
        # A queue no longer configured still shows while it holds tasks.
        depths[row["queue_name"]] = {
            "queue": row["queue_name"], "ready": row["ready"], "deferred": row["deferred"], "running": row["running"],
        }  # fmt: skip
    running = TaskRecord.objects.filter(status=RUNNING).order_by("started_at")[:RUNNING_SHOWN]
    # Every live worker, idle ones too, with its slots; in use: its RUNNING tasks.
    workers: dict[str, dict[str, Any]] = {
        worker: {"worker": worker, "in_use": 0, "queues": {}, "slots": sum(limits.values()), "limits": limits}
        for worker, limits in sorted(live_slots(now).items())
    }
    for row in (
        TaskRecord.objects.filter(status=RUNNING)
        .values("worker_id", "queue_name")
        .annotate(running=Count("pk"))
        .order_by("worker_id", "queue_name")
    ):
        worker = workers.setdefault(
            row["worker_id"], {"worker": row["worker_id"], "in_use": 0, "queues": {}, "slots": None, "limits": {}}
        )  # a worker gone, or not beaten yet, whose tasks the sweep has not taken yet
        worker["in_use"] += row["running"]
        worker["queues"][row["queue_name"]] = row["running"]
    # A cancelled task (cancel_requested) ends FAILED too, but nobody needs to look at it.
    failures = TaskRecord.objects.filter(status=FAILED, cancel_requested=False).order_by("-finished_at")[:FAILURES_SHOWN]
    return {
        "at": now.isoformat(),
        "queues": [{**depths[name], "paused": name in paused} for name in sorted(depths)],
        "running": [
            {
                "id": str(record.pk),
                "task": record.task_path,
                "queue": record.queue_name,
                "worker": record.worker_id,
                "attempts": record.attempts,
                "started_at": record.started_at.isoformat() if record.started_at else None,
                "age": round((now - record.started_at).total_seconds()) if record.started_at else None,
                "heartbeat_age": round((now - record.heartbeat_at).total_seconds(), 1) if record.heartbeat_at else None,
                "done": record.progress_done,
                "total": record.progress_total,
                "note": record.progress_note,
            }
            for record in running
        ],
        "workers": [{**worker, "by_queue": by_queue(worker)} for _, worker in sorted(workers.items())],
        "failures": [
            {
                "id": str(record.pk),
                "task": record.task_path,
                "queue": record.queue_name,
                "attempts": record.attempts,
                "finished_at": record.finished_at.isoformat() if record.finished_at else None,
                "error": last_error(record),
            }
            for record in failures
        ],
        "schedules": listing(now),
    }


def last_error(record: TaskRecord) -> str:
    """The last error in one line: its class and message, no traceback."""
    if not record.errors:
        return ""
    error = record.errors[-1]
    lines = [line for line in error["traceback"].strip().splitlines() if line.strip()]
    message = lines[-1].strip() if lines else ""
    # format_exception's last line is "module.Class: message"; ours may be bare text.
    if ": " in message:
        message = message.split(": ", 1)[1]
    return f"{error['exception_class_path']}: {message}"[:300]


def create_operators_group(app_config: AppConfig, using: str = "default", **kwargs: Any) -> None:
    """The "Task operators" group, for staff who are not superusers: put them in it (admin, Users) and
    they see task results and schedules in the admin and act on them. Run on post_migrate, which
    may reach it before django.contrib.auth's own receiver has created this app's permissions."""
    create_permissions(app_config, verbosity=0, using=using)
    group, _ = Group.objects.using(using).get_or_create(name=OPERATORS_GROUP)
    permissions = Permission.objects.using(using).filter(content_type__app_label="tasks", codename__in=OPERATOR_PERMISSIONS)
    group.permissions.add(*permissions)


def prune(older_than: timedelta, now: datetime | None = None) -> int:
    """Delete finished (SUCCESSFUL or FAILED) tasks that finished before `older_than` ago,
    and schedule ticks and dashboard minutes as old (a schedule's own row keeps its last tick).

    READY and RUNNING tasks are never touched, however old. Returns how many tasks went.
    """
    cutoff = (now or timezone.now()) - older_than
    ScheduleTick.objects.filter(at__lt=cutoff).delete()
    QueueMinute.objects.filter(minute__lt=cutoff).delete()
    deleted, _ = TaskRecord.objects.filter(status__in=[SUCCESSFUL, FAILED], finished_at__lt=cutoff).delete()
    return deleted


def failed_tasks(cancelled: bool = False, task_path: str = "", since: datetime | None = None) -> QuerySet:
    """FAILED tasks (or, with `cancelled`, cancelled ones), of one task and finished since a time if given."""
    found = TaskRecord.objects.filter(status=FAILED, cancel_requested=cancelled)
    if task_path:
        found = found.filter(task_path=task_path)
    if since is not None:
        found = found.filter(finished_at__gte=since)
    return found


def rerun(ids: Iterable[Any]) -> tuple[list[str], list[str]]:
    """Run FAILED (or cancelled) tasks again: (ids put back to READY, "id: why not" for the others).

    The task keeps its id and its history (every earlier attempt's worker and
    error), and gets as many attempts again as its task allows now
    (max_attempts counted on from the failures so far). A task holding a
    unique key that another unfinished task has taken since is left alone.
    """
    done, skipped = [], []
    for pk in ids:
        try:
            TaskRecord._meta.pk.to_python(pk)
        except ValidationError:
            skipped.append(f"{pk}: not a task id")
            continue
        try:
            with transaction.atomic():
                record = TaskRecord.objects.select_for_update().filter(pk=pk).first()
                if record is None or record.status != FAILED:
                    skipped.append(f"{pk}: {'no such task' if record is None else record.status}, not FAILED")
                    continue
                failures = sum(1 for error in record.errors if error["exception_class_path"] != WORKER_LOST)
                try:
                    allowed = getattr(load_task(record.task_path), "max_attempts", 1)
                except ImportError:
                    allowed = 1  # its next attempt fails with the ImportError, recorded as any other
                now = timezone.now()
                TaskRecord.objects.filter(pk=record.pk).update(
                    status=READY, available_at=now, finished_at=None, cancel_requested=False,
                    max_attempts=min(failures + allowed, 32767), return_value=None,
                    progress_done=None, progress_total=None, progress_note="", progress_at=None,
                )  # fmt: skip
                ring_on_commit(record.queue_name, bell_layer_alias())
        except IntegrityError:
            skipped.append(f"{pk}: its unique key {record.unique_key!r} is held by another unfinished task")
            continue
        logger.info("event=task_rerun task=%s path=%s attempts_so_far=%d", record.pk, record.task_path, record.attempts)
        done.append(str(record.pk))
    return done, skipped


def paused_queues() -> set[str]:
    """The queues whose tasks wait until they are resumed."""
    return set(PausedQueue.objects.values_list("queue_name", flat=True))


def pause(queue_name: str, by: str = "") -> bool:
    """Stop workers claiming from `queue_name` (within TASKS_POLL_INTERVAL); enqueues go on.

    Returns False if it was paused already; ValueError for a queue that is not a task queue.
    """
    if queue_name not in task_queues():
        raise ValueError(f"{queue_name!r} is not a task queue (queues: {', '.join(sorted(task_queues()))})")
    _, created = PausedQueue.objects.get_or_create(
        queue_name=queue_name, defaults={"paused_at": timezone.now(), "paused_by": by[:150]}
    )
    if created:
        logger.info("event=queue_paused queue=%s by=%s", queue_name, by)
    return created


def resume(queue_name: str) -> bool:
    """Let workers claim from `queue_name` again, and ring it; False if it was not paused."""
    with transaction.atomic():
        deleted, _ = PausedQueue.objects.filter(queue_name=queue_name).delete()
        if deleted:
            ring_on_commit(queue_name, bell_layer_alias())
    if deleted:
        logger.info("event=queue_resumed queue=%s", queue_name)
    return bool(deleted)


def _percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted `values` (0 for none): a value that really occurred."""
    return values[max(math.ceil(share * len(values)) - 1, 0)] if values else 0.0


def aggregate_minutes(now: datetime | None = None) -> int:
    """Recompute the dashboard's rows (tasks.QueueMinute) for the closed minutes not yet settled.

    From the last minute that has a row (or CHART_HOURS ago) up to the current
    minute, excluded, and at least SETTLE_MINUTES back: each (queue, minute) is
    computed whole and upserted, and a minute left with no task loses its row,
    so running twice, or on two workers at once, gives the same rows. Returns
    how many rows were written.
    """
    now = now or timezone.now()
    end = now.replace(second=0, microsecond=0)
    floor = end - timedelta(hours=CHART_HOURS)
    latest = QueueMinute.objects.filter(minute__gte=floor).order_by("-minute").values_list("minute", flat=True).first()
    start = min(end - timedelta(minutes=SETTLE_MINUTES), max(latest or floor, floor))
    samples: dict[tuple[str, datetime], dict[str, Any]] = {}
    finished = TaskRecord.objects.filter(
        status__in=[SUCCESSFUL, FAILED], cancel_requested=False, finished_at__gte=start, finished_at__lt=end
    ).values_list("queue_name", "status", "enqueued_at", "run_after", "started_at", "last_attempted_at", "finished_at")
    for queue, status, enqueued_at, run_after, started_at, attempted_at, finished_at in finished.iterator(2000):
        minute = finished_at.replace(second=0, microsecond=0)
        sample = samples.setdefault((queue, minute), {"succeeded": 0, "failed": 0, "run": [], "wait": []})
        sample["succeeded" if status == SUCCESSFUL else "failed"] += 1
        if attempted_at is not None:  # a task failed before it ever started has no run time
            sample["run"].append((finished_at - attempted_at).total_seconds())
        if started_at is not None:
            sample["wait"].append(max((started_at - (run_after or enqueued_at)).total_seconds(), 0.0))
    rows = []
    for (queue, minute), sample in samples.items():
        run, wait = sorted(sample["run"]), sorted(sample["wait"])
        rows.append(QueueMinute(
            queue_name=queue, minute=minute, succeeded=sample["succeeded"], failed=sample["failed"],
            run_p50=_percentile(run, 0.5), run_p95=_percentile(run, 0.95),
            wait_p50=_percentile(wait, 0.5), wait_p95=_percentile(wait, 0.95),
        ))  # fmt: skip
    with transaction.atomic():
        # Rows another worker inserts meanwhile survive this delete and meet the upsert: same values.
        QueueMinute.objects.filter(minute__gte=start, minute__lt=end).delete()
        QueueMinute.objects.bulk_create(
            rows, batch_size=500, update_conflicts=True, unique_fields=["queue_name", "minute"],
            update_fields=["succeeded", "failed", "run_p50", "run_p95", "wait_p50", "wait_p95"],
        )  # fmt: skip
    logger.info("event=tasks_minutes_aggregated since=%s rows=%d", start.isoformat(), len(rows))
    return len(rows)


def charts(now: datetime | None = None) -> list[dict[str, Any]]:
    """Per queue, the last CHART_HOURS in buckets of CHART_BUCKET_MINUTES, oldest first.

    Each bucket: its start, tasks that succeeded and failed in it, and the worst
    minute's p95 run time and wait (seconds) - the slow minutes are what an
    operator looks for. Queues with no task in the period have no chart.
    """
    now = now or timezone.now()
    step = timedelta(minutes=CHART_BUCKET_MINUTES)
    epoch = datetime(2000, 1, 1, tzinfo=now.tzinfo)
    end = epoch + ((now - epoch) // step + 1) * step  # the end of the bucket holding now
    count = CHART_HOURS * 60 // CHART_BUCKET_MINUTES
    start = end - count * step
    found: dict[str, list[dict[str, Any]]] = {}
    for row in QueueMinute.objects.filter(minute__gte=start, minute__lt=end):
        buckets = found.get(row.queue_name)
        if buckets is None:
            buckets = found[row.queue_name] = [
                {"start": start + index * step, "succeeded": 0, "failed": 0, "run_p95": 0.0, "wait_p95": 0.0}
                for index in range(count)
            ]
        bucket = buckets[(row.minute - start) // step]
        bucket["succeeded"] += row.succeeded
        bucket["failed"] += row.failed
        bucket["run_p95"] = max(bucket["run_p95"], row.run_p95)
        bucket["wait_p95"] = max(bucket["wait_p95"], row.wait_p95)
    return [{"queue": queue, "buckets": found[queue], **_chart_shapes(found[queue])} for queue in sorted(found)]


def _chart_shapes(buckets: list[dict[str, Any]]) -> dict[str, Any]:
    """SVG geometry in a 0-480 x 0-100 box per chart: bars for tasks, a polyline for latency."""
    width = 480 / len(buckets)
    most = max(b["succeeded"] + b["failed"] for b in buckets) or 1
    slowest = max(max(b["run_p95"], b["wait_p95"]) for b in buckets) or 1.0
    bars = []
    for index, b in enumerate(buckets):
        ok_height = 100 * b["succeeded"] / most
        failed_height = 100 * b["failed"] / most
        bars.append({
            **b, "x": round(index * width, 2), "width": round(width * 0.8, 2),
            "ok_y": round(100 - ok_height, 2), "ok_height": round(ok_height, 2),
            "failed_y": round(100 - ok_height - failed_height, 2), "failed_height": round(failed_height, 2),
        })  # fmt: skip

    def line(key: str) -> str:
        return " ".join(f"{round((i + 0.4) * width, 2)},{round(100 - 100 * b[key] / slowest, 2)}" for i, b in enumerate(buckets))

    return {"bars": bars, "most": most, "slowest": round(slowest, 3), "run_line": line("run_p95"), "wait_line": line("wait_p95")}
