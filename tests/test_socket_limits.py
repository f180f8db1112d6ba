"""Limits no client can talk a socket out of (issue 17): presence that no failure leaves behind, syncs that
cannot amplify or silence, a cap on sockets per user; and, with real daphne processes, the output bound
(4408) and the 1009 close of an oversized frame."""

import asyncio
import base64
import json
import os
import socket
from pathlib import Path

import pytest
import websockets
from channels.db import database_sync_to_async

from chat import protocol
from chat.models import RATE_LIMIT_COUNT, Message, Presence
from chat.protocol import SYNC_MAX_BYTES
from project.sockets import frame_schema
from tests.chat_helpers import (  # noqa: F401 (fixtures: ann, bob, their cookies, lobby, fresh_channel_layer)
    ann,
    ann_cookie,
    bob,
    bob_cookie,
    fresh_channel_layer,
    join,
    lobby,
    next_of,
    refused_with,
    send,
    session_cookie,
)
from tests.test_e2e_chat import connect, open_room, sign_up
from tests.test_e2e_chat import next_of as next_of_e2e

__all__ = ["fresh_channel_layer"]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]


@pytest.fixture
def failing_frame():
    """A frame type whose handler fails as a bug would (registered as apps register theirs)."""

    async def on_boom(consumer, frame):
        raise RuntimeError("a handler's bug")

    protocol.register("test.boom", frame_schema("test.boom"), on_boom)
    yield "test.boom"
    del protocol.handlers["test.boom"], protocol.validators["test.boom"]


# --- item 3: no ghost -----------------------------------------------------------------------


async def test_a_failing_handler_is_answered_with_server_error_and_the_socket_lives_on(
    lobby, ann_cookie, failing_frame, caplog
):
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": failing_frame})
    error = await next_of(a, "error")
    assert error["code"] == "server_error"
    assert "event=ws_frame_failed" in caplog.text and "a handler's bug" in caplog.text  # the traceback, logged
    await send(a, {"type": "message", "text": "still here", "client_id": "m1"})
    assert (await next_of(a, "message"))["text"] == "still here"
    await a.disconnect()
    assert not await Presence.objects.aexists()


async def test_a_killed_consumer_leaves_no_presence_and_others_see_it_leave(lobby, ann_cookie, bob_cookie):
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    while (await next_of(a, "join"))["handle"] != "bob":  # ann's own join comes first
        pass
    # The handler dies without daphne ever reporting a close: disconnect() never runs.
    b.future.cancel()
    assert await next_of(a, "leave") == {"type": "leave", "handle": "bob"}
    assert await Presence.objects.filter(user__username="bob").acount() == 0
    assert await Presence.objects.acount() == 1  # ann's own
    await a.disconnect()
    assert not await Presence.objects.aexists()


# --- item 2 and 7: sync -----------------------------------------------------------------------


async def test_syncs_are_rate_limited_like_messages(lobby, ann_cookie):
    a, _ = await join("lobby", ann_cookie)
    for _ in range(RATE_LIMIT_COUNT + 1):
        await send(a, {"type": "sync", "after": 0})
    answers = []
    while len(answers) < RATE_LIMIT_COUNT + 1:
        frame = await a.receive_json_from(timeout=5)
        if frame["type"] in {"synced", "error"}:
            answers.append(frame)
    assert [f["type"] for f in answers] == ["synced"] * RATE_LIMIT_COUNT + ["error"]
    assert answers[-1]["code"] == "rate_limited" and "client_id" not in answers[-1]
    assert answers[-1]["after"] == 0  # the browser syncs again from there
    await a.disconnect()


async def test_sync_after_an_id_beyond_the_last_does_not_silence_live_messages(lobby, ann, ann_cookie, bob_cookie):
    await database_sync_to_async(Message.objects.create)(room=lobby, user=ann, text="old", client_id="old")
    latest = await Message.objects.values_list("id", flat=True).alast()
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "sync", "after": 10**12})
    assert await next_of(a, "synced") == {"type": "synced", "last_id": latest, "more": False}
    b, _ = await join("lobby", bob_cookie)
    await send(b, {"type": "message", "text": "live", "client_id": "b1"})
    assert (await next_of(a, "message", timeout=3))["text"] == "live"
    await a.disconnect()
    await b.disconnect()


async def test_a_sync_page_stops_at_sync_max_bytes_and_says_more(lobby, ann, ann_cookie):
    """A page is written to the socket at once: it must stay well under the unsent bound (4408)."""

    def fill() -> None:
        Message.objects.bulk_create(
            [Message(room=lobby, user=ann, text="x" * 4000, client_id=f"c{i}") for i in range(400)]
        )

    await database_sync_to_async(fill)()
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "sync", "after": 0})
    size, count = 0, 0
    while (frame := json.loads(text := (await a.receive_output(timeout=5))["text"]))["type"] != "synced":
        if frame["type"] == "message":  # not ann's own join
            size, count = size + len(text.encode()), count + 1
    synced = frame
    assert 0 < count < 400 and synced["more"] is True
    assert size <= SYNC_MAX_BYTES
    assert synced["last_id"] == await Message.objects.order_by("id").values_list("id", flat=True)[count - 1 : count].aget()
    await a.disconnect()


