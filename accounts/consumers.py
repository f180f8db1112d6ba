"""The avatar frames of the room socket, registered with chat.protocol in accounts/apps.py.

`{"type": "avatar.refresh"}` in re-queues the thumbnails of the socket's own
user (the same queue and function as the profile page's upload) and is answered
with `{"type": "avatar.queued", "task": id}`. When a user's thumbnails are
ready, accounts.avatars.broadcast_avatar sends `avatar.changed` to every room
where they have a socket; each socket passes it on as an `avatar` frame.
"""

import logging
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from project.sockets import FrameError, RateLimit, frame_schema

from .uploads import request_thumbnails

if TYPE_CHECKING:
    from chat.consumers import ChatConsumer

logger = logging.getLogger(__name__)

# Each refresh re-runs the thumbnail task: one per socket per this many seconds.
REFRESH_INTERVAL = 10.0
REFRESH_SCHEMA = frame_schema("avatar.refresh")


async def on_avatar_refresh(consumer: "ChatConsumer", frame: dict[str, Any]) -> None:
    limit = consumer.state.setdefault("accounts.avatar_refresh", RateLimit(1, REFRESH_INTERVAL))
    if limit.full():
        raise FrameError("rate_limited", f"One avatar refresh per {REFRESH_INTERVAL:g} seconds, please.")
    result = await database_sync_to_async(request_thumbnails)(consumer.user)
    if result is None:
        raise FrameError("no_avatar", "You have no avatar yet: upload one on your profile page.")
    limit.add()  # only a refresh that queued a task counts
    await consumer.send_frame({"type": "avatar.queued", "task": result.id})


async def on_avatar_changed(consumer: "ChatConsumer", event: dict[str, Any]) -> None:
    await consumer.send_frame({"type": "avatar", "handle": event["user"], "avatar": event["avatar"]})
