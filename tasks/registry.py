"""Which workers are alive and how many slots each has, for `manage.py tasks` and /tasks/."""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .models import WorkerRecord


def beat(worker_id: str, slots: dict[str, dict[str, int]], started_at: datetime) -> None:
    """Say that `worker_id` is alive with these slots, and forget workers that stopped beating.

    One upsert per heartbeat: the row is the worker's, nobody else writes it.
    """
    now = timezone.now()
    WorkerRecord.objects.bulk_create(
        [WorkerRecord(worker_id=worker_id, slots=slots, started_at=started_at, beat_at=now)],
        update_conflicts=True, unique_fields=["worker_id"], update_fields=["slots", "beat_at"],
    )  # fmt: skip
    WorkerRecord.objects.filter(beat_at__lt=now - timedelta(seconds=settings.TASKS_LEASE)).delete()


def gone(worker_id: str) -> None:
    """A worker stopping cleanly takes its row with it."""
    WorkerRecord.objects.filter(worker_id=worker_id).delete()


def live_slots(now: datetime | None = None) -> dict[str, dict[str, int]]:
    """{worker: {queue: sync slots}} of the workers whose beat is within the lease."""
    now = now or timezone.now()
    fresh = WorkerRecord.objects.filter(beat_at__gte=now - timedelta(seconds=settings.TASKS_LEASE))
    return {row.worker_id: {queue: kinds["sync"] for queue, kinds in row.slots.items()} for row in fresh}
