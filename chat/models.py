import functools
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery, Value
from django.utils import timezone

from project import rows

if TYPE_CHECKING:
    from accounts.models import User

MAX_MESSAGE_LENGTH = 4000
MAX_LABEL_LENGTH = 50
# More than RATE_LIMIT_COUNT messages within RATE_LIMIT_WINDOW per user are refused.
RATE_LIMIT_COUNT = 10
RATE_LIMIT_WINDOW = timedelta(seconds=5)

LABEL_RE = re.compile(r"^[a-z0-9_-]{1,%d}\Z" % MAX_LABEL_LENGTH)
# First path segments that belong to other routes (today or planned), so no
# room may take them: /<label>/ is the catch-all.
RESERVED_LABELS = frozenset(
    {
        "admin", "accounts", "login", "logout", "signup", "me", "new", "tasks",
        "chat", "static", "media", "notifications", "reports", "api", "search",
    }
)  # fmt: skip


def is_valid_label(label: str) -> bool:
    """Lower-case slug of at most 50 characters that no other route claims."""
    return bool(LABEL_RE.match(label)) and label not in RESERVED_LABELS


class RateLimited(Exception):
    """The user sent more than RATE_LIMIT_COUNT messages in RATE_LIMIT_WINDOW."""


class NoSuchParent(Exception):
    """A reply names a message of the room that cannot take replies: unknown, deleted, or a reply itself."""


class TooManyRooms(Exception):
    """The user created CHAT_ROOM_CREATE_LIMIT rooms within CHAT_ROOM_CREATE_WINDOW already."""


class RoomQuerySet(models.QuerySet):
    def visible_to(self, user) -> "RoomQuerySet":
        """Public rooms, and the private rooms `user` is a member of."""
        return self.filter(Q(is_private=False) | Q(memberships__user=user)).distinct()

    def listed_for(self, user) -> "RoomQuerySet":
        """The rooms `/` lists to `user`: public rooms someone has posted in or they made, and their private rooms.

        A room is made by merely visiting its address, so empty rooms are cheap
        to make by the thousand; left out of everyone else's list, they cost
        nobody a scroll. Most recently active first. Both conditions are EXISTS
        subqueries: a join to memberships would need a DISTINCT over every room,
        which made a page four times slower (README, Security).
        """
        posted = Exists(Message.objects.filter(room=OuterRef("pk")))
        member = Exists(Membership.objects.filter(room=OuterRef("pk"), user=user))
        public = Q(is_private=False) & (posted | Q(created_by=user))
        # Direct messages are the sidebar's, under the other person's name, not a directory's.
        return self.filter(public | member, dm_key__isnull=True).order_by("-last_activity_at", "-pk")

    def heads(self, pks: list[int]) -> dict[int, tuple[int, int]]:
        """Room pk -> (newest message id, change number), for the rooms `pks`, in one query."""
        latest = Message.objects.filter(room=OuterRef("pk")).order_by("-id").values("id")[:1]
        rows = self.filter(pk__in=pks).annotate(latest=Subquery(latest)).values_list("pk", "latest", "change_seq")
        return {pk: (latest or 0, change_seq) for pk, latest, change_seq in rows}

    def create_by(self, user: "User", label: str, is_private: bool = False) -> "Room":
        """A new room `user` made, unless they made CHAT_ROOM_CREATE_LIMIT within the window.

        Counted in the database under the user's row lock (accounts'
        UserManager.lock), so concurrent requests on any process cannot slip past
        the limit. Raises TooManyRooms over the limit, and IntegrityError when
        `label` is taken. The creator of a private room is its first member.
        """
        since = timezone.now() - timedelta(seconds=settings.CHAT_ROOM_CREATE_WINDOW)
        with transaction.atomic():
            get_user_model().objects.lock(user.pk)
            if Room.objects.filter(created_by=user, created_at__gt=since).count() >= settings.CHAT_ROOM_CREATE_LIMIT:
                raise TooManyRooms
            room = self.create(label=label, is_private=is_private, created_by=user)
            if is_private:
                room.invite(user)
        return room

    def find(self, label: str, user) -> "Room":
        """The room `label` names, if `user` may see it: the one lookup of every page, endpoint and socket.

        Raises Room.DoesNotExist for an invalid label or no such room, and
        RoomHidden, a subclass of it, for a room the user may not see (a private
        room they are not in). Callers that catch DoesNotExist answer both alike,
        so nothing leaks (a 404); the room socket tells them apart (4404, 4403).

        The room's row is read with SQL built once, straight from the cursor, and
        loaded as the ORM would (whatever this queryset's filters): every socket
        connect pays it, and built through the ORM the read cost several times
        the statement itself in the daphne (README.md, Benchmarks, idle sockets).
        """
        room = _room_by_label(label) if is_valid_label(label) else None
        if room is None:
            raise Room.DoesNotExist(f"No room {label[:60]!r}.")
        if not room.can_view(user):
            raise RoomHidden(f"Room {label!r} is private.")
        return room


