"""Parley's daphne: `python -m project.webserver` takes daphne's own arguments (Procfile `web`).

Two things plain daphne does not do for its WebSockets:

- It buffers whatever the application sends until the client reads it. A
  client that sends `sync` frames and never reads made a daphne grow by
  hundreds of megabytes (README.md, The WebSocket protocol). Here each socket
  registers a push producer on its TCP transport: Twisted pauses it when its
  write buffer is full, and a socket that is sent more than
  CHAT_MAX_UNSENT_BYTES while paused is closed with 4408 (its close frame
  queued behind what it has not read, then the connection dropped after
  autobahn's close-handshake timeout, which frees the buffer).
- autobahn fails a connection by dropping TCP (failByDrop), so a frame over
  --websocket-max-message-size ended in a bare disconnect instead of the
  close code 1009 the protocol documents. Here it sends the close frame.
"""

import logging
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

logger = logging.getLogger("project.webserver")  # the same name when run as __main__

CLOSE_UNSENT_OVERFLOW = 4408


@implementer(IPushProducer)
class UnsentOutput:
    """Counts what one socket is sent while its transport's write buffer is full.

    Twisted calls pauseProducing() when the buffer passes its bufferSize (64
    KiB) and resumeProducing() once it is empty, so the output waiting on the
    client is at most that buffer plus `since_pause`.
    """

    def __init__(self) -> None:
        self.paused = False
        self.since_pause = 0

    def pauseProducing(self) -> None:
        # Twisted calls this on every write while the buffer is over its size: count from the first.
        if not self.paused:
            self.paused = True
            self.since_pause = 0

    def resumeProducing(self) -> None:
        self.paused = False
        self.since_pause = 0

    def stopProducing(self) -> None:
        self.paused = False


class BoundedWebSocketProtocol(WebSocketProtocol):
    """daphne's WebSocket protocol, closing (4408) a socket whose client does not read what it is sent."""

    max_unsent: int

    def onOpen(self) -> None:
        self.unsent = UnsentOutput()
        # The HTTP channel that handed this connection over is still the transport's producer.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self.unsent, True)
        super().onOpen()

    def serverSend(self, content: Any, binary: bool = False) -> None:
        if self.state in (AutobahnProtocol.STATE_CLOSING, AutobahnProtocol.STATE_CLOSED):
            return  # closed by us (4408) or closing: what the application still sends goes nowhere
        super().serverSend(content, binary)
        unsent = getattr(self, "unsent", None)
        if unsent is None or not unsent.paused:
            return
        unsent.since_pause += len(content)
        if unsent.since_pause > self.max_unsent:
            logger.warning(
                "event=ws_unsent_overflow path=%s client=%s unsent_over=%d code=%d",
                self.path, self.client_addr, self.max_unsent, CLOSE_UNSENT_OVERFLOW,
            )  # fmt: skip
            self.sendClose(code=CLOSE_UNSENT_OVERFLOW)


class ParleyServer(Server):
    """daphne's Server with BoundedWebSocketProtocol and 1009 closes instead of dropped connections."""

    @property
    def ws_factory(self) -> WebSocketFactory:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: WebSocketFactory) -> None:
        # Server.run() makes the factory, then sets daphne's own options on it (failByDrop is not one of them).
        from django.conf import settings

        BoundedWebSocketProtocol.max_unsent = settings.CHAT_MAX_UNSENT_BYTES
        factory.protocol = BoundedWebSocketProtocol
        factory.setProtocolOptions(failByDrop=False)
        self._ws_factory = factory


class ParleyCommandLine(CommandLineInterface):
    server_class = ParleyServer


if __name__ == "__main__":
    ParleyCommandLine.entrypoint()
