"""What a running task and those watching it share: progress, cancelling, the progress group.

Part of the runner's public API (with tasks.exceptions); feature apps use these
and `django.tasks`, never TaskRecord or tasks.runner:

- a `takes_context=True` task gets a ProgressContext: progress() reports (and is
  where it learns it was cancelled, lost its lease or must hand itself back),
  and it knows its own attempts (failed_attempts, is_last_attempt);
- cancel(id) stops a task; watchers join progress_group(id) to hear
  `task.update` events carrying a snapshot(), or read snapshot_of(id) now;
- get_results(ids) and unfinished_task_ids() read many tasks at once, for
  pages that list many (django.tasks' get_result reads one).
"""

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import QuerySet
from django.tasks.base import TaskContext, TaskResult, TaskResultStatus
from django.utils import timezone

from .backends import to_task_result
from .exceptions import WORKER_LOST, HandedBack, LeaseLost, TaskCancelled, TimeLimitExceeded, error_entry
from .models import TaskRecord

logger = logging.getLogger(__name__)

READY, RUNNING = TaskResultStatus.READY, TaskResultStatus.RUNNING
SUCCESSFUL, FAILED = TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED

# Set by the worker on SIGTERM: running tasks hand themselves back at their
# next progress report instead of holding the shutdown up.
shutting_down = threading.Event()


def progress_group(result_id: str | UUID) -> str:
    """The channel-layer group that hears a task's progress and end (`task.update` events)."""
    return f"task.{result_id}"


def snapshot(record: TaskRecord) -> dict[str, Any]:
    """What watchers of a task are told: its state and progress, no tracebacks."""
    return {
        "id": str(record.pk),
        "task": record.task_path,
        "queue": record.queue_name,
        "status": record.status,
        "attempts": record.attempts,
        "done": record.progress_done,
        "total": record.progress_total,
        "note": record.progress_note,
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "error": record.errors[-1]["exception_class_path"] if record.status == FAILED and record.errors else None,
        "cancel_requested": record.cancel_requested,
    }


def snapshot_of(result_id: str | UUID) -> dict[str, Any] | None:
    """The snapshot of a task as it stands now; None if there is no such task (pruned, say)."""
    record = TaskRecord.objects.filter(pk=result_id).first()
    return snapshot(record) if record is not None else None


def get_results(result_ids: Iterable[str | UUID]) -> dict[str, TaskResult]:
    """The django.tasks results of many tasks in one query, by id; ids with no task are left out."""
    return {str(record.pk): to_task_result(record) for record in TaskRecord.objects.filter(pk__in=list(result_ids))}


def unfinished_task_ids() -> QuerySet:
    """The ids of every READY or RUNNING task, as a subquery: `filter(task_id__in=unfinished_task_ids())`."""
    return TaskRecord.objects.filter(status__in=[READY, RUNNING]).values("pk")


def broadcast(record: TaskRecord) -> None:
    """Tell the task's progress group where it stands; from sync code."""
    async_to_sync(abroadcast)(record)


async def abroadcast(record: TaskRecord) -> None:
    layer = get_channel_layer()
    try:
        await layer.group_send(progress_group(record.pk), {"type": "task.update", "task": snapshot(record)})
    except Exception as exc:  # watchers miss an update; the row still has it
        logger.warning("event=broadcast_failed task=%s error=%r", record.pk, exc)


def cancel(result_id: str | UUID) -> str | None:
    """Cancel a task: a READY one never starts, a RUNNING one stops at its next progress report.

    Returns the task's status after the cancel (FAILED for a READY task,
    RUNNING for a running one, a finished task's as it was), or None if there
    is no such task.
    """
    now = timezone.now()
    with transaction.atomic():
        record = TaskRecord.objects.select_for_update().filter(pk=result_id).first()
        if record is None or record.status in (SUCCESSFUL, FAILED):
            return record.status if record is not None else None
        record.cancel_requested = True
        fields = ["cancel_requested"]
        if record.status == READY:
            record.status = FAILED
            record.finished_at = now
            record.errors = [*record.errors, error_entry(TaskCancelled("cancelled before it started"))]
            fields += ["status", "finished_at", "errors"]
        record.save(update_fields=fields)
    if record.status == FAILED:
        broadcast(record)
    return record.status


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressContext(TaskContext):
    """The context a `takes_context` task gets: django's TaskContext plus progress().

    progress() stores (done, total, note) and broadcasts it on the task's group,
    at most 10 times a second (the last report, done == total, always goes out).
    It is also where a task learns it ran past its time limit (TimeLimitExceeded),
    was cancelled (TaskCancelled), that this attempt lost its lease to another
    worker (LeaseLost), or that its worker is stopping (HandedBack: it goes
    back to the queue).
    """

    # The task's max_attempts as enqueued (the runner's retry rule counts against it).
    max_attempts: int = 1
    # When this attempt's time limit passes (None: it has none).
    deadline: datetime | None = None
    min_interval: float = 0.1
    _last: list[float] = field(default_factory=lambda: [0.0])

    @property
    def failed_attempts(self) -> int:
        """Earlier attempts of this task that failed; those lost with their worker do not count."""
        return sum(1 for error in self.task_result.errors if error.exception_class_path != WORKER_LOST)

    @property
    def is_last_attempt(self) -> bool:
        """Whether this attempt failing fails the task for good (no retry follows)."""
        return self.failed_attempts + 1 >= self.max_attempts

    def progress(self, done: int, total: int | None = None, note: str = "") -> None:
        record = self._progress_record(done, total, note)
        if record is not None:
            broadcast(record)

    async def aprogress(self, done: int, total: int | None = None, note: str = "") -> None:
        record = await database_sync_to_async(self._progress_record)(done, total, note)
        if record is not None:
            await abroadcast(record)

    def _progress_record(self, done: int, total: int | None, note: str) -> TaskRecord | None:
        now = timezone.now()
        # Before the hand-back: an attempt past its limit stops for good, and is
        # never handed to another worker to run past it again.
        if self.deadline is not None and now >= self.deadline:
            raise TimeLimitExceeded(f"still running {(now - self.deadline).total_seconds():.1f}s past its time limit")
        if shutting_down.is_set():
            raise HandedBack()
        if now.timestamp() - self._last[0] < self.min_interval and done != total:
            return None
        self._last[0] = now.timestamp()
        changes = {"progress_done": done, "progress_total": total, "progress_note": note[:200], "progress_at": now}
        # Only the attempt holding the task may report. One whose lease ran out
        # (its worker stalled, another runs the task now) stops here too; its
        # outcome would not be recorded anyway.
        holder = self.task_result.worker_ids[-1]
        held = TaskRecord.objects.filter(pk=self.task_result.id, status=RUNNING, worker_id=holder)
        if not held.filter(cancel_requested=False).update(**changes):
            if held.exists():
                raise TaskCancelled("cancelled while running")
            raise LeaseLost("this attempt lost its lease")
        return TaskRecord.objects.get(pk=self.task_result.id)