class Room(models.Model):
    label = models.SlugField(max_length=MAX_LABEL_LENGTH, unique=True)
    is_private = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Bumped by every message; also serialises a room's inserts (see Room.post).
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Set on a direct message only: "<lower user id>:<higher user id>", unique, so one
    # conversation per pair however many start it at once (chat.dm).
    dm_key = models.CharField(max_length=41, null=True, blank=True, unique=True)
    # The room's change counter: every edit, delete, reaction or reply count
    # takes the next value under the room's row lock (chat.edits), so a client
    # catches up with "changes after the last one I saw".
    change_seq = models.BigIntegerField(default=0, db_default=0)

    objects = RoomQuerySet.as_manager()

    class Meta:
        ordering = ["-last_activity_at"]
        # TooManyRooms counts a user's recent rooms.
        indexes = [models.Index(fields=["created_by", "created_at"], name="chat_room_creator_recent")]

    def __str__(self) -> str:
        return self.label

    @property
    def group_name(self) -> str:
        """The channel-layer group every socket in this room joins."""
        return f"room.{self.pk}"

    def can_view(self, user) -> bool:
        if not user.is_authenticated:
            return False
        if not self.is_private:
            return True
        return self.memberships.filter(user=user).exists()

    def next_change_seq(self) -> int:
        """Take the room's next change number; call inside a transaction (it locks the room's row until commit)."""
        Room.objects.filter(pk=self.pk).update(change_seq=F("change_seq") + 1)
        return Room.objects.filter(pk=self.pk).values_list("change_seq", flat=True).get()

    def latest_message_id(self) -> int:
        """The id of the room's newest message, 0 for an empty room (the (room, id) index's last entry)."""
        return self.messages.order_by("-id").values_list("id", flat=True).first() or 0

    def post(
        self, user: "User", text: str, client_id: str, parent_id: int | None = None, also_in_room: bool = False
    ) -> tuple["Message", bool]:
        """Store a message; returns (message, created).

        A second call with the same `client_id` from the same user is a retry and
        returns the original (created=False), so a client may resend freely.

        The UPDATE of last_activity_at comes first: its row lock serialises the
        room's inserts, so message ids commit in id order and a client syncing
        "after id N" can never miss a message that commits later with a lower id.
        Under that lock the room's latest id is the new message's predecessor,
        kept as `message.previous_id` (0 for a room's first message, None on a
        retry, whose predecessor is not looked up): a socket that has not
        seen it knows it missed something (chat.consumers).
        Raises RoomHidden, storing nothing, when `user` may not see the room
        (a private room they are not, or no longer, a member of).
        A reply (`parent_id`, a top-level message of this room, not deleted;
        else NoSuchParent) bumps its parent's reply count under the same lock,
        as a change of the parent (`message.parent_change`, its change number).
        The retry and rate-limit checks read before the lock, in one query, to
        keep the room locked for as short a time as possible; two sockets of one
        user posting at the same instant may slip one message past the limit.
        """
        now = timezone.now()
        window = Q(created_at__gt=now - RATE_LIMIT_WINDOW)
        seen = Message.objects.filter(Q(client_id=client_id) | window, user=user).aggregate(
            retry_of=models.Max("pk", filter=Q(client_id=client_id)), recent=models.Count("pk", filter=window)
        )
        member = Membership.objects.filter(room=OuterRef("pk"), user=user)
        visible = Room.objects.filter(Q(is_private=False) | Exists(member), pk=self.pk)
        if seen["retry_of"] is not None:
            if not visible.exists():  # nothing of the room, not even one's own message, once it is hidden
                raise RoomHidden(f"Room {self.label!r} is private.")
            return Message.objects.get(pk=seen["retry_of"]), False
        if seen["recent"] >= RATE_LIMIT_COUNT:
            raise RateLimited
        try:
            with transaction.atomic():
                # The lock, and the check that `user` may still see the room (a removed
                # member's socket may still be open), in one statement.
                if not visible.update(last_activity_at=now):
                    raise RoomHidden(f"Room {self.label!r} is private.")
                previous = self.latest_message_id()
                if parent_id is not None:
                    parent = self.messages.filter(pk=parent_id, parent__isnull=True, deleted_at__isnull=True)
                    if not parent.exists():
                        raise NoSuchParent(parent_id)
                message = Message.objects.create(
                    room=self, user=user, text=text, client_id=client_id, parent_id=parent_id,
                    also_in_room=also_in_room and parent_id is not None,
                )  # fmt: skip
                if parent_id is not None:
                    message.parent_change = self.next_change_seq()
                    self.messages.filter(pk=parent_id).update(
                        reply_count=F("reply_count") + 1, last_reply_at=message.created_at,
                        change_seq=message.parent_change,
                    )  # fmt: skip
        except IntegrityError:
            # The same retry raced us from another socket and won.
            return Message.objects.get(user=user, client_id=client_id), False
        self.last_activity_at = now
        message.previous_id = previous
        return message, True

    def invite(self, user: "User", invited_by: "User | None" = None) -> "Membership":
        """Make `user` a member (idempotent)."""
        membership, _ = Membership.objects.get_or_create(room=self, user=user, defaults={"invited_by": invited_by})
        return membership


