"""The live side: a chat message dispatches to the notifications queue; the bell's socket counts unread."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat.models import Room
from notifications.models import Notification
from project.asgi import application
from tasks.models import TaskRecord
from tests.chat_helpers import (  # noqa: F401 (fixtures: ann, bob, lobby, fresh_channel_layer)
    ORIGIN, ann, bob, fresh_channel_layer, join, lobby, next_of, send, session_cookie,
)
from tests.test_notifications import run_notifications

__all__ = ["fresh_channel_layer"]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]


async def bell(cookie: str | None, origin: str = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"host", b"localhost"), (b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    socket = WebsocketCommunicator(application, "/notifications/live/", headers=headers)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def test_a_chat_message_dispatches_to_the_notifications_queue_and_the_bell_counts_live(lobby, ann, bob):
    ann_cookie = await database_sync_to_async(session_cookie)(ann)
    bob_cookie = await database_sync_to_async(session_cookie)(bob)
    bob_bell = await bell(bob_cookie)
    assert await bob_bell.receive_json_from(timeout=5) == {"type": "unread", "count": 0}

    chat, _ = await join("lobby", ann_cookie)
    await send(chat, {"type": "message", "text": "hey @BOB", "client_id": "m-1"})
    await next_of(chat, "message")
    queued = await database_sync_to_async(lambda: list(TaskRecord.objects.values_list("queue_name", "task_path")))()
    assert queued == [("notifications", "notifications.tasks.process_mentions")]

    await database_sync_to_async(run_notifications)()
    assert await bob_bell.receive_json_from(timeout=5) == {"type": "unread", "count": 1}

    # The room page says the room is on screen: its mentions are read.
    await bob_bell.send_to(text_data=json.dumps({"type": "mark_read", "room": "lobby"}))
    assert await bob_bell.receive_json_from(timeout=5) == {"type": "unread", "count": 0}
    assert await database_sync_to_async(Notification.objects.filter(read_at__isnull=False).count)() == 1
    await chat.disconnect()
    await bob_bell.disconnect()


async def test_mark_read_by_room_ignores_a_room_the_user_cannot_see(bob):
    """The room form of mark_read looks the room up as every page does: a private room bob left is no room."""

    def notified_in_a_room_bob_left():
        room = Room.objects.create(label="secret", is_private=True)
        return Notification.objects.create(user=bob, room=room).pk

    notification = await database_sync_to_async(notified_in_a_room_bob_left)()
    socket = await bell(await database_sync_to_async(session_cookie)(bob))
    assert await socket.receive_json_from(timeout=5) == {"type": "unread", "count": 1}
    await socket.send_to(text_data=json.dumps({"type": "mark_read", "room": "secret"}))
    await socket.send_to(text_data="not json")  # answered once the frame before it was handled
    assert (await socket.receive_json_from(timeout=5))["type"] == "error"
    assert not await Notification.objects.filter(pk=notification, read_at__isnull=False).aexists()
    await socket.disconnect()


@pytest.mark.parametrize(
    "raw, error",
    [
        ("not json", "not JSON"),
        (json.dumps({"type": "delete_everything"}), "invalid frame"),
        (json.dumps({"type": "mark_read", "ids": ["1"]}), "invalid frame"),
        (json.dumps({"type": "mark_read", "ids": [1], "room": "x"}), "invalid frame"),
        ("x" * 3000, "at most 2048 bytes"),
    ],
)
async def test_bad_frames_get_an_error_frame(bob, raw, error):
    socket = await bell(await database_sync_to_async(session_cookie)(bob))
    await socket.receive_json_from(timeout=5)
    await socket.send_to(text_data=raw)
    frame = await socket.receive_json_from(timeout=5)
    assert frame["type"] == "error" and error in frame["error"]
    await socket.disconnect()


async def test_anonymous_bell_is_closed_and_foreign_origin_refused(bob):
    socket = await bell(None)
    assert (await socket.receive_output(timeout=5))["code"] == 4401
    cookie = await database_sync_to_async(session_cookie)(bob)
    foreign = WebsocketCommunicator(application, "/notifications/live/",
                                    headers=[(b"host", b"localhost"), (b"origin", b"https://evil.example"),
                                             (b"cookie", f"sessionid={cookie}".encode())])  # fmt: skip
    connected, _ = await foreign.connect(timeout=5)
    assert not connected


async def test_frames_are_rate_limited(bob):
    socket = await bell(await database_sync_to_async(session_cookie)(bob))
    await socket.receive_json_from(timeout=5)
    for _ in range(15):
        await socket.send_to(text_data=json.dumps({"type": "mark_read", "ids": [1]}))
    frame = await socket.receive_json_from(timeout=5)
    assert frame == {"type": "error", "code": "rate_limited", "detail": "too many frames; slow down",
                     "error": "too many frames; slow down"}  # fmt: skip
    await socket.disconnect()
