"""Helpers for the chat tests: logged-in WebSocket clients on the real ASGI application."""

import asyncio
import json

import pytest
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from accounts.models import User
from chat.models import Room
from project.asgi import application

ORIGIN = "http://localhost"


@pytest.fixture
def ann():
    return User.objects.create_user("ann")


@pytest.fixture
def bob():
    return User.objects.create_user("bob")


@pytest.fixture
def lobby(ann):
    return Room.objects.create(label="lobby", created_by=ann)


@pytest.fixture
def ann_cookie(ann):
    return session_cookie(ann)


@pytest.fixture
def bob_cookie(bob):
    return session_cookie(bob)


@pytest.fixture
async def fresh_channel_layer():
    """A new layer instance for this test's event loop, emptied.

    channels-redis keeps per-channel asyncio locks on the layer instance; one
    left from an earlier test's (closed) loop breaks the next test's receive.
    """
    channel_layers.backends.clear()
    layer = get_channel_layer()
    await layer.flush()
    yield layer
    await layer.flush()
    channel_layers.backends.clear()


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_socket(label: str, cookie: str | None = None, origin: str | None = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"host", b"localhost")]
    if origin:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, f"/chat/{label}/", headers=headers)


async def join(label: str, cookie: str) -> tuple[WebsocketCommunicator, dict]:
    """Connect and return the socket with its first frame (the presence list)."""
    socket = await open_socket(label, cookie)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    first = await socket.receive_json_from(timeout=5)
    assert first["type"] == "presence", first
    return socket, first


async def refused_with(label: str, cookie: str | None) -> int:
    """Connect and return the close code the server answered with."""
    socket = await open_socket(label, cookie)
    connected, _ = await socket.connect(timeout=5)
    assert connected  # accepted, then closed: browsers only see close codes after an accept
    closed = await socket.receive_output(timeout=5)
    assert closed["type"] == "websocket.close"
    await socket.disconnect(code=closed["code"], timeout=5)  # what the client does next
    return closed["code"]


async def next_of(socket: WebsocketCommunicator, type_: str, timeout: float = 5) -> dict:
    """The next frame of `type_`, skipping others (presence chatter)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await socket.receive_json_from(timeout=timeout)
            if frame["type"] == type_:
                return frame


async def send_raw(socket: WebsocketCommunicator, text: str) -> None:
    await socket.send_to(text_data=text)


async def send(socket: WebsocketCommunicator, frame: dict) -> None:
    await socket.send_to(text_data=json.dumps(frame))
