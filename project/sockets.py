"""The inbound-frame guard of every WebSocket: decoding, size, schema, rate, and the one error frame.

The room socket, the bell, a job's progress page and the /tasks/ monitor all take
frames from browsers, and all refuse a bad one the same way:
`{"type": "error", "code": str, "detail": str}` (a socket may add keys, as chat
adds the refused message's `client_id`), with the same codes (`invalid`,
`too_large`, `rate_limited`) and the same sliding-window rate limit.

It lives in project/ rather than in chat/ because tasks/ (the runner's monitor
socket) must not import a feature app, while every app may import project/,
which routes all their sockets anyway.
"""

import json
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match


class FrameError(Exception):
    """An inbound frame was refused; `frame()` is the error frame the socket answers with."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra

    def frame(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "detail": self.detail, **self.extra}


class InvalidFrame(FrameError):
    """A frame its schema refuses; `frame_data` and `error` let a socket name a finer code than `invalid`."""

    def __init__(self, frame_data: dict[str, Any], error: ValidationError) -> None:
        field = ".".join(str(p) for p in error.path) or "frame"
        super().__init__("invalid", f"invalid frame: {field}: {error.message}"[:200])
        self.frame_data = frame_data
        self.error = error


class RateLimit:
    """At most `count` frames in any `seconds` (a sliding window): the one algorithm of every socket.

    Only allowed frames count, so a client that keeps hammering is let through
    again as soon as its oldest allowed frame leaves the window.
    """

    def __init__(self, count: int, seconds: float) -> None:
        self.seconds = seconds
        self.times: deque[float] = deque(maxlen=count)

    def full(self) -> bool:
        """Whether a frame now would be refused (for a socket that counts a frame only once it succeeded)."""
        return len(self.times) == self.times.maxlen and time.monotonic() - self.times[0] < self.seconds

    def add(self) -> None:
        self.times.append(time.monotonic())

    def allow(self) -> bool:
        """Count a frame now, unless it is one too many."""
        if self.full():
            return False
        self.add()
        return True


def compile_schema(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for `schema`, checked and compiled once (validation runs for every frame)."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def frame_schema(type_: str, properties: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema of a frame `{"type": type_, ...}` with these fields and no others."""
    return {
        "type": "object",
        "properties": {"type": {"const": type_}, **(properties or {})},
        "required": ["type", *required],
        "additionalProperties": False,
    }


def decode(text: str | None, binary: bytes | None, max_bytes: int) -> dict[str, Any]:
    """One inbound frame as a JSON object, or FrameError (binary, too large, not JSON, not an object)."""
    if text is None:
        raise FrameError("invalid", "invalid frame: binary; frames are JSON text")
    if len(text) > max_bytes or len(text.encode()) > max_bytes:
        raise FrameError("too_large", f"frames are JSON text of at most {max_bytes} bytes")
    try:
        frame = json.loads(text)
    except ValueError:
        raise FrameError("invalid", "invalid frame: not JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid", "invalid frame: not a JSON object")
    return frame


def validate(frame: dict[str, Any], validator: Draft202012Validator) -> None:
    """Raise InvalidFrame if `validator` refuses the decoded `frame`."""
    error = best_match(validator.iter_errors(frame))
    if error is not None:
        raise InvalidFrame(frame, error)


def parse(
    text: str | None, binary: bytes | None, validators: Mapping[str, Draft202012Validator], max_bytes: int
) -> dict[str, Any]:
    """Decode one inbound frame and check it against the schema of its `type`, or raise FrameError."""
    frame = decode(text, binary, max_bytes)
    frame_type = frame.get("type")
    validator = validators.get(frame_type) if isinstance(frame_type, str) else None
    if validator is None:
        detail = f"invalid frame: unknown type {frame_type!r}; expected one of {sorted(validators)}"
        raise FrameError("invalid", detail[:200])
    validate(frame, validator)
    return frame
