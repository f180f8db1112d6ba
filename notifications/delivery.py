"""Sending one Delivery reliably: recorded before, outcome recorded the moment the provider answers.

The rules (each attempt is one run of tasks.send_delivery):

- compose() fixes the content once, under the user's row lock, so mentions
  that arrive later go to the next delivery, and every attempt sends the same text;
- in_flight_since is committed just before the provider call and cleared with
  its answer. An attempt that finds it set follows one that was cut off
  (worker killed, read timeout) and may have been sent: SMS are looked up at
  Twilio (messages to that number since then, matched by body), email, which
  the ESP cannot be asked about, is recorded UNCERTAIN rather than risk a duplicate;
- provider errors worth retrying raise (the task's backoff, or Retry-After);
  permanent refusals are recorded FAILED and never retried.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from . import content, metrics, providers, tokens
from .models import Delivery
from .providers import PermanentFailure, TransientFailure

logger = logging.getLogger(__name__)

Status = Delivery.Status
# How far back a lookup at Twilio reaches before the cut-off attempt started:
# our clock and Twilio's may disagree a little.
LOOKUP_SLACK = timedelta(minutes=2)
CONFIRM_REDACTED = "(confirmation code or link: not kept once sent)"


def usable_channel(user) -> str | None:
    """Where mentions of `user` may go outside Parley right now, if anywhere."""
    if user.mention_channel == "email" and user.email and user.email_confirmed and not user.email_opted_out:
        return Delivery.Channel.EMAIL
    if user.mention_channel == "sms" and user.phone and user.phone_confirmed and not user.sms_opted_out:
        return Delivery.Channel.SMS
    return None


def address(user, channel: str) -> str:
    return user.email if channel == Delivery.Channel.EMAIL else user.phone


def compose(delivery_id: int) -> Delivery | None:
    """Close a QUEUED delivery's gathering and fix what it says; SENDING from here on."""
    with transaction.atomic():
        delivery = Delivery.objects.filter(pk=delivery_id).first()
        if delivery is None:
            return None
        user = get_user_model().objects.lock(delivery.user_id)  # one user's deliveries are decided one at a time
        delivery = Delivery.objects.select_for_update().get(pk=delivery_id)
        if delivery.status != Status.QUEUED:
            return delivery
        now = timezone.now()
        if delivery.kind == Delivery.Kind.MENTION:
            unread = list(
                delivery.notifications.filter(read_at__isnull=True)
                .select_related("message__user", "message__room")
                .order_by("id")
            )
            channel = usable_channel(user)
            if not unread:
                return finish(delivery, Status.SKIPPED, error="already read in Parley")
            if channel is None:
                return finish(delivery, Status.SKIPPED, error="mentions no longer go by email or SMS")
            delivery.channel = channel
            delivery.to = address(user, channel)
            room = delivery.room
            if channel == Delivery.Channel.SMS:
                delivery.body = content.mention_sms(room, unread)
            else:
                delivery.subject, delivery.body, delivery.html = content.mention_email(
                    user, room, unread, unsubscribe_link(user)
                )
        delivery.status = Status.SENDING
        delivery.started_at = now
        delivery.save()
    return delivery


def finish(delivery: Delivery, status: str, *, error: str = "", code: str = "", provider_id: str = "") -> Delivery:
    """Record a final outcome (only over a delivery not already final)."""
    changes = {"status": status, "finished_at": timezone.now(), "in_flight_since": None,
               "error": error[:1000], "error_code": code}  # fmt: skip
    if provider_id:
        changes["provider_id"] = provider_id
    if delivery.kind == Delivery.Kind.CONFIRM:
        # A code or confirmation link is a secret: kept only while it may need resending or looking up.
        changes.update(body=CONFIRM_REDACTED, html="")
    recorded = Delivery.objects.filter(pk=delivery.pk).exclude(status__in=Delivery.FINAL).update(**changes)
    delivery.refresh_from_db()
    if recorded:
        metrics.delivery_final(delivery.channel, delivery.status)
    logger.info("event=delivery_%s delivery=%s channel=%s kind=%s user=%s provider_id=%s error=%r",
                delivery.status, delivery.pk, delivery.channel, delivery.kind, delivery.user_id,
                delivery.provider_id, delivery.error)  # fmt: skip
    return delivery


def unsubscribe_link(user) -> str:
    return content.absolute(reverse("notifications:unsubscribe", args=[tokens.unsubscribe_token(user)]))


