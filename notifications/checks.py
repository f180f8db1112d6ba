"""`manage.py check --deploy`: links in emails and SMS need Parley's public HTTPS address."""

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def check_base_url(app_configs, **kwargs) -> list[CheckMessage]:
    """Unset, links fall back to the address this process serves, which nobody outside can reach."""
    if not settings.PARLEY_BASE_URL:
        return [Warning(
            "PARLEY_BASE_URL is not set: links in emails and SMS point at this server's local address.",
            hint="Set PARLEY_BASE_URL to Parley's public address, e.g. https://parley.example.com.",
            id="notifications.W001",
        )]  # fmt: skip
    if not settings.PARLEY_BASE_URL.startswith("https://"):
        return [Warning(
            f"PARLEY_BASE_URL ({settings.PARLEY_BASE_URL}) is not HTTPS: links in emails and SMS "
            "would send people, and their session cookies, over plain HTTP.",
            hint="Use Parley's https:// address.", id="notifications.W002",
        )]  # fmt: skip
    return []
