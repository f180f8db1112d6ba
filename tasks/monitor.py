"""What operators see: queue depths, running tasks, recent failures, schedules, and pruning.

One snapshot, computed here, feeds `manage.py tasks`, the /tasks/ page and its
live socket, so all three always agree.
"""

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from .backends import task_queues
from .models import ScheduleTick, TaskRecord
from .runner import FAILED, READY, RUNNING, SUCCESSFUL
from .schedules import listing

RUNNING_SHOWN = 50
FAILURES_SHOWN = 20


def overview(now: datetime | None = None) -> dict[str, Any]:
    """The state of the task system as JSON-ready data.

    - queues: per queue, tasks ready to run now, deferred (run_after or a
      retry's backoff still ahead) and running;
    - running: running tasks with their worker and how old its last heartbeat is;
    - workers: per worker holding tasks, its slots in use (its RUNNING tasks), by queue;
    - failures: the most recent failed tasks with their last error;
    - schedules: every periodic schedule, its next and last tick and that tick's outcome.
    """
    now = now or timezone.now()
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
    failures = TaskRecord.objects.filter(status=FAILED).order_by("-finished_at")[:FAILURES_SHOWN]
    return {
        "at": now.isoformat(),
        "queues": [depths[name] for name in sorted(depths)],
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
