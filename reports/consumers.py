"""Live progress of jobs over WebSockets: the job page's socket, and exports started from the chat box."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied

from chat.models import RATE_LIMIT_COUNT, RATE_LIMIT_WINDOW
from project.access import CLOSE_ACCESS_ENDED, CLOSE_SESSION_ENDED, AccessGuard
from project.sockets import FrameError, RateLimit, compile_schema, decode, frame_schema, server_error, validate
from tasks.progress import progress_group

from .forms import export_options
from .jobs import TooManyJobs, cancel_job, start_export
from .live import JobWatcher, load_job
from .models import Job

if TYPE_CHECKING:
    from chat.consumers import ChatConsumer

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1024
MAX_FRAMES_PER_SECOND = 5
TICK = 0.5  # how often a socket checks whether a silent job is due a frame
CANCEL = compile_schema({
    "type": "object",
    "properties": {"action": {"enum": ["cancel"]}},
    "required": ["action"],
    "additionalProperties": False,
})


class JobConsumer(AccessGuard, AsyncJsonWebsocketConsumer):
    """/reports/<id>/live/: the job's progress (`job.progress` frames); `{"action": "cancel"}` stops it.

    Accepted first, so the page sees why it is refused: 4401 without a session,
    4404 for no such job, 4403 for a job the user may not see. Closed the same
    way once the session ends or the job is no longer theirs to see
    (project.access.AccessGuard). A reload opens a new socket, which gets the
    job's current state at once.
    """

    watcher: JobWatcher | None = None
    ticker: asyncio.Task | None = None

    async def connect(self) -> None:
        # A browser sees close codes only after an accept (a refused handshake is a bare 403, retried for ever).
        await self.accept()
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=CLOSE_SESSION_ENDED)
            return
        # Listen for the end of access before checking the job: a removal from here on is heard.
        await self.guard_access()
        job = await load_job(self.scope["url_route"]["kwargs"]["job_id"])
        if job is None:
            await self.end_access(4404, "refused")
            return
        if not await database_sync_to_async(job.can_view)(user):
            await self.end_access(CLOSE_ACCESS_ENDED, "refused")
            return
        self.watcher = JobWatcher(job)
        self.frame_limit = RateLimit(MAX_FRAMES_PER_SECOND, 1.0)
        if job.task_id is not None:
            await self.channel_layer.group_add(self.watcher.group_name, self.channel_name)
        await self.send_json(await self.watcher.refresh())
        self.ticker = asyncio.create_task(tick(self.send_json, {self.watcher.group_name: self.watcher}, "job.progress"))

    async def disconnect(self, code: int) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        if self.watcher is not None and self.watcher.job.task_id is not None:
            await self.channel_layer.group_discard(self.watcher.group_name, self.channel_name)
        await self.unguard_access()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            if not self.frame_limit.allow():
                raise FrameError("rate_limited", "too many frames; slow down")
            validate(decode(text_data, bytes_data, MAX_FRAME_BYTES), CANCEL)
            if not await self.recheck_access():  # a cancel writes: only while the job is still the user's
                return
            try:
                await database_sync_to_async(cancel_job)(self.watcher.job, self.scope["user"])
            except PermissionDenied as exc:
                raise FrameError("forbidden", str(exc)) from None
        except FrameError as error:
            # `error` repeats the detail for clients written against this socket's first error frame.
            await self.send_json({**error.frame(), "error": error.detail})
        except Exception:
            # A database error costs this frame, not the socket.
            logger.exception("event=ws_frame_failed socket=job job=%s", self.watcher.job.pk)
            error = server_error()
            await self.send_json({**error.frame(), "error": error.detail})

    def may_stay(self, user: AbstractBaseUser) -> bool:
        job = Job.objects.select_related("room").filter(pk=self.watcher.job.pk).first()
        return job is not None and job.can_view(user)

    async def task_update(self, event: dict) -> None:
        frame = await self.watcher.on_update(event["task"])
        if frame is not None:
            await self.send_json(frame)


async def tick(send: Callable[[dict], Awaitable[None]], watchers: dict[str, JobWatcher], frame_type: str) -> None:
    """Send the state of every silent, unfinished job at least every MAX_SILENCE seconds.

    Runs for the socket's life (cancelled on disconnect); idles once all jobs have finished.
    """
    while True:
        await asyncio.sleep(TICK)
        for watcher in list(watchers.values()):
            if watcher.due():
                await send({**await watcher.refresh(), "type": frame_type})


EXPORT_SCHEMA = frame_schema(
    "export",
    {
        # Checked by the handler as the export form checks them, with the form's messages.
        "format": {"type": "string", "maxLength": 16},
        "since": {"type": "string", "maxLength": 32},
        "until": {"type": "string", "maxLength": 32},
    },
)


class ChatExports:
    """The exports one room socket watches: `{"type": "export", ...}` frames in, their progress out.

    An export frame starts the export (or attaches to the same one already
    running) through reports.jobs.start_export, as the room page's button does,
    and this socket is sent its progress as `export.progress` frames; problems
    come back as `export.error` frames. Registered with chat.protocol in
    reports/apps.py; kept in the socket's `state` from its first export on.
    """

    def __init__(self, consumer: "ChatConsumer") -> None:
        self.consumer = consumer
        self.watchers: dict[str, JobWatcher] = {}
        # Export frames are work in the database, like messages: the same per-socket limit.
        self.limit = RateLimit(RATE_LIMIT_COUNT, RATE_LIMIT_WINDOW.total_seconds())
        self.ticker = asyncio.create_task(tick(self.send, self.watchers, "export.progress"))
        consumer.on_disconnect(self.close)

    @classmethod
    def of(cls, consumer: "ChatConsumer") -> "ChatExports":
        if "reports.exports" not in consumer.state:  # made on first use: most chat sockets never export
            consumer.state["reports.exports"] = cls(consumer)
        return consumer.state["reports.exports"]

    async def start(self, frame: dict[str, Any]) -> None:
        if not self.limit.allow():
            raise FrameError("rate_limited", "Too many exports at once; wait a moment.")
        try:
            format, since, until = export_options(frame)
            job, _ = await database_sync_to_async(start_export)(self.consumer.user, self.consumer.room, format, since, until)
        except (ValueError, TooManyJobs, PermissionDenied) as exc:
            await self.consumer.send_frame({"type": "export.error", "error": str(exc)})
            return
        watcher = self.watchers.get(progress_group(job.task_id))
        if watcher is None:  # else: the same export again, already watched here
            watcher = self.watchers[progress_group(job.task_id)] = JobWatcher(job)
            await self.consumer.channel_layer.group_add(watcher.group_name, self.consumer.channel_name)
        await self.send({**await watcher.refresh(), "type": "export.progress"})

    async def update(self, event: dict[str, Any]) -> None:
        watcher = self.watchers.get(progress_group(event["task"]["id"]))
        if watcher is None:
            return
        frame = await watcher.on_update(event["task"])
        if frame is not None:
            await self.send({**frame, "type": "export.progress"})

    async def send(self, frame: dict[str, Any]) -> None:
        await self.consumer.send_frame(frame)

    async def close(self) -> None:
        self.ticker.cancel()
        for group in self.watchers:
            await self.consumer.channel_layer.group_discard(group, self.consumer.channel_name)


async def on_export(consumer: "ChatConsumer", frame: dict[str, Any]) -> None:
    # An export reads the whole room: only while the socket's access holds (else it is closed).
    if await consumer.recheck_access():
        await ChatExports.of(consumer).start(frame)


async def on_task_update(consumer: "ChatConsumer", event: dict[str, Any]) -> None:
    """A task's progress broadcast (tasks.runner): for this socket's exports, if it watches any."""
    if "reports.exports" in consumer.state:
        await consumer.state["reports.exports"].update(event)
