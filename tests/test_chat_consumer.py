"""The WebSocket protocol, against the real ASGI application (auth, origin check, router)."""

import asyncio
import json
import logging
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from jsonschema.exceptions import SchemaError

from accounts.models import User
from chat import protocol
from chat.consumers import ChatConsumer, post_message
from chat.models import Membership, Message, Presence, Room, ServerProcess
from project.sockets import compile_schema
from tests.chat_helpers import (  # noqa: F401 (fixtures: ann, bob, their cookies, lobby, fresh_channel_layer)
    ann, ann_cookie, bob, bob_cookie, fresh_channel_layer, join, lobby, next_of, open_socket, refused_with, send, send_raw, session_cookie,
)

__all__ = ["fresh_channel_layer"]  # a fixture, used through usefixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]


def message(text="hello", client_id="c1"):
    return {"type": "message", "text": text, "client_id": client_id}


# --- refusals ---------------------------------------------------------------------


async def test_anonymous_is_closed_with_4401(lobby):
    assert await refused_with("lobby", cookie=None) == 4401


async def test_unknown_room_is_closed_with_4404(ann_cookie):
    assert await refused_with("nowhere", ann_cookie) == 4404


@pytest.mark.parametrize("label", ["Not-A-Slug!", "x" * 51, "admin"])
async def test_bad_or_reserved_label_is_closed_with_4404(ann_cookie, label):
    assert await refused_with(label, ann_cookie) == 4404


async def test_private_room_non_member_is_closed_with_4403(ann, bob_cookie):
    room = await database_sync_to_async(Room.objects.create)(label="secret", is_private=True, created_by=ann)
    await database_sync_to_async(room.invite)(ann)
    assert await refused_with("secret", bob_cookie) == 4403


async def test_foreign_origin_is_refused_at_handshake(lobby, ann_cookie):
    socket = await open_socket("lobby", ann_cookie, origin="https://evil.example")
    connected, _ = await socket.connect(timeout=5)
    assert not connected
    assert not await database_sync_to_async(Presence.objects.exists)()


async def test_missing_origin_is_refused_at_handshake(lobby, ann_cookie):
    socket = await open_socket("lobby", ann_cookie, origin=None)
    connected, _ = await socket.connect(timeout=5)
    assert not connected


# --- messages ---------------------------------------------------------------------------


async def test_message_is_persisted_and_reaches_everyone(lobby, ann_cookie, bob_cookie):
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    await send(a, message("hi <b>bob</b>", "m-1"))
    for socket in (a, b):
        frame = await next_of(socket, "message")
        saved = await database_sync_to_async(Message.objects.get)()
        assert frame == {
            "type": "message",
            "id": saved.pk,
            "room": "lobby",
            "handle": "ann",
            "text": "hi <b>bob</b>",  # stored and sent as typed; the browser escapes
            "ts": saved.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "client_id": "m-1",
        }
    await a.disconnect()
    await b.disconnect()


async def test_same_client_id_is_one_message_and_returns_the_original(lobby, ann_cookie):
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("first", "same"))
    original = await next_of(a, "message")
    await send(a, message("edited retry text", "same"))
    again = await next_of(a, "message")
    assert again == original
    assert await database_sync_to_async(Message.objects.count)() == 1
    await a.disconnect()


async def test_retry_after_reconnect_returns_original(lobby, ann_cookie):
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("sent before the drop", "retry-1"))
    original = await next_of(a, "message")
    await a.disconnect()
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("sent before the drop", "retry-1"))
    assert await next_of(a, "message") == original
    assert await database_sync_to_async(Message.objects.count)() == 1
    await a.disconnect()


async def test_retry_is_answered_to_its_sender_and_not_shown_twice_to_others(lobby, ann_cookie, bob_cookie):
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    await send(a, message("once", "r1"))
    original = await next_of(a, "message")
    assert await next_of(b, "message") == original
    await send(a, message("once", "r1"))
    assert await next_of(a, "message") == original
    # bob's socket was sent that id already: the retry's broadcast stops there.
    await send(a, message("next", "r2"))
    assert (await next_of(b, "message"))["client_id"] == "r2"
    await a.disconnect()
    await b.disconnect()


# --- delivery: every message once, in id order, whatever the channel layer does -----------------


def messages_of(frames: list[dict]) -> list[int]:
    return [f["id"] for f in frames if f["type"] == "message"]


async def frames_until_quiet(socket, quiet: float = 0.5, limit: int = 50) -> list[dict]:
    """Frames until none comes for `quiet` seconds (a receive timeout would kill the application)."""
    frames = []
    while len(frames) < limit and not await socket.receive_nothing(timeout=quiet):
        frames.append(await socket.receive_json_from())
    return frames


