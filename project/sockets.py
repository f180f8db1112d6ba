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

import functools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

# Nesting no frame of ours needs more than a few levels of; deeper is refused
# before any schema or handler walks it (json itself stops at the recursion limit).
MAX_DEPTH = 16
# Numbers must fit the 64-bit integers of the databases: a larger id or
# offset reaches PostgreSQL as an out-of-range parameter and kills the handler.
MAX_INT = 2**63 - 1
# NUL is refused by PostgreSQL's text type (SQLite stores it): refused on both,
# so a frame means the same on either. Lone surrogates cannot be encoded as
# UTF-8, so neither database nor any outbound frame could carry them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class FrameError(Exception):
    """An inbound frame was refused; `frame()` is the error frame the socket answers with."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra

    def frame(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "detail": self.detail, **self.extra}


def server_error() -> FrameError:
    """The answer to a frame whose handler failed unexpectedly (logged with its traceback where caught)."""
    return FrameError("server_error", "the server failed to handle this frame; try again later")


class InvalidFrame(FrameError):
    """A frame its schema refuses; `frame_data` and `error` let a socket name a finer code than `invalid`."""

    def __init__(self, frame_data: dict[str, Any], error: "ValidationError") -> None:
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


class FrameSchema:
    """A frame's JSON schema, checked and compiled once, by the first frame it validates.

    Not before: every process imports the sockets' schemas (the apps register
    theirs in ready()), but only a web process takes frames, and jsonschema is
    memory a worker would hold for nothing.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema

    @functools.cached_property
    def _compiled(self) -> tuple["Draft202012Validator", Callable]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match

        Draft202012Validator.check_schema(self.schema)
        return Draft202012Validator(self.schema), best_match

    def error(self, frame: dict[str, Any]) -> "ValidationError | None":
        """What is most wrong with `frame` (None: nothing)."""
        validator, best_match = self._compiled
        return best_match(validator.iter_errors(frame))


def compile_schema(schema: dict[str, Any]) -> FrameSchema:
    """A validator for `schema` (validation runs for every frame; compiled by the first)."""
    return FrameSchema(schema)


def frame_schema(type_: str, properties: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema of a frame `{"type": type_, ...}` with these fields and no others."""
    return {
        "type": "object",
        "properties": {"type": {"const": type_}, **(properties or {})},
        "required": ["type", *required],
        "additionalProperties": False,
    }


def _refuse_constant(name: str) -> None:
    raise FrameError("invalid", f"invalid frame: {name} is not a number frames may carry")


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > 19 or not -MAX_INT - 1 <= (value := int(digits)) <= MAX_INT:
        raise FrameError("invalid", "invalid frame: an integer beyond 64 bits")
    return value


def _parse_float(digits: str) -> float:
    value = float(digits)
    if not -MAX_INT - 1 <= value <= MAX_INT:  # also false for an overflow to infinity
        raise FrameError("invalid", "invalid frame: a number beyond 64 bits")
    return value


def _check_values(frame: dict[str, Any]) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings with NUL or lone surrogates, keys included."""
    pending: list[tuple[Any, int]] = [(frame, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                raise FrameError("invalid", "invalid frame: a string with NUL or a lone surrogate")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise FrameError("invalid", f"invalid frame: nested deeper than {MAX_DEPTH} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)


def decode(text: str | None, binary: bytes | None, max_bytes: int) -> dict[str, Any]:
    """One inbound frame as a JSON object, or FrameError.

    Refused: binary, over `max_bytes`, not JSON, not an object, nested deeper
    than MAX_DEPTH, NaN or Infinity, numbers beyond 64 bits, and strings with
    NUL or lone surrogates; what passes can be validated, stored and echoed
    without any handler meeting an input that makes it raise.
    """
    if text is None:
        raise FrameError("invalid", "invalid frame: binary; frames are JSON text")
    if len(text) > max_bytes or len(text.encode(errors="surrogatepass")) > max_bytes:
        raise FrameError("too_large", f"frames are JSON text of at most {max_bytes} bytes")
    try:
        frame = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)
    except RecursionError:
        raise FrameError("invalid", f"invalid frame: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise FrameError("invalid", "invalid frame: not JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid", "invalid frame: not a JSON object")
    _check_values(frame)
    return frame


def validate(frame: dict[str, Any], validator: FrameSchema) -> None:
    """Raise InvalidFrame if `validator` refuses the decoded `frame`."""
    error = validator.error(frame)
    if error is not None:
        raise InvalidFrame(frame, error)


def parse(
    text: str | None, binary: bytes | None, validators: Mapping[str, FrameSchema], max_bytes: int
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
