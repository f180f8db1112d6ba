"""Mentions are found when a chat message is saved, by whichever code saves it."""

from django.db.models.signals import post_save
from django.dispatch import receiver

from chat.models import Message

from .tasks import process_mentions


@receiver(post_save, sender=Message, dispatch_uid="notifications.mentions")
def message_saved(sender, instance: Message, created: bool, raw: bool = False, **kwargs) -> None:
    # "@" in the text is a cheap filter: most messages mention nobody.
    if created and not raw and "@" in instance.text:
        # Inside the sender's transaction the task rings on commit, and
        # vanishes with a rolled-back message.
        process_mentions.enqueue(instance.pk)
