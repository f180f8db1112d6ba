"""What notifications say: SMS text and email parts, with absolute links."""

from collections.abc import Sequence

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

from .models import Notification

# An SMS must fit one segment: under 160 characters of the GSM-7 alphabet.
# One character outside it (an emoji, "…") makes the whole text UCS-2, 70 a
# segment, so quotes that are not plain GSM-7 are left out.
SMS_MAX = 159
GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXCERPT_MAX = 300


# Where runserver serves by default: links point there while PARLEY_BASE_URL is unset.
DEVELOPMENT_BASE_URL = "http://127.0.0.1:8000"


def absolute(path: str) -> str:
    """A link for outside Parley (email, SMS): PARLEY_BASE_URL + path."""
    return (settings.PARLEY_BASE_URL or DEVELOPMENT_BASE_URL).rstrip("/") + path


def room_link(room) -> str:
    return absolute(reverse("room", args=[room.label]))


def message_link(message) -> str:
    # room.js marks each message element with id="message-<pk>".
    return f"{room_link(message.room)}#message-{message.pk}"


def excerpt(text: str, limit: int, ellipsis: str = "…") -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - len(ellipsis)].rstrip() + ellipsis


def shortest_fit(*candidates: str) -> str:
    """The first candidate that fits one SMS (the last one regardless: it is the shortest)."""
    return next((c for c in candidates if len(c) <= SMS_MAX), candidates[-1])


def where(room) -> str:
    """How a message's place reads in a sentence: "#general", or "a direct message" (whose label means nothing)."""
    return "a direct message" if room.dm_key else f"#{room.label}"


def mention_sms(room, notifications: Sequence[Notification]) -> str:
    """One mention quotes the message; several are counted. One segment, link included."""
    if len(notifications) > 1:
        link = room_link(room)
        return shortest_fit(f"Parley: {len(notifications)} new mentions in {where(room)} {link}",
                            f"Parley: {len(notifications)} new mentions {link}")  # fmt: skip
    message = notifications[0].message
    link = message_link(message)
    author = message.user.username
    head = f"Parley: @{author} in {where(room)}: "
    room_for_quote = SMS_MAX - len(head) - len(link) - 3  # two quotes and a space
    quote = excerpt(message.text, room_for_quote, ellipsis="...")
    if room_for_quote >= 10 and set(quote) <= GSM7:
        return f'{head}"{quote}" {link}'
    return shortest_fit(f"Parley: @{author} mentioned you in {where(room)} {link}", f"Parley: @{author} {link}")


def mention_subject(room, notifications: Sequence[Notification]) -> str:
    if len(notifications) > 1:
        return f"{len(notifications)} new mentions in {where(room)}"
    return f"@{notifications[0].message.user.username} mentioned you in {where(room)}"


def render_email(template: str, context: dict) -> tuple[str, str]:
    """(text, html) from notifications/email/<template>.txt and .html."""
    # Notification settings live on the profile page, in its #notifications section.
    context = {"settings_link": absolute(reverse("profile") + "#notifications"), **context}
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


def invite_sms(room, inviter) -> str:
    link = room_link(room)
    return shortest_fit(f"Parley: @{inviter.username} invited you to the private room #{room.label} {link}",
                        f"Parley: you were invited to #{room.label} {link}", f"Parley: an invitation {link}")  # fmt: skip


def invite_email(user, room, inviter, unsubscribe_link: str) -> tuple[str, str, str]:
    """(subject, text, html) telling `user` that `inviter` made them a member of the private `room`."""
    subject = f"@{inviter.username} invited you to #{room.label}"
    context = {"user": user, "room": room, "room_link": room_link(room), "inviter": inviter,
               "subject": subject, "unsubscribe_link": unsubscribe_link}  # fmt: skip
    return (subject, *render_email("invite", context))
