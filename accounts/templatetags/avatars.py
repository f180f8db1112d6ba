from django import template
from django.utils.html import format_html

from accounts.avatars import avatar_urls

register = template.Library()


@register.simple_tag
def avatar(user, size: int = 32) -> str:
    """`{% avatar user 32 %}`: the user's thumbnail (or placeholder), 256, 64 or 32 px.

    data-avatar-user lets a room page swap it in place when an `avatar` frame arrives.
    """
    return format_html(
        '<img class="avatar" src="{}" width="{}" height="{}" alt="" data-avatar-user="{}" data-avatar-size="{}">',
        avatar_urls(user)[str(size)], size, size, user.username, size,
    )  # fmt: skip
