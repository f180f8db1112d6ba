"""tests/bad_frames.py against every socket: an error frame with a documented code, the socket alive, no ghost.

Runs on both stacks, so the NUL and out-of-range cases meet real PostgreSQL as well as SQLite.
"""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chat.models import Membership, Presence, Room
from chat.protocol import MAX_FRAME_BYTES
from notifications.consumers import MAX_FRAME as NOTIFICATIONS_MAX_FRAME
from project.asgi import application
from reports.consumers import MAX_FRAME_BYTES as JOB_MAX_FRAME_BYTES
from reports.jobs import start_export
from tests.bad_frames import CORPUS, expected_code
from tests.chat_helpers import ORIGIN, fresh_channel_layer, session_cookie

__all__ = ["fresh_channel_layer"]  # a fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]

# Codes the README documents for error frames.
DOCUMENTED = {"invalid", "empty", "too_long", "too_large", "rate_limited", "no_avatar", "server_error", "forbidden"}
# Frames a socket sends on its own (its state, progress), skipped when looking for the answer.
CHATTER = {"presence", "join", "leave", "unread", "overview", "job.progress"}


def setup_user_and_room() -> tuple[str, int]:
    """A staff user who is a member of a private room with an export running: every socket accepts them."""
    user = get_user_model().objects.create_user("mallory", is_staff=True)
    room = Room.objects.create(label="lobby", is_private=True, created_by=user)
    Membership.objects.create(room=room, user=user)
    job, _ = start_export(user, room, "csv")
    return session_cookie(user), job.pk


async def open_socket(path: str, cookie: str) -> WebsocketCommunicator:
    headers = [(b"host", b"localhost"), (b"origin", ORIGIN.encode()), (b"cookie", f"sessionid={cookie}".encode())]
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def answer(socket: WebsocketCommunicator) -> dict:
    """The next frame that is not the socket's own chatter; fails if the socket closes instead."""
    for _ in range(20):
        frame = await socket.receive_json_from(timeout=5)  # asserts a websocket.send, not a close
        if frame["type"] not in CHATTER:
            return frame
    raise AssertionError("no answer among 20 frames")


SOCKETS = {
    "chat": ("/chat/lobby/", MAX_FRAME_BYTES),
    "notifications": ("/notifications/live/", NOTIFICATIONS_MAX_FRAME),
    "job": ("/reports/{job}/live/", JOB_MAX_FRAME_BYTES),
    "monitor": ("/tasks/live/", None),  # takes no frames: every one is `invalid` (10 of them close it, 4429)
}


@pytest.mark.parametrize("socket_name", SOCKETS)
@pytest.mark.parametrize("name, text, data", CORPUS, ids=[entry[0] for entry in CORPUS])
async def test_every_socket_answers_every_bad_frame_and_lives_on(socket_name, name, text, data):
    cookie, job = await database_sync_to_async(setup_user_and_room)()
    path, max_bytes = SOCKETS[socket_name]
    socket = await open_socket(path.format(job=job), cookie)
    try:
        # As daphne hands frames over (send_to() cannot send an empty one).
        await socket.send_input({"type": "websocket.receive", "text": text, "bytes": data})
        error = await answer(socket)
        assert error["type"] == "error" and error["code"] in DOCUMENTED, error
        assert error["code"] == (expected_code(text, max_bytes) if max_bytes else "invalid"), error
        # Still open and still serving: a second frame is answered too.
        await socket.send_to(text_data="not json")
        assert (await answer(socket))["code"] == "invalid"
        if socket_name == "chat":
            assert await Presence.objects.acount() == 1
    finally:
        await socket.disconnect(timeout=5)
    # No ghost: the socket's presence went with it, and nothing was stored.
    assert not await Presence.objects.aexists()
