"""Where notifications listen: chat messages, memberships and deliveries being saved, and the ESP's reports on sent emails."""

import logging

from anymail.signals import tracking
from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone

from chat.models import Membership, Message

from . import notify
from .models import Delivery
from .tasks import process_invite, process_mentions, send_delivery

logger = logging.getLogger(__name__)


@receiver(post_save, sender=Message, dispatch_uid="notifications.mentions")
def message_saved(sender, instance: Message, created: bool, raw: bool = False, **kwargs) -> None:
    # "@" in the text is a cheap filter: most messages mention nobody. Every direct message notifies.
    if created and not raw and ("@" in instance.text or instance.room.dm_key):
        # Inside the sender's transaction the task rings on commit, and
        # vanishes with a rolled-back message.
        process_mentions.enqueue(instance.pk)


@receiver(post_save, sender=Membership, dispatch_uid="notifications.invites")
def membership_saved(sender, instance: Membership, created: bool, raw: bool = False, **kwargs) -> None:
    # Only an invitation by someone else: a private room's creator is made its first member.
    if created and not raw and instance.invited_by_id not in (None, instance.user_id):
        process_invite.enqueue(instance.pk)


@receiver(post_save, sender=Delivery, dispatch_uid="notifications.deliveries")
def delivery_created(sender, instance: Delivery, created: bool, raw: bool = False, **kwargs) -> None:
    # Every email or SMS is sent by a task of its own, enqueued in the transaction
    # that creates the delivery: both commit, or neither. notify.py only creates
    # deliveries, so it needs no import of tasks.py (which imports it).
    if created and not raw:
        later = instance.send_after > timezone.now()
        (send_delivery.using(run_after=instance.send_after) if later else send_delivery).enqueue(instance.pk)


@receiver(tracking, dispatch_uid="notifications.email_tracking")
def email_tracked(sender, event, esp_name: str, **kwargs) -> None:
    # Without a webhook secret anyone could post "bounced" for any address.
    if not settings.ANYMAIL.get("WEBHOOK_SECRET"):
        logger.warning("event=email_event_ignored reason=no_webhook_secret esp=%s", esp_name)
        return
    notify.email_event(event.event_type, event.message_id or "", event.recipient or "", event.description or "")
