"""Tasks the tests enqueue; real module-level tasks that real workers import."""

import asyncio
import os
import time

from django.tasks import task


def _note(path: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic, even across processes.
    with open(path, "a") as fh:
        fh.write(line + "\n")


@task
def noop() -> None:
    return None


@task(queue_name="compute")
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="compute")
def mark(path: str, key: str) -> str:
    """Side effect to count: one line per run."""
    _note(path, f"{key} {os.getpid()}")
    return key


@task(queue_name="compute")
def slow_mark(path: str, key: str, seconds: float) -> str:
    _note(path, f"start {key} {os.getpid()}")
    time.sleep(seconds)
    _note(path, f"end {key} {os.getpid()}")
    return key


@task(queue_name="compute")
async def aslow_mark(path: str, key: str, seconds: float) -> str:
    """Async twin of slow_mark(): waits on the event loop, not in a thread."""
    _note(path, f"start {key} {os.getpid()}")
    await asyncio.sleep(seconds)
    _note(path, f"end {key} {os.getpid()}")
    return key


@task(queue_name="compute", max_attempts=3, retry_backoff=1.0)
def flaky(path: str, fail_times: int) -> int:
    """Fails `fail_times` times, then succeeds; notes each attempt's time."""
    _note(path, f"{time.time()}")
    with open(path) as fh:
        attempts = len(fh.readlines())
    if attempts <= fail_times:
        raise RuntimeError(f"attempt {attempts} fails on purpose")
    return attempts


@task(queue_name="compute", takes_context=True)
def counted(context, path: str, steps: int, seconds: float) -> int:
    """Reports progress every step; stops when cancelled."""
    for step in range(steps):
        _note(path, f"step {step} attempt {context.attempt} {os.getpid()}")
        time.sleep(seconds)
        context.progress(step + 1, steps, f"step {step + 1}")
    return steps


@task(queue_name="compute")
async def async_add(a: int, b: int) -> int:
    return a + b


@task(queue_name="compute")
def pair(a: int, b: int) -> tuple:
    """Returns a tuple and an int-keyed dict: stored as JSON (a list, a str key)."""
    return (a, b), {1: "one"}


@task(queue_name="compute")
def unserializable() -> object:
    return object()


@task(queue_name="compute", takes_context=True)
async def acounted(context, steps: int) -> int:
    """Async twin of counted(): reports progress with aprogress()."""
    for step in range(steps):
        await context.aprogress(step + 1, steps, f"step {step + 1}")
    return steps


@task(queue_name="compute", takes_context=True, max_attempts=3, retry_backoff=0.0)
def always_fails(context, path: str) -> None:
    """Notes what its context says of its attempts, then fails."""
    _note(path, f"{context.attempt} {context.failed_attempts} {context.is_last_attempt}")
    raise RuntimeError("fails on purpose")


@task(queue_name="compute", timeout=0.5, max_attempts=2, retry_backoff=0.0)
async def alimited(path: str, seconds: float) -> str:
    """Waits past its 0.5 s limit; notes whether it saw the cancel."""
    _note(path, "start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _note(path, "cancelled")
        raise
    _note(path, "end")
    return "done"


@task(queue_name="compute", timeout=0.5)
async def alimited_stubborn(path: str, seconds: float) -> str:
    """Swallows the cancel at its limit and returns anyway."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _note(path, "swallowed")
    return "done"


@task(queue_name="compute", takes_context=True, timeout=1.0, max_attempts=2, retry_backoff=0.0)
def limited_steps(context, path: str, steps: int, seconds: float) -> int:
    """Reports progress every step; its 1 s limit stops it at the first report past it."""
    for step in range(steps):
        _note(path, f"step {step} attempt {context.attempt}")
        time.sleep(seconds)
        context.progress(step + 1, steps)
    return steps


@task(queue_name="compute", timeout=1.0)
def stuck(path: str, seconds: float) -> str:
    """Sleeps past its 1 s limit without a progress report: only its worker can stop it."""
    _note(path, f"start {os.getpid()}")
    time.sleep(seconds)
    _note(path, f"end {os.getpid()}")
    return "done"


@task(queue_name="compute", takes_context=True, timeout=0.5)
def reports_then_hangs(context, path: str, seconds: float) -> str:
    """Reports once at once, then waits `seconds` (past its 0.5 s limit) before its next report."""
    context.progress(0, 1)
    _note(path, "reported")
    time.sleep(seconds)
    _note(path, "woke")
    context.progress(1, 1)
    return "done"
