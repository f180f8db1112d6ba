"""Edits, deletes, reactions and replies on two real daphnes: an offline client comes back to the final state.

Real processes: two daphnes, a `runworker compute` for the export, PostgreSQL, Redis.
"""

import asyncio
import json

import psycopg
import pytest

from tests.processes import wait_until
from tests.test_e2e_chat import connect, next_of, open_room, sign_up

pytestmark = pytest.mark.e2e

PRESENCE_TTL = 3  # seconds: a heartbeat every second

CHANGE_UNBROADCAST = """
from accounts.models import User
from chat import edits
from chat.models import Message, Room
room = Room.objects.get(label="lobby")
edits.edit_message(room, User.objects.get(username="ann"), Message.objects.get(client_id="a-3").pk, "edited unseen")
"""


class Client:
    """What a client keeps: one frame per message id, replaced only by a newer change, and the last seq."""

    def __init__(self) -> None:
        self.messages: dict[int, dict] = {}
        self.last_id = 0
        self.last_seq = 0

    def take(self, frame: dict) -> None:
        if frame["type"] == "message":
            known = self.messages.get(frame["id"])
            if known is None or known.get("seq", 0) < frame.get("seq", 0):
                self.messages[frame["id"]] = frame
            self.last_id = max(self.last_id, frame["id"])
        elif frame["type"] == "change":
            self.last_seq = max(self.last_seq, frame["seq"])
            known = self.messages.get(frame["message"]["id"])
            if known is not None and known.get("seq", 0) < frame["seq"]:
                self.messages[frame["message"]["id"]] = frame["message"]
        elif frame["type"] == "synced":
            self.last_seq = max(self.last_seq, frame.get("last_seq", 0))

    async def sync(self, socket) -> None:
        """Sync until `synced` without more, taking live frames on the way."""
        more = True
        while more:
            await socket.send(json.dumps({"type": "sync", "after": self.last_id, "changes_after": self.last_seq}))
            async with asyncio.timeout(10):
                while (frame := json.loads(await socket.recv()))["type"] != "synced":
                    self.take(frame)
            self.take(frame)
            more = frame["more"]

    async def take_for(self, socket, seconds: float) -> None:
        """Take whatever comes for `seconds` (live broadcasts, heartbeat catch-ups)."""
        try:
            async with asyncio.timeout(seconds):
                while True:
                    self.take(json.loads(await socket.recv()))
        except TimeoutError:
            pass


async def send(socket, frame: dict) -> None:
    await socket.send(json.dumps(frame))


