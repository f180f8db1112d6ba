"""`{{ when|ago }}`: how long ago, for people. A built-in template filter (settings.TEMPLATES)."""

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def ago(value: datetime | None) -> str:
    """"just now" under a minute (Django's timesince says "0 minutes"), else "5 minutes ago"."""
    if value is None:
        return ""
    # A time slightly ahead of ours (another process's clock) is also "just now".
    if timezone.now() - value < timedelta(minutes=1):
        return "just now"
    return f"{timesince(value)} ago"
