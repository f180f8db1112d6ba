"""Who is in a room, shared through the database so it holds across daphne processes.

One Presence row per open socket. A user is present while they have at least
one fresh row; "join" is announced when the first socket arrives and "leave"
when the last one goes. Sockets refresh their row every CHAT_PRESENCE_TTL / 3
seconds; rows older than CHAT_PRESENCE_TTL belong to a process that died and
are swept (announcing the leave) by any live socket of the room. The same rows
count a user's sockets, so the cap on them (CHAT_MAX_SOCKETS_PER_USER) holds
across processes.

Every change runs under a lock on the room row, so two sockets of one user
arriving at once on two processes cannot both (or neither) announce the join.
"""

from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .models import Presence, Room

if TYPE_CHECKING:
    from accounts.models import User


def ttl() -> timedelta:
    return timedelta(seconds=settings.CHAT_PRESENCE_TTL)


def heartbeat_interval() -> float:
    return settings.CHAT_PRESENCE_TTL / 3


def _fresh(room: Room):
    return Presence.objects.filter(room=room, last_seen__gt=timezone.now() - ttl())


def _lock(room: Room) -> None:
    # select_for_update is a no-op on SQLite, where IMMEDIATE transactions already serialise writers.
    Room.objects.select_for_update().filter(pk=room.pk).values_list("pk", flat=True).first()


def handles(room: Room) -> list[str]:
    """Handles of the users present in `room`, ignoring expired rows."""
    return sorted(set(_fresh(room).values_list("user__username", flat=True)))


def display_names(room: Room) -> dict[str, str]:
    """Handle -> display name of the users present in `room` who have set one (shown next to the handle)."""
    rows = _fresh(room).exclude(user__display_name="").values_list("user__username", "user__display_name")
    return dict(rows)


class TooManySockets(Exception):
    """The user already has CHAT_MAX_SOCKETS_PER_USER sockets open."""


def join(room: Room, user: "User", channel_name: str) -> bool:
    """Record a socket; True when it is the user's first in the room (announce a join).

    Raises TooManySockets when the user has CHAT_MAX_SOCKETS_PER_USER fresh
    rows already, in any room: a client opening sockets in a loop must not
    make every room's presence and broadcasts work for each.
    """
    with transaction.atomic():
        # The user's row serialises their joins, across rooms and processes, so the cap is exact.
        get_user_model().objects.lock(user.pk)
        mine = Presence.objects.filter(user=user, last_seen__gt=timezone.now() - ttl()).exclude(channel_name=channel_name)
        if mine.count() >= settings.CHAT_MAX_SOCKETS_PER_USER:
            raise TooManySockets
        _lock(room)
        others = _fresh(room).filter(user=user).exclude(channel_name=channel_name).exists()
        Presence.objects.update_or_create(
            channel_name=channel_name, defaults={"room": room, "user": user, "last_seen": timezone.now()}
        )
    return not others


def leave(room: Room, user: "User", channel_name: str) -> bool:
    """Forget a socket; True when it was the user's last in the room (announce a leave)."""
    with transaction.atomic():
        _lock(room)
        deleted, _ = Presence.objects.filter(channel_name=channel_name).delete()
        # Nothing deleted: a sweep already removed the row and announced the leave.
        return bool(deleted) and not _fresh(room).filter(user=user).exists()


def heartbeat(room: Room, channel_name: str) -> tuple[bool, list[str]]:
    """Refresh this socket's row and sweep the room's expired rows.

    Returns (refreshed, left): refreshed is False when this socket's row was
    gone (swept after the process stalled past the TTL, and announced as a
    leave), so the caller joins again; left lists the handles whose last socket
    just expired. The room is locked only when there is something to sweep:
    every socket beats, and the lock is the one Room.post takes too.
    """
    now = timezone.now()
    refreshed = Presence.objects.filter(channel_name=channel_name).update(last_seen=now)
    stale = Presence.objects.filter(room=room, last_seen__lte=now - ttl())
    if not stale.exists():
        return bool(refreshed), []
    with transaction.atomic():
        _lock(room)
        stale_users = {row.user_id: row.user.username for row in stale.select_related("user")}
        stale.delete()
        still_here = set(_fresh(room).filter(user_id__in=stale_users).values_list("user_id", flat=True))
        left = sorted(handle for user_id, handle in stale_users.items() if user_id not in still_here)
    return bool(refreshed), left
