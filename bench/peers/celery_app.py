"""Celery as the issue benchmarks it: Redis broker, acks_late, reject on worker loss.

Workers: `celery -A bench.peers.celery_app worker --pool=prefork --concurrency=2` for
no-op tasks, and `--pool=threads --concurrency=8` per process for `io_sleep`.
Results go to another Redis database of the same server, so the benchmark can
count finished tasks (DBSIZE) and read their start times without touching the broker.
"""

import os
import time

from celery import Celery

REDIS_URL = os.environ["BENCH_REDIS_URL"].rstrip("/").rsplit("/", 1)[0]

app = Celery("bench", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
app.conf.update(
    # At-least-once, the closest Celery gets to Parley's guarantee: the message
    # is acknowledged after the task ran, and redelivered if its process dies.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(enqueued_at: float = 0.0) -> float:
    return time.time()


@app.task(name="bench.io_sleep")
def io_sleep(seconds: float) -> float:
    """A blocking 50 ms wait, like Parley's io_sync; returns when it started."""
    started = time.time()
    time.sleep(seconds)
    return started