def status_callback_url() -> str:
    """Where Twilio reports on our messages; only when Parley has a public address to give."""
    if not settings.TWILIO_STATUS_CALLBACK:
        return ""
    return content.absolute(reverse("notifications:twilio_webhook"))


def provider_send(delivery: Delivery) -> str:
    """One call to the provider; its message id."""
    if delivery.channel == Delivery.Channel.SMS:
        return providers.send_sms(to=delivery.to, body=delivery.body, status_callback=status_callback_url())
    headers = {}
    if delivery.kind != Delivery.Kind.CONFIRM:
        # RFC 8058 one-click: mail clients POST "List-Unsubscribe=One-Click" to the link.
        user = get_user_model().objects.get(pk=delivery.user_id)
        headers = {"List-Unsubscribe": f"<{unsubscribe_link(user)}>",
                   "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}  # fmt: skip
    return providers.send_email(to=delivery.to, subject=delivery.subject, body=delivery.body,
                                html=delivery.html, headers=headers,
                                metadata={"parley_delivery": str(delivery.pk)})  # fmt: skip


def resolve_cut_off(delivery: Delivery) -> bool:
    """The previous attempt may have sent: find out. True when the delivery is now final."""
    if delivery.channel == Delivery.Channel.SMS:
        since = delivery.in_flight_since - LOOKUP_SLACK
        for message in providers.sms_sent_since(delivery.to, since):
            if message.body == delivery.body:
                logger.info("event=delivery_found_at_provider delivery=%s sid=%s", delivery.pk, message.provider_id)
                finish(delivery, Status.SENT, provider_id=message.provider_id)
                return True
        # Twilio never got it: sending now is the first time, not the second.
        Delivery.objects.filter(pk=delivery.pk).update(in_flight_since=None)
        delivery.in_flight_since = None
        return False
    finish(delivery, Status.UNCERTAIN,
           error="cut off between sending and recording; not sent again to avoid a duplicate")  # fmt: skip
    return True


def attempt(delivery_id: int, last_attempt: bool) -> str:
    """One attempt at a delivery; its status. Raises TransientFailure to be retried."""
    delivery = compose(delivery_id)
    if delivery is None:
        return "missing"
    if delivery.is_final:
        return delivery.status
    if delivery.in_flight_since is not None:
        try:
            if resolve_cut_off(delivery):
                return delivery.status
        except TransientFailure as exc:  # the lookup itself failed: still cut off, ask again later
            exc.maybe_sent = True
            record_transient(delivery, exc, last_attempt)
            if last_attempt:
                return delivery.status
            raise
    now = timezone.now()
    # Committed before the call: from here on a crash leaves a trace to look up.
    marked = Delivery.objects.filter(pk=delivery.pk, status=Status.SENDING, in_flight_since__isnull=True).update(
        in_flight_since=now, attempts=F("attempts") + 1
    )
    if not marked:
        delivery.refresh_from_db()
        return delivery.status
    delivery.in_flight_since = now
    try:
        provider_id = provider_send(delivery)
    except PermanentFailure as exc:
        if exc.code == str(providers.TWILIO_UNSUBSCRIBED):
            get_user_model().objects.filter(pk=delivery.user_id).update(sms_opted_out=True)
        return finish(delivery, Status.FAILED, error=str(exc), code=exc.code).status
    except TransientFailure as exc:
        record_transient(delivery, exc, last_attempt)
        if last_attempt:
            return delivery.status
        raise
    return finish(delivery, Status.SENT, provider_id=provider_id).status


def record_transient(delivery: Delivery, exc: TransientFailure, last_attempt: bool) -> None:
    logger.warning("event=delivery_retry delivery=%s channel=%s error=%r maybe_sent=%s last=%s",
                   delivery.pk, delivery.channel, str(exc), exc.maybe_sent, last_attempt)  # fmt: skip
    if last_attempt:
        delivery.refresh_from_db(fields=["attempts"])
        if exc.maybe_sent:
            finish(delivery, Status.UNCERTAIN, error=f"gave up, possibly sent: {exc}")
        else:
            finish(delivery, Status.FAILED, error=f"gave up after {delivery.attempts} attempts: {exc}")
        return
    metrics.delivery_retry(delivery.channel)
    # A provider that answered with an error did not take the message; one
    # that never answered may have: keep in_flight_since for the next attempt.
    changes = {"error": str(exc)[:1000]}
    if not exc.maybe_sent:
        changes["in_flight_since"] = None
    Delivery.objects.filter(pk=delivery.pk).update(**changes)
