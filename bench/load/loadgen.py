"""WebSocket load generator for bench/fanout.py: one process driving many chat clients.

One Python process cannot parse 10,000 frames/s next to the servers it measures,
so bench/fanout.py starts several of these and splits the clients between them.
It speaks line-delimited JSON: a config on stdin's first line, then commands,
one per line; each answer is one line on stdout.

    config  {"proto": "parley"|"bare", "clients": [{"index": g, "url": ..., "origin": ..., "cookie": ...|null}]}
    ->      {"ready": true, "connected": n, "failed": [...]}
    run     {"cmd": "run", "step": k, "rate": msg/s, "senders": s, "start": monotonic, "warmup": s,
             "duration": s, "drain": s}
    ->      {"step": k, "sent": n, "latencies_ms": [...], "errors": {...}, "closed": n}
    quit    {"cmd": "quit"}

Global client `g` with g < senders is sender `g`; sender k sends at
start + (k + j * senders) / rate, so all senders together make an even `rate`.
The send time (CLOCK_MONOTONIC, shared by every process of the machine) is in
the message text; a receipt is timed by looking for that marker in the raw
frame, without parsing the JSON, which keeps the generator's own cost low.
"""

import asyncio
import json
import re
import sys
import time
from collections import Counter

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

MARKER = re.compile(r"@@(\d+):(\d):(\d+)@@")
CONNECT_TIMEOUT = 20.0
CONNECT_CONCURRENCY = 8


class Client:
    def __init__(self, index: int, url: str, cookie: str | None, origin: str, proto: str) -> None:
        self.index = index
        self.url = url
        self.cookie = cookie
        self.origin = origin
        self.proto = proto
        self.ws = None
        self.seq = 0

    async def open(self) -> None:
        headers = {"Cookie": f"sessionid={self.cookie}"} if self.cookie else {}
        self.ws = await asyncio.wait_for(
            connect(self.url, origin=self.origin, additional_headers=headers, max_size=2**20, compression=None),
            CONNECT_TIMEOUT,
        )

    def frame(self, step: int, measured: bool) -> str:
        self.seq += 1
        text = f"@@{step}:{int(measured)}:{time.monotonic_ns()}@@ hello from client {self.index}"
        if self.proto == "bare":
            return json.dumps({"message": text})
        return json.dumps({"type": "message", "text": text, "client_id": f"b{self.index}-{step}-{self.seq}"})


class Generator:
    def __init__(self, config: dict) -> None:
        self.proto = config["proto"]
        self.clients = [Client(c["index"], c["url"], c.get("cookie"), c["origin"], self.proto)
                        for c in config["clients"]]
        self.step = -1
        self.latencies: list[float] = []
        self.errors: Counter = Counter()
        self.closed = 0
        self.last_frame = time.monotonic()
        self.readers: list[asyncio.Task] = []

    async def connect_all(self) -> dict:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        failed = []

        async def one(client: Client) -> None:
            async with gate:
                try:
                    await client.open()
                except Exception as exc:  # reported to the driver, which decides
                    failed.append(f"{client.index}: {exc!r}"[:200])

        await asyncio.gather(*(one(c) for c in self.clients))
        self.readers = [asyncio.create_task(self.read(c)) for c in self.clients if c.ws is not None]
        return {"ready": True, "connected": len(self.readers), "failed": failed}

    async def read(self, client: Client) -> None:
        try:
            async for frame in client.ws:
                now = time.monotonic_ns()
                self.last_frame = time.monotonic()
                match = MARKER.search(frame)
                if match is None:
                    if '"error"' in frame:
                        self.errors[json.loads(frame).get("code", "?")] += 1
                    continue
                if int(match[1]) == self.step and match[2] == "1":
                    self.latencies.append(round((now - int(match[3])) / 1e6, 2))
        except ConnectionClosed as exc:
            self.errors[f"closed_{exc.rcvd.code if exc.rcvd else 'abnormal'}"] += 1
        finally:
            self.closed += 1

    async def quiet(self, seconds: float, limit: float) -> None:
        """Wait until no frame arrived for `seconds`, at most `limit` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self.last_frame < seconds:
            await asyncio.sleep(0.05)

    async def run(self, cmd: dict) -> dict:
        self.step, self.latencies, self.errors = cmd["step"], [], Counter()
        rate, senders, start = cmd["rate"], cmd["senders"], cmd["start"]
        warmup, duration = cmd["warmup"], cmd["duration"]
        end = start + warmup + duration
        mine = [c for c in self.clients if c.index < senders and c.ws is not None]
        sent = Counter()

        async def send_loop(client: Client) -> None:
            j = 0
            while True:  # bounded: stops at `end`
                at = start + (client.index + j * senders) / rate
                if at >= end:
                    return
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                measured = at >= start + warmup
                try:
                    await client.ws.send(client.frame(self.step, measured))
                except ConnectionClosed:
                    return
                sent["measured" if measured else "warmup"] += 1
                j += 1

        await asyncio.gather(*(send_loop(c) for c in mine))
        await asyncio.sleep(0.2)
        await self.quiet(1.0, cmd["drain"])
        return {"step": self.step, "sent": sent["measured"], "latencies_ms": self.latencies,
                "errors": dict(self.errors), "closed": self.closed}

    async def close(self) -> None:
        for client in self.clients:
            if client.ws is not None:
                await client.ws.close()
        for reader in self.readers:
            reader.cancel()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(payload: dict) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    generator = Generator(json.loads(await reader.readline()))
    answer(await generator.connect_all())
    await generator.quiet(0.5, 15.0)  # presence and join frames of the connects
    answer({"settled": True})
    while line := await reader.readline():  # EOF (driver gone) ends us too
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        answer(await generator.run(cmd))
    await asyncio.wait_for(generator.close(), 10)


if __name__ == "__main__":
    asyncio.run(main())
