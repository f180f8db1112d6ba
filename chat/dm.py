"""Direct messages: a private room of exactly two people, one per pair.

The pair's key ("<lower id>:<higher id>") is unique on Room, so however many
requests start the same conversation at once, on any process, one room is
made and every request gets it. It is private by construction: its two
members are made with it, in the same transaction, and nobody can be invited
(chat.views.invite) nor can either leave (chat.sidebar.leave).
"""

import logging
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import Membership, Room, TooManyRooms

logger = logging.getLogger(__name__)

# Labels of direct messages: no room may be made under this prefix by visiting an address (chat.views.room).
DM_PREFIX = "dm-"


def dm_key(a, b) -> str:
    low, high = sorted((a.pk, b.pk))
    return f"{low}:{high}"


def start(user, other) -> tuple[Room, bool]:
    """The direct message between `user` and `other`, made if there is none: (room, created).

    One with oneself is one's own notes, as in Slack. A new one counts among
    the rooms `user` made: over CHAT_ROOM_CREATE_LIMIT in the window it raises
    TooManyRooms (no one starts a thousand conversations to spam a thousand users).
    """
    key = dm_key(user, other)
    room = Room.objects.filter(dm_key=key).first()
    if room is not None:
        return room, False
    try:
        with transaction.atomic():
            # Both users' rows, in id order: the memberships below take a share lock on each
            # (their foreign keys), so locking only the starter's deadlocked two starts from both ends.
            for pk in sorted({user.pk, other.pk}):
                get_user_model().objects.lock(pk)
            room = Room.objects.filter(dm_key=key).first()
            if room is not None:  # started while we waited for the locks
                return room, False
            since = timezone.now() - timedelta(seconds=settings.CHAT_ROOM_CREATE_WINDOW)
            if Room.objects.filter(created_by=user, created_at__gt=since).count() >= settings.CHAT_ROOM_CREATE_LIMIT:
                raise TooManyRooms
            # 2**64 random labels: unguessable, so no one can make a room under a DM's address first.
            room = Room.objects.create(
                label=f"{DM_PREFIX}{secrets.token_hex(8)}", is_private=True, created_by=user, dm_key=key
            )
            for member in {user.pk: user, other.pk: other}.values():
                Membership.objects.create(room=room, user=member)
    except IntegrityError:  # the same pair, started at the same moment elsewhere, won
        return Room.objects.get(dm_key=key), False
    logger.info("event=dm_started room=%s user=%s other=%s", room.pk, user.pk, other.pk)
    return room, True


def other_member(room: Room, user):
    """The person `user` talks to in a direct message (themselves in their own notes)."""
    member = room.memberships.exclude(user=user).select_related("user").first()
    return member.user if member else user
