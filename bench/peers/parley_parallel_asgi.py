"""Parley with one proposed change, for bench/fanout.py to measure before chat/ adopts it.

ChatConsumer runs Room.post through database_sync_to_async, which is
thread-sensitive by default: every database call of a daphne process (posts,
presence, syncs) waits its turn on one thread, so one process posts at most
1 / (post latency) messages per second. Here posts run on the thread pool
(thread_sensitive=False, one connection per pool thread); the room-row lock in
Room.post still orders a room's inserts, and sockets put broadcasts that cross
back in id order.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from project.asgi import application as parley  # noqa: E402  (sets Django up)

from channels.db import database_sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from django.urls import path  # noqa: E402

from chat.consumers import ChatConsumer, post_message  # noqa: E402
from chat.models import RateLimited  # noqa: E402
from chat.protocol import FrameError  # noqa: E402


class ParallelPostConsumer(ChatConsumer):
    async def on_message(self, frame):
        if self.is_export_command(frame["text"]):
            return await super().on_message(frame)
        client_id = frame["client_id"]
        try:
            event = await database_sync_to_async(post_message, thread_sensitive=False)(
                self.room, self.user, frame["text"], client_id
            )
        except RateLimited:
            raise FrameError("rate_limited", self.rate_limit_detail(), client_id) from None
        await self.channel_layer.group_send(self.room.group_name, event)

    handlers = {**ChatConsumer.handlers, "message": on_message}


application = ProtocolTypeRouter(
    {
        "http": parley.application_mapping["http"],
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("chat/<str:label>/", ParallelPostConsumer.as_asgi())]))
        ),
    }
)
