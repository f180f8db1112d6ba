"""Limits no client can talk a socket out of (issue 17): presence that no failure leaves behind, syncs that
cannot amplify or silence, a cap on sockets per user; and, with real daphne processes, the output bound
(4408) and the 1009 close of an oversized frame."""

import pytest
from channels.db import database_sync_to_async

from chat import protocol
from chat.models import RATE_LIMIT_COUNT, Message, Presence
from project.sockets import frame_schema
from tests.chat_helpers import (  # noqa: F401 (fixtures: ann, bob, lobby, fresh_channel_layer)
    ann, bob, fresh_channel_layer, join, lobby, next_of, refused_with, send, session_cookie,
)

__all__ = ["fresh_channel_layer"]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]


@pytest.fixture
def ann_cookie(ann):
    return session_cookie(ann)


@pytest.fixture
def bob_cookie(bob):
    return session_cookie(bob)


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
