"""Each process re-verifies all its sockets in bulk (project.access.AccessRecheck), for announcements Redis lost.

Real sockets through the application (WebsocketCommunicator, real sessions);
the changes are made behind the app's back (raw SQL, QuerySet.update), so no
announcement is sent and only the process's re-verification can close them.
"""

import asyncio
import contextlib
import time
from importlib import import_module
from itertools import cycle

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.models import Session
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from chat.consumers import ChatConsumer
from chat.models import Membership, Room
from project import access
from tests.chat_helpers import fresh_channel_layer
from tests.test_access import Browser, browser, close_code, drop_membership_unannounced, still_open

__all__ = ["fresh_channel_layer"]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]

HANDLES = ["ann", "bob", "cid", "dan", "eve", "fay"]


@pytest.fixture
def people(db) -> dict[str, User]:
    return {handle: User.objects.create_user(handle, password="pw-for-tests-1") for handle in HANDLES}


@pytest.fixture
def rooms(people) -> dict[str, Room]:
    """lobby and den are public (dan a member of den); secret is private, ann's and bob's."""
    lobby = Room.objects.create(label="lobby", created_by=people["ann"])
    den = Room.objects.create(label="den", created_by=people["dan"])
    den.invite(people["dan"])
    secret = Room.objects.create(label="secret", is_private=True, created_by=people["ann"])
    secret.invite(people["ann"])
    secret.invite(people["bob"])
    return {"lobby": lobby, "den": den, "secret": secret}


def guarded() -> set[access.AccessGuard]:
    """The sockets this process (this test's event loop) re-verifies."""
    return access.AccessRecheck.by_loop[asyncio.get_running_loop()].sockets


async def ended_access_and_queries() -> tuple[int, dict[access.AccessGuard, int], int]:
    """(sockets, what ended_access finds for all of them, the queries it took)."""
    sockets = list(guarded())

    def verify() -> tuple[dict[access.AccessGuard, int], int]:
        with CaptureQueriesContext(connection) as queries:
            ended = access.ended_access(sockets)
        return ended, len(queries)

    return len(sockets), *await database_sync_to_async(verify)()


async def open_filler(browsers: list[Browser], labels: list[str], count: int) -> list:
    """`count` more room sockets, round robin over `browsers` and the rooms of `labels`."""
    return [await b.chat(label) for b, label, _ in zip(cycle(browsers), cycle(labels), range(count))]


async def test_a_round_verifies_ten_or_fifty_sockets_in_the_same_three_queries(people, rooms):
    browsers = [await browser(person) for person in people.values() for _ in range(2)]
    sockets = [await browsers[0].chat("secret"), await browsers[2].chat("secret")]  # ann's and bob's
    sockets += await open_filler(browsers, ["lobby", "den"], 8)
    assert await ended_access_and_queries() == (10, {}, 3)  # sessions, users, rooms and memberships
    sockets += await open_filler(browsers, ["lobby", "den"], 40)
    assert await ended_access_and_queries() == (50, {}, 3)

    recheck = access.AccessRecheck.by_loop[asyncio.get_running_loop()]
    for socket in sockets:
        await socket.disconnect()
    await asyncio.wait_for(recheck.task, access.RECHECK_INTERVAL)  # the last socket gone, the task ends
    assert asyncio.get_running_loop() not in access.AccessRecheck.by_loop


@contextlib.asynccontextmanager
async def session_reads():
    """The session reads made on the database thread meanwhile (where every socket's database work runs)."""
    reads: list[str] = []

    def count(execute, sql, params, many, context):
        if "django_session" in sql:
            reads.append(sql)
        return execute(sql, params, many, context)

    await database_sync_to_async(lambda: connection.execute_wrappers.append(count))()
    try:
        yield reads
    finally:
        await database_sync_to_async(lambda: connection.execute_wrappers.remove(count))()


