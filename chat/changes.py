"""Catching up on changes: the messages changed after a room's change number N, for `sync` and sockets.

A message keeps only its latest change number, so a client that missed several
changes of one message is sent its final state once, at its latest number.
"""

from typing import Any

from .edits import change_frame
from .models import Room

# A page of changes: as many as a sync page has messages.
CHANGES_LIMIT = 500


def changes_after(room: Room, seq: int) -> tuple[list[dict[str, Any]], bool]:
    """Change frames of `room`'s messages changed after change number `seq`, in change order; more?"""
    rows = list(
        room.messages.filter(change_seq__gt=seq).select_related("user", "room").order_by("change_seq")[
            : CHANGES_LIMIT + 1
        ]
    )
    return [change_frame(m) for m in rows[:CHANGES_LIMIT]], len(rows) > CHANGES_LIMIT


def latest_change(room: Room) -> int:
    """The room's change number now: a socket entering the room is owed the changes after it."""
    return Room.objects.filter(pk=room.pk).values_list("change_seq", flat=True).get()
