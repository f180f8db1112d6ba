"""The sidebar: joined rooms, unread counts (capped, live on every socket of the user, kept across a
reload), read positions, the page opening at the first unread, and `/` as a directory."""

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from chat import sidebar
from chat.models import Membership, Message, Room
from chat.views import INITIAL_MESSAGES, UNREAD_CONTEXT
from tests.chat_helpers import (  # noqa: F401 (fixtures: ann, bob, lobby, fresh_channel_layer)
    ann, bob, fresh_channel_layer, join, lobby, next_of, send, session_cookie,
)
from tests.test_notifications_live import bell

pytestmark = pytest.mark.django_db(transaction=True)


def fill(room: Room, user, count: int) -> list[int]:
    """`count` messages in `room` at once, a day old (history, not live traffic: no signals, no rate limit); ids."""
    Message.objects.bulk_create(
        Message(room=room, user=user, text=f"m{n}", client_id=f"fill-{room.pk}-{n}") for n in range(count)
    )
    room.messages.update(created_at=timezone.now() - timedelta(days=1))
    return list(room.messages.order_by("id").values_list("id", flat=True))


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def next_frame(socket, type_: str, timeout: float = 5) -> dict:
    """The next frame of `type_` on a notifications socket (others skipped), within a bounded number."""
    for _ in range(20):
        frame = await socket.receive_json_from(timeout=timeout)
        if frame["type"] == type_:
            return frame
    raise AssertionError(f"no {type_} frame")


@pytest.mark.usefixtures("fresh_channel_layer")
async def test_unread_counts_live_on_two_sockets_and_after_a_reload(lobby, ann, bob):
    await database_sync_to_async(sidebar.join)(lobby, bob)
    bob_cookie = await database_sync_to_async(session_cookie)(bob)
    ann_cookie = await database_sync_to_async(session_cookie)(ann)
    tabs = [await bell(bob_cookie), await bell(bob_cookie)]
    for tab in tabs:
        assert await tab.receive_json_from(timeout=5) == {"type": "unread", "count": 0}

    chat, _ = await join("lobby", ann_cookie)
    ids = []
    for n in range(3):
        await send(chat, {"type": "message", "text": f"news {n}", "client_id": f"n{n}"})
        ids.append((await next_of(chat, "message"))["id"])
    for tab in tabs:
        for id_ in ids:
            assert await next_frame(tab, "room_activity") == {
                "type": "room_activity", "room": "lobby", "id": id_, "handle": "ann"}  # fmt: skip

    def counts(user) -> dict[str, int]:
        return {e.label: e.unread for e in sidebar.rooms_for(user).rooms}

    # A reload reads the same from the database; ann posted, so she has read her own.
    assert await database_sync_to_async(counts)(bob) == {"lobby": 3}
    assert await database_sync_to_async(counts)(ann) == {"lobby": 0}
    page = await database_sync_to_async(lambda: logged_in(bob).get("/chat/sidebar/?active=lobby").content.decode())()
    assert 'data-room="lobby"' in page and "<span data-count>3</span>" in page

    # One tab reads up to the second message: both hear it, and so does the next reload.
    await tabs[0].send_to(text_data=json.dumps({"type": "read", "room": "lobby", "id": ids[1]}))
    for tab in tabs:
        assert await next_frame(tab, "room_read") == {
            "type": "room_read", "room": "lobby", "last_read_id": ids[1], "unread": 1}  # fmt: skip
    assert await database_sync_to_async(counts)(bob) == {"lobby": 1}
    await chat.disconnect()
    for tab in tabs:
        await tab.disconnect()


