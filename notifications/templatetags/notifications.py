from django import template

from .. import notify
from ..forms import NotificationSettingsForm, PhoneCodeForm
from ..models import Delivery, PhoneConfirmation

register = template.Library()

# Failures older than the user's last few deliveries are history, not news.
RECENT = 5


@register.inclusion_tag("notifications/bell.html", takes_context=True)
def notification_bell(context) -> dict:
    """The bell with the unread count; static/notifications/bell.js keeps it live."""
    user = context.get("user")
    signed_in = user is not None and user.is_authenticated
    return {"count": notify.unread_count(user) if signed_in else 0, "user": user}


@register.inclusion_tag("notifications/settings_section.html", takes_context=True)
def notification_settings(context) -> dict:
    """The profile page's notification section: channel, addresses, their confirmation, failures."""
    request = context["request"]
    user = request.user
    form = NotificationSettingsForm(
        initial={"mention_channel": user.mention_channel, "email": user.email, "phone": user.phone},
        offer=notify.choosable_channels(user),
    )
    recent = list(Delivery.objects.filter(user=user).exclude(kind=Delivery.Kind.CONFIRM)[:RECENT])
    email_confirmation = None if user.email_confirmed else notify.confirmation(user, Delivery.Channel.EMAIL)
    phone_confirmation = None if user.phone_confirmed else notify.confirmation(user, Delivery.Channel.SMS)
    email_state = address_state(user.email_confirmed, email_confirmation, "waiting for confirmation: check your inbox",
                                "sending the confirmation link…")  # fmt: skip
    phone_state = address_state(user.phone_confirmed, phone_confirmation, "waiting for the code we texted",
                                "texting a code…")  # fmt: skip
    problems = []
    if user.email and email_state["failed"]:
        problems.append({"channel": "email", "text": f"The confirmation email to {user.email} could not be sent",
                         "error": email_confirmation.error if email_confirmation else "", "retry": "Send it again"})
    if user.phone and phone_state["failed"]:
        problems.append({"channel": "sms", "text": f"The code could not be texted to {user.phone}",
                         "error": phone_confirmation.error if phone_confirmation else "", "retry": "Text me a code again"})
    return {
        "email_state": email_state,
        "phone_state": phone_state,
        "confirmation_problems": problems,
        "user": user,
        "form": form,
        "code_form": PhoneCodeForm(),
        # The code box only once a code was sent (or may have been): never for a text that failed.
        "code_pending": (
            phone_confirmation is not None
            and phone_confirmation.status in (Delivery.Status.SENT, Delivery.Status.UNCERTAIN)
            and PhoneConfirmation.objects.filter(user=user, phone=user.phone).exists()
        ),
        "failures": [d for d in recent if d.status in (Delivery.Status.FAILED, Delivery.Status.UNCERTAIN)],
        "next": request.get_full_path(),
        "csrf_token": context.get("csrf_token"),
    }


def address_state(confirmed: bool, confirmation: Delivery | None, waiting: str, sending: str) -> dict:
    """What to say next to an address: confirmed, its confirmation on its way or sent, or failed."""
    Status = Delivery.Status
    if confirmed:
        return {"text": "confirmed", "css": "ok", "failed": False}
    if confirmation is not None and confirmation.status in (Status.QUEUED, Status.SENDING):
        return {"text": sending, "css": "warn", "failed": False}
    if confirmation is not None and confirmation.status in (Status.SENT, Status.UNCERTAIN):
        return {"text": waiting, "css": "warn", "failed": False}
    # Failed, or never sent (an address from before confirmations were recorded): say so, offer a retry.
    return {"text": "not confirmed", "css": "bad", "failed": True}
