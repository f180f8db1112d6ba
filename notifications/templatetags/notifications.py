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
        initial={"mention_channel": user.mention_channel, "email": user.email, "phone": user.phone}
    )
    recent = list(Delivery.objects.filter(user=user).exclude(kind=Delivery.Kind.CONFIRM)[:RECENT])
    return {
        "user": user,
        "form": form,
        "code_form": PhoneCodeForm(),
        "code_pending": PhoneConfirmation.objects.filter(user=user, phone=user.phone).exists(),
        "failures": [d for d in recent if d.status in (Delivery.Status.FAILED, Delivery.Status.UNCERTAIN)],
        "next": request.get_full_path(),
        "csrf_token": context.get("csrf_token"),
    }
