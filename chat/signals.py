"""Access ends with the room: a member removed from a private room, or a room made private,
closes the sockets that may no longer see it on every daphne (project.access)."""

from typing import Any

from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from project.access import announce, announce_access_change

from .models import Membership, Room


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
