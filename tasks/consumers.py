"""Consumers: a bell on a queue's channel runs that queue's tasks; /tasks/live/ feeds the monitor page."""

import asyncio
import logging
import math
from inspect import iscoroutinefunction

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.base_user import AbstractBaseUser

from project.access import CLOSE_ACCESS_ENDED, CLOSE_SESSION_ENDED, AccessGuard
from project.sockets import FrameError, RateLimit

from . import runner
from .backends import aring
from .monitor import overview
from .worker import QueueState, Slot

logger = logging.getLogger(__name__)


class TaskConsumer(AsyncConsumer):
    """Serves one task queue in a worker (scope from tasks.worker.TaskWorker).

    On a bell it claims as many due tasks as the queue has free slots, in one
    statement, and starts each in a slot of its own (tasks.worker.QueueState);
    a slot whose task ends claims the next itself. It then tells the listener
    it may take another bell.
    """

    # No channel of its own: it only hears bells through the worker, and a
    # Redis outage must not kill it while it has a bell to answer.
    channel_layer_alias = None

    async def task_ready(self, message: dict) -> None:
        state = self.scope["parley.queue"]
        try:
            # A claim that came back full may have left more due: claim again while
            # slots are free, without waiting for a bell. A claim is bounded by the
            # free threads, so async tasks (which give their thread back) fill the
            # queue's many coroutine slots in a few rounds, one bell or none.
            full = await self.claim(state)
            while full and state.free() and not runner.shutting_down.is_set():
                full = await self.claim(state)
            if full and not runner.shutting_down.is_set():
                # More may be due and every slot here is taken: pass the bell on to a
                # worker with room. A backlog found by one bell (tasks enqueued while
                # every worker was busy or down leave a single bell, see
                # backends._RING_IF_QUIET) would otherwise wait for the others' polls.
                await aring(state.name)
        finally:
            state.claiming = False
            state.changed()

    async def claim(self, state: QueueState) -> bool:
        """Claim as many due tasks as the queue has free slots and start each; True if
        the claim came back full (more may be due)."""
        reserved = 0 if state.paused else state.reserve(state.free())  # a bell taken just before a pause
        asked = reserved
        try:
            if not reserved:
                return False
            # On one of the queue's threads (one is reserved): its own database connection.
            claimed = await asyncio.wrap_future(
                state.threads.submit(runner.claim_and_start_many, [state.name], state.worker_id, reserved)
            )
            for one in claimed:
                reserved -= 1
                slot, task = Slot(state, sync=1, async_=1), one[1]  # one reservation of each kind
                if task is None:  # its code could not be loaded; that attempt is recorded as failed
                    slot.release_all()
                    continue
                slot.release("sync" if iscoroutinefunction(task.func) else "async")  # keep what it needs
                state.start(slot, one)
            if reserved:  # fewer were due than slots free: note when the next one will be
                due = await asyncio.wrap_future(state.threads.submit(runner.next_due, [state.name]))
                state.next_due = due
            return len(claimed) == asked
        finally:
            if reserved:
                Slot(state, sync=reserved, async_=reserved).release_all()


def may_monitor(user: AbstractBaseUser) -> bool:
    """The /tasks/ monitor is for active staff only."""
    return user.is_active and user.is_staff


class TaskMonitorConsumer(AccessGuard, AsyncJsonWebsocketConsumer):
    """The /tasks/ page's live feed, staff only: tasks.monitor.overview() every few seconds.

    Frames out: {"type": "overview", "overview": {...}} and project.sockets' error frame.
    It takes no frames in: each one is answered with an error, and a client
    that keeps sending is closed (4429). Accepted first, so the page sees why
    it is refused (4401, 4403); closed the same way once the session or the
    staff flag ends (project.access.AccessGuard).
    """

    interval = 2.0
    max_bad_frames = 10

    async def connect(self) -> None:
        # Accept first: a browser sees close codes only after an accept (a refused handshake is a bare 403).
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_SESSION_ENDED)
            return
        await self.guard_access()
        if not may_monitor(user):
            await self.end_access(CLOSE_ACCESS_ENDED, "refused")
            return
        # Full after max_bad_frames - 1 frames, for good: the next one is answered, then the socket closed.
        self.bad_frames = RateLimit(self.max_bad_frames - 1, math.inf)
        self.feed = asyncio.create_task(self.send_overviews())

    async def disconnect(self, code: int) -> None:
        if feed := getattr(self, "feed", None):
            feed.cancel()
        await self.unguard_access()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.access_ended:
            return
        error = FrameError("invalid", "invalid frame: this socket only sends updates; it takes no frames")
        # `error` repeats the detail for clients written against this socket's first error frame.
        await self.send_json({**error.frame(), "error": error.detail})
        if not self.bad_frames.allow():
            await self.close(code=4429)

    def may_stay(self, user: AbstractBaseUser) -> bool:
        return may_monitor(user)

    async def send_overviews(self) -> None:
        while not self.access_ended:
            try:
                await self.send_json({"type": "overview", "overview": await database_sync_to_async(overview)()})
            except Exception:  # the database is away: say nothing new, try again next time
                logger.exception("event=monitor_overview_failed")
            await asyncio.sleep(self.interval)
