"""From a saved message or membership to notifications: who was mentioned or invited, who hears of it where, and when."""

import logging
from datetime import timedelta
from typing import NamedTuple

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.functions import Lower
from django.urls import reverse
from django.utils import timezone

from chat.models import Membership, Message, Presence, Room
from chat.sidebar import push_to_user
from tasks.backends import enqueue_many

from . import content, tokens
from .delivery import address, unsubscribe_link, usable_channel
from .mentions import parse_mentions
from .models import Delivery, Notification, PhoneConfirmation

logger = logging.getLogger(__name__)

# At most one email or SMS per user and room in any such window.
WINDOW = timedelta(minutes=5)
Status = Delivery.Status


def user_group(user_id: int) -> str:
    """The channel-layer group of a user's open pages: they hear the unread count."""
    return f"notifications.user.{user_id}"


def present_user_ids(room: Room) -> set[int]:
    """Users with an open socket in `room` right now (the rows of a dead process do not count)."""
    return set(Presence.objects.fresh().filter(room=room).values_list("user_id", flat=True))


def known_handles(handles: list[str]) -> set[str]:
    """Which of `handles` (lowercased) name an active user: the room page highlights only those."""
    User = get_user_model()
    lowered = {handle.lower() for handle in handles}
    found = User.objects.annotate(handle_ci=Lower("username")).filter(handle_ci__in=lowered, is_active=True)
    return set(found.values_list("handle_ci", flat=True))


def mentioned_users(message: Message) -> list:
    """Users `message` notifies: named or @here (in a direct message, the other person), never its
    author, only those who can see the room."""
    handles, here = parse_mentions(message.text)
    User = get_user_model()
    users = {u.pk: u for u in User.objects.annotate(handle_ci=Lower("username")).filter(handle_ci__in=handles)}
    if here:
        users.update({u.pk: u for u in User.objects.filter(pk__in=present_user_ids(message.room))})
    if message.room.dm_key:
        # Every message of a direct message is meant for the other person: a mention of them.
        users.update({u.pk: u for u in User.objects.filter(memberships__room=message.room)})
    users.pop(message.user_id, None)
    return [user for user in users.values() if user.is_active and message.room.can_view(user)]


def notify_mentions(message_id: int) -> int:
    """Notify everyone `message` mentions; how many new notifications. Safe to run twice."""
    message = Message.objects.select_related("room", "user").filter(pk=message_id).first()
    if message is None:
        return 0
    room = message.room
    users = mentioned_users(message)
    present = present_user_ids(room)
    created, deliveries = [], []
    with transaction.atomic():
        for user in users:
            notification, new = Notification.objects.get_or_create(
                user=user, message=message, defaults={"room": room, "kind": Notification.Kind.MENTION}
            )
            if not new:
                continue
            created.append(user.pk)
            # Looking at the room right now: the message is in front of them.
            if user.pk not in present and usable_channel(user):
                gather(notification, deliveries)
        enqueue_deliveries(deliveries)
        for user_id in created:
            transaction.on_commit(lambda user_id=user_id: push_unread(user_id))
            transaction.on_commit(lambda user_id=user_id: push_room_mention(user_id, room))
    logger.info("event=mentions message=%s room=%s notified=%d", message.pk, room.pk, len(created))
    return len(created)


