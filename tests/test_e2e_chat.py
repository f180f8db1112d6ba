"""Two real daphne processes on one Redis and one PostgreSQL: the production shape of chat."""

import asyncio
import http.cookiejar
import json
import signal
import urllib.parse
import urllib.request

import pytest
import websockets

pytestmark = pytest.mark.e2e

PRESENCE_TTL = 3  # seconds; production default is 60


def sign_up(port: int, handle: str) -> str:
    """Sign up through the real form; returns the session cookie."""
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{port}"
    browser.open(f"{base}/signup/", timeout=10).read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    form = urllib.parse.urlencode(
        {"username": handle, "password1": "a long passphrase 42", "password2": "a long passphrase 42",
         "csrfmiddlewaretoken": csrf}
    ).encode()  # fmt: skip
    response = browser.open(urllib.request.Request(f"{base}/signup/", data=form), timeout=30)
    assert response.url == f"{base}/", response.read()[:500]  # redirected home: signed up and logged in
    return next(c.value for c in jar if c.name == "sessionid")


def open_room(port: int, cookie: str, label: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{label}/", headers={"Cookie": f"sessionid={cookie}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and response.url.endswith(f"/{label}/")


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
    # Live frames may arrive before the sync reply; a client keeps one per id, in id order.
    by_id = {}
    async with asyncio.timeout(10):
        while (frame := json.loads(await bob_ws.recv()))["type"] != "synced":
            if frame["type"] == "message":
                by_id[frame["id"]] = frame["text"]
    assert [by_id[i] for i in sorted(by_id)] == ["hi from B", "while you were gone"]

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
