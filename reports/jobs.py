"""Starting, sharing and cancelling jobs: what the views and the chat command both call."""

import logging
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from chat.models import Room
from tasks.progress import cancel

from .models import Job
from .tasks import compute_insights, export_room

logger = logging.getLogger(__name__)


class TooManyJobs(Exception):
    """The user already has REPORTS_MAX_RUNNING_PER_USER jobs queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"You already have {limit} exports or insights running; "
            "wait for one to finish (or cancel one) before starting another."
        )


def _lock_user(user) -> None:
    """Serialise one user's job starts, so two requests cannot both pass the limit."""
    get_user_model().objects.lock(user.pk)


def _check_limit(user) -> None:
    limit = settings.REPORTS_MAX_RUNNING_PER_USER
    if Job.objects.active().filter(requested_by=user).count() >= limit:
        logger.info("event=report_refused reason=limit user=%s limit=%d", user.pk, limit)
        raise TooManyJobs(limit)


def _last_message_id(room: Room) -> int:
    return room.messages.aggregate(last=Max("id"))["last"] or 0


def start_export(
    user, room: Room, format: str, since: datetime | None = None, until: datetime | None = None
) -> tuple[Job, bool]:
    """The user's running export of exactly this, or a new one; (job, created).

    Raises PermissionDenied if the user cannot see the room, TooManyJobs at the limit.
    """
    if not room.can_view(user):
        raise PermissionDenied("You are not a member of this room.")
    if format not in Job.Format.values:
        raise ValueError(f"unknown export format {format!r}")
    with transaction.atomic():
        _lock_user(user)
        same = {"room": room, "kind": Job.Kind.EXPORT, "format": format, "since": since, "until": until}
        running = Job.objects.active().filter(requested_by=user, **same).select_related("room").first()
        if running is not None:
            return running, False
        _check_limit(user)
        job = Job.objects.create(requested_by=user, last_message_id=_last_message_id(room), **same)
        job.task_id = export_room.enqueue(job.pk).id
        job.save(update_fields=["task_id"])
    logger.info("event=export_started job=%s room=%s format=%s user=%s", job.pk, room.pk, format, user.pk)
    return Job.objects.select_related("room").get(pk=job.pk), True


def start_insights(user, room: Room) -> tuple[Job, bool]:
    """The room's insights as of its last message: cached, being computed, or started now."""
    if not room.can_view(user):
        raise PermissionDenied("You are not a member of this room.")
    with transaction.atomic():
        _lock_user(user)
        same = {"room": room, "kind": Job.Kind.INSIGHTS, "last_message_id": _last_message_id(room)}
        jobs = Job.objects.filter(**same).select_related("room")
        cached = jobs.filter(finished_at__isnull=False, expires_at__gt=timezone.now()).first()
        if cached is not None:
            return cached, False
        running = jobs.active().first()
        if running is not None:
            return running, False
        _check_limit(user)
        job = Job.objects.create(requested_by=user, **same)
        job.task_id = compute_insights.enqueue(job.pk).id
        job.save(update_fields=["task_id"])
    logger.info("event=insights_started job=%s room=%s user=%s", job.pk, room.pk, user.pk)
    return Job.objects.select_related("room").get(pk=job.pk), True


def cancel_job(job: Job, user) -> None:
    """Stop the job (its task stops at its next progress report, within a second)."""
    if job.requested_by_id != user.pk or not job.room.can_view(user):
        raise PermissionDenied("Only the user who started a job may cancel it.")
    if job.task_id is not None:
        cancel(job.task_id)
        logger.info("event=report_cancel_requested job=%s user=%s", job.pk, user.pk)
