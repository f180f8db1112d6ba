"""Presence per process (issue 21): one liveness row per daphne, one beat for all its sockets, cheap connects."""

import asyncio
import logging
import threading
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import consumers, presence
from chat.consumers import find_room, process_beat
from chat.models import Presence, Room, ServerProcess
from tests.chat_helpers import (  # noqa: F401 (fixtures)
    ann, ann_cookie, bob, bob_cookie, fresh_channel_layer, join, lobby, next_of, refused_with,
)  # fmt: skip

__all__ = ["fresh_channel_layer"]  # a fixture, used through usefixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]

db = database_sync_to_async


def another_process(seconds_ago: float = 0) -> ServerProcess:
    """The liveness row of another daphne, last seen `seconds_ago`."""
    return ServerProcess.objects.create(last_seen=timezone.now() - timedelta(seconds=seconds_ago))


def users(count: int) -> list:
    return [get_user_model().objects.create_user(f"user{i}") for i in range(count)]


def age(process_id: int, seconds: float) -> None:
    """What a process that stopped beating `seconds` ago looks like."""
    ServerProcess.objects.filter(pk=process_id).update(last_seen=timezone.now() - timedelta(seconds=seconds))


# --- the liveness row -------------------------------------------------------------------------


@pytest.mark.parametrize("sockets", [1, 200])
def test_a_process_refresh_is_one_statement_whatever_its_socket_count(lobby, sockets):
    process = another_process()
    for user in users(sockets):
        presence.join(lobby, user, f"socket.{user.pk}", process.pk)
    with CaptureQueriesContext(connection) as refresh:
        assert presence.refresh_process(process.pk)
    assert len(refresh) == 1
    # The whole idle beat: refresh, nobody to sweep, the rooms' heads; no read per socket.
    with CaptureQueriesContext(connection) as beat:
        assert process_beat(process.pk, [lobby.pk]) == (True, [], {lobby.pk: (0, 0)})
    assert len(beat) == 3


def test_a_stale_process_row_is_not_refreshed(lobby, ann):
    """Its rows may be being swept (leaves announced): the process must start a new row and join again."""
    process = another_process(seconds_ago=120)
    assert not presence.refresh_process(process.pk)
    with pytest.raises(presence.ProcessGone):
        presence.join(lobby, ann, "socket.1", process.pk)
    assert not Presence.objects.exists()


# --- a dead process is swept by a live one --------------------------------------------------------


async def test_a_dead_process_is_swept_by_a_live_one_and_its_users_leave_once(settings, lobby, bob, ann_cookie):
    settings.CHAT_PRESENCE_TTL = 0.6  # the beat every 0.2 s
    # Seen 2 s ahead: fresh until the test ages it, however slowly a loaded machine gets ann in.
    other = await db(another_process)(seconds_ago=-2)
    # bob has two sockets on the other daphne: one leave when it dies.
    for channel in ("other!1", "other!2"):
        await db(presence.join)(lobby, bob, channel, other.pk)
    a, first = await join("lobby", ann_cookie)
    assert first == {"type": "presence", "handles": ["ann", "bob"]}
    await asyncio.sleep(0.5)  # two beats: the other daphne is still fresh, nobody leaves
    await db(age)(other.pk, 5)
    assert await next_of(a, "leave", timeout=3) == {"type": "leave", "handle": "bob"}
    assert not await ServerProcess.objects.filter(pk=other.pk).aexists()
    assert not await Presence.objects.filter(user=bob).aexists()
    assert await a.receive_nothing(timeout=0.7)  # no second leave at the next beats
    await a.disconnect()


def test_two_processes_sweeping_the_same_dead_one_announce_each_leave_once(lobby, ann, bob):
    dead = another_process()
    for user in (ann, bob):
        presence.join(lobby, user, f"dead.{user.pk}", dead.pk)
    age(dead.pk, 120)
    start = threading.Barrier(2)
    results: list[list[tuple[int, str]]] = []

    def sweeper():
        start.wait(5)
        results.append(presence.sweep())
        connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results[0] + results[1]) == [(lobby.pk, "ann"), (lobby.pk, "bob")]
    assert not ServerProcess.objects.exists() and not Presence.objects.exists()


