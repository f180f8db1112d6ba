"""Exports and insights hold copies of messages: a deleted message's copies go with it."""

import logging
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.dispatch import receiver
from django.utils import timezone

from chat.edits import message_deleted

from .cleanup import expire
from .models import Job

logger = logging.getLogger(__name__)


@receiver(message_deleted, dispatch_uid="reports.message_deleted")
def on_message_deleted(sender: type, room_id: int, message_id: int, created_at: datetime, **kwargs: Any) -> None:
    """Expire, now, every finished export or insights of the room that covered the message.

    Their files (or charts and figures) are removed, so no download still
    carries the deleted text; a new export leaves it out (export.job_messages).
    """
    covering = Job.objects.filter(
        Q(since__isnull=True) | Q(since__lte=created_at),
        Q(until__isnull=True) | Q(until__gt=created_at),
        room_id=room_id,
        last_message_id__gte=message_id,
        finished_at__isnull=False,
    )
    now = timezone.now()
    for job in covering.exclude(expires_at__lte=now).iterator():
        job.expires_at = now
        Job.objects.filter(pk=job.pk).update(expires_at=now)
        expire(job)
        logger.info("event=report_expired_by_delete job=%s message=%s", job.pk, message_id)
