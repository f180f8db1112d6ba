"""Consumers: a bell on a queue's channel runs that queue's tasks; /tasks/live/ feeds the monitor page."""

import asyncio
import logging
import math

from asgiref.sync import sync_to_async
from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

from project.sockets import FrameError, RateLimit

from . import runner
from .monitor import overview

logger = logging.getLogger(__name__)


class TaskConsumer(AsyncConsumer):
    """Serves one task queue in a worker (scope from tasks.worker.TaskWorker).

    On a bell it runs due tasks of its queue one after another until none is
    left, then tells the listener it is idle and when the next deferred task
    falls due. One task per queue at a time in each worker process.
    """

    # No channel of its own: it only hears bells through the worker, and a
    # Redis outage must not kill it while it has a bell to answer.
    channel_layer_alias = None

    async def task_ready(self, message: dict) -> None:
        state = self.scope["parley.queue"]
        queues = [state.name]
        # The queue's own thread, and so its own database connection: sync tasks
        # are claimed, run and recorded there without a trip between threads.
        in_queue_thread = sync_to_async(runner.drain_sync, thread_sensitive=False, executor=state.executor)
        try:
            while not runner.shutting_down.is_set():
                drained = await in_queue_thread(queues, state.worker_id, state)
                if drained is False:
                    break
                if drained is True:
                    continue  # a batch done; more may be due
                record, task, result = drained  # an async task: it runs on the event loop
                state.running = record.pk  # the worker's heartbeat renews its lease
                try:
                    await runner.execute(record, task, result, state.worker_id)
                finally:
                    state.running = None
            due = await runner.on_db_thread(runner.next_due)(queues)
            state.next_due = None if due is None else asyncio.get_running_loop().time() + (due - timezone.now()).total_seconds()
        finally:
            state.idle.set()


class TaskMonitorConsumer(AsyncJsonWebsocketConsumer):
    """The /tasks/ page's live feed, staff only: tasks.monitor.overview() every few seconds.

    Frames out: {"type": "overview", "overview": {...}} and project.sockets' error frame.
    It takes no frames in: each one is answered with an error, and a client
    that keeps sending is closed (4429).
    """

    interval = 2.0
    max_bad_frames = 10

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        if not (user.is_active and user.is_staff):
            await self.close(code=4403)
            return
        await self.accept()
        # Full after max_bad_frames - 1 frames, for good: the next one is answered, then the socket closed.
        self.bad_frames = RateLimit(self.max_bad_frames - 1, math.inf)
        self.feed = asyncio.create_task(self.send_overviews())

    async def disconnect(self, code: int) -> None:
        if feed := getattr(self, "feed", None):
            feed.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        error = FrameError("invalid", "invalid frame: this socket only sends updates; it takes no frames")
        # `error` repeats the detail for clients written against this socket's first error frame.
        await self.send_json({**error.frame(), "error": error.detail})
        if not self.bad_frames.allow():
            await self.close(code=4429)

    async def send_overviews(self) -> None:
        while True:
            try:
                await self.send_json({"type": "overview", "overview": await database_sync_to_async(overview)()})
            except Exception:  # the database is away: say nothing new, try again next time
                logger.exception("event=monitor_overview_failed")
            await asyncio.sleep(self.interval)
