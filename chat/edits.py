"""Changing messages after they were posted: edit, delete, react, and reading threads and old versions.

Plain functions the room socket calls (chat.edit_frames) and tests call directly.
Every change happens under the room's row lock and takes the room's next
change number (Room.change_seq), which the changed message keeps: a client
that saw changes up to N catches up with chat.changes.changes_after(room, N).
Each function returns the change frames to broadcast, in change order.
"""

import functools
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, Max, OuterRef, Q
from django.dispatch import Signal
from django.utils import timezone

from .models import (
    RATE_LIMIT_COUNT,
    RATE_LIMIT_WINDOW,
    Membership,
    Message,
    MessageVersion,
    RateLimited,
    Reaction,
    Room,
    RoomHidden,
)
from .protocol import iso, message_frame

if TYPE_CHECKING:
    from accounts.models import User

# Sent after a message's text was removed (on commit): apps holding copies of
# it (reports' exports and insights) drop them. Arguments: room_id, message_id, created_at.
message_deleted = Signal()

# Distinct emoji one message may carry; one more is refused (`too_many_reactions`).
MAX_EMOJI_PER_MESSAGE = 20

@functools.cache
def _emoji_patterns() -> tuple[Any, Any]:
    """One emoji as people type or pick it: a single grapheme cluster that is a
    pictograph (with its skin tones, ZWJ sequences and variation selectors), a
    flag (two regional indicators, or a subdivision's tag sequence) or a keycap;
    and one grapheme cluster.

    Compiled by the first reaction a process checks: every process imports this
    module (reports' receivers use its signal), only daphnes check emoji, and
    `regex` (for its Unicode properties) is a library of its own to load.
    """
    import regex

    emoji = regex.compile(
        r"(?:\p{Extended_Pictographic}|\p{Regional_Indicator}{2}|[0-9#*]\uFE0F?\u20E3)"
        r"[\p{Extended_Pictographic}\p{Emoji_Modifier}\p{Emoji_Component}\u200D\uFE0F\U000E0020-\U000E007F]*"
    )
    return emoji, regex.compile(r"\X")


# Replies a `thread` frame is answered with at most (the first ones).
MAX_THREAD = 500


class Refused(Exception):
    """A change the user may not make; `code` is the error frame's (README, protocol)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def is_emoji(text: str) -> bool:
    """Whether `text` is exactly one emoji (not text, not two emoji)."""
    emoji, grapheme = _emoji_patterns()
    return bool(grapheme.fullmatch(text)) and bool(emoji.fullmatch(text))


def is_moderator(room: Room, user: "User") -> bool:
    """The room's creator and staff may delete any message of the room, and read old versions."""
    return user.is_staff or (room.created_by_id is not None and room.created_by_id == user.pk)


def change_frame(message: Message) -> dict[str, Any]:
    """A change of `message`: its whole new state, numbered with its change number."""
    return {"type": "change", "seq": message.change_seq, "message": message_frame(message)}


def _lock(room: Room, user: "User") -> int:
    """Lock the room's row and take its next change number, if `user` may still see the room.

    One statement, as Room.post's: a member removed a moment ago changes nothing.
    """
    member = Membership.objects.filter(room=OuterRef("pk"), user=user)
    visible = Room.objects.filter(Q(is_private=False) | Exists(member), pk=room.pk)
    if not visible.update(change_seq=F("change_seq") + 1):
        raise RoomHidden(f"Room {room.label!r} is private.")
    return Room.objects.filter(pk=room.pk).values_list("change_seq", flat=True).get()


def _message(room: Room, message_id: int) -> Message:
    message = Message.objects.select_related("room", "user").filter(pk=message_id, room=room).first()
    if message is None:
        raise Refused("not_found", f"No message {message_id} in this room.")
    return message


def _changed(message: Message, seq: int, **fields: Any) -> dict[str, Any]:
    """Store `fields` and the change number on `message`; its change frame."""
    for name, value in fields.items():
        setattr(message, name, value)
    message.change_seq = seq
    Message.objects.filter(pk=message.pk).update(change_seq=seq, **fields)
    return change_frame(message)


