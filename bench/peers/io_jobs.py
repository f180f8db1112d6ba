"""The I/O-bound tasks of bench/tasks.py for Parley: each waits 50 ms, as a provider's HTTP call does.

Apart from jobs.py, which django-tasks-db imports too: only Parley runs these.
"""

import asyncio
import time

from django.tasks import task


@task
def io_sync(seconds: float) -> float:
    """A blocking wait (time.sleep); returns when it started."""
    started = time.time()
    time.sleep(seconds)
    return started


@task
async def io_async(seconds: float) -> float:
    """A coroutine's wait (asyncio.sleep); returns when it started."""
    started = time.time()
    await asyncio.sleep(seconds)
    return started
