"""What notifications say: SMS text and email parts, with absolute links."""

from collections.abc import Sequence

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

from .models import Notification

# An SMS must fit one segment: under 160 characters (GSM-7).
SMS_MAX = 159
EXCERPT_MAX = 300


def absolute(path: str) -> str:
    """A link for outside Parley (email, SMS): PARLEY_BASE_URL + path."""
    return settings.PARLEY_BASE_URL.rstrip("/") + path


def room_link(room) -> str:
    return absolute(reverse("room", args=[room.label]))


def message_link(message) -> str:
    # room.js marks each message element with id="message-<pk>".
    return f"{room_link(message.room)}#message-{message.pk}"


def notification_link(notification: Notification) -> str:
    if notification.message_id:
        return message_link(notification.message)
    return absolute(reverse("notifications:list"))


def excerpt(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def mention_sms(room, notifications: Sequence[Notification]) -> str:
    """One mention quotes the message; several are counted. Always under 160 characters."""
    if len(notifications) > 1:
        return f"Parley: {len(notifications)} new mentions in #{room.label} {room_link(room)}"[:SMS_MAX]
    message = notifications[0].message
    link = message_link(message)
    head = f"Parley: @{message.user.username} in #{room.label}: "
    room_for_quote = SMS_MAX - len(head) - len(link) - 3  # two quotes and a space
    if room_for_quote < 10:  # a very long base URL: the link matters more than the quote
        return f"Parley: @{message.user.username} mentioned you {link}"[:SMS_MAX]
    return f'{head}"{excerpt(message.text, room_for_quote)}" {link}'


def mention_subject(room, notifications: Sequence[Notification]) -> str:
    if len(notifications) > 1:
        return f"{len(notifications)} new mentions in #{room.label}"
    return f"@{notifications[0].message.user.username} mentioned you in #{room.label}"


def render_email(template: str, context: dict) -> tuple[str, str]:
    """(text, html) from notifications/email/<template>.txt and .html."""
    context = {"settings_link": absolute(reverse("notifications:list")), **context}
    text = render_to_string(f"notifications/email/{template}.txt", context)
    html = render_to_string(f"notifications/email/{template}.html", context)
    return text, html


def mention_email(user, room, notifications: Sequence[Notification], unsubscribe_link: str) -> tuple[str, str, str]:
    """(subject, text, html) for mentions of `user` in `room`."""
    items = [
        {
            "author": n.message.user.username,
            "excerpt": excerpt(n.message.text, EXCERPT_MAX),
            "link": message_link(n.message),
            "at": n.message.created_at,
        }
        for n in notifications
    ]
    subject = mention_subject(room, notifications)
    context = {"user": user, "room": room, "room_link": room_link(room), "items": items,
               "subject": subject, "unsubscribe_link": unsubscribe_link}  # fmt: skip
    return (subject, *render_email("mentions", context))