@pytest.mark.usefixtures("fresh_channel_layer")
async def test_a_room_joined_later_is_heard_and_a_room_left_is_not(lobby, ann, bob):
    bob_cookie = await database_sync_to_async(session_cookie)(bob)
    tab = await bell(bob_cookie)
    await tab.receive_json_from(timeout=5)
    await database_sync_to_async(sidebar.join)(lobby, bob)
    assert await next_frame(tab, "sidebar_changed") == {"type": "sidebar_changed"}
    message = await database_sync_to_async(lobby.post)(ann, "hello", "h1")
    assert (await next_frame(tab, "room_activity"))["id"] == message[0].pk

    await database_sync_to_async(sidebar.leave)(lobby, bob)
    assert await next_frame(tab, "sidebar_changed") == {"type": "sidebar_changed"}
    await database_sync_to_async(lobby.post)(ann, "after", "h2")
    assert await tab.receive_nothing(timeout=0.5)
    await tab.disconnect()


def test_counts_stop_at_the_cap(lobby, ann, bob):
    sidebar.join(lobby, bob)
    fill(lobby, ann, sidebar.UNREAD_CAP + 50)
    quiet = Room.objects.create(label="quiet")
    sidebar.join(quiet, bob)
    with CaptureQueriesContext(connection) as queries:
        bar = sidebar.rooms_for(bob)
    assert len(queries) <= 3
    assert f"LIMIT {sidebar.UNREAD_CAP + 1}" in queries[0]["sql"]
    assert [(e.label, e.unread, e.unread_label) for e in bar.rooms] == [
        ("lobby", sidebar.UNREAD_CAP + 1, f"{sidebar.UNREAD_CAP}+"), ("quiet", 0, "0")]  # fmt: skip


def test_posting_joins_a_public_room_and_reads_up_to_ones_own_message(lobby, ann, bob):
    fill(lobby, ann, 5)
    message, _ = lobby.post(bob, "me too", "b1")
    member = Membership.objects.get(room=lobby, user=bob)
    assert member.last_read_id == message.pk
    assert [(e.label, e.unread) for e in sidebar.rooms_for(bob).rooms] == [("lobby", 0)]
    lobby.post(ann, "and then", "a1")
    assert [(e.label, e.unread) for e in sidebar.rooms_for(bob).rooms] == [("lobby", 1)]


def test_visiting_joins_nothing_and_an_unused_room_clutters_no_list(ann, bob):
    bob_client = logged_in(bob)
    assert bob_client.get("/typo/").status_code == 200  # made by the visit
    assert sidebar.rooms_for(bob).rooms == []
    assert b"typo" not in logged_in(ann).get("/").content
    # Join puts it in the sidebar; Leave takes it out again.
    assert bob_client.post("/typo/join/").status_code == 302
    assert [e.label for e in sidebar.rooms_for(bob).rooms] == ["typo"]
    page = bob_client.get("/typo/").content.decode()
    assert 'id="leave-room"' in page and 'id="join-room"' not in page and 'aria-current="page"' in page
    bob_client.post("/typo/leave/")
    assert sidebar.rooms_for(bob).rooms == []
    assert 'id="join-room"' in bob_client.get("/typo/").content.decode()


def test_leaving_a_private_room_ends_access(ann, bob):
    secret = Room.objects.create_by(ann, "secret", is_private=True)
    secret.invite(bob, invited_by=ann)
    client = logged_in(bob)
    assert [e.label for e in sidebar.rooms_for(bob).rooms] == ["secret"]
    assert client.post("/secret/leave/").status_code == 302
    assert client.get("/secret/").status_code == 404
    assert client.post("/secret/join/").status_code == 404  # no way back in but an invitation


def test_the_read_position_moves_forward_only_and_never_past_the_newest(lobby, ann, bob):
    ids = fill(lobby, ann, 10)
    assert sidebar.mark_read(lobby, bob, ids[3]) is None  # not joined: nothing tracked
    Membership.objects.create(room=lobby, user=bob)
    assert sidebar.mark_read(lobby, bob, ids[5]) == 4
    assert sidebar.mark_read(lobby, bob, ids[2]) == 4  # another tab was further along
    assert sidebar.mark_read(lobby, bob, ids[-1] + 1000) == 0
    assert Membership.objects.get(room=lobby, user=bob).last_read_id == ids[-1]
    # The "Mark as read" button without script: everything.
    lobby.post(ann, "more", "a-more")
    logged_in(bob).post("/lobby/read/")
    assert sidebar.rooms_for(bob).rooms[0].unread == 0