def gather(notification: Notification, new: list[Delivery]) -> Delivery:
    """Put a mention into the user's next email/SMS for that room, creating it if needed.

    The first mention after a quiet window goes out at once; later ones join
    a delivery due when the window of the last one ends. A delivery created
    here is added to `new`, for enqueue_deliveries(): a mention of many users
    enqueues their tasks together, not one by one as signals.delivery_created
    does for a delivery saved elsewhere.
    """
    get_user_model().objects.lock(notification.user_id)
    open_delivery = Delivery.objects.filter(
        user_id=notification.user_id, room_id=notification.room_id, kind=Delivery.Kind.MENTION, status=Status.QUEUED
    ).first()
    if open_delivery is None:
        now = timezone.now()
        last = (
            Delivery.objects.filter(
                user_id=notification.user_id, room_id=notification.room_id, kind=Delivery.Kind.MENTION,
                status__in=[Status.SENDING, Status.SENT, Status.UNCERTAIN],
            )  # fmt: skip
            .order_by("-send_after")
            .first()
        )
        send_after = max(now, (last.started_at or last.send_after) + WINDOW) if last else now
        open_delivery = Delivery(
            user_id=notification.user_id, room_id=notification.room_id, kind=Delivery.Kind.MENTION,
            channel=usable_channel(notification.user), send_after=send_after,
        )  # fmt: skip
        # bulk_create sends no post_save: its task is enqueued with the others' (enqueue_deliveries).
        Delivery.objects.bulk_create([open_delivery])
        new.append(open_delivery)
        logger.info("event=delivery_scheduled delivery=%s user=%s room=%s at=%s", open_delivery.pk,
                    notification.user_id, notification.room_id, send_after.isoformat())  # fmt: skip
    notification.delivery = open_delivery
    notification.save(update_fields=["delivery"])
    return open_delivery


def enqueue_deliveries(deliveries: list[Delivery]) -> None:
    """Enqueue each new delivery's sending: those due now in one INSERT (enqueue_many), the
    others each due at its time. Inside the caller's transaction: they ring on commit."""
    from .tasks import send_delivery  # tasks.py imports this module

    now = timezone.now()
    due = [delivery for delivery in deliveries if delivery.send_after <= now]
    if due:
        enqueue_many(send_delivery, [((delivery.pk,), {}) for delivery in due])
    for delivery in deliveries:
        if delivery.send_after > now:
            send_delivery.using(run_after=delivery.send_after).enqueue(delivery.pk)


# --- Invitations to a private room -----------------------------------------------------


def notify_invite(membership_id: int) -> Notification | None:
    """Tell a user someone else made them a member of a private room. Safe to run twice.

    In Parley always, and by email or SMS on the channel mentions reach them by:
    they cannot find a private room they were never told of.
    """
    membership = Membership.objects.select_related("room", "user", "invited_by").filter(pk=membership_id).first()
    if membership is None or membership.invited_by is None or not membership.user.is_active:
        return None
    user, room, inviter = membership.user, membership.room, membership.invited_by
    with transaction.atomic():
        notification, new = Notification.objects.get_or_create(user=user, room=room, kind=Notification.Kind.INVITE)
        if not new:
            return notification
        transaction.on_commit(lambda: push_unread(user.pk))
        channel = usable_channel(user)
        if channel is not None:
            delivery = Delivery(user=user, kind=Delivery.Kind.INVITE, channel=channel, room=room,
                                to=address(user, channel), send_after=timezone.now())  # fmt: skip
            if channel == Delivery.Channel.SMS:
                delivery.body = content.invite_sms(room, inviter)
            else:
                delivery.subject, delivery.body, delivery.html = content.invite_email(
                    user, room, inviter, unsubscribe_link(user)
                )
            delivery.save()  # and sent by its own task (signals.delivery_created)
            notification.delivery = delivery
            notification.save(update_fields=["delivery"])
    logger.info("event=invite_notified user=%s room=%s by=%s channel=%s",
                user.pk, room.pk, inviter.pk, channel or "app")  # fmt: skip
    return notification


# --- In Parley: unread count, list, read --------------------------------------------


def unread_count(user) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def push_unread(user_id: int) -> None:
    """Tell the user's open pages their unread count. Never raises: the count is in the database."""
    count = Notification.objects.filter(user_id=user_id, read_at__isnull=True).count()
    try:
        async_to_sync(get_channel_layer().group_send)(
            user_group(user_id), {"type": "notifications.unread", "count": count}
        )
    except Exception as exc:
        logger.warning("event=unread_push_failed user=%s error=%r", user_id, exc)