@database_sync_to_async
def change_unannounced(people: dict[str, User], rooms: dict[str, Room], eve_session: str) -> None:
    """bob leaves secret, den goes private, eve's first session is deleted, fay is deactivated: no signals."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM chat_membership WHERE room_id = %s AND user_id = %s",
                       [rooms["secret"].pk, people["bob"].pk])  # fmt: skip
        cursor.execute("DELETE FROM django_session WHERE session_key = %s", [eve_session])
    Room.objects.filter(pk=rooms["den"].pk).update(is_private=True)
    User.objects.filter(pk=people["fay"].pk).update(is_active=False)


async def test_lost_announcements_close_exactly_the_affected_sockets_within_the_interval(people, rooms, monkeypatch):
    monkeypatch.setattr(access, "RECHECK_INTERVAL", 0.5)
    ann, bob, cid, dan, eve, eve_again, fay = [await browser(people[h]) for h in HANDLES[:5] + ["eve", "fay"]]
    ending = {"bob in secret": (await bob.chat("secret"), 4403), "cid in den": (await cid.chat("den"), 4403),
              "eve in lobby": (await eve.chat("lobby"), 4401), "fay in lobby": (await fay.chat("lobby"), 4401),
              "fay in den": (await fay.chat("den"), 4401)}  # fmt: skip
    staying = [await ann.chat("secret"), await bob.chat("lobby"), await cid.chat("lobby"), await dan.chat("den"),
               await eve_again.chat("lobby")]  # fmt: skip
    staying += await open_filler([ann, bob, cid, dan], ["lobby"], 31)
    assert len(guarded()) == 41

    # Idle, the process reads the sessions once per slice at most, not once per socket per interval.
    async with session_reads() as reads:
        await asyncio.sleep(2 * access.RECHECK_INTERVAL)
    assert len(reads) <= 2 * access.RECHECK_SLICES + 2, len(reads)

    await change_unannounced(people, rooms, eve.cookie)
    started = time.monotonic()  # from the commit: a recheck cannot see the changes before it
    slack = 0.5
    codes = {name: await close_code(socket, within=access.RECHECK_INTERVAL + slack)
             for name, (socket, _) in ending.items()}  # fmt: skip
    assert codes == {name: code for name, (_, code) in ending.items()}
    assert time.monotonic() - started < access.RECHECK_INTERVAL + slack
    for socket in staying:
        await still_open(socket)
        await socket.disconnect()



async def test_the_recheck_outlives_a_database_that_fails_and_catches_up_after(people, rooms, monkeypatch, caplog):
    monkeypatch.setattr(access, "RECHECK_INTERVAL", 0.3)
    bob = await browser(people["bob"])
    in_secret, in_lobby = await bob.chat("secret"), await bob.chat("lobby")
    others = await open_filler([await browser(people[handle]) for handle in ("ann", "cid", "dan")], ["lobby"], 30)

    def refuse(execute, sql, params, many, context):
        raise OperationalError("the database is away")

    await database_sync_to_async(lambda: connection.execute_wrappers.append(refuse))()
    try:
        await asyncio.sleep(3 * access.RECHECK_INTERVAL)
    finally:
        await database_sync_to_async(lambda: connection.execute_wrappers.remove(refuse))()
    failures = [r for r in caplog.records if "event=access_recheck_failed" in r.getMessage()]
    assert 1 <= len(failures) <= 3 * access.RECHECK_SLICES + 1  # one a slice at most, not one per socket

    started = time.monotonic()
    await drop_membership_unannounced(rooms["secret"], people["bob"])
    assert await close_code(in_secret, within=access.RECHECK_INTERVAL + 0.5) == 4403
    assert time.monotonic() - started < access.RECHECK_INTERVAL + 0.5
    for socket in [in_lobby, *others]:
        await still_open(socket)
        await socket.disconnect()


def room_sockets(count: int) -> list[ChatConsumer]:
    """`count` room sockets' worth of (session, user, room): ChatConsumers as connect() leaves them, not connected.

    One session per socket, a user per five sockets, 20 rooms of which 4
    private, each user a member of one of those.
    """
    users = User.objects.bulk_create(User(username=f"u{i}", password="!") for i in range(count // 5))
    owner = users[0]
    rooms = [Room.objects.create(label=f"room-{i}", is_private=i < 4, created_by=owner) for i in range(20)]
    Membership.objects.bulk_create(Membership(room=rooms[i % 4], user=user) for i, user in enumerate(users))
    engine = import_module(settings.SESSION_ENGINE)
    sockets, sessions = [], []
    for i in range(count):
        user = users[i % len(users)]
        store = engine.SessionStore()
        store.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: settings.AUTHENTICATION_BACKENDS[-1],
                      HASH_SESSION_KEY: user.get_session_auth_hash()})  # fmt: skip
        key = f"s{i:031d}"
        sessions.append(Session(session_key=key, session_data=store.encode(store._session), expire_date=store.get_expiry_date()))
        socket = ChatConsumer()
        socket.scope = {"session": engine.SessionStore(key), "user": user}
        socket.room = rooms[4 + i % 16] if i % 2 else rooms[i % 4]  # half in private rooms, all members
        sockets.append(socket)
    Session.objects.bulk_create(sessions)
    return sockets


@pytest.mark.parametrize("count", [1000, 10000])
def test_a_round_of_thousands_of_sockets_is_three_queries_per_chunk(count):
    sockets = room_sockets(count)
    for round_ in ("first", "next"):  # the next round finds the sessions decoded already
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            ended = {}
            for chunk in access.recheck_chunks(sockets):
                ended.update(access.ended_access(chunk))
        elapsed = time.perf_counter() - started
        assert ended == {}
        assert len(queries) == 3 * count // access.RECHECK_CHUNK
        print(f"event=access_round round={round_} sockets={count} queries={len(queries)} ms={elapsed * 1000:.0f}")
