"""Access that ends when it should (project.access): every socket type, through the real application.

Each socket is opened with a real session (logged in by Django's test Client,
its cookie in the handshake, resolved by AuthMiddlewareStack), and each change
is made as the app makes it; the open socket must be closed with its code
within a second.
"""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test import Client

from accounts.models import User
from chat.models import Membership, Message, Room, RoomHidden
from project import access
from project.asgi import application
from reports.jobs import start_export
from reports.models import Job
from tests.chat_helpers import ORIGIN, fresh_channel_layer, next_of, send

__all__ = ["fresh_channel_layer"]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]

WITHIN = 1.0  # seconds: the bound from the change to the close


class Browser:
    """A logged-in browser: Django's test Client (its session) and its sockets."""

    def __init__(self, user: User) -> None:
        self.client = Client()
        self.client.force_login(user)
        self.cookie = self.client.cookies["sessionid"].value

    async def open(self, path: str) -> WebsocketCommunicator:
        return await connect(path, self.cookie)

    async def chat(self, label: str) -> WebsocketCommunicator:
        socket = await self.open(f"/chat/{label}/")
        assert (await socket.receive_json_from(timeout=5))["type"] == "presence"
        return socket


async def connect(path: str, cookie: str | None = None) -> WebsocketCommunicator:
    headers = [(b"host", b"localhost"), (b"origin", ORIGIN.encode())]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await socket.connect(timeout=5)
    assert connected  # accepted, even when refused: browsers see close codes only after an accept
    return socket


async def browser(user: User) -> Browser:
    return await database_sync_to_async(Browser)(user)


async def close_code(socket: WebsocketCommunicator, within: float = WITHIN) -> int:
    """The code the server closes `socket` with, within `within` seconds (frames before it are skipped)."""
    async with asyncio.timeout(within):
        while (output := await socket.receive_output(timeout=within))["type"] != "websocket.close":
            pass
    await socket.disconnect(code=output["code"], timeout=5)
    return output["code"]


async def still_open(socket: WebsocketCommunicator) -> None:
    """The socket answers a sync: it was not closed."""
    await send(socket, {"type": "sync", "after": 0})
    await next_of(socket, "synced")


@database_sync_to_async
def private_room(owner: User, *members: User) -> Room:
    room = Room.objects.create(label="secret", is_private=True, created_by=owner)
    for user in (owner, *members):
        room.invite(user)
    return room