class RoomHidden(Room.DoesNotExist):
    """The room exists, but the user may not see it (see RoomQuerySet.find)."""


@functools.cache
def _room_sql(vendor: str) -> str:
    """The read of a room by label (see RoomQuerySet.find)."""
    return f"SELECT {rows.columns(Room)} FROM {connection.ops.quote_name(Room._meta.db_table)} WHERE label = %s"


def _room_by_label(label: str) -> Room | None:
    with connection.cursor() as cursor:
        cursor.execute(_room_sql(connection.vendor), [label])
        row = cursor.fetchone()
    return None if row is None else rows.load(Room, row)


class Membership(models.Model):
    """Who may see a private room, and whose sidebar lists a room (chat.sidebar).

    Public rooms need no membership to be seen: one is made by posting or Join.
    """

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The newest message the user has seen here (chat.sidebar): unread is what comes after it.
    last_read_id = models.PositiveBigIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [models.UniqueConstraint("room", "user", name="chat_membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.room}"


class Message(models.Model):
    # Set by Room.post on a new message: the id of the room's message before it, 0 if none (not stored).
    previous_id: int | None = None
    # Set by Room.post on a new reply: the change number of its parent's new reply count (not stored).
    parent_change: int | None = None

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages")
    # Stored exactly as typed; escaping is the renderer's job.
    text = models.TextField(max_length=MAX_MESSAGE_LENGTH)
    # The sender's own id for this message: a retry with the same id is the same message.
    client_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # A thread reply's parent (threads are one level deep); `also_in_room`: shown in the room's timeline too.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies")
    also_in_room = models.BooleanField(default=False, db_default=False)
    edited_at = models.DateTimeField(null=True, blank=True)
    # A deleted message keeps its row (a tombstone in the timeline); its text is blanked (chat.edits).
    deleted_at = models.DateTimeField(null=True, blank=True)
    # Replies not deleted, and when the newest was posted.
    reply_count = models.PositiveIntegerField(default=0, db_default=0)
    last_reply_at = models.DateTimeField(null=True, blank=True)
    # [[emoji, [handle, ...]], ...] in order of first use: the Reaction rows, summed up for frames.
    reactions = models.JSONField(default=list, db_default=Value([], output_field=models.JSONField()), blank=True)
    # The room's change number of this message's latest change (0: never changed).
    change_seq = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint("user", "client_id", name="chat_message_client_id_unique"),
        ]
        indexes = [
            models.Index(fields=["room", "id"], name="chat_message_room_id"),
            # "Changes after N" (chat.changes) reads only changed messages: most never are.
            models.Index(fields=["room", "change_seq"], name="chat_message_changes", condition=Q(change_seq__gt=0)),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.user} in {self.room}"


class MessageVersion(models.Model):
    """A message's text before an edit: its author and the room's moderators may read them."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="versions")
    text = models.TextField(max_length=MAX_MESSAGE_LENGTH)
    # When this text was replaced.
    replaced_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"version of #{self.message_id}"


class Reaction(models.Model):
    """One user's emoji on one message."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reaction_rows")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    emoji = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint("message", "user", "emoji", name="chat_reaction_unique")]

    def __str__(self) -> str:
        return f"{self.emoji} by {self.user_id} on #{self.message_id}"


class ServerProcess(models.Model):
    """A daphne process holding room sockets: its presence rows are fresh while it is.

    Inserted when the process's first room socket arrives, then refreshed by
    the process, in one statement, every CHAT_PRESENCE_TTL / 3 whatever its
    socket count (chat.presence). One whose `last_seen` is older than the TTL
    died or stalled: any live process sweeps it and its presence rows.
    """

    started = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"process {self.pk} since {self.started:%Y-%m-%d %H:%M:%S}"

    @staticmethod
    def dead_before(now: datetime | None = None) -> datetime:
        """A process last seen at or before this (CHAT_PRESENCE_TTL before `now`) is dead."""
        return (now or timezone.now()) - timedelta(seconds=settings.CHAT_PRESENCE_TTL)


class PresenceQuerySet(models.QuerySet):
    def fresh(self) -> "PresenceQuerySet":
        """The rows of live processes: a socket is present while its process keeps its row fresh."""
        return self.filter(process__last_seen__gt=ServerProcess.dead_before())


class Presence(models.Model):
    """One open socket in a room, on any daphne process.

    Shared in the database so presence is right across processes; it is as
    fresh as its process's row, and goes with it.
    """

    channel_name = models.CharField(max_length=100, primary_key=True)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="presences")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    process = models.ForeignKey(ServerProcess, on_delete=models.CASCADE, related_name="presences")
    connected_at = models.DateTimeField(auto_now_add=True)

    objects = PresenceQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.user} in {self.room} via {self.channel_name}"


def rooms_showing(user_id: int, since: datetime) -> set[int]:
    """Ids of the rooms whose open pages may show this user.

    Those where the user has a socket open (the presence list), and those they
    posted in since `since` (their messages are on screen there, even after
    they left). Plain SQL: a worker asks this for every avatar it makes, and
    building this union through the ORM cost several times the query itself
    (bench/thumbnails.py, profiled).
    """
    quote = connection.ops.quote_name
    sql = (
        f"SELECT room_id FROM {quote(Presence._meta.db_table)} WHERE user_id = %s "
        f"UNION SELECT room_id FROM {quote(Message._meta.db_table)} WHERE user_id = %s AND created_at >= %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [user_id, user_id, connection.ops.adapt_datetimefield_value(since)])
        return {room_id for (room_id,) in cursor.fetchall()}