def push_room_mention(user_id: int, room: Room) -> None:
    """Tell the user's sidebars how many unread mentions `room` holds for them now (if it is in them)."""
    if not Membership.objects.filter(user_id=user_id, room=room).exists():
        return
    count = Notification.objects.filter(
        user_id=user_id, room=room, kind=Notification.Kind.MENTION, read_at__isnull=True
    ).count()
    push_to_user(user_id, {"type": "room_mention", "room": room.label, "mentions": count})


def mark_read(user, ids: list[int] | None = None, room: Room | None = None) -> int:
    """Mark the user's notifications read: these ids, those of a room, or all of them."""
    unread = Notification.objects.filter(user=user, read_at__isnull=True)
    if ids is not None:
        unread = unread.filter(pk__in=ids)
    if room is not None:
        unread = unread.filter(room=room)
    changed = unread.update(read_at=timezone.now())
    if changed:
        transaction.on_commit(lambda: push_unread(user.pk))
        if room is not None:
            transaction.on_commit(lambda: push_room_mention(user.pk, room))
    return changed


# --- The test notification ------------------------------------------------------------


def send_test(user_id: int) -> Delivery | None:
    """An in-app notification, and an email or SMS on the user's channel if it is usable."""
    user = get_user_model().objects.get(pk=user_id)
    with transaction.atomic():
        Notification.objects.create(user=user, kind=Notification.Kind.TEST)
        transaction.on_commit(lambda: push_unread(user.pk))
        channel = usable_channel(user)
        if channel is None:
            return None
        delivery = Delivery(user=user, kind=Delivery.Kind.TEST, channel=channel, to=address(user, channel),
                            send_after=timezone.now())  # fmt: skip
        if channel == Delivery.Channel.SMS:
            delivery.body = f"Parley: your test notification. Mentions will reach you here. {content.absolute('/')}"
        else:
            delivery.subject = "Parley test notification"
            delivery.body, delivery.html = content.render_email(
                "test", {"user": user, "unsubscribe_link": unsubscribe_link(user)}
            )
        delivery.save()  # and sent by its own task (signals.delivery_created)
    return delivery


# --- Changed addresses and their confirmation ------------------------------------------


def choosable_channels(user) -> list[str]:
    """Where mentions may be sent from now on: in Parley, and to each confirmed address.

    The user's current channel stays choosable while its new address waits for
    confirmation (nothing goes there until then: delivery.usable_channel).
    """
    Channel = get_user_model().MentionChannel
    channels = [Channel.APP]
    if user.email and user.email_confirmed or user.mention_channel == Channel.EMAIL:
        channels.append(Channel.EMAIL)
    if user.phone and user.phone_confirmed or user.mention_channel == Channel.SMS:
        channels.append(Channel.SMS)
    return channels


class SettingsChange(NamedTuple):
    """What change_settings did: confirmations sent ("email", "sms"), and a channel it refused."""

    sent: list[str]
    refused_channel: str | None


def change_settings(user, *, email: str, phone: str, channel: str) -> SettingsChange:
    """Save a user's notification settings; a new address is unconfirmed until confirmed.

    A channel whose address is not confirmed cannot be chosen: the user keeps
    the channel they had, and chooses it once the code or link has come back.
    Confirmations go out by each delivery's own task (signals.delivery_created).
    """
    sent = []
    with transaction.atomic():
        user = get_user_model().objects.lock(user.pk)
        if email != user.email:
            user.email, user.email_confirmed, user.email_opted_out = email, False, False
            if email:
                send_email_confirmation(user)
                sent.append("email")
        if phone != user.phone:
            user.phone, user.phone_confirmed, user.sms_opted_out = phone, False, False
            PhoneConfirmation.objects.filter(user=user).delete()
            if phone:
                send_phone_code(user)
                sent.append("sms")
        refused = None
        if channel in choosable_channels(user):
            user.mention_channel = channel
        else:
            refused = channel
        user.save(update_fields=["email", "email_confirmed", "email_opted_out", "phone", "phone_confirmed",
                                 "sms_opted_out", "mention_channel"])  # fmt: skip
    logger.info("event=notification_settings user=%s channel=%s refused=%s confirm=%s",
                user.pk, user.mention_channel, refused, ",".join(sent))  # fmt: skip
    return SettingsChange(sent, refused)


