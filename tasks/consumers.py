"""Consumers for the worker channels: a bell on a queue's channel runs that queue's tasks."""

import asyncio
import logging

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from django.utils import timezone

from . import runner

logger = logging.getLogger(__name__)


class TaskConsumer(AsyncConsumer):
    """Serves one task queue in a worker (scope from tasks.worker.TaskWorker).

    On a bell it runs due tasks of its queue one after another until none is
    left, then tells the listener it is idle and when the next deferred task
    falls due. One task per queue at a time in each worker process.
    """

    async def task_ready(self, message: dict) -> None:
        state = self.scope["parley.queue"]
        queues = [state.name]
        try:
            while not runner.shutting_down.is_set():
                if not await runner.run_next(queues, state.worker_id):
                    break
            due = await database_sync_to_async(runner.next_due)(queues)
            state.next_due = None if due is None else asyncio.get_running_loop().time() + (due - timezone.now()).total_seconds()
        finally:
            state.idle.set()


class TaskMonitorConsumer(AsyncConsumer):
    pass
