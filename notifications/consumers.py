"""The live unread count: each signed-in page holds one socket at /notifications/live/."""

import json
import logging
import time

import jsonschema
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from chat.models import Room

from . import notify

logger = logging.getLogger(__name__)

MAX_FRAME = 2048
# Frames per second a page may send, in bursts of up to BURST.
RATE, BURST = 5.0, 10.0

INBOUND = {
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
VALIDATOR = jsonschema.Draft202012Validator(INBOUND)


class NotificationConsumer(AsyncWebsocketConsumer):
    """Sends {"type": "unread", "count": n} on connect and whenever it changes.

    Accepts {"type": "mark_read", "ids": [...]} or {"type": "mark_read", "room": label}
    (the room page says so while it is on screen); answers bad frames with
    {"type": "error", "error": ...}.
    """

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            # Accept first: a browser only sees close codes after an accept.
            await self.accept()
            await self.close(code=4401)
            return
        self.group = notify.user_group(self.user.pk)
        self.tokens, self.refilled = BURST, time.monotonic()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        count = await database_sync_to_async(notify.unread_count)(self.user)
        await self.send_json({"type": "unread", "count": count})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self._allowed():
            await self.send_json({"type": "error", "error": "too many frames; slow down"})
            return
        if text_data is None or len(text_data) > MAX_FRAME:
            await self.send_json({"type": "error", "error": f"frames are JSON text of at most {MAX_FRAME} bytes"})
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self.send_json({"type": "error", "error": "not JSON"})
            return
        problem = next(iter(VALIDATOR.iter_errors(frame)), None)
        if problem is not None:
            await self.send_json({"type": "error", "error": f"invalid frame: {problem.message}"})
            return
        await database_sync_to_async(self._mark_read)(frame)

    def _mark_read(self, frame: dict) -> None:
        room = None
        if "room" in frame:
            try:
                room = Room.objects.find(frame["room"], self.user)
            except Room.DoesNotExist:
                return
        notify.mark_read(self.user, ids=frame.get("ids"), room=room)

    def _allowed(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.refilled) * RATE)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def notifications_unread(self, event: dict) -> None:
        await self.send_json({"type": "unread", "count": event["count"]})

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))
