from django.tasks.exceptions import TaskException


class TaskCancelled(TaskException):
    """Raised inside a running task, at its next progress report, once cancelled."""


class WorkerLost(TaskException):
    """Recorded as an attempt's error when its worker died (SIGKILL, OOM, crash)."""


class RetryLater(Exception):
    """Raise from a task to have this attempt retried after `delay` seconds.

    For errors that say when to come back (an HTTP 429 with Retry-After): the
    delay replaces the task's exponential backoff for this one retry. It still
    counts as a failed attempt: with none left (max_attempts) the task is FAILED.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay:g}s")
        self.delay = delay
