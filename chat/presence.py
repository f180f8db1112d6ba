"""Who is in a room, shared through the database so it holds across daphne processes.

One Presence row per open socket, pointing at its daphne's ServerProcess row.
A user is present while they have at least one fresh row, one whose process
refreshed its own row within CHAT_PRESENCE_TTL; "join" is announced when the
first socket arrives and "leave" when the last one goes. Each process refreshes
its row in one statement every CHAT_PRESENCE_TTL / 3, whatever its socket count
(chat.process); a process whose row is older than the TTL died or stalled, and
any live process sweeps its rows, announcing the leaves. The same rows count a
user's sockets, so the cap on them (CHAT_MAX_SOCKETS_PER_USER) holds across
processes.

Every change runs under a lock on the room row, so two sockets of one user
arriving at once on two processes cannot both (or neither) announce the join,
and two processes sweeping the same dead one cannot both announce a leave.
"""

import functools
from typing import TYPE_CHECKING, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from .models import Message, Presence, Room, ServerProcess

if TYPE_CHECKING:
    from accounts.models import User


def heartbeat_interval() -> float:
    return settings.CHAT_PRESENCE_TTL / 3


def _lock(room_id: int) -> None:
    # select_for_update is a no-op on SQLite, where IMMEDIATE transactions already serialise writers.
    Room.objects.select_for_update().filter(pk=room_id).values_list("pk", flat=True).first()


# --- the process's liveness row ----------------------------------------------------------------


def start_process() -> int:
    """A new liveness row for this process; its pk is what the process's presence rows point at."""
    return ServerProcess.objects.create(last_seen=timezone.now()).pk


def refresh_process(process_id: int) -> bool:
    """Mark the process alive, in one statement; False when its row is gone or already stale.

    A stale row is never brought back: other processes may be sweeping its
    rows (announcing leaves) right now. The process starts a new row instead
    and joins its sockets again (chat.process).
    """
    now = timezone.now()
    return bool(ServerProcess.objects.filter(pk=process_id, last_seen__gt=ServerProcess.dead_before(now)).update(last_seen=now))


def sweep() -> list[tuple[int, str]]:
    """Remove the processes whose row is older than the TTL, and their presence rows.

    Returns (room pk, handle) for each user whose last fresh socket in a room
    went with them: the leaves to announce. Costs one query when nobody died.
    """
    cutoff = ServerProcess.dead_before()
    dead = list(ServerProcess.objects.filter(last_seen__lte=cutoff).values_list("pk", flat=True))
    if not dead:
        return []
    left: list[tuple[int, str]] = []
    rooms = set(Presence.objects.filter(process__in=dead).values_list("room_id", flat=True))
    for room_id in sorted(rooms):
        with transaction.atomic():
            _lock(room_id)
            # Read under the lock: another process may have swept this room a moment ago.
            stale = Presence.objects.filter(room_id=room_id, process__last_seen__lte=cutoff)
            users = dict(stale.values_list("user_id", "user__username"))
            stale.delete()
            still_here = set(
                Presence.objects.fresh().filter(room_id=room_id, user_id__in=users).values_list("user_id", flat=True)
            )
        left.extend((room_id, handle) for user_id, handle in sorted(users.items()) if user_id not in still_here)
    # A stale row never becomes fresh again (refresh_process), so this deletes only the dead.
    ServerProcess.objects.filter(pk__in=dead, last_seen__lte=cutoff).delete()
    return left


# --- sockets ------------------------------------------------------------------------------------


class TooManySockets(Exception):
    """The user already has CHAT_MAX_SOCKETS_PER_USER sockets open."""


class ProcessGone(Exception):
    """The process's row is gone or stale (it stalled past the TTL): start a new one and join again."""


class Entry(NamedTuple):
    """What a socket entering a room is told (chat.consumers.enter)."""

    first: bool  # the user's first socket here: announce the join
    handles: list[str]  # who is present, the user included
    names: dict[str, str]  # handle -> display name, for those present who set one
    last_id: int  # the room's newest message id
    last_seq: int  # the room's change number


