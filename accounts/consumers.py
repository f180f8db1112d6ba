"""The avatar part of the room socket (mixed into chat.consumers.ChatConsumer)."""

import logging
import time
from typing import Any

from channels.db import database_sync_to_async

from chat.protocol import FrameError

from .uploads import request_thumbnails

logger = logging.getLogger(__name__)

# Each refresh re-runs the thumbnail task: one per socket per this many seconds.
REFRESH_INTERVAL = 10.0


class AvatarFrames:
    """`{"type": "avatar.refresh"}` in, `{"type": "avatar", ...}` out.

    avatar.refresh re-queues the thumbnails of the socket's own user (the same
    queue and function as the profile page's upload) and is answered with
    `{"type": "avatar.queued", "task": id}`. When a user's thumbnails are ready,
    accounts.avatars.broadcast_avatar sends `avatar.changed` to every room where
    they have a socket; each socket passes it on as an `avatar` frame.
    """

    avatar_refreshed_at = float("-inf")

    async def on_avatar_refresh(self, frame: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.avatar_refreshed_at < REFRESH_INTERVAL:
            raise FrameError("rate_limited", f"One avatar refresh per {REFRESH_INTERVAL:g} seconds, please.")
        result = await database_sync_to_async(request_thumbnails)(self.scope["user"])
        if result is None:
            raise FrameError("no_avatar", "You have no avatar yet: upload one on your profile page.")
        self.avatar_refreshed_at = now
        await self.send_frame({"type": "avatar.queued", "task": result.id})

    async def avatar_changed(self, event: dict[str, Any]) -> None:
        await self.send_frame({"type": "avatar", "handle": event["user"], "avatar": event["avatar"]})