def send_email_confirmation(user) -> Delivery:
    """A confirmation link to the user's (unconfirmed) email address, sent by its own task."""
    link = content.absolute(reverse("notifications:confirm_email", args=[tokens.confirm_email_token(user, user.email)]))
    text, html = content.render_email(
        "confirm", {"user": user, "email": user.email, "confirm_link": link, "days": tokens.CONFIRM_EMAIL_DAYS}
    )
    return Delivery.objects.create(
        user=user, kind=Delivery.Kind.CONFIRM, channel=Delivery.Channel.EMAIL, to=user.email,
        subject="Confirm your email for Parley", body=text, html=html, send_after=timezone.now(),
    )  # fmt: skip


def send_phone_code(user) -> Delivery:
    """A new code texted to the user's (unconfirmed) number; an older code stops working."""
    code = tokens.new_code()
    PhoneConfirmation.objects.update_or_create(
        user=user, defaults={"phone": user.phone, "code_hash": tokens.hash_code(user.phone, code),
                             "created_at": timezone.now(), "attempts_left": 5},
    )  # fmt: skip
    return Delivery.objects.create(
        user=user, kind=Delivery.Kind.CONFIRM, channel=Delivery.Channel.SMS, to=user.phone,
        body=f"Parley code: {code}. Enter it on your profile to get mentions by SMS.",
        send_after=timezone.now(),
    )  # fmt: skip


# A confirmation is sent again at once after a failure, else at most once a minute:
# each text costs money, and a click on a stale page must not send a burst.
RESEND_AFTER = timedelta(minutes=1)


def resend_confirmation(user, channel: str) -> bool:
    """Send the confirmation of an unconfirmed address again (after one that failed); False if none is due."""
    with transaction.atomic():
        user = get_user_model().objects.lock(user.pk)
        last = confirmation(user, channel)
        if last is not None and last.status != Status.FAILED and last.created_at > timezone.now() - RESEND_AFTER:
            return False
        if channel == Delivery.Channel.EMAIL and user.email and not user.email_confirmed:
            send_email_confirmation(user)
        elif channel == Delivery.Channel.SMS and user.phone and not user.phone_confirmed:
            send_phone_code(user)
        else:
            return False
    logger.info("event=confirmation_resent user=%s channel=%s", user.pk, channel)
    return True


def confirmation(user, channel: str) -> Delivery | None:
    """The last confirmation sent to the user's current address on `channel`: was it sent, or why not."""
    to = address(user, channel)
    if not to:
        return None
    return Delivery.objects.filter(user=user, kind=Delivery.Kind.CONFIRM, channel=channel, to=to).order_by("-id").first()


def confirm_email(token: str) -> bool:
    """Confirm the address a link was sent to, if it is still the user's address."""
    claim = tokens.confirm_email_claim(token)
    if claim is None:
        return False
    user_id, email = claim
    confirmed = get_user_model().objects.filter(pk=user_id, email=email).update(email_confirmed=True)
    logger.info("event=email_confirmed user=%s ok=%s", user_id, bool(confirmed))
    return bool(confirmed)


PHONE_CODE_TTL = timedelta(minutes=15)


