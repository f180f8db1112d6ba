"""The room socket's frames for changing messages: edit, delete, react, and reading a thread or old versions.

Registered in chat/apps.py; the logic is chat.edits'. Each frame is checked
against the socket's session and the user's right to see the room on the same
database trip that acts on it, like a message; a refusal is an error frame
naming the message's `id`, and the socket stays open.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from project.access import AccessEnded, require_session
from project.sockets import FrameError, RateLimit

from . import edits
from .consumers import can_still_view, room_gone
from .models import RATE_LIMIT_COUNT, RATE_LIMIT_WINDOW, RateLimited, RoomHidden

if TYPE_CHECKING:
    from .consumers import ChatConsumer

STATE_KEY = "edits"


def _for_socket(
    session_key: str | None, consumer: "ChatConsumer", read: bool, action: Callable[..., Any], *args: Any
) -> Any:
    """Run `action(room, user, *args)` only while the socket's session and the user's view of the room last.

    A change checks the room under its lock itself (RoomHidden); a `read` is checked here first.
    """
    require_session(session_key, consumer.user.pk)
    if read and not can_still_view(consumer.room, consumer.user):
        raise room_gone()
    try:
        return action(consumer.room, consumer.user, *args)
    except RoomHidden:
        raise room_gone() from None


def _limit(consumer: "ChatConsumer") -> RateLimit:
    """Changes and thread reads on one socket: as many as messages, in the same window."""
    if STATE_KEY not in consumer.state:
        consumer.state[STATE_KEY] = RateLimit(RATE_LIMIT_COUNT, RATE_LIMIT_WINDOW.total_seconds())
    return consumer.state[STATE_KEY]


async def _run(
    consumer: "ChatConsumer", frame: dict[str, Any], action: Callable[..., Any], *args: Any, read: bool = False
) -> Any:
    """Act on the frame's message, or answer why not (an error frame with its `id`); None when refused."""
    message_id = frame["id"]
    if not _limit(consumer).allow():
        raise FrameError("rate_limited", "Too many changes at once; wait a moment.", id=message_id)
    try:
        return await database_sync_to_async(_for_socket)(
            consumer.access_session_key(), consumer, read, action, message_id, *args
        )
    except edits.Refused as refused:
        raise FrameError(refused.code, refused.detail, id=message_id) from None
    except RateLimited:
        raise FrameError("rate_limited", consumer.rate_limit_detail(), id=message_id) from None
    except AccessEnded as ended:
        await consumer.refuse_ended(ended, id=message_id)
        return None


async def on_edit(consumer: "ChatConsumer", frame: dict[str, Any]) -> None:
    # Edits count as messages: the socket's message window, and the database count in chat.edits.
    if not consumer.message_limit.allow():
        raise FrameError("rate_limited", consumer.rate_limit_detail(), id=frame["id"])
    changes = await _run(consumer, frame, edits.edit_message, frame["text"])
    if changes:
        await consumer.send_changes(changes)


async def on_delete(consumer: "ChatConsumer", frame: dict[str, Any]) -> None:
    changes = await _run(consumer, frame, edits.delete_message)
    if changes:
        await consumer.send_changes(changes)


async def on_react(consumer: "ChatConsumer", frame: dict[str, Any]) -> None:
    changes = await _run(consumer, frame, edits.toggle_reaction, frame["emoji"])
    if changes:
        await consumer.send_changes(changes)


async def on_versions(consumer: "ChatConsumer", frame: dict[str, Any]) -> None:
    versions = await _run(consumer, frame, edits.message_versions, read=True)
    if versions is not None:
        await consumer.send_frame({"type": "versions", "id": frame["id"], "versions": versions})


async def on_thread(consumer: "ChatConsumer", frame: dict[str, Any]) -> None:
    answer = await _run(consumer, frame, edits.thread, read=True)
    if answer is not None:
        parent, replies = answer
        await consumer.send_frame({"type": "thread", "parent": parent, "replies": replies})
