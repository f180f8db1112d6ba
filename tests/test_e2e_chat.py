"""Two real daphne processes on one Redis and one PostgreSQL: the production shape of chat."""

import asyncio
import json
import signal

import pytest
import requests
import websockets

pytestmark = pytest.mark.e2e

PRESENCE_TTL = 3  # seconds; production default is 60


def sign_up(port: int, handle: str) -> str:
    """Sign up through the real form; returns the session cookie."""
    http = requests.Session()
    base = f"http://127.0.0.1:{port}"
    http.get(f"{base}/signup/", timeout=10).raise_for_status()
    response = http.post(
        f"{base}/signup/",
        data={"username": handle, "password1": "a long passphrase 42", "password2": "a long passphrase 42",
              "csrfmiddlewaretoken": http.cookies["csrftoken"]},
        headers={"Referer": f"{base}/signup/"}, allow_redirects=False, timeout=30,
    )  # fmt: skip
    assert response.status_code == 302, response.text[:500]
    return http.cookies["sessionid"]


def open_room(port: int, cookie: str, label: str) -> None:
    response = requests.get(f"http://127.0.0.1:{port}/{label}/", cookies={"sessionid": cookie}, timeout=10)
    assert response.status_code == 200


async def connect(port: int, cookie: str, label: str):
    return await websockets.connect(
        f"ws://127.0.0.1:{port}/chat/{label}/",
        additional_headers={"Origin": f"http://127.0.0.1:{port}", "Cookie": f"sessionid={cookie}"},
        open_timeout=10,
    )


async def next_of(socket, type_: str, timeout: float = 10) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await socket.recv())
            if frame["type"] == type_:
                return frame


async def test_two_daphnes_share_messages_and_presence_and_survive_a_crash(stack):
    stack.env["CHAT_PRESENCE_TTL"] = str(PRESENCE_TTL)
    daphne_a, port_a = stack.daphne()
    daphne_b, port_b = stack.daphne()
    ann = sign_up(port_a, "ann")
    bob = sign_up(port_b, "bob")
    open_room(port_a, ann, "lobby")

    ann_ws = await connect(port_a, ann, "lobby")
    assert await next_of(ann_ws, "presence") == {"type": "presence", "handles": ["ann"]}
    assert await next_of(ann_ws, "join") == {"type": "join", "handle": "ann"}  # her own arrival
    bob_ws = await connect(port_b, bob, "lobby")
    assert await next_of(bob_ws, "presence") == {"type": "presence", "handles": ["ann", "bob"]}
    assert await next_of(ann_ws, "join") == {"type": "join", "handle": "bob"}  # B -> Redis -> A

    # A message sent on A reaches B (and is stored once).
    await ann_ws.send(json.dumps({"type": "message", "text": "hello from A", "client_id": "a-1"}))
    on_b = await next_of(bob_ws, "message")
    on_a = await next_of(ann_ws, "message")
    assert on_b == on_a and on_b["text"] == "hello from A" and on_b["handle"] == "ann"
    # ...and one from B reaches A.
    await bob_ws.send(json.dumps({"type": "message", "text": "hi from B", "client_id": "b-1"}))
    assert (await next_of(ann_ws, "message"))["text"] == "hi from B"

    # bob's second tab, on the other process: still one presence, no second join.
    bob_tab2 = await connect(port_a, bob, "lobby")
    assert await next_of(bob_tab2, "presence") == {"type": "presence", "handles": ["ann", "bob"]}
    await bob_tab2.close()
    await ann_ws.send(json.dumps({"type": "sync", "after": on_a["id"]}))
    frames = []
    async with asyncio.timeout(10):
        while (frame := json.loads(await ann_ws.recv()))["type"] != "synced":
            frames.append(frame)
    assert [f["type"] for f in frames] == ["message"], frames  # no join/leave for bob's extra tab

    # daphne B dies without a word: bob's presence row is left behind, then expires.
    daphne_b.send_signal(signal.SIGKILL)
    daphne_b.wait(10)
    assert await next_of(ann_ws, "leave", timeout=PRESENCE_TTL * 4) == {"type": "leave", "handle": "bob"}
    late = await connect(port_a, ann, "lobby")
    assert await next_of(late, "presence") == {"type": "presence", "handles": ["ann"]}

    # bob reconnects to the surviving process and catches up with `sync`.
    await ann_ws.send(json.dumps({"type": "message", "text": "while you were gone", "client_id": "a-2"}))
    bob_ws = await connect(port_a, bob, "lobby")
    await bob_ws.send(json.dumps({"type": "sync", "after": on_b["id"]}))
    texts = []
    async with asyncio.timeout(10):
        while (frame := json.loads(await bob_ws.recv()))["type"] != "synced":
            if frame["type"] == "message":
                texts.append(frame["text"])
    assert texts == ["hi from B", "while you were gone"]

    # daphne itself refuses a frame over 64 KiB: it drops that connection (1009, "message too big").
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await late.send(json.dumps({"type": "message", "text": "x" * 70_000, "client_id": "big"}))
        await next_of(late, "error")  # what we would get if daphne let it through
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
    await ann_ws.send(json.dumps({"type": "sync", "after": 0}))
    async with asyncio.timeout(10):
        while (frame := json.loads(await ann_ws.recv()))["type"] != "synced":
            assert frame.get("client_id") != "big"
    for socket in (ann_ws, bob_ws):
        await socket.close()
