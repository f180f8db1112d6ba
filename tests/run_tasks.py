"""Run queued tasks inside a test, exactly as a worker's TaskConsumer does (tasks/consumers.py)."""

from asgiref.sync import async_to_sync

from tasks import runner
from tasks.models import TaskRecord


async def run_one(queue_names: list[str], worker_id: str = "test-worker") -> TaskRecord | None:
    """Claim and start the next due task of these queues, run it, record it; the record, or None."""
    claimed = await runner.on_db_thread(runner.claim_and_start)(queue_names, worker_id)
    if claimed is None:
        return None
    record, task, result = claimed
    if task is not None:
        await runner.execute(record, task, result, worker_id)
    await record.arefresh_from_db()
    return record


def run_queue(queue_names: list[str], limit: int, worker_id: str = "test-worker") -> int:
    """Run due tasks until none is left; how many ran. More than `limit` is a loop: fail."""
    for ran in range(limit + 1):
        if async_to_sync(run_one)(queue_names, worker_id) is None:
            return ran
    raise AssertionError(f"more than {limit} tasks of {queue_names}: a loop?")
