"""The rooms a user has joined, with what is new in each: the sidebar of every room page.

A Membership is a joined room (and, for a private room, the right to see it).
`last_read_id` is the newest message the user has seen there; unread is what
comes after it, counted only up to UNREAD_CAP + 1 through the (room, id)
index, so a room with a million messages costs as much as one with a hundred
(README, Sidebar and unread). Changes reach every open page of the user over
their notifications socket (notifications.consumers), as frames room_activity,
room_read, room_mention and sidebar_changed.
"""

import logging
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import IntegrityError, connection, transaction
from django.db.models import Count
from django.db.models.expressions import RawSQL
from django.db.models.functions import Greatest

from .models import Membership, Message, Room

logger = logging.getLogger(__name__)

# Counts above this show as "99+": nobody reads a hundred messages by the number.
UNREAD_CAP = 99


@dataclass
class Entry:
    """One line of the sidebar."""

    label: str
    is_private: bool
    unread: int
    mentions: int
    last_read_id: int
    # For a direct message: the other person (None when it is one's own notes).
    dm_handle: str | None = None
    dm_name: str = ""

    @property
    def is_dm(self) -> bool:
        return self.dm_handle is not None

    @property
    def unread_label(self) -> str:
        return f"{UNREAD_CAP}+" if self.unread > UNREAD_CAP else str(self.unread)


@dataclass
class Sidebar:
    rooms: list[Entry] = field(default_factory=list)
    dms: list[Entry] = field(default_factory=list)


def room_group(room_id: int) -> str:
    """The channel-layer group of the notification sockets of a room's members."""
    return f"sidebar.room.{room_id}"


def _capped_unread_sql(table: str) -> str:
    # The inner LIMIT stops the scan of the (room, id) index at UNREAD_CAP + 1 rows, whatever the
    # room's size: an index-only scan on a table autovacuum keeps (README, Sidebar and unread).
    # No ORDER BY, which only tempts PostgreSQL to walk the primary key from the read position.
    message = connection.ops.quote_name(Message._meta.db_table)
    return (
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {message} unread_m WHERE unread_m.room_id = {table}.room_id"
        f" AND unread_m.id > {table}.last_read_id LIMIT {UNREAD_CAP + 1}) unread_t"
    )


def rooms_for(user) -> Sidebar:
    """The user's joined rooms (by label) and direct messages (latest first), in three queries."""
    from notifications.models import Notification  # notifications depends on chat, not the reverse

    table = connection.ops.quote_name(Membership._meta.db_table)
    # Plain rows, not model instances: building 50 Memberships and their Rooms cost more than the query.
    rows = list(
        Membership.objects.filter(user=user)
        .annotate(unread=RawSQL(_capped_unread_sql(table), []))
        .order_by("-room__last_activity_at")
        .values_list("room_id", "room__label", "room__is_private", "room__dm_key", "last_read_id", "unread")
    )
    room_ids = [row[0] for row in rows]
    mentions = dict(
        Notification.objects.filter(
            user=user, read_at__isnull=True, kind=Notification.Kind.MENTION, room_id__in=room_ids
        )
        .values_list("room_id")
        .annotate(n=Count("id"))
    )
    dm_ids = [row[0] for row in rows if row[3]]
    others = {
        m.room_id: m.user
        for m in Membership.objects.filter(room_id__in=dm_ids).exclude(user=user).select_related("user")
    }
    sidebar = Sidebar()
    for room_id, label, is_private, dm_key, last_read_id, unread in rows:
        entry = Entry(label, is_private, unread, mentions.get(room_id, 0), last_read_id)
        if dm_key:
            other = others.get(room_id, user)
            entry.dm_handle, entry.dm_name = other.username, other.display_name
            sidebar.dms.append(entry)
        else:
            sidebar.rooms.append(entry)
    sidebar.rooms.sort(key=lambda e: e.label)
    return sidebar


def unread_after(room: Room, last_read_id: int) -> int:
    """Messages of `room` after `last_read_id`, counted up to UNREAD_CAP + 1."""
    return room.messages.filter(id__gt=last_read_id).order_by().values("id")[: UNREAD_CAP + 1].count()


def membership(room: Room, user) -> Membership | None:
    return Membership.objects.filter(room=room, user=user).first()


def join(room: Room, user) -> Membership:
    """Join a public room (idempotent): it is read up to now, so joining brings no backlog of unread."""
    member, created = Membership.objects.get_or_create(room=room, user=user, defaults={"last_read_id": room.latest_message_id()})
    if created:
        logger.info("event=room_joined room=%s user=%s", room.pk, user.pk)
    return member


def leave(room: Room, user) -> bool:
    """Leave a room; a private room's access goes with it. Direct messages cannot be left."""
    if room.dm_key:
        return False
    deleted, _ = Membership.objects.filter(room=room, user=user).delete()
    if deleted:
        logger.info("event=room_left room=%s user=%s", room.pk, user.pk)
    return bool(deleted)


def mark_read(room: Room, user, message_id: int | None = None) -> int | None:
    """Move the user's read position forward to `message_id` (the room's newest if None).

    Never backwards (another tab may have read further) and never past the
    room's newest message. Tells every page of the user (room_read) and returns
    the unread count left; None when the user has not joined the room.
    """
    newest = room.latest_message_id()
    target = newest if message_id is None else min(message_id, newest)
    member = Membership.objects.filter(room=room, user=user)
    if not member.exists():
        return None
    member.filter(last_read_id__lt=target).update(last_read_id=target)
    position = member.values_list("last_read_id", flat=True).first() or 0
    unread = unread_after(room, position)
    frame = {"type": "room_read", "room": room.label, "last_read_id": position, "unread": unread}
    transaction.on_commit(lambda: push_to_user(user.pk, frame))
    return unread


def message_posted(message: Message) -> None:
    """A new message: its author has read up to it (and joins a public room by posting); members hear of it.

    Runs once the message is committed (chat.signals): Room.post holds the
    room's lock until then, and none of this needs it.
    """
    room = message.room
    try:
        updated = Membership.objects.filter(room=room, user_id=message.user_id).update(
            last_read_id=Greatest("last_read_id", message.pk)
        )
        if not updated and not room.is_private:
            try:
                with transaction.atomic():
                    Membership.objects.create(room=room, user_id=message.user_id, last_read_id=message.pk)
            except IntegrityError:  # a second socket of the author joined first
                pass
    except Exception:
        logger.exception("event=sidebar_post_failed message=%s", message.pk)
    frame = {"type": "room_activity", "room": room.label, "id": message.pk, "handle": message.user.username}
    _send(room_group(room.pk), {"type": "sidebar.frame", "frame": frame})


def push_to_user(user_id: int, frame: dict) -> None:
    """Send a frame to every notifications socket of the user (sidebar_changed re-reads their rooms there)."""
    from notifications.notify import user_group  # notifications imports chat: imported when used

    _send(user_group(user_id), {"type": "sidebar.frame", "frame": frame})


def _send(group: str, event: dict) -> None:
    # Live updates only: the database has it all, and a reload shows it. A Redis outage must not fail a post.
    try:
        async_to_sync(get_channel_layer().group_send)(group, event)
    except Exception as exc:
        logger.warning("event=sidebar_push_failed group=%s error=%r", group, exc)


def joined_room_ids(user_id: int) -> list[int]:
    return list(Membership.objects.filter(user_id=user_id).values_list("room_id", flat=True))