# --- item 7: sockets per user -----------------------------------------------------------------


async def test_sockets_per_user_are_capped_with_4409(settings, lobby, ann_cookie, bob_cookie):
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    first, _ = await join("lobby", ann_cookie)
    second, _ = await join("lobby", ann_cookie)
    assert await refused_with("lobby", ann_cookie) == 4409
    assert await Presence.objects.acount() == 2  # the refused socket left nothing behind
    other, _ = await join("lobby", bob_cookie)  # a cap per user, not per room
    await first.disconnect()
    third, _ = await join("lobby", ann_cookie)  # a socket closed frees its place
    for socket in (second, third, other):
        await socket.disconnect()
    assert not await Presence.objects.aexists()


# --- with real daphne processes ------------------------------------------------------------------

SYNC_FRAMES = 200
ROOM_MESSAGES = 500


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def masked_frame(text: str) -> bytes:
    """A client's WebSocket text frame (RFC 6455: client frames are masked)."""
    payload, mask = text.encode(), os.urandom(4)
    size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return b"\x81" + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_raw_socket(port: int, cookie: str, label: str) -> socket.socket:
    """A WebSocket that will never read: a small receive buffer, the handshake, and nothing more."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    raw.sendall(
        f"GET /chat/{label}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://127.0.0.1:{port}\r\nCookie: sessionid={cookie}\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += raw.recv(1)  # byte by byte: nothing after the headers is read
    assert response.startswith(b"HTTP/1.1 101"), response
    return raw


def fill_room(stack, label: str, handle: str) -> None:
    code = (
        "from chat.models import Message, Room; from accounts.models import User;"
        f"r = Room.objects.get(label='{label}'); u = User.objects.get(username='{handle}');"
        f"Message.objects.bulk_create([Message(room=r, user=u, text='x' * 4000, client_id=f'c{{i}}')"
        f" for i in range({ROOM_MESSAGES})])"
    )
    stack.manage("shell", "-c", code)


@pytest.mark.e2e
async def test_an_oversized_frame_is_closed_with_1009_by_daphne(stack):
    _, port = stack.daphne()
    ann = sign_up(port, "ann")
    open_room(port, ann, "lobby")
    socket_ = await connect(port, ann, "lobby")
    await next_of_e2e(socket_, "presence")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await socket_.send(json.dumps({"type": "message", "text": "x" * 70_000, "client_id": "big"}))
        await next_of_e2e(socket_, "error")  # what we would get if daphne let it through
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


@pytest.mark.e2e
async def test_a_client_that_never_reads_is_closed_with_4408_and_daphne_gives_the_memory_back(stack):
    """200 syncs of after=0 on a room of 500 messages of 4,000 characters (~2 MB of output each), never read."""
    stack.env["CHAT_MAX_UNSENT_BYTES"] = str(2 * 1024 * 1024)  # over one sync page (SYNC_MAX_BYTES)
    daphne, port = stack.daphne()
    ann, bob = sign_up(port, "ann"), sign_up(port, "bob")
    open_room(port, ann, "big")
    await asyncio.to_thread(fill_room, stack, "big", "ann")
    # Warm up (a sync read in full), so the baseline has what any socket costs.
    reader = await connect(port, ann, "big")
    await reader.send(json.dumps({"type": "sync", "after": 0}))
    await next_of_e2e(reader, "synced")
    await reader.close()
    await asyncio.sleep(1)
    before = rss_mb(daphne.pid)

    raw = open_raw_socket(port, ann, "big")
    raw.sendall(b"".join(masked_frame('{"type":"sync","after":0}') for _ in range(SYNC_FRAMES)))
    peak, log = before, stack.log_dir
    async with asyncio.timeout(30):
        while "event=ws_unsent_overflow" not in "".join(p.read_text() for p in log.glob("daphne-*.log")):
            peak = max(peak, rss_mb(daphne.pid))
            await asyncio.sleep(0.05)
    # Closed: its presence went with it (bob sees only himself), while the client still reads nothing.
    async with asyncio.timeout(10):
        while True:
            watcher = await connect(port, bob, "big")
            handles = (await next_of_e2e(watcher, "presence"))["handles"]
            await watcher.close()
            if handles == ["bob"]:
                break
            peak = max(peak, rss_mb(daphne.pid))
            await asyncio.sleep(0.2)
    raw.close()
    await asyncio.sleep(2)
    after = rss_mb(daphne.pid)
    print(f"daphne RSS MB: before {before:.1f}, peak during {peak:.1f}, after {after:.1f}")
    assert "code=4408" in "".join(p.read_text() for p in log.glob("daphne-*.log"))
    assert peak - before < 64, (before, peak, after)  # unbounded, it grew by hundreds of MB
    assert after - before < 32, (before, peak, after)