def edit_message(room: Room, user: "User", message_id: int, text: str) -> list[dict[str, Any]]:
    """Replace the text of `user`'s own message, keeping the old text as a MessageVersion.

    Edits count against the message rate limit (RateLimited): posts and edits
    of the last RATE_LIMIT_WINDOW together. A mention the new text adds is
    notified (notifications' task notifies each user once per message).
    """
    since = timezone.now() - RATE_LIMIT_WINDOW
    recent = Message.objects.filter(user=user, created_at__gt=since).count()
    recent += MessageVersion.objects.filter(message__user=user, replaced_at__gt=since).count()
    if recent >= RATE_LIMIT_COUNT:
        raise RateLimited
    with transaction.atomic():
        seq = _lock(room, user)
        message = _message(room, message_id)
        if message.user_id != user.pk:
            raise Refused("forbidden", "You can only edit your own messages.")
        if message.deleted_at is not None:
            raise Refused("deleted", "This message was deleted.")
        window = settings.CHAT_EDIT_WINDOW
        if window is not None and timezone.now() - message.created_at > timedelta(seconds=window):
            raise Refused("edit_window", f"Messages can only be edited for {int(window)} seconds after posting.")
        if message.text == text:
            raise Refused("unchanged", "The new text is the same as the old.")
        MessageVersion.objects.create(message=message, text=message.text)
        frame = _changed(message, seq, text=text, edited_at=timezone.now())
        if "@" in text:
            # notifications imports chat, not the reverse: imported here, when needed.
            from notifications.tasks import process_mentions

            process_mentions.enqueue(message.pk)  # rings on commit
    return [frame]


def delete_message(room: Room, user: "User", message_id: int) -> list[dict[str, Any]]:
    """Delete a message: its own author, or a moderator of the room (is_moderator).

    The text is blanked in the database, with every old version and reaction;
    the row stays as a tombstone. Its in-app notifications go (their users'
    unread counts are pushed again), its parent's reply count drops, and
    `message_deleted` tells apps with copies (exports, insights).
    """
    from notifications.models import Notification
    from notifications.notify import push_unread

    with transaction.atomic():
        seq = _lock(room, user)
        message = _message(room, message_id)
        if message.user_id != user.pk and not is_moderator(room, user):
            raise Refused("forbidden", "You can only delete your own messages.")
        if message.deleted_at is not None:
            raise Refused("deleted", "This message was deleted already.")
        MessageVersion.objects.filter(message=message).delete()
        Reaction.objects.filter(message=message).delete()
        notified = set(Notification.objects.filter(message=message).values_list("user_id", flat=True))
        Notification.objects.filter(message=message).delete()
        frames = [_changed(message, seq, text="", deleted_at=timezone.now(), reactions=[])]
        if message.parent_id is not None:
            replies = Message.objects.filter(parent_id=message.parent_id, deleted_at__isnull=True)
            parent = _message(room, message.parent_id)
            frames.append(
                _changed(
                    parent,
                    room.next_change_seq(),
                    reply_count=replies.count(),
                    last_reply_at=replies.aggregate(last=Max("created_at"))["last"],
                )
            )
        for user_id in notified:
            transaction.on_commit(lambda user_id=user_id: push_unread(user_id))
        transaction.on_commit(
            lambda: message_deleted.send(
                Message, room_id=room.pk, message_id=message.pk, created_at=message.created_at
            )
        )
    return frames


def toggle_reaction(room: Room, user: "User", message_id: int, emoji: str) -> list[dict[str, Any]]:
    """Add `user`'s `emoji` to a message, or take it away if it is there."""
    if not is_emoji(emoji):
        raise Refused("bad_emoji", "A reaction is a single emoji.")
    with transaction.atomic():
        seq = _lock(room, user)
        message = _message(room, message_id)
        if message.deleted_at is not None:
            raise Refused("deleted", "This message was deleted.")
        mine = Reaction.objects.filter(message=message, user=user, emoji=emoji)
        if not mine.delete()[0]:
            summary = {e: handles for e, handles in message.reactions}
            if emoji not in summary and len(summary) >= MAX_EMOJI_PER_MESSAGE:
                raise Refused("too_many_reactions", f"A message takes at most {MAX_EMOJI_PER_MESSAGE} different emoji.")
            Reaction.objects.create(message=message, user=user, emoji=emoji)  # the room lock rules out a twin
        summary_rows: dict[str, list[str]] = {}
        for e, handle in Reaction.objects.filter(message=message).order_by("id").values_list("emoji", "user__username"):
            summary_rows.setdefault(e, []).append(handle)
        frame = _changed(message, seq, reactions=[[e, handles] for e, handles in summary_rows.items()])
    return [frame]


def message_versions(room: Room, user: "User", message_id: int) -> list[dict[str, str]]:
    """A message's earlier texts, oldest first: for its author and the room's moderators."""
    message = _message(room, message_id)
    if message.user_id != user.pk and not is_moderator(room, user):
        raise Refused("forbidden", "Only the author and the room's moderators can see earlier versions.")
    return [{"text": v.text, "replaced": iso(v.replaced_at)} for v in message.versions.order_by("id")]


def thread(room: Room, user: "User", message_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A thread: its parent's frame and its replies' frames (tombstones included), oldest first.

    Anyone who sees the room (`user`, checked by the caller) sees its threads.
    """
    parent = _message(room, message_id)
    if parent.parent_id is not None:
        raise Refused("not_a_thread", "Replies have no thread of their own; open their parent's.")
    replies = Message.objects.filter(parent=parent).select_related("room", "user").order_by("id")[:MAX_THREAD]
    return message_frame(parent), [message_frame(m) for m in replies]
