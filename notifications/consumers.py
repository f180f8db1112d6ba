"""The live unread count: each signed-in page holds one socket at /notifications/live/."""

import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.base_user import AbstractBaseUser

from chat import sidebar
from chat.models import Room
from project.access import CLOSE_SESSION_ENDED, AccessGuard
from project.sockets import FrameError, RateLimit, compile_schema, parse, server_error

from . import notify

logger = logging.getLogger(__name__)

MAX_FRAME = 2048
# At most MAX_FRAMES frames in any FRAMES_WINDOW seconds: 5 a second on average, in bursts of up to 10.
MAX_FRAMES, FRAMES_WINDOW = 10, 2.0

MARK_READ = {
    "type": "object",
    "properties": {
        "type": {"const": "mark_read"},
        "ids": {"type": "array", "items": {"type": "integer", "minimum": 1}, "maxItems": 100},
        "room": {"type": "string", "minLength": 1, "maxLength": 50},
    },
    "required": ["type"],
    "additionalProperties": False,
    "oneOf": [{"required": ["ids"]}, {"required": ["room"]}],
}
# The newest message of a room the page has shown: the user's read position moves to it (chat.sidebar).
READ = {
    "type": "object",
    "properties": {
        "type": {"const": "read"},
        "room": {"type": "string", "minLength": 1, "maxLength": 50},
        "id": {"type": "integer", "minimum": 0},
    },
    "required": ["type", "room"],
    "additionalProperties": False,
}
VALIDATORS = {"mark_read": compile_schema(MARK_READ), "read": compile_schema(READ)}


class NotificationConsumer(AccessGuard, AsyncWebsocketConsumer):
    """Sends {"type": "unread", "count": n} on connect and whenever it changes.

    Accepts {"type": "mark_read", "ids": [...]} or {"type": "mark_read", "room": label}
    (the room page says so while it is on screen), and {"type": "read", "room": label,
    "id": n} (the newest message shown; omitted: all of them). It is also the sidebar's
    socket: it listens to the rooms the user joined and sends room_activity,
    room_read, room_mention and sidebar_changed frames (chat.sidebar). Answers bad frames with
    project.sockets' error frame. Closed with 4401 once the session ends
    (project.access.AccessGuard).
    """

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            # Accept first: a browser only sees close codes after an accept.
            await self.accept()
            await self.close(code=CLOSE_SESSION_ENDED)
            return
        await self.guard_access()
        self.group = notify.user_group(self.user.pk)
        self.frame_limit = RateLimit(MAX_FRAMES, FRAMES_WINDOW)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.room_groups: set[str] = set()
        await self.listen_to_rooms()
        await self.accept()
        count = await database_sync_to_async(notify.unread_count)(self.user)
        await self.send_json({"type": "unread", "count": count})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            for group in self.room_groups:
                await self.channel_layer.group_discard(group, self.channel_name)
        await self.unguard_access()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.access_ended:
            return
        try:
            if not self.frame_limit.allow():
                raise FrameError("rate_limited", "too many frames; slow down")
            frame = parse(text_data, bytes_data, VALIDATORS, MAX_FRAME)
        except FrameError as error:
            # `error` repeats the detail for clients written against this socket's first error frame.
            await self.send_json({**error.frame(), "error": error.detail})
            return
        if not await self.recheck_access():  # it writes: only for a session that is still logged in
            return
        try:
            await database_sync_to_async(self._mark_read)(frame)
        except Exception:
            # A database error costs this frame, not the socket.
            logger.exception("event=ws_frame_failed socket=notifications user=%s", self.user.pk)
            error = server_error()
            await self.send_json({**error.frame(), "error": error.detail})

    def may_stay(self, user: AbstractBaseUser) -> bool:
        return True  # the bell is the user's own: only the session matters

    async def listen_to_rooms(self) -> None:
        """Be in the group of each room the user joined, and of no other (the sidebar's live counts)."""
        ids = await database_sync_to_async(sidebar.joined_room_ids)(self.user.pk)
        wanted = {sidebar.room_group(room_id) for room_id in ids}
        for group in wanted - self.room_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        for group in self.room_groups - wanted:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.room_groups = wanted

    async def sidebar_frame(self, event: dict) -> None:
        if event["frame"]["type"] == "sidebar_changed":
            await self.listen_to_rooms()
        await self.send_json(event["frame"])

    def _mark_read(self, frame: dict) -> None:
        if frame["type"] == "read":
            try:
                room = Room.objects.find(frame["room"], self.user)
            except Room.DoesNotExist:
                return
            if sidebar.mark_read(room, self.user, frame.get("id")) == 0:
                notify.mark_read(self.user, room=room)  # all read: its mentions too
            return
        room = None
        if "room" in frame:
            try:
                room = Room.objects.find(frame["room"], self.user)
            except Room.DoesNotExist:
                return
        notify.mark_read(self.user, ids=frame.get("ids"), room=room)

    async def notifications_unread(self, event: dict) -> None:
        await self.send_json({"type": "unread", "count": event["count"]})

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))