def confirm_phone(user, code: str) -> str | None:
    """Check a texted code; None when the phone is confirmed, else why not."""
    with transaction.atomic():
        pending = PhoneConfirmation.objects.select_for_update().filter(user=user).first()
        if pending is None or pending.phone != user.phone:
            return "There is no code waiting for this number. Save the number again to get a new one."
        if pending.created_at < timezone.now() - PHONE_CODE_TTL or pending.attempts_left == 0:
            pending.delete()
            return "That code has expired. Save the number again to get a new one."
        if not tokens.code_matches(pending.phone, code, pending.code_hash):
            pending.attempts_left -= 1
            pending.save(update_fields=["attempts_left"])
            return f"That code is not right ({pending.attempts_left} tries left)."
        pending.delete()
        get_user_model().objects.filter(pk=user.pk, phone=pending.phone).update(phone_confirmed=True)
    logger.info("event=phone_confirmed user=%s", user.pk)
    return None


# --- Opting out ---------------------------------------------------------------------------


def unsubscribe(token: str) -> bool:
    """One-click unsubscribe from email; True when the token was good."""
    user_id = tokens.unsubscribe_user_id(token)
    if user_id is None:
        return False
    get_user_model().objects.filter(pk=user_id).update(email_opted_out=True)
    logger.info("event=email_unsubscribed user=%s", user_id)
    return True


TWILIO_STOP_WORDS = {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke"}
TWILIO_START_WORDS = {"start", "unstop", "yes"}


def twilio_report(params: dict[str, str]) -> str:
    """Apply what Twilio's webhook says: a message's status, or a STOP/START reply. What was done."""
    phone = params.get("From", "")
    opt_out = params.get("OptOutType", "").lower() or params.get("Body", "").strip().lower()
    User = get_user_model()
    if "SmsStatus" in params and params.get("SmsStatus") == "received":  # an inbound reply
        if opt_out in TWILIO_STOP_WORDS:
            count = User.objects.filter(phone=phone).update(sms_opted_out=True)
            logger.info("event=sms_opt_out users=%d", count)
            return "opted-out"
        if opt_out in TWILIO_START_WORDS:
            User.objects.filter(phone=phone).update(sms_opted_out=False)
            return "opted-in"
        return "ignored"
    sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
    if not sid or not status:
        return "ignored"
    code = params.get("ErrorCode", "")
    delivery = Delivery.objects.filter(channel=Delivery.Channel.SMS, provider_id=sid).first()
    if delivery is None:
        return "unknown-message"
    changes = {"provider_status": status}
    if status in {"failed", "undelivered"}:
        # Accepted, then not delivered: the user should see why.
        changes.update(status=Status.FAILED, error_code=code, error=f"not delivered by the carrier (Twilio {code})")
        if code == "21610":
            User.objects.filter(pk=delivery.user_id).update(sms_opted_out=True)
    Delivery.objects.filter(pk=delivery.pk).update(**changes)
    return status


# Email events an ESP reports later (through anymail's tracking webhooks).
EMAIL_FAILED = {"bounced": "bounced", "rejected": "rejected by the recipient's server", "failed": "failed at the ESP"}
EMAIL_OPT_OUT = {"complained", "unsubscribed"}


def email_event(event_type: str, message_id: str, recipient: str, description: str = "") -> str:
    """Apply what the ESP says about a sent email: a bounce fails it, a complaint opts the address out."""
    delivery = None
    if message_id:
        delivery = Delivery.objects.filter(channel=Delivery.Channel.EMAIL, provider_id=message_id).first()
    if delivery is not None:
        Delivery.objects.filter(pk=delivery.pk).update(provider_status=event_type[:30])
    if event_type in EMAIL_FAILED and delivery is not None:
        Delivery.objects.filter(pk=delivery.pk).update(
            status=Status.FAILED, error_code=event_type,
            error=f"{EMAIL_FAILED[event_type]}{': ' + description if description else ''}"[:1000],
        )  # fmt: skip
    if event_type in EMAIL_OPT_OUT and recipient:
        get_user_model().objects.filter(email__iexact=recipient).update(email_opted_out=True)
    logger.info("event=email_event type=%s delivery=%s", event_type, delivery.pk if delivery else None)
    return event_type
