"""The room socket's protocol: a registry of inbound frame types, and outbound frame builders.

Each inbound frame type is registered here with its schema and its handler, in
the registering app's AppConfig.ready(): chat registers message, sync and
typing (chat/apps.py), accounts registers avatar.refresh, reports registers
export. Chat imports none of them. A handler is `async def handler(consumer,
frame)`; it talks to the socket through ChatConsumer's documented surface
(`room`, `user`, `send_frame`, `broadcast`, `state`, `on_disconnect`; see
chat.consumers) and refuses a frame by raising FrameError. Apps that send the
socket channel-layer events of their own register a handler for each event
type too. Decoding, the size limit and the error frame are project.sockets',
as for every socket.
"""

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from project.sockets import FrameError, FrameSchema, InvalidFrame, compile_schema, frame_schema, parse

from .models import MAX_MESSAGE_LENGTH, Message

if TYPE_CHECKING:
    from .consumers import ChatConsumer

MAX_FRAME_BYTES = 64 * 1024
SYNC_LIMIT = 500
# A sync page also stops at this much encoded output (then `more`): a page is
# written to the socket at once, and must fit well within the bound on a
# socket's unsent output (CHAT_MAX_UNSENT_BYTES) for a client that reads.
SYNC_MAX_BYTES = 1024 * 1024
HISTORY_LIMIT = 200

Handler = Callable[["ChatConsumer", dict[str, Any]], Awaitable[None]]

MESSAGE_SCHEMA = frame_schema(
    "message",
    {
        # minLength 1 plus a non-space character: a blank message is "empty".
        "text": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_LENGTH, "pattern": r"\S"},
        "client_id": {"type": "string", "minLength": 1, "maxLength": 64},
        # A thread reply: its parent's id, and whether it is also shown in the room's timeline.
        "parent": {"type": "integer", "minimum": 1},
        "to_room": {"type": "boolean"},
    },
    ("text", "client_id"),
)
SYNC_SCHEMA = frame_schema(
    "sync",
    {"after": {"type": "integer", "minimum": 0}, "changes_after": {"type": "integer", "minimum": 0}},
    ("after",),
)
MESSAGE_ID = {"type": "integer", "minimum": 1}
EDIT_SCHEMA = frame_schema(
    "edit",
    {"id": MESSAGE_ID, "text": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_LENGTH, "pattern": r"\S"}},
    ("id", "text"),
)
DELETE_SCHEMA = frame_schema("delete", {"id": MESSAGE_ID}, ("id",))
# 64 characters holds the longest emoji sequences (flags of subdivisions); chat.edits.is_emoji checks the rest.
REACT_SCHEMA = frame_schema("react", {"id": MESSAGE_ID, "emoji": {"type": "string", "minLength": 1, "maxLength": 64}},
                            ("id", "emoji"))  # fmt: skip
THREAD_SCHEMA = frame_schema("thread", {"id": MESSAGE_ID}, ("id",))
VERSIONS_SCHEMA = frame_schema("versions", {"id": MESSAGE_ID}, ("id",))
TYPING_SCHEMA = frame_schema("typing")

# frame type -> its compiled schema, and its handler; filled by the apps' ready().
validators: dict[str, FrameSchema] = {}
handlers: dict[str, Handler] = {}
# channel-layer event type (e.g. "avatar.changed") -> its handler, for events the socket has no method for.
event_handlers: dict[str, Handler] = {}


def register(type_: str, schema: dict[str, Any], handler: Handler) -> None:
    """Let room sockets take `{"type": type_, ...}` frames that `schema` accepts; `handler` acts on them.

    Call from AppConfig.ready(). `schema` must pin `type` to `type_` (project.sockets.frame_schema
    builds one), checked here; jsonschema checks and compiles it at its first frame (FrameSchema).
    """
    if type_ in handlers:
        raise ImproperlyConfigured(f"Frame type {type_!r} is registered twice.")
    if schema.get("properties", {}).get("type") != {"const": type_}:
        raise ImproperlyConfigured(f"The schema of frame type {type_!r} must pin type to {type_!r}.")
    validators[type_] = compile_schema(schema)
    handlers[type_] = handler


def register_event(type_: str, handler: Handler) -> None:
    """Let room sockets handle channel-layer events of `type_` that an app sends to a room's group."""
    if type_ in event_handlers:
        raise ImproperlyConfigured(f"Event type {type_!r} is registered twice.")
    event_handlers[type_] = handler


def _error_code(frame_type: str, error: InvalidFrame) -> str:
    if frame_type in {"message", "edit"} and list(error.error.path) == ["text"]:
        if error.error.validator in {"minLength", "pattern"}:
            return "empty"
        if error.error.validator == "maxLength":
            return "too_long"
    return "invalid"


def parse_frame(text: str | None, binary: bytes | None = None) -> dict[str, Any]:
    """Decode and validate one inbound frame, or raise FrameError (naming the message's client_id)."""
    try:
        return parse(text, binary, validators, MAX_FRAME_BYTES)
    except InvalidFrame as error:
        client_id = error.frame_data.get("client_id")
        named = {"client_id": client_id} if isinstance(client_id, str) and 0 < len(client_id) <= 64 else {}
        message_id = error.frame_data.get("id")
        if error.frame_data["type"] in {"edit", "delete", "react"} and type(message_id) is int:
            named["id"] = message_id  # the refused change's message, for the client to put back
        code = _error_code(error.frame_data["type"], error)
        detail = {
            "empty": "The message is empty.",
            "too_long": f"The message is longer than {MAX_MESSAGE_LENGTH} characters.",
        }.get(code, error.detail)
        raise FrameError(code, detail, **named) from None


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_ts(message: Message) -> str:
    return iso(message.created_at)


def message_frame(message: Message) -> dict[str, Any]:
    """The outbound form of a message: WebSocket frames, history JSON and the room page.

    `name`, the author's display name, only when they have set one. The keys of edits, deletes, reactions and threads are there only when set,
    so a plain message costs the fan-out no more bytes than before them.
    """
    frame = {
        "type": "message",
        "id": message.pk,
        "room": message.room.label,
        "handle": message.user.username,
        "text": message.text,
        "ts": format_ts(message),
        "client_id": message.client_id,
    }
    if message.user.display_name:
        frame["name"] = message.user.display_name
    if message.parent_id is not None:
        frame["parent"] = message.parent_id
        if message.also_in_room:
            frame["to_room"] = True
    if message.change_seq:
        frame["seq"] = message.change_seq
    if message.deleted_at is not None:
        frame["deleted"] = True
    elif message.edited_at is not None:
        frame["edited"] = iso(message.edited_at)
    if message.reply_count or message.last_reply_at is not None:
        frame["replies"] = message.reply_count
        frame["last_reply"] = iso(message.last_reply_at) if message.last_reply_at else None
    if message.reactions:
        frame["reactions"] = message.reactions
    return frame


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
