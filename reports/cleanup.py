"""Removing expired jobs' files, and the parts of jobs that will never finish."""

import logging

from django.db.models import Q
from django.utils import timezone

from tasks.progress import unfinished_task_ids

from .models import Job

logger = logging.getLogger(__name__)


def expire(job: Job) -> bool:
    """Remove the files of a finished job past its expiry; True if it was removed."""
    if job.expires_at is None or job.expires_at > timezone.now():
        return False
    job.delete_files()
    Job.objects.filter(pk=job.pk).update(file="", parts=0, result=None)
    logger.info("event=report_expired job=%s", job.pk)
    return True


def remove_expired() -> int:
    """Sweep: expired files, and parts left by jobs that failed without cleaning up.

    A job whose worker was lost for good (the runner gave up on it) leaves its
    parts; so may a job killed while deleting them. Returns how many jobs were cleaned.
    """
    expired = Job.objects.filter(expires_at__lte=timezone.now()).exclude(file="", parts=0, result__isnull=True)
    abandoned = Job.objects.filter(finished_at__isnull=True, parts__gt=0).filter(
        Q(task_id__isnull=True) | ~Q(task_id__in=unfinished_task_ids())
    )
    count = 0
    for job in expired.iterator():
        count += expire(job)
    for job in abandoned.iterator():
        job.delete_files()
        Job.objects.filter(pk=job.pk).update(parts=0)
        count += 1
    return count
