"""The room socket's Prometheus metrics, counted by each daphne for itself (see project.metrics).

Nothing is counted while METRICS_TOKEN is unset (project.metrics.enabled): nobody could read it.
"""

from prometheus_client import Counter, Gauge

from project.metrics import enabled

SOCKETS_OPEN = Gauge("parley_chat_sockets_open", "Room sockets in a room now (accepted and entered), in this process.")
MESSAGES_STORED = Counter("parley_chat_messages_stored", "Messages stored (a client's retry of a stored one is not).")
BROADCASTS_DELIVERED = Counter(
    "parley_chat_broadcasts_delivered",
    "Room broadcasts sent to a socket, by kind: message, change (an edit, delete, reaction or reply count), "
    "or frame (join, leave, typing, an app's frames).",
    ["kind"],
)
CATCHUP_READS = Counter(
    "parley_chat_catchup_reads",
    "Reads of messages a socket missed, by cause: broadcast (one came without its predecessor; sockets "
    "of a process missing the same message share one read), heartbeat (the process's beat found a room's "
    "local sockets behind: one read for all of them) or change "
    "(a change broadcast came without its predecessor).",
    ["cause"],
)
CATCHUP_MESSAGES = Counter("parley_chat_catchup_messages", "Messages sent to a socket from a catch-up read.")
LAYER_ERRORS = Counter("parley_chat_channel_layer_errors", "Channel-layer calls that failed, by operation.", ["operation"])
# Looked up once: labels() validates and locks on every call, once per delivery here.
_DELIVERED = {kind: BROADCASTS_DELIVERED.labels(kind) for kind in ("message", "change", "frame")}


def socket_entered() -> None:
    if enabled():
        SOCKETS_OPEN.inc()


def socket_left() -> None:
    if enabled():
        SOCKETS_OPEN.dec()


def message_stored() -> None:
    if enabled():
        MESSAGES_STORED.inc()


def delivered(kind: str) -> None:
    if enabled():
        _DELIVERED[kind].inc()


def catchup_read(cause: str) -> None:
    if enabled():
        CATCHUP_READS.labels(cause).inc()


def caught_up(messages: int) -> None:
    if enabled():
        CATCHUP_MESSAGES.inc(messages)


def layer_error(operation: str) -> None:
    if enabled():
        LAYER_ERRORS.labels(operation).inc()
