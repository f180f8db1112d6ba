"""Idle WebSocket clients for bench/sockets.py: one process holding its share of N silent sockets.

Each client behaves like static/chat/room.js once connected: it sends
nothing, answers the server's pings (the websockets library does), reads what
it is sent, and when its socket drops it reconnects with the browser's policy
(exponential backoff with jitter: a delay drawn from the upper half of
min(30 s, 0.5 s x 2^attempt), attempt back to 0 once open), except after a
refusal close code (4401, 4403, 4404, 4409), which the browser does not retry.
A socket counts as open once its first server frame arrives (Parley's
`presence` frame), or at the handshake for a server that sends nothing on
connect (`first_frame: false`, the bare Channels chat). At most `concurrency`
handshakes of this process are in flight at once.

It speaks line-delimited JSON, a config on stdin's first line, then commands,
one per line; each answer is one line on stdout. Times are CLOCK_MONOTONIC,
shared by every process of the machine.

    config  {"origin": ..., "first_frame": bool, "concurrency": n, "handshake_timeout": s}
    add     {"cmd": "add", "clients": [{"url": ..., "cookie": ...|null}]}   -> {"added": n}
    mark    {"cmd": "mark"}    -> {"mark": t}: from now, count only sockets opened after t
    status  {"cmd": "status"}  -> {"clients": n, "open": n, "open_since_mark": n, "last_open_at": t|null,
                                   "refused": {code: n}, "attempts": n, "failures": {kind: n}}
    quit    {"cmd": "quit"}
"""

import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

REFUSALS = {4401, 4403, 4404, 4409}  # static/chat/room.js: reconnecting cannot help
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


class Idlers:
    def __init__(self, config: dict) -> None:
        self.origin = config["origin"]
        self.first_frame = config["first_frame"]
        self.handshake_timeout = config["handshake_timeout"]
        self.gate = asyncio.Semaphore(config["concurrency"])
        self.tasks: list[asyncio.Task] = []
        self.open = 0
        self.opened_at: dict[int, float] = {}  # client -> when its current socket opened (absent: not open)
        self.mark = 0.0
        self.refused: Counter = Counter()
        self.failures: Counter = Counter()
        self.attempts = 0
        self.sockets: dict[int, ClientConnection] = {}

    def add(self, clients: list[dict]) -> int:
        for client in clients:
            index = len(self.tasks)
            self.tasks.append(asyncio.create_task(self.run(index, client["url"], client.get("cookie"))))
        return len(clients)

    async def handshake(self, url: str, cookie: str | None) -> ClientConnection:
        """A socket whose first frame (when the server sends one on connect) has arrived."""
        headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
        ws = await connect(url, origin=self.origin, additional_headers=headers, compression=None,
                           ping_interval=None, open_timeout=None, close_timeout=2)  # fmt: skip
        if self.first_frame:
            try:
                await ws.recv()
            except BaseException:
                await ws.close()
                raise
        return ws

    async def run(self, index: int, url: str, cookie: str | None) -> None:
        """One client for as long as the process lives: connect, idle, reconnect like the browser."""
        attempt = 0
        while True:  # ends with the process (quit cancels it) or a refusal
            async with self.gate:
                self.attempts += 1
                try:
                    ws = await asyncio.wait_for(self.handshake(url, cookie), self.handshake_timeout)
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    if code in REFUSALS:
                        self.refused[code] += 1
                        return
                    self.failures[f"closed_{code}"] += 1
                    ws = None
                except Exception as exc:  # refused, reset, timed out, a 5xx: the browser retries them all
                    self.failures[type(exc).__name__] += 1
                    ws = None
            if ws is not None:
                attempt = 0
                self.open += 1
                self.opened_at[index] = time.monotonic()
                self.sockets[index] = ws
                try:
                    async for _ in ws:  # read what the room says; send nothing
                        pass
                    code = ws.close_code
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                finally:
                    self.open -= 1
                    self.opened_at.pop(index, None)
                    self.sockets.pop(index, None)
                if code in REFUSALS:
                    self.refused[code] += 1
                    return
            ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
            attempt += 1
            await asyncio.sleep(ceiling / 2 + random.random() * ceiling / 2)

    def status(self) -> dict:
        since = [t for t in self.opened_at.values() if t > self.mark]
        return {
            "clients": len(self.tasks), "open": self.open, "open_since_mark": len(since),
            "last_open_at": max(self.opened_at.values(), default=None), "refused": dict(self.refused),
            "attempts": self.attempts, "failures": dict(self.failures),
        }  # fmt: skip

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in list(self.sockets.values())), return_exceptions=True)


def raise_fd_limit() -> None:
    """Every socket is a file descriptor: take all the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main() -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)  # an `add` line carries thousands of session keys
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), sys.stdin)

    def answer(payload: dict) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    idlers = Idlers(json.loads(await reader.readline()))
    answer({"ready": True})
    while line := await reader.readline():  # EOF (driver gone) ends us too
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "add":
            answer({"added": idlers.add(cmd["clients"])})
        elif cmd["cmd"] == "mark":
            idlers.mark = time.monotonic()
            answer({"mark": idlers.mark})
        elif cmd["cmd"] == "status":
            answer(idlers.status())
    await asyncio.wait_for(idlers.close(), 30)


if __name__ == "__main__":
    asyncio.run(main())