async def test_a_broadcast_lost_by_the_layer_is_read_from_the_database(lobby, ann, bob_cookie, ann_cookie):
    b, _ = await join("lobby", bob_cookie)
    # Stored, but its broadcast never left (the pub/sub layer drops what is published while it reconnects).
    lost, _ = await database_sync_to_async(lobby.post)(ann, "lost in flight", "x1")
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("after it", "x2"))
    after = await next_of(a, "message")
    frames = [await next_of(b, "message"), await next_of(b, "message")]
    assert [f["id"] for f in frames] == [lost.pk, after["id"]]
    assert frames[0]["text"] == "lost in flight"
    assert messages_of(await frames_until_quiet(b)) == []
    await a.disconnect()
    await b.disconnect()


async def test_broadcasts_arriving_out_of_order_are_sent_in_id_order_once(lobby, ann, bob_cookie):
    b, _ = await join("lobby", bob_cookie)
    first = await database_sync_to_async(post_message)(lobby, ann, "first", "o1")
    second = await database_sync_to_async(post_message)(lobby, ann, "second", "o2")
    assert second["previous"] == first["id"]
    # Two daphnes' broadcasts can cross: the second lands first.
    layer = get_channel_layer()
    await layer.group_send(lobby.group_name, second)
    await layer.group_send(lobby.group_name, first)
    frames = await frames_until_quiet(b)
    assert messages_of(frames) == [first["id"], second["id"]]
    await b.disconnect()


async def test_sockets_that_miss_the_same_broadcast_share_one_read(settings, caplog, lobby, ann, bob_cookie):
    sockets = [(await join("lobby", bob_cookie))[0] for _ in range(6)]
    lost, _ = await database_sync_to_async(lobby.post)(ann, "lost", "s1")
    after = await database_sync_to_async(post_message)(lobby, ann, "after", "s2")
    settings.DEBUG = True  # Django logs every query to django.db.backends, from every connection
    with caplog.at_level(logging.DEBUG, logger="django.db.backends"):
        await get_channel_layer().group_send(lobby.group_name, after)
        for socket in sockets:
            assert [(await next_of(socket, "message"))["id"] for _ in range(2)] == [lost.pk, after["id"]]
    reads = [r for r in caplog.records if '"chat_message"."id" >' in getattr(r, "sql", "")]
    assert len(reads) == 1, [r.sql for r in reads]
    for socket in sockets:
        await socket.disconnect()


async def test_broadcasts_reach_sockets_while_the_database_thread_is_busy(lobby, ann, bob_cookie):
    """A delivery takes no turn on the database thread (channels' own dispatch takes one per socket)."""
    b, _ = await join("lobby", bob_cookie)
    event = await database_sync_to_async(post_message)(lobby, ann, "while busy", "busy1")
    busy = asyncio.ensure_future(database_sync_to_async(time.sleep)(1.5))  # a slow query, say
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await get_channel_layer().group_send(lobby.group_name, event)
    assert (await next_of(b, "message", timeout=1))["id"] == event["id"]
    assert time.monotonic() - started < 0.5
    await busy
    await b.disconnect()


async def test_redis_outage_keeps_sockets_open_and_loses_nothing(settings, own_redis, lobby, ann_cookie, bob_cookie):
    layer = {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [own_redis.url]}}
    settings.CHANNEL_LAYERS = {"default": layer, "tasks": layer}
    settings.CHAT_PRESENCE_TTL = 0.6  # beats every 0.15 to 0.2 s: what they read is what broadcasts missed
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    own_redis.stop()
    await send(a, message("while redis is down", "d1"))
    during = await next_of(a, "message")  # stored: the sender is told, and its socket stays open
    assert during["text"] == "while redis is down"
    assert (await next_of(b, "message", timeout=3))["id"] == during["id"]
    own_redis.start()
    await send(a, message("after it is back", "d2"))
    after = await next_of(a, "message", timeout=5)
    assert (await next_of(b, "message", timeout=5))["id"] == after["id"]
    for socket in (a, b):
        assert not [f for f in await frames_until_quiet(socket) if f["type"] == "message"]
        await socket.disconnect()


async def test_messages_are_stored_while_the_database_thread_is_busy(lobby, ann_cookie):
    """Posts have threads of their own: a slow query elsewhere in the process does not hold them up."""
    a, _ = await join("lobby", ann_cookie)
    busy = asyncio.ensure_future(database_sync_to_async(time.sleep)(1.5))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await send(a, message("not stuck", "t1"))
    assert (await next_of(a, "message", timeout=1))["text"] == "not stuck"
    assert time.monotonic() - started < 0.5
    await busy
    await a.disconnect()


