"""The jobs' tasks, on the `compute` queue; they report progress, so they can be watched and cancelled.

A worker that dies mid-job is replaced by another within the runner's lease;
the export then resumes from its last checkpoint, insights start over (one pass).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError
from django.tasks import task

from tasks.exceptions import HandedBack, LeaseLost, TaskCancelled
from tasks.progress import ProgressContext
from tasks.schedules import schedule

from . import cleanup
from .cleanup import expire
from .export import MAX_PASSES, DeletedWhileRead, Superseded, room_changes, write_export
from .models import Job

logger = logging.getLogger(__name__)


def describe(exc: Exception) -> str:
    """A failure in words for the user; the traceback stays in the task's record."""
    if isinstance(exc, DeletedWhileRead):
        return "messages of the room kept being deleted while it ran"
    if isinstance(exc, OSError):
        return "the file could not be written (storage error)"
    if isinstance(exc, DatabaseError):
        return "the database could not be read"
    return "an unexpected error"


@contextmanager
def reported_failures(job: Job, what: str) -> Iterator[None]:
    """Tell the user why a job failed, and leave no partial files behind it.

    A worker that is shutting down hands the job back: its checkpoint is kept
    for whichever worker takes it next. An attempt that lost its lease, or
    that another has superseded, touches nothing: the files are the other's.
    """
    try:
        yield
    except (HandedBack, LeaseLost, Superseded):
        raise
    except TaskCancelled:
        logger.info("event=report_cancelled job=%s", job.pk)
        job.delete_files()
        raise
    except Exception as exc:
        logger.exception("event=report_failed job=%s", job.pk)
        Job.objects.filter(pk=job.pk).update(error=f"{what} failed: {describe(exc)}. Please try again.")
        job.delete_files()
        raise


@task(queue_name="compute", takes_context=True)
def export_room(context: ProgressContext, job_id: int) -> dict[str, Any]:
    job = Job.objects.select_related("room").get(pk=job_id)
    if job.finished_at is None:  # else: done by an attempt whose worker died just after
        if job.parts:
            logger.info("event=export_resumed job=%s after_id=%d parts=%d", job.pk, job.last_id, job.parts)
        with reported_failures(job, "The export"):
            write_export(job, context.progress)
    schedule_expiry(job)
    return {"job": job.pk, "rows": job.rows_done, "bytes": job.bytes_written, "file": job.file.name}


@task(queue_name="compute", takes_context=True)
def compute_insights(context: ProgressContext, job_id: int) -> dict[str, Any]:
    # Imported here: only workers need matplotlib, web processes enqueue only.
    from .insights import compute, save_charts

    job = Job.objects.select_related("room").get(pk=job_id)
    if job.finished_at is None:
        with reported_failures(job, "The insights"):
            # Computed again if a message they counted was deleted meanwhile (save_charts()).
            for _ in range(MAX_PASSES):
                changes_from = room_changes(job)
                if save_charts(job, compute(job, context.progress), context.progress, changes_from):
                    break
            else:
                raise DeletedWhileRead(f"Messages of the room kept being deleted while it was read ({MAX_PASSES} tries).")
    schedule_expiry(job)
    return {"job": job.pk}


@task(queue_name="default")
def remove_expired(job_id: int) -> None:
    """Deferred to a job's expiry when it finishes; the nightly sweep below catches any it missed."""
    job = Job.objects.filter(pk=job_id).first()
    if job is not None:
        expire(job)


@schedule(cron="30 3 * * *")
@task(queue_name="default")
def sweep_expired() -> int:
    """Nightly: expired files whose deferred removal was lost, and parts of jobs that will never finish."""
    return cleanup.remove_expired()


def schedule_expiry(job: Job) -> None:
    """Have the job's files removed when it expires (idempotent: a rerun may schedule it twice)."""
    remove_expired.using(run_after=job.expires_at).enqueue(job.pk)
