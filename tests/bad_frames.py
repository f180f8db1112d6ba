"""An attacker's corpus of inbound frames: every socket must answer each with an error frame and live on.

Each entry is (name, text, bytes): exactly one of text and bytes is set. The
frames reach past the decoder into the handlers where they can: a message with
a lone surrogate in `text` or `client_id`, a sync whose `after` PostgreSQL
cannot hold, a mark_read with an id beyond 64 bits. tests/test_socket_corpus.py
runs the corpus against every socket; project.sockets.decode() is what refuses
them.
"""

import json

DEEP = 30_000  # deep enough to blow json's recursion, and under 64 KiB


def _message(text: str = "hi", client_id: str = "c1") -> str:
    # ensure_ascii: a lone surrogate travels as a \ud800 escape, as a browser's JSON.stringify sends it.
    return json.dumps({"type": "message", "text": text, "client_id": client_id})


CORPUS: list[tuple[str, str | None, bytes | None]] = [
    # Lone surrogates: not encodable as UTF-8, so neither storable nor echoable.
    ("surrogate-in-text", _message(text="a\ud800b"), None),
    ("surrogate-in-client-id", _message(client_id="a\udfffb"), None),
    ("surrogate-in-key", '{"type": "sync", "\\ud800": 1, "after": 0}', None),
    ("raw-surrogate-in-text", '{"type": "message", "text": "a\ud800b", "client_id": "c1"}', None),
    # NUL: PostgreSQL's text refuses it; refused the same on SQLite.
    ("nul-in-text", _message(text="a\x00b"), None),
    ("nul-in-client-id", _message(client_id="c\x00"), None),
    ("raw-nul-in-string", '{"type": "message", "text": "a\x00b", "client_id": "c1"}', None),
    # Deep nesting: json's recursion, then any schema or handler walking it.
    ("deep-array", "[" * DEEP + "]" * DEEP, None),
    ("deep-array-in-text", '{"type": "message", "client_id": "c1", "text": ' + "[" * DEEP + "]" * DEEP + "}", None),
    ("deep-object", '{"type": "sync", "after": ' + '{"a": ' * 40 + "0" + "}" * 40 + "}", None),
    # Numbers the databases cannot hold, and ones JSON has no place for.
    ("huge-after", '{"type": "sync", "after": ' + str(10**30) + "}", None),
    ("int64-overflow-after", '{"type": "sync", "after": ' + str(2**63) + "}", None),
    ("huge-float-after", '{"type": "sync", "after": 1e300}', None),
    ("float-overflow-after", '{"type": "sync", "after": 1e400}', None),
    ("huge-ids", '{"type": "mark_read", "ids": [' + str(10**30) + "]}", None),
    ("huge-float-ids", '{"type": "mark_read", "ids": [1e300]}', None),
    ("nan", '{"type": "sync", "after": NaN}', None),
    ("infinity", '{"type": "mark_read", "ids": [Infinity]}', None),
    ("minus-infinity", '{"action": "cancel", "x": -Infinity}', None),
    ("many-digits", '{"type": "sync", "after": ' + "9" * 5000 + "}", None),
    # Wrong types and shapes.
    ("type-not-a-string", '{"type": ["message"]}', None),
    ("after-a-boolean", '{"type": "sync", "after": true}', None),
    ("ids-a-string", '{"type": "mark_read", "ids": "1"}', None),
    ("action-a-number", '{"action": 7}', None),
    ("null", "null", None),
    ("a-list", "[1, 2]", None),
    ("empty-text-frame", "", None),
    ("truncated", '{"type": "message", "text": "hi"', None),
    # Oversized: over every socket's limit (chat's is 64 KiB).
    ("oversized", _message(text="x" * 70_000), None),
    ("oversized-multibyte", _message(text="é" * 40_000).replace("\\u00e9", "é"), None),
    # Binary frames: every socket takes JSON text only.
    ("binary", None, b"\x00\xff\xfe"),
    ("binary-json", None, b'{"type": "sync", "after": 0}'),
]


def expected_code(text: str | None, max_bytes: int) -> str:
    """The error code a socket refusing frames over `max_bytes` answers this frame with."""
    if text is not None and len(text.encode(errors="surrogatepass")) > max_bytes:
        return "too_large"
    return "invalid"