async def test_heartbeat_sends_a_message_whose_broadcast_never_came(settings, lobby, ann, bob_cookie):
    settings.CHAT_PRESENCE_TTL = 0.6  # a beat every 0.15 to 0.2 s
    b, _ = await join("lobby", bob_cookie)
    lost, _ = await database_sync_to_async(lobby.post)(ann, "nobody broadcast me", "h1")
    frame = await next_of(b, "message", timeout=3)
    assert frame["id"] == lost.pk and frame["text"] == "nobody broadcast me"
    assert messages_of(await frames_until_quiet(b)) == []
    await b.disconnect()


async def test_sync_sends_missed_messages_then_synced(lobby, ann, bob_cookie):
    posted = [await database_sync_to_async(lobby.post)(ann, f"m{i}", f"c{i}") for i in range(5)]
    ids = [m.pk for m, _ in posted]
    b, _ = await join("lobby", bob_cookie)
    await send(b, {"type": "sync", "after": ids[1]})
    got = [await next_of(b, "message") for _ in range(3)]
    assert [f["id"] for f in got] == ids[2:]
    assert [f["text"] for f in got] == ["m2", "m3", "m4"]
    assert await next_of(b, "synced") == {"type": "synced", "last_id": ids[-1], "more": False}
    await send(b, {"type": "sync", "after": ids[-1]})
    assert await next_of(b, "synced") == {"type": "synced", "last_id": ids[-1], "more": False}
    await b.disconnect()


async def test_sync_is_capped_at_500_with_more(lobby, ann, ann_cookie):
    def bulk():
        return Message.objects.bulk_create(
            Message(room=lobby, user=ann, text=str(i), client_id=f"b{i}") for i in range(501)
        )

    await database_sync_to_async(bulk)()
    first_id = await database_sync_to_async(lambda: Message.objects.order_by("id").first().pk)()
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "sync", "after": 0})
    frames = [await next_of(a, "message") for _ in range(500)]
    synced = await next_of(a, "synced")
    assert synced == {"type": "synced", "last_id": frames[-1]["id"], "more": True}
    assert frames[0]["id"] == first_id
    await a.disconnect()


# --- the registry of frame types ---------------------------------------------------------


def test_apps_register_their_frame_types_and_a_type_registers_once():
    assert {"message", "sync", "typing", "avatar.refresh", "export"} <= set(protocol.handlers)
    with pytest.raises(ImproperlyConfigured, match="twice"):
        protocol.register("message", protocol.MESSAGE_SCHEMA, ChatConsumer.on_message)
    with pytest.raises(ImproperlyConfigured, match="pin type"):
        protocol.register("shout", protocol.MESSAGE_SCHEMA, ChatConsumer.on_message)
    assert "shout" not in protocol.handlers


def test_every_registered_frame_schema_is_a_valid_json_schema():
    # Compiled by its first frame (project.sockets.FrameSchema), not at start: checked here instead.
    from notifications.consumers import VALIDATORS
    from reports.consumers import CANCEL

    for schema in [*protocol.validators.values(), *VALIDATORS.values(), CANCEL]:
        schema.error({"type": "anything"})  # jsonschema's SchemaError for a schema that is not one
    bad = compile_schema({"type": "object", "properties": {"type": {"const": "x"}}, "maxProperties": -1})
    with pytest.raises(SchemaError):
        bad.error({"type": "x"})


# --- bad input: an error frame, the socket stays open, nothing stored --------------------

BAD_FRAMES = [
    ("not json", "invalid"),
    ("[1, 2]", "invalid"),
    ('"message"', "invalid"),
    ("{}", "invalid"),
    (json.dumps({"type": "shout", "text": "hi"}), "invalid"),
    (json.dumps({"type": 7}), "invalid"),
    (json.dumps({"type": "message", "client_id": "c"}), "invalid"),
    (json.dumps({"type": "message", "text": "hi"}), "invalid"),
    (json.dumps({"type": "message", "text": 42, "client_id": "c"}), "invalid"),
    (json.dumps({"type": "message", "text": "hi", "client_id": 5}), "invalid"),
    (json.dumps({"type": "message", "text": "hi", "client_id": ""}), "invalid"),
    (json.dumps({"type": "message", "text": "hi", "client_id": "x" * 65}), "invalid"),
    (json.dumps({"type": "message", "text": "hi", "client_id": "c", "extra": 1}), "invalid"),
    (json.dumps({"type": "message", "text": "", "client_id": "c"}), "empty"),
    (json.dumps({"type": "message", "text": " \n\t ", "client_id": "c"}), "empty"),
    (json.dumps({"type": "message", "text": "x" * 4001, "client_id": "c"}), "too_long"),
    (json.dumps({"type": "sync"}), "invalid"),
    (json.dumps({"type": "sync", "after": "5"}), "invalid"),
    (json.dumps({"type": "sync", "after": -1}), "invalid"),
    (json.dumps({"type": "sync", "after": 1.5}), "invalid"),
    (json.dumps({"type": "typing", "handle": "someone-else"}), "invalid"),
    (json.dumps({"type": "message", "text": "x" * 70_000, "client_id": "c"}), "too_large"),
]


