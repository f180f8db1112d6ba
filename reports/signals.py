"""Exports and insights hold copies of messages: a deleted message's copies go with it."""

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
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
    Running ones are locked too, and left to finish_unless_deleted(): with the
    lock, a job finishing at this very moment either sees the deletion there,
    or is finished by the time this reads it, and is expired here.
    """
    now = timezone.now()
    with transaction.atomic():
        covering = Job.objects.select_for_update().filter(
            Q(since__isnull=True) | Q(since__lte=created_at),
            Q(until__isnull=True) | Q(until__gt=created_at),
            room_id=room_id,
            last_message_id__gte=message_id,
        )
        for job in covering.exclude(expires_at__lte=now).order_by("pk"):
            if job.finished_at is None:
                continue
            job.expires_at = now
            Job.objects.filter(pk=job.pk).update(expires_at=now)
            expire(job)
            logger.info("event=report_expired_by_delete job=%s message=%s", job.pk, message_id)


def finish_unless_deleted(job: Job, read: QuerySet, changes_from: int, **fields: Any) -> bool:
    """Store `fields` (the job finished) unless a message the job read was deleted since; True if stored.

    `read` is the messages the job read, deleted ones included; `changes_from`,
    the room's change number before it read them. A deletion gives the message
    a higher one (chat.edits), found through the index of changed messages: one
    of those deleted, and the caller reads again. Under the job's row lock, which
    on_message_deleted() takes too (see there).
    """
    with transaction.atomic():
        Job.objects.select_for_update().only("pk").get(pk=job.pk)
        if read.filter(change_seq__gt=changes_from, deleted_at__isnull=False).exists():
            return False
        Job.objects.filter(pk=job.pk).update(**fields)
    for name, value in fields.items():
        setattr(job, name, value)
    return True