def test_the_page_opens_at_the_first_unread_even_far_back(lobby, ann, bob):
    ids = fill(lobby, ann, 300)
    Membership.objects.create(room=lobby, user=bob, last_read_id=ids[99])
    config = logged_in(bob).get("/lobby/").context["chat_config"]
    shown = [m["id"] for m in config["messages"]]
    assert config["first_unread_id"] == ids[100] and config["last_read_id"] == ids[99]
    assert shown == ids[100 - UNREAD_CONTEXT : 100 - UNREAD_CONTEXT + INITIAL_MESSAGES]
    assert config["has_more"] is True
    # Nothing unread: the newest, as before.
    Membership.objects.filter(user=bob).update(last_read_id=ids[-1])
    config = logged_in(bob).get("/lobby/").context["chat_config"]
    assert config["first_unread_id"] is None and [m["id"] for m in config["messages"]] == ids[-INITIAL_MESSAGES:]


def test_the_sidebar_shows_on_the_room_page_with_mentions_and_dms(lobby, ann, bob):
    from notifications.models import Notification

    sidebar.join(lobby, bob)
    message, _ = lobby.post(ann, "@bob look", "a-look")
    Notification.objects.create(user=bob, room=lobby, message=message)
    bob.display_name = "Bob B."
    bob.save()
    logged_in(ann).post("/chat/dm/", {"to": "@bob"})
    page = logged_in(bob).get("/lobby/").content.decode()
    lobby_item = page[page.index('data-room="lobby"') :].split("</li>")[0]
    assert "data-room-mentions" in lobby_item and "data-room-mentions title=\"mentions you\" hidden" not in lobby_item
    assert 'data-dm="ann"' in page
    ann_page = logged_in(ann).get(f"/{Room.objects.get(dm_key__isnull=False).label}/").content.decode()
    assert "Bob B." in ann_page and "@bob" in ann_page


def test_read_frames_are_checked():
    from notifications.consumers import VALIDATORS
    from project.sockets import FrameError, parse

    for bad in ({"type": "read"}, {"type": "read", "room": "lobby", "id": -1}, {"type": "read", "room": "x" * 51}):
        with pytest.raises(FrameError):
            parse(json.dumps(bad), None, VALIDATORS, 2048)


def test_display_names_ride_along_in_message_frames(lobby, ann, bob):
    bob.display_name = "Robert"
    bob.save()
    lobby.post(ann, "hi", "a-hi")
    lobby.post(User.objects.get(pk=bob.pk), "hello", "b-hello")
    data = logged_in(ann).get("/lobby/messages").json()["messages"]
    assert [(m["handle"], m.get("name")) for m in data] == [("ann", None), ("bob", "Robert")]


@pytest.mark.usefixtures("fresh_channel_layer")
async def test_display_names_ride_along_in_presence_and_joins(lobby, ann, bob):
    bob.display_name = "Robert"
    await database_sync_to_async(bob.save)()
    ann_socket, first = await join("lobby", await database_sync_to_async(session_cookie)(ann))
    assert first == {"type": "presence", "handles": ["ann"]}  # nobody here has a display name
    bob_socket, first = await join("lobby", await database_sync_to_async(session_cookie)(bob))
    assert first == {"type": "presence", "handles": ["ann", "bob"], "names": {"bob": "Robert"}}
    assert await next_of(ann_socket, "join") == {"type": "join", "handle": "ann"}  # her own arrival
    assert await next_of(ann_socket, "join") == {"type": "join", "handle": "bob", "name": "Robert"}
    await bob_socket.disconnect()
    await ann_socket.disconnect()