@pytest.mark.parametrize("raw, code", BAD_FRAMES, ids=[f"{c}-{i}" for i, (_, c) in enumerate(BAD_FRAMES)])
async def test_bad_frame_gets_error_frame_and_socket_stays_open(lobby, ann_cookie, raw, code):
    a, _ = await join("lobby", ann_cookie)
    await send_raw(a, raw)
    error = await next_of(a, "error")
    assert error["code"] == code
    assert isinstance(error["detail"], str) and error["detail"]
    assert set(error) <= {"type", "code", "detail", "client_id"}
    # Still open and working:
    await send(a, message("still here", "after-error"))
    assert (await next_of(a, "message"))["text"] == "still here"
    assert await database_sync_to_async(Message.objects.count)() == 1
    await a.disconnect()


async def test_text_of_exactly_4000_characters_is_accepted(lobby, ann_cookie):
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("y" * 4000, "long"))
    assert len((await next_of(a, "message"))["text"]) == 4000
    await a.disconnect()


async def test_too_long_error_names_the_client_id(lobby, ann_cookie):
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("x" * 4001, "too-long-1"))
    assert await next_of(a, "error") == {
        "type": "error",
        "code": "too_long",
        "detail": "The message is longer than 4000 characters.",
        "client_id": "too-long-1",
    }
    await a.disconnect()


async def test_binary_frame_is_invalid(lobby, ann_cookie):
    a, _ = await join("lobby", ann_cookie)
    await a.send_to(bytes_data=b'{"type": "typing"}')
    assert (await next_of(a, "error"))["code"] == "invalid"
    await a.disconnect()


async def test_eleventh_message_in_five_seconds_is_rate_limited(lobby, ann_cookie):
    a, _ = await join("lobby", ann_cookie)
    for i in range(10):
        await send(a, message(f"m{i}", f"r{i}"))
        await next_of(a, "message")
    await send(a, message("one too many", "r10"))
    assert await next_of(a, "error") == {
        "type": "error",
        "code": "rate_limited",
        "detail": "More than 10 messages in 5 seconds; wait a moment.",
        "client_id": "r10",
    }
    assert await database_sync_to_async(Message.objects.count)() == 10
    await a.disconnect()


async def test_rate_limit_counts_across_sockets_of_one_user(lobby, ann_cookie):
    """Two sockets (could be two processes): the database count still holds the line."""
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", ann_cookie)
    for i in range(6):
        await send(a, message(f"a{i}", f"a{i}"))
        await next_of(a, "message")
    for i in range(4):
        await send(b, message(f"b{i}", f"b{i}"))
        await next_of(b, "message")
    await send(b, message("b-extra", "b-extra"))
    assert (await next_of(b, "error"))["code"] == "rate_limited"
    assert await database_sync_to_async(Message.objects.count)() == 10
    await a.disconnect()
    await b.disconnect()


async def test_old_messages_do_not_count_towards_the_rate_limit(lobby, ann, ann_cookie):
    def backdated():
        for i in range(10):
            lobby.post(ann, f"old{i}", f"old{i}")
        Message.objects.update(created_at=timezone.now() - timedelta(seconds=6))

    await database_sync_to_async(backdated)()
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("fresh", "fresh"))
    assert (await next_of(a, "message"))["text"] == "fresh"
    await a.disconnect()


# --- typing ------------------------------------------------------------------------------


async def test_typing_is_relayed_to_others_at_most_every_two_seconds(lobby, ann_cookie, bob_cookie):
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    await next_of(a, "join")  # bob's
    await send(a, {"type": "typing"})
    assert await next_of(b, "typing") == {"type": "typing", "handle": "ann"}
    await send(a, {"type": "typing"})  # within 2 s: dropped
    await send(a, message("marker", "marker"))
    # The marker arrives and no second typing frame came before it.
    frame = await b.receive_json_from(timeout=5)
    assert frame["type"] == "message", frame
    # The sender never hears its own typing.
    assert (await next_of(a, "message"))["text"] == "marker"
    assert await a.receive_nothing(timeout=0.2)
    await a.disconnect()
    await b.disconnect()


