"""Live progress of jobs over WebSockets: the job page's socket, and `/export` in the chat box."""

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import jsonschema
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.exceptions import PermissionDenied

from tasks.progress import progress_group

from .forms import parse_export_command
from .jobs import TooManyJobs, cancel_job, start_export
from .live import JobWatcher, load_job

logger = logging.getLogger(__name__)

MAX_FRAME_CHARS = 1024
MAX_FRAMES_PER_SECOND = 5
TICK = 0.5  # how often a socket checks whether a silent job is due a frame
FRAME_SCHEMA = {
    "type": "object",
    "properties": {"action": {"enum": ["cancel"]}},
    "required": ["action"],
    "additionalProperties": False,
}


class JobConsumer(AsyncJsonWebsocketConsumer):
    """/reports/<id>/live/: the job's progress (`job.progress` frames); `{"action": "cancel"}` stops it.

    Only users who may see the job are accepted (others are refused with 4403).
    A reload opens a new socket, which gets the job's current state at once.
    """

    watcher: JobWatcher | None = None
    ticker: asyncio.Task | None = None

    async def connect(self) -> None:
        user = self.scope["user"]
        job = await load_job(self.scope["url_route"]["kwargs"]["job_id"])
        if not user.is_authenticated or job is None or not await database_sync_to_async(job.can_view)(user):
            await self.close(code=4403)
            return
        self.watcher = JobWatcher(job)
        self.received: deque[float] = deque(maxlen=MAX_FRAMES_PER_SECOND)
        await self.accept()
        if job.task_id is not None:
            await self.channel_layer.group_add(self.watcher.group_name, self.channel_name)
        await self.send_json(await self.watcher.refresh())
        self.ticker = asyncio.create_task(tick(self.send_json, {self.watcher.group_name: self.watcher}, "job.progress"))

    async def disconnect(self, code: int) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        if self.watcher is not None and self.watcher.job.task_id is not None:
            await self.channel_layer.group_discard(self.watcher.group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        now = time.monotonic()
        if len(self.received) == self.received.maxlen and now - self.received[0] < 1.0:
            await self.send_json({"type": "error", "error": "Too many frames; slow down."})
            return
        self.received.append(now)
        if text_data is None or len(text_data) > MAX_FRAME_CHARS:
            await self.send_json({"type": "error", "error": f"Frames are JSON text of at most {MAX_FRAME_CHARS} characters."})
            return
        try:
            content = json.loads(text_data)
            jsonschema.validate(content, FRAME_SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            await self.send_json({"type": "error", "error": 'Unknown frame; the only one is {"action": "cancel"}.'})
            return
        try:
            await database_sync_to_async(cancel_job)(self.watcher.job, self.scope["user"])
        except PermissionDenied as exc:
            await self.send_json({"type": "error", "error": str(exc)})

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


class ExportCommand:
    """Mixin for the chat consumer: `/export [json|csv|html] [from] [to]` sent as a chat message.

    Starts the export (or attaches to the same one already running) through
    reports.jobs.start_export, as the room page's button does, and sends its
    progress to this socket as `export.progress` frames; problems come back as
    `export.error` frames. The text is a command, never posted to the room.
    """

    @staticmethod
    def is_export_command(text: str) -> bool:
        return text.split(maxsplit=1)[:1] == ["/export"]

    async def export_command(self, room, text: str) -> None:
        if not hasattr(self, "export_watchers"):  # made on first use: most chat sockets never export
            self.export_watchers: dict[str, JobWatcher] = {}
            self.export_ticker = asyncio.create_task(tick(self.send_export_frame, self.export_watchers, "export.progress"))
        try:
            format, since, until = parse_export_command(text)
            job, _ = await database_sync_to_async(start_export)(self.scope["user"], room, format, since, until)
        except (ValueError, TooManyJobs, PermissionDenied) as exc:
            await self.send_export_frame({"type": "export.error", "error": str(exc)})
            return
        watcher = self.export_watchers.get(progress_group(job.task_id))
        if watcher is None:  # else: the same export again, already watched here
            watcher = self.export_watchers[progress_group(job.task_id)] = JobWatcher(job)
            await self.channel_layer.group_add(watcher.group_name, self.channel_name)
        await self.send_export_frame({**await watcher.refresh(), "type": "export.progress"})

    async def task_update(self, event: dict) -> None:
        watcher = getattr(self, "export_watchers", {}).get(progress_group(event["task"]["id"]))
        if watcher is None:
            return
        frame = await watcher.on_update(event["task"])
        if frame is not None:
            await self.send_export_frame({**frame, "type": "export.progress"})

    async def send_export_frame(self, frame: dict) -> None:
        await self.send(text_data=json.dumps(frame))

    async def export_disconnect(self) -> None:
        """Call from the consumer's disconnect(): stop watching this socket's exports."""
        if hasattr(self, "export_watchers"):
            self.export_ticker.cancel()
            for group in self.export_watchers:
                await self.channel_layer.group_discard(group, self.channel_name)
