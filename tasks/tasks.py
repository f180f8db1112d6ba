"""The runner's own housekeeping, on its own schedules."""

import logging
from datetime import timedelta

from django.conf import settings
from django.tasks import task

from . import monitor
from .monitor import prune
from .schedules import schedule

logger = logging.getLogger(__name__)


@schedule(cron="0 3 * * *")
@task(queue_name="default")
def prune_finished() -> int:
    """Delete tasks (and schedule ticks) finished more than TASKS_KEEP_FINISHED_DAYS ago."""
    deleted = prune(timedelta(days=settings.TASKS_KEEP_FINISHED_DAYS))
    logger.info("event=tasks_pruned deleted=%s", deleted)
    return deleted


@schedule(every=60)
@task(queue_name="default")
def aggregate_minutes() -> int:
    """Fill the /tasks/ dashboard's per-minute rows from the tasks finished in closed minutes."""
    return monitor.aggregate_minutes()