# --- presence --------------------------------------------------------------------------------


async def test_presence_on_connect_and_join_leave(lobby, ann_cookie, bob_cookie):
    a, first = await join("lobby", ann_cookie)
    assert first == {"type": "presence", "handles": ["ann"]}
    assert await next_of(a, "join") == {"type": "join", "handle": "ann"}
    b, first = await join("lobby", bob_cookie)
    assert first == {"type": "presence", "handles": ["ann", "bob"]}
    assert await next_of(a, "join") == {"type": "join", "handle": "bob"}
    await b.disconnect()
    assert await next_of(a, "leave") == {"type": "leave", "handle": "bob"}
    await a.disconnect()


async def test_two_tabs_are_one_presence(lobby, ann_cookie, bob_cookie):
    b, _ = await join("lobby", bob_cookie)
    await next_of(b, "join")
    tab1, _ = await join("lobby", ann_cookie)
    assert await next_of(b, "join") == {"type": "join", "handle": "ann"}
    tab2, first = await join("lobby", ann_cookie)
    assert first == {"type": "presence", "handles": ["ann", "bob"]}
    await tab1.disconnect()  # ann still has tab2: no leave
    await send(tab2, message("still in", "still-in"))
    frame = await b.receive_json_from(timeout=5)
    assert frame["type"] == "message", frame  # no leave (nor join) came before it
    assert await b.receive_nothing(timeout=0.2)
    assert await database_sync_to_async(Presence.objects.filter(user__username="ann").count)() == 1
    await tab2.disconnect()  # last tab: leave
    assert await next_of(b, "leave") == {"type": "leave", "handle": "ann"}
    await b.disconnect()


async def test_two_tabs_join_is_announced_once(lobby, ann_cookie, bob_cookie):
    b, _ = await join("lobby", bob_cookie)
    await next_of(b, "join")
    tab1, _ = await join("lobby", ann_cookie)
    tab2, _ = await join("lobby", ann_cookie)
    frames = []
    while not await b.receive_nothing(timeout=0.3):
        frames.append(await b.receive_json_from())
    assert frames == [{"type": "join", "handle": "ann"}]
    for socket in (tab1, tab2, b):
        await socket.disconnect()


async def test_stale_presence_is_hidden_and_swept(settings, lobby, bob, ann_cookie):
    """A row left by a process that died: not listed on connect, and swept with a leave."""
    settings.CHAT_PRESENCE_TTL = 0.6

    def ghost():
        dead = ServerProcess.objects.create(last_seen=timezone.now() - timedelta(seconds=5))
        Presence.objects.create(channel_name="dead-process!abc", room=lobby, user=bob, process=dead)

    await database_sync_to_async(ghost)()
    a, first = await join("lobby", ann_cookie)
    assert first == {"type": "presence", "handles": ["ann"]}
    assert await next_of(a, "leave", timeout=5) == {"type": "leave", "handle": "bob"}
    assert not await database_sync_to_async(Presence.objects.filter(user=bob).exists)()
    # ann's own row is kept fresh by her heartbeat.
    await asyncio.sleep(1)
    assert await database_sync_to_async(Presence.objects.filter(user__username="ann").exists)()
    await a.disconnect()
    assert not await database_sync_to_async(Presence.objects.exists)()


# --- private rooms: nothing leaks -------------------------------------------------------


async def test_private_room_members_chat_and_nothing_reaches_other_rooms(ann, bob, ann_cookie, bob_cookie):
    def setup():
        secret = Room.objects.create(label="secret", is_private=True, created_by=ann)
        secret.invite(ann)
        secret.invite(bob, invited_by=ann)
        Room.objects.create(label="public")

    await database_sync_to_async(setup)()
    carol = await database_sync_to_async(User.objects.create_user)("carol")
    carol_cookie = await database_sync_to_async(session_cookie)(carol)
    outsider, _ = await join("public", carol_cookie)
    await next_of(outsider, "join")
    a, _ = await join("secret", ann_cookie)
    b, first = await join("secret", bob_cookie)
    assert first["handles"] == ["ann", "bob"]
    await send(a, message("for members only", "s1"))
    assert (await next_of(b, "message"))["text"] == "for members only"
    assert await outsider.receive_nothing(timeout=0.3)  # no join, no message from the private room
    assert await refused_with("secret", carol_cookie) == 4403
    assert await database_sync_to_async(Membership.objects.filter(user=carol).exists)() is False
    for socket in (a, b, outsider):
        await socket.disconnect()
