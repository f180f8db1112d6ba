"""A worker that stalls while it enqueues a tick, so a test can kill it there (tests/schedule_stall_settings.py).

It only waits, with a greppable log line, inside the tick's transaction: the
task row is written, the tick row not yet, nothing committed.
"""

import logging
import time

from django.apps import AppConfig
from django.tasks.signals import task_enqueued

logger = logging.getLogger(__name__)

# Long enough for the test to see the stall and kill the worker; it is never waited out.
STALL = 120.0


def stall_on_tick(sender, task_result, **kwargs) -> None:
    if task_result.task.module_path == "tests.scheduled.tasks.note_run":
        logger.warning("event=e2e_stall_enqueue task=%s seconds=%s", task_result.id, STALL)
        time.sleep(STALL)


class StallConfig(AppConfig):
    name = "tests.scheduled.stall"
    label = "e2e_schedule_stall"

    def ready(self) -> None:
        task_enqueued.connect(stall_on_tick, dispatch_uid="e2e.stall_on_tick")