@database_sync_to_async
def drop_membership_unannounced(room: Room, user: User) -> None:
    """Remove a member with no signal, as if the announcement were lost (Redis away)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM chat_membership WHERE room_id = %s AND user_id = %s", [room.pk, user.pk])


@pytest.fixture
def ann(db):
    return User.objects.create_user("ann", password="pw-for-tests-1")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password="pw-for-tests-1")


# --- the rules, called directly --------------------------------------------------------


def test_session_user_follows_logout_password_and_deactivation(ann):
    browser_ = Browser(ann)
    assert access.session_user(browser_.cookie) == ann
    assert access.session_user(None) is None and access.session_user("no-such-session") is None
    ann.set_password("another-pw-2")
    ann.save()
    assert access.session_user(browser_.cookie) is None  # its auth hash is the old password's
    browser_ = Browser(ann)
    User.objects.filter(pk=ann.pk).update(is_active=False)
    assert access.session_user(browser_.cookie) is None
    User.objects.filter(pk=ann.pk).update(is_active=True)
    assert access.session_user(browser_.cookie) == ann
    browser_.client.post("/logout/")
    assert access.session_user(browser_.cookie) is None


def test_room_post_refuses_a_non_member_of_a_private_room_and_stores_nothing(ann, bob):
    room = Room.objects.create(label="secret", is_private=True, created_by=ann)
    room.invite(ann)
    with pytest.raises(RoomHidden):
        room.post(bob, "let me in", "c1")
    assert room.post(ann, "mine", "c2")[1]
    assert list(Message.objects.values_list("text", flat=True)) == ["mine"]
    # A retry after removal does not hand back even the member's own message.
    room.memberships.filter(user=ann).delete()
    with pytest.raises(RoomHidden):
        room.post(ann, "mine", "c2")


# --- the room socket -----------------------------------------------------------------


async def test_a_removed_member_is_closed_with_4403_and_the_others_stay(ann, bob):
    room = await private_room(ann, bob)
    a, b = await (await browser(ann)).chat("secret"), await (await browser(bob)).chat("secret")
    started = time.monotonic()
    await database_sync_to_async(Membership.objects.filter(room=room, user=bob).delete)()
    assert await close_code(b) == 4403
    assert time.monotonic() - started < WITHIN
    await still_open(a)
    await a.disconnect()


async def test_a_room_made_private_closes_the_non_members_only(ann, bob):
    room = await database_sync_to_async(Room.objects.create)(label="lobby", created_by=ann)
    await database_sync_to_async(room.invite)(ann)
    a, b = await (await browser(ann)).chat("lobby"), await (await browser(bob)).chat("lobby")
    room.is_private = True
    await database_sync_to_async(room.save)()
    assert await close_code(b) == 4403
    await still_open(a)
    await a.disconnect()


@pytest.mark.parametrize("change", ["logout", "password", "deactivation", "delete"])
async def test_the_end_of_the_session_closes_every_socket_with_4401(ann, bob, change):
    room = await private_room(bob, ann)
    bob_socket = await (await browser(bob)).chat("secret")
    ann.is_staff = True
    await database_sync_to_async(ann.save)()
    ann_browser = await browser(ann)
    chat, bell = await ann_browser.chat("secret"), await ann_browser.open("/notifications/live/")
    job, _ = await database_sync_to_async(start_export)(ann, room, "jsonl")
    progress, monitor = await ann_browser.open(f"/reports/{job.pk}/live/"), await ann_browser.open("/tasks/live/")
    assert (await bell.receive_json_from(timeout=5))["type"] == "unread"
    assert (await progress.receive_json_from(timeout=5))["type"] == "job.progress"
    assert (await monitor.receive_json_from(timeout=5))["type"] == "overview"

    if change == "password":
        await database_sync_to_async(ann.set_password)("a-new-pw-3")  # hashing takes a while: not the change yet

    def end_session() -> None:
        if change == "logout":
            assert ann_browser.client.post("/logout/").status_code == 302
        elif change == "password":
            ann.save()
        elif change == "deactivation":
            ann.is_active = False
            ann.save()
        else:
            ann.delete()

    started = time.monotonic()
    await database_sync_to_async(end_session)()
    assert [await close_code(s) for s in (chat, bell, progress, monitor)] == [4401] * 4
    assert time.monotonic() - started < WITHIN
    await still_open(bob_socket)  # another user's socket is untouched
    await bob_socket.disconnect()


async def test_logout_in_one_browser_leaves_the_same_users_other_session_open(ann, lobby_room):
    first, second = await browser(ann), await browser(ann)
    one, other = await first.chat("lobby"), await second.chat("lobby")
    await database_sync_to_async(first.client.post)("/logout/")
    assert await close_code(one) == 4401
    await still_open(other)
    await other.disconnect()


@pytest.fixture
def lobby_room(ann):
    return Room.objects.create(label="lobby", created_by=ann)


async def test_a_removed_members_message_is_not_stored_even_when_the_announcement_is_lost(ann, bob):
    room = await private_room(ann, bob)
    b = await (await browser(bob)).chat("secret")
    await drop_membership_unannounced(room, bob)
    await send(b, {"type": "message", "text": "still here?", "client_id": "late-1"})
    refused = await next_of(b, "error")
    assert refused["code"] == "access_ended" and refused["client_id"] == "late-1"
    assert await close_code(b) == 4403
    assert not await database_sync_to_async(Message.objects.exists)()


async def test_a_sync_after_removal_is_answered_with_nothing_from_the_room(ann, bob):
    room = await private_room(ann, bob)
    await database_sync_to_async(room.post)(ann, "the secret plan", "s1")
    b = await (await browser(bob)).chat("secret")
    await drop_membership_unannounced(room, bob)
    await send(b, {"type": "sync", "after": 0})
    frames = []
    while (output := await b.receive_output(timeout=5))["type"] != "websocket.close":
        if '"type":"join"' not in output["text"]:  # presence chatter
            frames.append(output["text"])
    assert output["code"] == 4403
    assert len(frames) == 1 and '"access_ended"' in frames[0] and "secret plan" not in frames[0]
    await b.disconnect(code=4403)


async def test_an_export_frame_after_removal_starts_nothing(ann, bob):
    room = await private_room(ann, bob)
    b = await (await browser(bob)).chat("secret")
    await drop_membership_unannounced(room, bob)
    await send(b, {"type": "export", "format": "csv"})
    assert await close_code(b, within=5) == 4403
    assert not await database_sync_to_async(Job.objects.exists)()


async def test_a_lost_announcement_is_caught_by_the_sockets_own_timer(ann, bob, monkeypatch):
    monkeypatch.setattr(access, "RECHECK_INTERVAL", 0.2)
    room = await private_room(ann, bob)
    b = await (await browser(bob)).chat("secret")
    await drop_membership_unannounced(room, bob)
    assert await close_code(b) == 4403


# --- the job page's and the monitor's sockets -------------------------------------------


async def test_a_jobs_socket_closes_with_4403_when_its_owner_leaves_the_room(ann, bob):
    room = await private_room(ann, bob)
    job, _ = await database_sync_to_async(start_export)(bob, room, "csv")
    progress = await (await browser(bob)).open(f"/reports/{job.pk}/live/")
    assert (await progress.receive_json_from(timeout=5))["type"] == "job.progress"
    await database_sync_to_async(Membership.objects.filter(room=room, user=bob).delete)()
    assert await close_code(progress) == 4403


async def test_job_and_monitor_sockets_accept_then_close_with_a_code_the_page_understands(ann, bob):
    room = await private_room(ann)
    job, _ = await database_sync_to_async(start_export)(ann, room, "csv")
    assert await close_code(await connect(f"/reports/{job.pk}/live/")) == 4401
    assert await close_code(await connect("/tasks/live/")) == 4401
    bob_browser = await browser(bob)
    assert await close_code(await bob_browser.open(f"/reports/{job.pk}/live/")) == 4403
    assert await close_code(await bob_browser.open(f"/reports/{job.pk + 1000}/live/")) == 4404
    assert await close_code(await bob_browser.open("/tasks/live/")) == 4403


async def test_the_monitor_closes_with_4403_when_the_staff_flag_is_removed(ann):
    ann.is_staff = True
    await database_sync_to_async(ann.save)()
    monitor = await (await browser(ann)).open("/tasks/live/")
    assert (await monitor.receive_json_from(timeout=5))["type"] == "overview"
    ann.is_staff = False
    started = time.monotonic()
    await database_sync_to_async(ann.save)()
    assert await close_code(monitor) == 4403
    assert time.monotonic() - started < WITHIN
