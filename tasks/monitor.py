"""What operators see and do: queue depths, running tasks, recent failures, schedules;
pruning, re-running failed tasks, pausing queues.

One snapshot, computed here, feeds `manage.py tasks`, the /tasks/ page and its
live socket, so all three always agree; the admin, the command and the page
act through the same functions.
"""

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .backends import bell_layer_alias, load_task, ring_on_commit, task_queues
from .exceptions import WORKER_LOST
from .models import PausedQueue, ScheduleTick, TaskRecord
from .runner import FAILED, READY, RUNNING, SUCCESSFUL
from .schedules import listing

logger = logging.getLogger(__name__)

RUNNING_SHOWN = 50
FAILURES_SHOWN = 20


def overview(now: datetime | None = None) -> dict[str, Any]:
    """The state of the task system as JSON-ready data.

    - queues: per queue, tasks ready to run now, deferred (run_after or a
      retry's backoff still ahead) and running, and whether it is paused;
    - running: running tasks with their worker and how old its last heartbeat is;
    - workers: per worker holding tasks, its slots in use (its RUNNING tasks), by queue;
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
    workers: dict[str, dict[str, Any]] = {}
    for row in (
        TaskRecord.objects.filter(status=RUNNING)
        .values("worker_id", "queue_name")
        .annotate(running=Count("pk"))
        .order_by("worker_id", "queue_name")
    ):
        worker = workers.setdefault(row["worker_id"], {"worker": row["worker_id"], "in_use": 0, "queues": {}})
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
                "heartbeat_age": round((now - record.heartbeat_at).total_seconds(), 1) if record.heartbeat_at else None,
                "done": record.progress_done,
                "total": record.progress_total,
                "note": record.progress_note,
            }
            for record in running
        ],
        "workers": list(workers.values()),
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


def prune(older_than: timedelta, now: datetime | None = None) -> int:
    """Delete finished (SUCCESSFUL or FAILED) tasks that finished before `older_than` ago,
    and schedule ticks as old (a schedule's own row keeps its last tick).

    READY and RUNNING tasks are never touched, however old. Returns how many tasks went.
    """
    cutoff = (now or timezone.now()) - older_than
    ScheduleTick.objects.filter(at__lt=cutoff).delete()
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
