"""Direct messages: one per pair however many start it at once, private by construction, and every
message in one a mention for the email/SMS rules."""

import threading

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client

from accounts.models import User
from chat import dm, sidebar
from chat.models import Membership, Room
from notifications.models import Delivery, Notification
from tests.chat_helpers import (  # noqa: F401 (fixtures)
    ann,
    bob,
    fresh_channel_layer,
    open_socket,
    session_cookie,
)
from tests.fake_providers import fake_postmark, fake_twilio, providers  # noqa: F401 (fixtures)
from tests.test_notifications import BOB_PHONE, by_email, by_sms, run_notifications

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def carol():
    return User.objects.create_user("carol")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_one_conversation_per_pair_under_20_concurrent_starts(ann, bob):
    """Twenty threads, each on its own connection, start it at once from both ends: one room, two members."""
    if connection.vendor != "postgresql":
        pytest.skip("concurrent connections: PostgreSQL (SQLite serialises every writer)")
    barrier = threading.Barrier(20, timeout=30)
    rooms, errors = [], []

    def start(me, other):
        try:
            barrier.wait()
            rooms.append(dm.start(me, other)[0].pk)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(ann, bob) if n % 2 else (bob, ann)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and len(rooms) == 20
    assert len(set(rooms)) == 1 and Room.objects.filter(dm_key__isnull=False).count() == 1
    room = Room.objects.get()
    assert room.is_private and sorted(room.memberships.values_list("user__username", flat=True)) == ["ann", "bob"]


def test_started_from_a_handle_and_found_again_from_either_end(ann, bob):
    response = logged_in(ann).post("/chat/dm/", {"to": "@Bob"})
    room = Room.objects.get(dm_key__isnull=False)
    assert response.status_code == 302 and response["Location"] == f"/{room.label}/"
    assert logged_in(bob).post("/chat/dm/", {"to": "ann"})["Location"] == f"/{room.label}/"
    assert [(e.dm_handle, e.label) for e in sidebar.rooms_for(bob).dms] == [("ann", room.label)]
    assert sidebar.rooms_for(bob).rooms == []
    # An unknown handle is a message, not a room.
    response = logged_in(ann).post("/chat/dm/", {"to": "nobody", "next": "/"}, follow=True)
    assert b"No user with the handle" in response.content and Room.objects.count() == 1
    assert response.redirect_chain == [("/", 302)]


async def test_private_by_construction(ann, bob, carol):
    room, _ = await database_sync_to_async(dm.start)(ann, bob)
    carol_client = await database_sync_to_async(logged_in)(carol)

    def carol_tries():
        assert carol_client.get(f"/{room.label}/").status_code == 404
        assert carol_client.get(f"/{room.label}/messages").status_code == 404
        assert carol_client.post(f"/{room.label}/join/").status_code == 404
        assert b"dm-" not in carol_client.get("/").content and b"dm-" not in logged_in(ann).get("/").content
        # Nobody may invite a third person, not even its starter; and neither can leave.
        ann_client = logged_in(ann)
        assert ann_client.post(f"/{room.label}/invite/", {"handle": "carol"}).status_code == 403
        assert ann_client.post(f"/{room.label}/leave/").status_code == 400
        assert not Membership.objects.filter(room=room, user=carol).exists()
        # Its address cannot be taken by visiting a look-alike one first.
        assert carol_client.get("/dm-0123456789abcdef/").status_code == 404

    await database_sync_to_async(carol_tries)()
    cookie = await database_sync_to_async(session_cookie)(carol)
    socket = await open_socket(room.label, cookie)
    await socket.connect(timeout=5)
    assert (await socket.receive_output(timeout=5))["code"] == 4403
    await socket.disconnect()


def test_every_message_is_a_mention_for_email_and_sms(providers, ann, bob, carol):
    twilio, postmark = providers
    by_email(bob)
    by_sms(carol)
    with_bob, _ = dm.start(ann, bob)
    with_carol, _ = dm.start(carol, ann)
    with_bob.post(ann, "lunch?", "a1")  # no @ at all
    with_carol.post(ann, "are you free", "a2")
    run_notifications()
    assert sorted(Notification.objects.values_list("user__username", "kind")) == [("bob", "mention"), ("carol", "mention")]
    [email] = postmark.sent_to("bob@example.com")
    assert email["Subject"] == "@ann mentioned you in a direct message"
    [sms] = twilio.sent_to(BOB_PHONE)
    assert sms["body"].startswith('Parley: @ann in a direct message: "are you free"')
    # Never to its author, and the five-minute window holds as for any mention.
    with_bob.post(ann, "or dinner?", "a3")
    run_notifications()
    assert len(postmark.sent_to("bob@example.com")) == 1
    assert Delivery.objects.filter(user=ann).count() == 0
    assert sidebar.rooms_for(bob).dms[0].mentions == 2


def test_too_many_new_conversations_are_refused(settings, ann):
    settings.CHAT_ROOM_CREATE_LIMIT = 2
    others = [User.objects.create_user(f"u{n}") for n in range(3)]
    client = logged_in(ann)
    assert [client.post("/chat/dm/", {"to": u.username}).status_code for u in others] == [302, 302, 429]
    assert Room.objects.filter(dm_key__isnull=False).count() == 2
    # An existing one still opens.
    assert client.post("/chat/dm/", {"to": others[0].username}).status_code == 302


def test_ones_own_notes(ann):
    room, created = dm.start(ann, ann)
    assert created and list(room.memberships.values_list("user__username", flat=True)) == ["ann"]
    assert [e.dm_handle for e in sidebar.rooms_for(ann).dms] == ["ann"]
