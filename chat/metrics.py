"""The room socket's Prometheus metrics, counted by each daphne for itself (see project.metrics).

Nothing is counted while METRICS_TOKEN is unset: nobody could read it.
"""

from django.conf import settings
from prometheus_client import Counter, Gauge

SOCKETS_OPEN = Gauge("parley_chat_sockets_open", "Room sockets in a room now (accepted and entered), in this process.")
MESSAGES_STORED = Counter("parley_chat_messages_stored", "Messages stored (a client's retry of a stored one is not).")
BROADCASTS_DELIVERED = Counter(
    "parley_chat_broadcasts_delivered",
    "Room broadcasts sent to a socket, by kind: message, or frame (join, leave, typing, an app's frames).",
    ["kind"],
)
CATCHUP_READS = Counter(
    "parley_chat_catchup_reads",
    "Reads of messages a socket missed, by cause: broadcast (one came without its predecessor; sockets "
    "of a process missing the same message share one read) or heartbeat (a beat found some).",
    ["cause"],
)
CATCHUP_MESSAGES = Counter("parley_chat_catchup_messages", "Messages sent to a socket from a catch-up read.")
LAYER_ERRORS = Counter("parley_chat_channel_layer_errors", "Channel-layer calls that failed, by operation.", ["operation"])


def socket_entered() -> None:
    if settings.METRICS_TOKEN:
        SOCKETS_OPEN.inc()


def socket_left() -> None:
    if settings.METRICS_TOKEN:
        SOCKETS_OPEN.dec()


def message_stored() -> None:
    if settings.METRICS_TOKEN:
        MESSAGES_STORED.inc()


def delivered(kind: str) -> None:
    if settings.METRICS_TOKEN:
        BROADCASTS_DELIVERED.labels(kind).inc()


def catchup_read(cause: str) -> None:
    if settings.METRICS_TOKEN:
        CATCHUP_READS.labels(cause).inc()


def caught_up(messages: int) -> None:
    if settings.METRICS_TOKEN:
        CATCHUP_MESSAGES.inc(messages)


def layer_error(operation: str) -> None:
    if settings.METRICS_TOKEN:
        LAYER_ERRORS.labels(operation).inc()
