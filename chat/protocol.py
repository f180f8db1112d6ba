"""The chat WebSocket protocol: inbound frame schemas and outbound frame builders.

Every inbound frame is checked here before the consumer acts on it. Other parts
of Parley extend the protocol by adding a schema to INBOUND_SCHEMAS and a
handler to ChatConsumer.handlers.
"""

import json
from datetime import UTC
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from .models import MAX_MESSAGE_LENGTH, Message

MAX_FRAME_BYTES = 64 * 1024
SYNC_LIMIT = 500
HISTORY_LIMIT = 200


class FrameError(Exception):
    """An inbound frame was refused; becomes `{"type": "error", "code", "detail"}`."""

    def __init__(self, code: str, detail: str, client_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.client_id = client_id

    def frame(self) -> dict[str, Any]:
        frame = {"type": "error", "code": self.code, "detail": self.detail}
        if self.client_id is not None:
            frame["client_id"] = self.client_id
        return frame


def _frame_schema(type_: str, properties: dict | None = None, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "properties": {"type": {"const": type_}, **(properties or {})},
        "required": ["type", *required],
        "additionalProperties": False,
    }


INBOUND_SCHEMAS: dict[str, dict] = {
    "message": _frame_schema(
        "message",
        {
            # minLength 1 plus a non-space character: a blank message is "empty".
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_LENGTH, "pattern": r"\S"},
            "client_id": {"type": "string", "minLength": 1, "maxLength": 64},
        },
        ("text", "client_id"),
    ),
    "sync": _frame_schema("sync", {"after": {"type": "integer", "minimum": 0}}, ("after",)),
    "typing": _frame_schema("typing"),
    # Re-make the sender's avatar thumbnails (accounts.consumers.AvatarFrames).
    "avatar.refresh": _frame_schema("avatar.refresh"),
}
# Compiled once: validation runs for every frame.
VALIDATORS = {name: Draft202012Validator(schema) for name, schema in INBOUND_SCHEMAS.items()}
for _validator in VALIDATORS.values():
    Draft202012Validator.check_schema(_validator.schema)


def _error_code(frame_type: str, error: ValidationError) -> str:
    if frame_type == "message" and list(error.path) == ["text"] and error.validator in {"minLength", "pattern"}:
        return "empty"
    if frame_type == "message" and list(error.path) == ["text"] and error.validator == "maxLength":
        return "too_long"
    return "invalid"


def parse_frame(text: str | None, binary: bytes | None = None) -> dict[str, Any]:
    """Decode and validate one inbound frame, or raise FrameError."""
    if text is None:
        raise FrameError("invalid", "Frames must be JSON text, not binary.")
    if len(text) > MAX_FRAME_BYTES or len(text.encode()) > MAX_FRAME_BYTES:
        raise FrameError("too_large", f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
    try:
        frame = json.loads(text)
    except ValueError:
        raise FrameError("invalid", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid", "A frame must be a JSON object.")
    frame_type = frame.get("type")
    validator = VALIDATORS.get(frame_type) if isinstance(frame_type, str) else None
    if validator is None:
        raise FrameError("invalid", f"Unknown frame type {frame_type!r}; expected one of {sorted(VALIDATORS)}.")
    error = best_match(validator.iter_errors(frame))
    if error is not None:
        client_id = frame.get("client_id") if isinstance(frame.get("client_id"), str) else None
        code = _error_code(frame_type, error)
        field = ".".join(str(p) for p in error.path) or "frame"
        detail = {
            "empty": "The message is empty.",
            "too_long": f"The message is longer than {MAX_MESSAGE_LENGTH} characters.",
        }.get(code, f"{field}: {error.message}"[:200])
        raise FrameError(code, detail, client_id if client_id and len(client_id) <= 64 else None)
    return frame


def format_ts(message: Message) -> str:
    return message.created_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_frame(message: Message) -> dict[str, Any]:
    """The outbound form of a message: WebSocket frames, history JSON and the room page."""
    return {
        "type": "message",
        "id": message.pk,
        "room": message.room.label,
        "handle": message.user.username,
        "text": message.text,
        "ts": format_ts(message),
        "client_id": message.client_id,
    }


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
