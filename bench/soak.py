"""Soak: minutes of chat and tasks on 2 daphne + 2 workers, with a worker SIGKILLed and Redis restarted.

    make soak                                  # 10 minutes
    .venv/bin/python bench/soak.py --minutes 3
    .venv/bin/python bench/soak.py --smoke     # 1 minute

Clients behave like Parley's browser client: an outbox resent (same client_id)
until the server echoes the message, reconnect with backoff and jitter, and
`sync` from the last id after every reconnect. A task stream runs alongside
(tests.sample_tasks.slow_mark). At 30% of the run one worker is SIGKILLed and a
new one started; at 60% Redis is killed and started again on the same port
(it keeps nothing: groups and queued bells are gone).

At the end it checks, and prints with a JSON line: every message was persisted
once and reached every client (live, or via the sync each client sends after
every connect, as the browser client does), every task finished
exactly once, and each process's memory (RSS) is flat after warm-up: the mean of
the last third of the samples within 10% (and 15 MB) of the first third's.
"""

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from bench.common import OUT_DIR, arg_parser, emit, print_table, servers, spawn, stop  # noqa: E402
from bench.fanout import PARLEY_ENV, ROOM, prepare_parley  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

PY = sys.executable
CLIENTS = 20
SENDERS = 10
MSG_RATE = 5.0  # messages/s in all, 0.5/s per sender: well under the rate limit
TASK_RATE = 2.0  # tasks/s
TASK_SECONDS = 0.2
RSS_EVERY = 5.0
RSS_GROWTH_ALLOWED = 0.10
RSS_SLACK_BYTES = 15 * 2**20


@dataclass
class SoakClient:
    """One logged-in user with one socket, reconnecting like the browser client."""

    handle: str
    cookie: str
    ports: list[int]
    live: set[int] = field(default_factory=set)
    via_sync: set[int] = field(default_factory=set)
    outbox: dict[str, tuple[str, float]] = field(default_factory=dict)  # client_id -> (text, last sent)
    intended: list[str] = field(default_factory=list)
    reconnects: int = 0
    ws: object = None

    @property
    def received(self) -> set[int]:
        return self.live | self.via_sync

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            port = self.ports[0] if failures < 3 else random.choice(self.ports)
            try:
                await self.session(port, stopping)
                failures = 0
            except Exception:  # refused, reset, timed out, server gone: all mean "try again"
                failures += 1
            if stopping.is_set():
                return
            self.reconnects += 1
            # Exponential backoff with jitter, capped: what the browser client does.
            await asyncio.sleep(min(3.0, 0.2 * 2 ** min(failures, 4)) * random.uniform(0.5, 1.0))

    async def session(self, port: int, stopping: asyncio.Event) -> None:
        async with connect(
            f"ws://127.0.0.1:{port}/chat/{ROOM}/", origin=f"http://127.0.0.1:{port}",
            additional_headers={"Cookie": f"sessionid={self.cookie}"}, open_timeout=10, close_timeout=2,
        ) as ws:  # fmt: skip
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if first.get("type") != "presence":
                raise ConnectionClosed(None, None)
            self.ws = ws
            try:
                # Like the browser client, after every connect: what was stored before we connected.
                await ws.send(json.dumps({"type": "sync", "after": max(self.received, default=0)}))
                syncing = True
                for client_id, (text, _) in list(self.outbox.items()):
                    await self.send(client_id, text)
                while not stopping.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                    except TimeoutError:
                        await self.resend_stale()
                        continue
                    kind = frame.get("type")
                    if kind == "message":
                        (self.via_sync if syncing else self.live).add(frame["id"])
                        if frame["handle"] == self.handle:
                            self.outbox.pop(frame["client_id"], None)
                    elif kind == "synced":
                        if frame["more"]:
                            await ws.send(json.dumps({"type": "sync", "after": frame["last_id"]}))
                        else:
                            syncing = False
            finally:
                self.ws = None

    async def send(self, client_id: str, text: str) -> None:
        self.outbox[client_id] = (text, time.monotonic())
        if self.ws is not None:
            try:
                await self.ws.send(json.dumps({"type": "message", "text": text, "client_id": client_id}))
            except ConnectionClosed:
                pass  # stays in the outbox; resent after the reconnect

    async def resend_stale(self) -> None:
        for client_id, (text, sent_at) in list(self.outbox.items()):
            if time.monotonic() - sent_at > 5.0:
                await self.send(client_id, text)

    async def post(self, n: int) -> None:
        client_id = f"{self.handle}-{n}"
        self.intended.append(client_id)
        await self.send(client_id, f"soak message {n} from {self.handle}")