async def test_an_offline_client_reconnects_to_the_final_state_on_another_daphne(stack, tmp_path):
    media = tmp_path / "media"
    stack.env.update(CHAT_PRESENCE_TTL=str(PRESENCE_TTL), MEDIA_ROOT=str(media))
    _, port_a = stack.daphne()
    _, port_b = stack.daphne()
    ann = sign_up(port_a, "ann")
    bob = sign_up(port_b, "bob")
    open_room(port_a, ann, "lobby")  # ann makes the lobby: she moderates it

    ann_ws = await connect(port_a, ann, "lobby")
    bob_ws = await connect(port_b, bob, "lobby")
    bob_view = Client()
    await bob_view.sync(bob_ws)
    for n in range(1, 5):
        await send(ann_ws, {"type": "message", "text": f"ann {n} secret-{n}", "client_id": f"a-{n}"})
    await send(bob_ws, {"type": "message", "text": "bob's own", "client_id": "b-1"})
    await bob_view.take_for(bob_ws, 1.5)
    ids = {m["client_id"]: i for i, m in bob_view.messages.items()}
    assert len(ids) == 5

    # A lost broadcast of a change (stored by another process, never published): the heartbeat brings it.
    stack.manage("shell", "-c", CHANGE_UNBROADCAST)
    await bob_view.take_for(bob_ws, 2.5)
    assert bob_view.messages[ids["a-3"]]["text"] == "edited unseen"

    # bob goes offline; ann edits, deletes, reacts and replies meanwhile, on the other daphne.
    await bob_ws.close()
    await send(ann_ws, {"type": "edit", "id": ids["a-1"], "text": "ann 1, edited"})
    await send(ann_ws, {"type": "edit", "id": ids["a-1"], "text": "ann 1, edited twice"})
    await send(ann_ws, {"type": "delete", "id": ids["a-2"]})
    await send(ann_ws, {"type": "delete", "id": ids["b-1"]})  # moderation: the lobby is hers
    await send(ann_ws, {"type": "react", "id": ids["a-4"], "emoji": "🎉"})
    await send(ann_ws, {"type": "react", "id": ids["a-4"], "emoji": "👍"})
    await send(ann_ws, {"type": "react", "id": ids["a-4"], "emoji": "🎉"})  # taken back
    await send(ann_ws, {"type": "message", "text": "in the thread", "client_id": "r-1", "parent": ids["a-1"]})
    await send(ann_ws, {"type": "message", "text": "also in the room", "client_id": "r-2", "parent": ids["a-1"], "to_room": True})
    await send(ann_ws, {"type": "message", "text": "reply to delete", "client_id": "r-3", "parent": ids["a-4"]})
    async with asyncio.timeout(10):
        while (frame := json.loads(await ann_ws.recv())).get("client_id") != "r-3":
            pass
    await send(ann_ws, {"type": "delete", "id": frame["id"]})
    await next_of(ann_ws, "change")

    # bob comes back on the other daphne and syncs from what he had.
    bob_ws = await connect(port_a, bob, "lobby")
    await bob_view.sync(bob_ws)
    await bob_view.take_for(bob_ws, 1)

    # A client new to the room (everything from the start) sees the same state.
    fresh = Client()
    fresh_ws = await connect(port_b, bob, "lobby")
    await fresh.sync(fresh_ws)
    assert bob_view.messages == fresh.messages
    final = bob_view.messages
    assert final[ids["a-1"]]["text"] == "ann 1, edited twice" and "edited" in final[ids["a-1"]]
    assert final[ids["a-1"]]["replies"] == 2
    assert final[ids["a-2"]]["deleted"] and final[ids["a-2"]]["text"] == ""
    assert final[ids["b-1"]]["deleted"]
    assert final[ids["a-4"]]["reactions"] == [["👍", ["ann"]]]
    assert "replies" not in final[ids["a-4"]]  # its only reply was deleted: no thread left to show
    replies = [m for m in final.values() if m.get("parent") == ids["a-1"]]
    assert [(m["text"], m.get("to_room", False)) for m in replies] == [("in the thread", False), ("also in the room", True)]

    # The deleted text is gone from the database, and from an export made afterwards.
    db = psycopg.connect(stack.env["DATABASE_URL"], autocommit=True)
    found = db.execute(
        "SELECT (SELECT count(*) FROM chat_message WHERE text LIKE '%%secret-2%%')"
        " + (SELECT count(*) FROM chat_messageversion WHERE text LIKE '%%secret-2%%')"
    ).fetchone()[0]
    assert found == 0
    stack.runworker("compute")
    await send(ann_ws, {"type": "export", "format": "jsonl"})
    async with asyncio.timeout(60):
        while (progress := await next_of(ann_ws, "export.progress", timeout=60))["status"] != "done":
            pass
    name = db.execute("SELECT file FROM reports_job WHERE id = %s", [progress["job"]]).fetchone()[0]
    wait_until(lambda: (media / name).exists(), timeout=10, message="the export's file")
    exported = [json.loads(line) for line in (media / name).read_text(encoding="utf-8").splitlines()]
    texts = [row["text"] for row in exported]
    assert "ann 1, edited twice" in texts and "ann 4 secret-4" in texts
    assert not [t for t in texts if "secret-2" in t or t == ""]
    assert ids["a-2"] not in [row["id"] for row in exported]
    for socket in (ann_ws, bob_ws, fresh_ws):
        await socket.close()