def join(room: Room, user: "User", channel_name: str, process_id: int) -> Entry:
    """Record a socket of process `process_id`, and read what the socket is told.

    Raises TooManySockets when the user has CHAT_MAX_SOCKETS_PER_USER fresh
    rows already, in any room: a client opening sockets in a loop must not
    make every room's presence and broadcasts work for each. Raises
    ProcessGone when the process's row is not fresh: a row added to it would
    be swept as a dead process's. A socket that joins again (its process came
    back) has its row moved to the new process.

    Every connect pays this, so its statements are SQL text built once per
    vendor and sent straight to the cursor (_join_sql): built through the ORM
    they were most of a connect's CPU in the daphne (README.md, Benchmarks,
    idle sockets). Three statements on either database: PostgreSQL's first is
    the user's row lock, and SQLite, without row locks, reads who is here and
    writes the row in two.
    """
    sql = _join_sql(connection.vendor)
    ops = connection.ops
    cutoff = ops.adapt_datetimefield_value(ServerProcess.dead_before())
    with transaction.atomic(), connection.cursor() as cursor:
        if sql.lock_user:
            # The user's row serialises their joins, across rooms and processes, so the cap is exact.
            # The count is read by the next statement, whose snapshot has what the joins it waited for committed.
            cursor.execute(sql.lock_user, [user.pk])
        # The user's other sockets, the room's lock, its heads and the process's liveness in one
        # statement. A newest id read before a post waiting on the lock commits errs low: that
        # message is then sent live.
        cursor.execute(sql.heads, [user.pk, cutoff, channel_name, process_id, cutoff, room.pk])
        row = cursor.fetchone()
        if row is None:
            raise Room.DoesNotExist(f"No room {room.pk}.")
        sockets, last_id, last_seq, process_alive = row
        if sockets >= settings.CHAT_MAX_SOCKETS_PER_USER:
            raise TooManySockets
        if not process_alive:
            raise ProcessGone
        # Who else is here, read under the room's lock, and this socket's row (moved to this process if it
        # had one): one statement on PostgreSQL, whose CTEs share one snapshot, so the read misses the write.
        present_params = [room.pk, cutoff, channel_name]
        upsert_params = [channel_name, room.pk, user.pk, process_id, ops.adapt_datetimefield_value(timezone.now())]
        if sql.upsert:
            cursor.execute(sql.present, present_params)
            present = dict(cursor.fetchall())
            cursor.execute(sql.upsert, upsert_params)
        else:
            cursor.execute(sql.present, upsert_params + present_params)
            present = dict(cursor.fetchall())
    first = user.username not in present
    present[user.username] = user.display_name
    names = {handle: name for handle, name in present.items() if name}
    return Entry(first, sorted(present), names, last_id or 0, last_seq)


class JoinSQL(NamedTuple):
    lock_user: str  # empty where the database has no row locks (SQLite: IMMEDIATE transactions serialise writers)
    heads: str  # (the user's other fresh sockets, newest message id, change number, process alive), room locked
    present: str  # (handle, display name) of the others present; on PostgreSQL also the upsert, first
    upsert: str  # empty where `present` does it


@functools.cache
def _join_sql(vendor: str) -> JoinSQL:
    """join()'s statements for `vendor`, built once (see join)."""
    quote = connection.ops.quote_name
    presence, process = quote(Presence._meta.db_table), quote(ServerProcess._meta.db_table)
    room, message = quote(Room._meta.db_table), quote(Message._meta.db_table)
    user = quote(get_user_model()._meta.db_table)
    locks = connection.features.has_select_for_update
    for_update = " FOR UPDATE" if locks else ""
    # Presence.objects.fresh(), of the sockets other than this one.
    others = "s.last_seen > %s AND p.channel_name <> %s"
    heads = (
        f"SELECT (SELECT COUNT(*) FROM {presence} p JOIN {process} s ON s.id = p.process_id "
        f"WHERE p.user_id = %s AND {others}), "
        f"(SELECT m.id FROM {message} m WHERE m.room_id = r.id ORDER BY m.id DESC LIMIT 1), r.change_seq, "
        f"EXISTS(SELECT 1 FROM {process} WHERE id = %s AND last_seen > %s) "
        f"FROM {room} r WHERE r.id = %s{for_update}"
    )
    present = (
        f"SELECT DISTINCT u.username, u.display_name FROM {presence} p JOIN {process} s ON s.id = p.process_id "
        f"JOIN {user} u ON u.id = p.user_id WHERE p.room_id = %s AND {others}"
    )
    upsert = (
        f"INSERT INTO {presence} (channel_name, room_id, user_id, process_id, connected_at) VALUES (%s, %s, %s, %s, %s) "
        f"ON CONFLICT (channel_name) DO UPDATE SET room_id = EXCLUDED.room_id, user_id = EXCLUDED.user_id, "
        f"process_id = EXCLUDED.process_id"
    )
    lock_user = f"SELECT 1 FROM {user} WHERE id = %s{for_update}" if locks else ""
    if vendor == "postgresql":
        return JoinSQL(lock_user, heads, f"WITH upsert AS ({upsert} RETURNING 1) {present}", "")
    return JoinSQL(lock_user, heads, present, upsert)


def leave(room: Room, user: "User", channel_name: str) -> bool:
    """Forget a socket; True when it was the user's last in the room (announce a leave)."""
    with transaction.atomic():
        _lock(room.pk)
        deleted, _ = Presence.objects.filter(channel_name=channel_name).delete()
        # Nothing deleted: a sweep already removed the row and announced the leave.
        return bool(deleted) and not Presence.objects.fresh().filter(room=room, user=user).exists()