async def chat(clients: list[SoakClient], seconds: float) -> None:
    stopping = asyncio.Event()
    runners = [asyncio.create_task(c.run(stopping)) for c in clients]
    senders = clients[:SENDERS]
    start = time.monotonic()
    n = 0
    while (at := start + n / MSG_RATE) < start + seconds:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        await senders[n % len(senders)].post(n)
        n += 1
    # Let outboxes empty (a resend every 5 s) and the last deliveries arrive.
    deadline = time.monotonic() + 30
    while any(c.outbox for c in senders) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)
    stopping.set()
    await asyncio.wait_for(asyncio.gather(*runners, return_exceptions=True), 15)


def task_stream(marks: Path, seconds: float, ids: list[str]) -> None:
    """Enqueue slow_mark tasks at TASK_RATE for `seconds` (runs in a thread; the ORM is sync)."""
    from django.db import close_old_connections

    from tests.sample_tasks import slow_mark

    start = time.monotonic()
    n = 0
    while (at := start + n / TASK_RATE) < start + seconds:
        time.sleep(max(0.0, at - time.monotonic()))
        try:
            ids.append(slow_mark.enqueue(str(marks), str(n), TASK_SECONDS).id)
        except Exception as exc:  # the database is not what the soak breaks; say so and stop
            print(f"enqueue failed: {exc!r}", file=sys.stderr)
            raise
        n += 1
    close_old_connections()


class Sampler(threading.Thread):
    """RSS of every named process every RSS_EVERY seconds."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self.done = threading.Event()

    def watch(self, name: str, proc: subprocess.Popen) -> None:
        self.procs[name] = proc
        self.samples.setdefault(name, [])

    def forget(self, name: str) -> None:
        self.procs.pop(name, None)

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.wait(RSS_EVERY):
            for name, proc in list(self.procs.items()):
                try:
                    self.samples[name].append((time.monotonic() - start, psutil.Process(proc.pid).memory_info().rss))
                except psutil.NoSuchProcess:
                    pass


def flat(samples: list[tuple[float, int]], warmup: float) -> tuple[float, float, bool]:
    """(first-third MB, last-third MB, flat?) of the samples taken `warmup` seconds after the process's first."""
    values = [rss for t, rss in samples if samples and t >= samples[0][0] + warmup]
    if len(values) < 6:
        return float("nan"), float("nan"), True
    third = len(values) // 3
    first, last = sum(values[:third]) / third, sum(values[-third:]) / third
    ok = last - first <= max(RSS_GROWTH_ALLOWED * first, RSS_SLACK_BYTES)
    return first / 2**20, last / 2**20, ok


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--variant", choices=["pubsub", "core"], default="pubsub",
                        help="Parley as shipped (pubsub), or on the core layer (CHANNEL_LAYER=core)")
    args = parser.parse_args()
    seconds = 60.0 if args.smoke else args.minutes * 60
    log_dir = OUT_DIR / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)
    marks = log_dir / "marks.txt"
    marks.touch()

    with servers(durable=True) as (redis, postgres):
        env, cookies = prepare_parley(redis, postgres, CLIENTS, log_dir)
        env["LOG_LEVEL"] = "INFO"
        env.update(PARLEY_ENV[args.variant])
        sampler = Sampler()
        procs: list[subprocess.Popen] = []

        def start(name: str, cmd: list[str]) -> subprocess.Popen:
            proc = spawn(cmd, env, log_dir / f"{name}.log")
            procs.append(proc)
            sampler.watch(name, proc)
            return proc

        try:
            ports = [free_port(), free_port()]
            for i, port in enumerate(ports):
                proc = start(f"daphne{i}", [PY, "-m", "project.webserver", "--bind", "127.0.0.1", "--port", str(port),
                                            "--websocket-max-message-size", "65536", "project.asgi:application"])  # fmt: skip
                wait_for_port(port, timeout=30, proc=proc)
            workers = [start(f"worker{i}", [PY, "manage.py", "runworker", "default", "compute"]) for i in range(2)]
            sampler.start()

            clients = [SoakClient(f"bench{i:04d}", cookie, ports[i % 2:] + ports[: i % 2])
                       for i, cookie in enumerate(cookies)]  # fmt: skip
            task_ids: list[str] = []
            tasks_thread = threading.Thread(target=task_stream, args=(marks, seconds, task_ids), daemon=True)
            events: list[str] = []

            def chaos() -> None:
                time.sleep(seconds * 0.3)
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait(10)
                sampler.forget("worker0")
                events.append(f"{time.strftime('%H:%M:%S')} worker0 SIGKILLed; worker2 started")
                start("worker2", [PY, "manage.py", "runworker", "default", "compute"])
                time.sleep(seconds * 0.3)
                redis.stop()
                events.append(f"{time.strftime('%H:%M:%S')} Redis killed")
                time.sleep(3)
                redis.start()
                events.append(f"{time.strftime('%H:%M:%S')} Redis started again (empty)")

            chaos_thread = threading.Thread(target=chaos, daemon=True)
            began = time.monotonic()
            tasks_thread.start()
            chaos_thread.start()
            asyncio.run(chat(clients, seconds))
            tasks_thread.join(30)
            chaos_thread.join(30)
            chat_seconds = time.monotonic() - began
            results = check(clients, task_ids, marks)
        finally:
            sampler.done.set()
            stop(procs)

    memory = []
    warmup = min(60.0, seconds * 0.2)
    for name, samples in sampler.samples.items():
        if name == "worker0":
            continue  # killed on purpose
        first, last, ok = flat(samples, warmup)
        memory.append([name, len(samples), first, last, ok])
    print_table(f"Soak ({args.variant}): {chat_seconds:.0f} s, {CLIENTS} clients on 2 daphnes, {MSG_RATE:g} msg/s, "
                f"{TASK_RATE:g} tasks/s on 2 workers", ["event"], [[e] for e in events])  # fmt: skip
    print_table("Chat and tasks", ["figure", "value"], [[k, v] for k, v in results.items()])
    print_table(f"Memory (RSS MB, after {warmup:.0f} s warm-up)", ["process", "samples", "first third",
                "last third", "flat"], memory)  # fmt: skip
    memory_flat = all(row[-1] for row in memory)
    ok = (results["messages_lost"] == 0 and results["deliveries_missing"] == 0 and results["tasks_not_finished"] == 0
          and results["tasks_finished_twice"] == 0 and memory_flat)  # fmt: skip
    emit({**results, "memory_flat": memory_flat, "seconds": round(chat_seconds), "ok": ok})
    sys.exit(0 if ok else 1)


