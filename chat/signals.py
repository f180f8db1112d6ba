"""Access ends with the room: a member removed from a private room, or a room made private,
closes the sockets that may no longer see it on every daphne (project.access)."""

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from project.access import announce, announce_access_change

from . import sidebar
from .models import Membership, Message, Room


@receiver(post_delete, sender=Membership)
def on_member_removed(sender: type, instance: Membership, **kwargs: Any) -> None:
    announce_access_change(instance.user_id, "removed")


@receiver(pre_save, sender=Room)
def remember_privacy(sender: type, instance: Room, **kwargs: Any) -> None:
    instance._made_private = (
        instance.pk is not None
        and instance.is_private
        and Room.objects.filter(pk=instance.pk, is_private=False).exists()
    )


@receiver(post_save, sender=Room)
def on_made_private(sender: type, instance: Room, **kwargs: Any) -> None:
    """Every socket in the room re-verifies: the non-members' close (4403), the members' stay."""
    if getattr(instance, "_made_private", False):
        announce(instance.group_name, "made_private")
        instance._made_private = False


# --- The sidebar (chat.sidebar): joined rooms and read positions -------------------------


@receiver(post_save, sender=Message, dispatch_uid="chat.sidebar.message")
def on_message_posted(sender: type, instance: Message, created: bool, raw: bool = False, **kwargs: Any) -> None:
    # After the commit: Room.post's lock on the room is released by then, and a rolled-back message tells nobody.
    if created and not raw:
        transaction.on_commit(lambda: sidebar.message_posted(instance), robust=True)


@receiver(post_save, sender=Membership, dispatch_uid="chat.sidebar.joined")
@receiver(post_delete, sender=Membership, dispatch_uid="chat.sidebar.left")
def on_membership_changed(sender: type, instance: Membership, raw: bool = False, **kwargs: Any) -> None:
    """The user's pages re-read their sidebar, and their notifications sockets the rooms they listen to."""
    if raw or kwargs.get("created") is False:
        return
    user_id = instance.user_id
    transaction.on_commit(lambda: sidebar.push_to_user(user_id, {"type": "sidebar_changed"}), robust=True)