async def test_a_stalled_process_joins_again(settings, lobby, ann_cookie, caplog):
    """Its row aged past the TTL (a long pause): swept, its users' leaves told, then it comes back with joins."""
    settings.CHAT_PRESENCE_TTL = 0.6
    a, _ = await join("lobby", ann_cookie)
    assert await next_of(a, "join") == {"type": "join", "handle": "ann"}
    stalled = consumers._process_id
    with caplog.at_level(logging.WARNING, logger="chat.consumers"):
        await db(age)(stalled, 5)
        assert await next_of(a, "leave", timeout=3) == {"type": "leave", "handle": "ann"}
        assert await next_of(a, "join", timeout=3) == {"type": "join", "handle": "ann"}
    assert f"event=presence_process_expired process={stalled}" in caplog.text
    row = await Presence.objects.select_related("process").aget()
    assert row.process_id == consumers._process_id != stalled
    assert row.process.last_seen > timezone.now() - timedelta(seconds=0.6)
    assert not await ServerProcess.objects.filter(pk=stalled).aexists()
    await a.disconnect()
    assert not await Presence.objects.aexists()


# --- catch-up per room per process -----------------------------------------------------------


async def test_the_beat_sends_a_missed_message_to_every_local_socket_with_one_read(
    settings, lobby, ann, ann_cookie, bob_cookie, caplog
):
    settings.CHAT_PRESENCE_TTL = 0.6
    settings.DEBUG = True  # every thread's queries are logged (django.db.backends), the beat's pool included
    sockets = [(await join("lobby", cookie))[0] for cookie in (ann_cookie, bob_cookie, ann_cookie)]
    for socket in sockets:  # the joins, then a beat that finds nothing to read
        while not await socket.receive_nothing(timeout=0.5):
            await socket.receive_json_from()
    with caplog.at_level(logging.DEBUG, logger="django.db.backends"):
        lost, _ = await db(lobby.post)(ann, "nobody broadcast me", "lost-1")
        for socket in sockets:
            assert (await next_of(socket, "message", timeout=3))["id"] == lost.pk
        reads = [r for r in caplog.records if r.name == "django.db.backends" and '"chat_message"."id" >' in r.getMessage()]
    assert len(reads) == 1, [r.getMessage() for r in reads]
    for socket in sockets:
        assert await socket.receive_nothing(timeout=0.5)  # once each
    for socket in sockets:
        await socket.disconnect()


# --- connects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("others", [0, 30])
def test_a_connect_costs_a_few_statements_whatever_the_room_holds(lobby, ann, others):
    """The room, the cap, the room's lock and heads, who is here with their names, the row: nothing per socket.

    Before issue 21 this work was 17 statements (with BEGIN and COMMIT), the presence list and the
    display names two reads, the room's newest id and change number two more; then 6, before the
    cap's count joined the room's lock and, on PostgreSQL, the presence read the upsert (SQLite,
    without row locks, skips the user's lock instead).
    """
    process = another_process()
    for user in users(others):
        user.display_name = f"Name {user.pk}"
        user.save()
        for tab in range(2):
            presence.join(lobby, user, f"socket.{user.pk}.{tab}", process.pk)
    with CaptureQueriesContext(connection) as connect:
        room, refusal = find_room("lobby", ann)
        entry = presence.join(room, ann, "socket.ann", process.pk)
    assert refusal is None and entry.first and len(entry.handles) == others + 1
    assert len(entry.names) == others
    statements = [q["sql"] for q in connect.captured_queries if q["sql"].split()[0] not in ("BEGIN", "COMMIT")]
    assert len(statements) <= 4, statements


async def test_the_cap_counts_sockets_on_every_live_process(settings, lobby, ann, ann_cookie):
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    other = await db(another_process)()
    elsewhere = await Room.objects.acreate(label="elsewhere")
    for channel in ("other!1", "other!2"):
        await db(presence.join)(elsewhere, ann, channel, other.pk)
    assert await refused_with("lobby", ann_cookie) == 4409
    await db(age)(other.pk, 120)  # that daphne died: its sockets no longer count
    a, _ = await join("lobby", ann_cookie)
    await a.disconnect()