def check(clients: list[SoakClient], task_ids: list[str], marks: Path) -> dict:
    from chat.models import Message
    from tasks.models import TaskRecord

    rows = dict(Message.objects.filter(room__label=ROOM).values_list("client_id", "id"))
    intended = [cid for c in clients for cid in c.intended]
    persisted = set(rows.values())
    missing = {c.handle: len(persisted - c.received) for c in clients}
    for c in clients:
        if persisted - c.received:
            gone = sorted(persisted - c.received)
            print(f"{c.handle} ({c.reconnects} reconnects) never received ids {gone} of 1..{max(persisted)}")
    never_reconnected = [c for c in clients if c.reconnects == 0]
    deadline = time.monotonic() + 60
    while True:  # the last tasks of the stream may still be running
        statuses = {str(k): v for k, v in TaskRecord.objects.filter(pk__in=task_ids).values_list("pk", "status")}
        if all(statuses.get(i) in {"SUCCESSFUL", "FAILED"} for i in task_ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    ends = [line.split()[1] for line in marks.read_text().splitlines() if line.startswith("end")]
    return {
        "messages_sent": len(intended),
        "messages_persisted": len(rows),
        "messages_lost": sum(1 for cid in intended if cid not in rows),
        "deliveries_expected": len(persisted) * len(clients),
        "deliveries_missing": sum(missing.values()),
        "deliveries_via_sync": sum(len(c.via_sync - c.live) for c in clients),
        "clients_reconnected": len(clients) - len(never_reconnected),
        "reconnects": sum(c.reconnects for c in clients),
        "tasks_enqueued": len(task_ids),
        "tasks_successful": sum(1 for s in statuses.values() if s == "SUCCESSFUL"),
        "tasks_not_finished": sum(1 for s in statuses.values() if s != "SUCCESSFUL") + len(set(task_ids) - set(statuses)),
        "tasks_finished_twice": len(ends) - len(set(ends)),
        "tasks_reclaimed": sum(1 for r in TaskRecord.objects.filter(pk__in=task_ids) if len(r.worker_ids) > 1),
    }  # fmt: skip


if __name__ == "__main__":
    main()
