"""Scale-out, end to end: 2 daphne and 3 runworker processes on one Redis and one PostgreSQL.

Clients spread over both daphnes see every message once, in the same id order;
presence holds across processes; tasks spread over all workers; and when one
daphne is SIGKILLed its clients reconnect to the other, sync from their last id
and lose nothing, while the dead process's presence expires.
"""

import asyncio
import json
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOM = "scale"
USERS = [f"user{i}" for i in range(6)]
PRESENCE_TTL = 3.0  # seconds: lets the killed daphne's presence expire within the test

SETUP = """
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from chat.models import Room
Room.objects.create(label=%(room)r)
keys = {}
for handle in %(users)r:
    user = get_user_model().objects.create_user(handle)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    keys[handle] = session.session_key
print(json.dumps(keys))
"""


class ChatClient:
    """A browser-like client: one socket, frames collected by type, messages by id."""

    def __init__(self, handle: str, cookie: str) -> None:
        self.handle, self.cookie = handle, cookie
        self.port: int | None = None
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.message_ids: list[int] = []  # in arrival order, duplicates kept: they must not happen
        self.frames: list[dict] = []
        self.synced = asyncio.Event()

    async def open(self, port: int) -> dict:
        """Connect to the daphne on `port`; returns the presence frame."""
        self.port = port
        self.ws = await connect(
            f"ws://127.0.0.1:{port}/chat/{ROOM}/",
            origin=f"http://127.0.0.1:{port}",
            additional_headers={"Cookie": f"sessionid={self.cookie}"},
            open_timeout=10,
        )
        presence = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert presence["type"] == "presence", presence
        self.reader = asyncio.create_task(self.read())
        return presence

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                if frame["type"] == "message":
                    self.message_ids.append(frame["id"])
                elif frame["type"] == "synced":
                    self.synced.set()
        except ConnectionClosed:
            pass

    async def send(self, text: str, client_id: str) -> None:
        await self.ws.send(json.dumps({"type": "message", "text": text, "client_id": client_id}))

    async def sync(self) -> None:
        self.synced.clear()
        after = max(self.message_ids, default=0)
        await self.ws.send(json.dumps({"type": "sync", "after": after}))
        await asyncio.wait_for(self.synced.wait(), 10)

    def saw(self, type_: str, handle: str) -> bool:
        return any(f["type"] == type_ and f.get("handle") == handle for f in self.frames)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 5)


async def until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout:.0f}s")
        await asyncio.sleep(0.05)


def id_orders(clients: list[ChatClient]) -> set[tuple[int, ...]]:
    return {tuple(sorted(c.message_ids)) for c in clients}


async def test_two_daphnes_three_workers(stack, tmp_path: Path):
    stack.env["CHAT_PRESENCE_TTL"] = str(PRESENCE_TTL)
    cookies = json.loads(stack.manage("shell", "--no-imports", "-c", SETUP % {"room": ROOM, "users": USERS}).stdout)
    (doomed, doomed_port), (_, survivor_port) = stack.daphne(), stack.daphne()
    workers = [stack.runworker() for _ in range(3)]
    wait_until(
        lambda: sum("event=worker_started" in p.read_text() for p in stack.log_dir.glob("worker-*.log")) == 3,
        timeout=30, message="three workers started",
    )  # fmt: skip

    # Tasks first: they run while the chat part goes on.
    marks = tmp_path / "marks.txt"
    marks.touch()
    enqueue = (
        "from tests.sample_tasks import slow_mark; import json; "
        f"print(json.dumps([slow_mark.enqueue({str(marks)!r}, str(i), 0.5).id for i in range(12)]))"
    )
    enqueued = asyncio.create_task(asyncio.to_thread(stack.manage, "shell", "--no-imports", "-c", enqueue))

    clients = [ChatClient(handle, cookies[handle]) for handle in USERS]
    try:
        # user0, 2, 4 on the doomed daphne; user1, 3, 5 on the survivor.
        for i, client in enumerate(clients):
            presence = await client.open(doomed_port if i % 2 == 0 else survivor_port)
            assert presence["handles"] == sorted(USERS[: i + 1]), presence
        # Joins cross processes: the first client heard everyone after it arrive.
        await until(lambda: all(clients[0].saw("join", h) for h in USERS[1:]), 10, "joins")

        # Every client sends 3 messages; everyone sees all 18, each once, same id order.
        for round_ in range(3):
            for client in clients:
                await client.send(f"{client.handle} says {round_}", f"{client.handle}-{round_}")
        await until(lambda: all(len(c.message_ids) >= 18 for c in clients), 20, "18 messages everywhere")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up now
        for client in clients:
            assert len(client.message_ids) == len(set(client.message_ids)) == 18, (client.handle, client.message_ids)
        assert len(id_orders(clients)) == 1
        # One sender's messages arrive in the order sent, everywhere.
        for client in clients:
            by_id = {f["id"]: f for f in client.frames if f["type"] == "message"}
            for sender in USERS:
                texts = [by_id[i]["text"] for i in client.message_ids if by_id[i]["handle"] == sender]
                assert texts == [f"{sender} says {r}" for r in range(3)], (client.handle, sender, texts)

        # SIGKILL one daphne: its clients drop, the others go on talking meanwhile.
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        orphans, stayers = clients[0::2], clients[1::2]
        for client in orphans:
            await asyncio.wait_for(client.reader, 10)
        for n, client in enumerate(stayers):
            await client.send(f"{client.handle} while they were away", f"{client.handle}-away-{n}")
        await until(lambda: all(len(c.message_ids) >= 21 for c in stayers), 10, "messages sent while away")

        # The orphans reconnect to the survivor (user4 never comes back) and sync.
        gone = orphans.pop()
        for client in orphans:
            presence = await client.open(survivor_port)
            assert client.handle in presence["handles"]
            await client.sync()
        for client in orphans:
            assert len(client.message_ids) == len(set(client.message_ids)) == 21, (client.handle, client.message_ids)
        assert len(id_orders([*orphans, *stayers])) == 1

        # The dead process's sockets expire: user4's leave is announced, nobody else's.
        await until(lambda: stayers[0].saw("leave", gone.handle), PRESENCE_TTL * 4, "leave of the vanished user")
        late = ChatClient(gone.handle, gone.cookie)
        presence = await late.open(survivor_port)
        assert presence["handles"] == sorted(USERS), presence
        await late.close()
        for handle in USERS:
            assert stayers[0].saw("leave", handle) == (handle == gone.handle), handle
    finally:
        for client in clients:
            await client.close()

    # Every task ran once, and all three workers took some.
    task_ids = json.loads((await enqueued).stdout)

    def ends() -> list[str]:
        return [line.split()[1] for line in marks.read_text().splitlines() if line.startswith("end")]

    await until(lambda: len(ends()) >= 12, 30, "12 tasks ended")
    assert sorted(ends()) == sorted(str(i) for i in range(12))
    check = (
        "import json; from tests.sample_tasks import slow_mark; "
        f"rs = [slow_mark.get_result(i) for i in {task_ids!r}]; "
        "print(json.dumps([[r.status, r.worker_ids] for r in rs]))"
    )
    rows = json.loads((await asyncio.to_thread(stack.manage, "shell", "--no-imports", "-c", check)).stdout)
    assert all(status == "SUCCESSFUL" and len(worker_ids) == 1 for status, worker_ids in rows), rows
    assert len({worker_ids[0] for _, worker_ids in rows}) == 3, rows
    assert all(w.poll() is None for w in workers)
