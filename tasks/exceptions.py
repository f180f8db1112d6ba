"""Every exception a task, or an app watching one, may see; and how each is named in a task's errors.

Part of the runner's public API (with tasks.progress): feature apps import these,
never the runner's own modules.
"""

import traceback

from django.tasks.exceptions import TaskException


class TaskCancelled(TaskException):
    """Raised inside a running task, at its next progress report, once cancelled."""


class LeaseLost(TaskException):
    """Raised inside a running task, at its next progress report, when this attempt lost its lease.

    Its worker stalled past TASKS_LEASE and the task went to another worker (or
    back to the queue). Not a cancel: the task goes on elsewhere, so this
    attempt must leave alone whatever the other one writes. Its outcome is not
    recorded.
    """


class HandedBack(Exception):
    """A task gave itself back because its worker is shutting down (raised at a progress report)."""


class WorkerLost(TaskException):
    """Recorded as an attempt's error when its worker died (SIGKILL, OOM, crash)."""


class TimeLimitExceeded(TaskException):
    """An attempt ran past its time limit (`@task(timeout=...)`, or its queue's default).

    Raised inside an async task's coroutine (as it is cancelled) and at a sync
    task's first progress report past the limit; recorded by the worker for a
    sync task that does not report. A failed attempt like any other: retried
    while max_attempts allows.
    """


class RetryLater(Exception):
    """Raise from a task to have this attempt retried after `delay` seconds.

    For errors that say when to come back (an HTTP 429 with Retry-After): the
    delay replaces the task's exponential backoff for this one retry. It still
    counts as a failed attempt: with none left (max_attempts) the task is FAILED.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay:g}s")
        self.delay = delay


def error_path(kind: type[BaseException]) -> str:
    """How an exception class is named in a task's errors (TaskError.exception_class_path)."""
    return f"{kind.__module__}.{kind.__qualname__}"


# The errors of an attempt lost with its worker (which do not count against
# max_attempts) and of a cancelled task, as a TaskResult's errors name them.
WORKER_LOST = error_path(WorkerLost)
CANCELLED = error_path(TaskCancelled)


def error_entry(exc: BaseException) -> dict[str, str]:
    """What an attempt that raised `exc` adds to its task's stored errors."""
    return {"exception_class_path": error_path(type(exc)), "traceback": "".join(traceback.format_exception(exc))}
