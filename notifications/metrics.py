"""Email and SMS deliveries' Prometheus metrics, counted by the worker process that makes them.

Nothing is counted while METRICS_TOKEN is unset (project.metrics.enabled): nobody could read it.
"""

from django.conf import settings
from prometheus_client import Counter

from project.metrics import enabled

DELIVERIES = Counter(
    "parley_notification_deliveries",
    "Deliveries that reached a final status, by channel (email, sms; empty for one skipped before it had one), "
    "provider and status: sent, failed, uncertain (maybe sent, not sent again) or skipped.",
    ["channel", "provider", "status"],
)
RETRIES = Counter(
    "parley_notification_retries",
    "Delivery attempts the provider failed for now (to be tried again), by channel and provider.",
    ["channel", "provider"],
)


def provider(channel: str) -> str:
    """Who carries `channel`: twilio for SMS; for email, the mail backend's short name
    (anymail.backends.postmark.EmailBackend: postmark; Django's smtp, console, locmem)."""
    if channel == "sms":
        return "twilio"
    if channel == "email":
        return settings.MAILERS["default"]["BACKEND"].rsplit(".", 2)[-2]
    return ""


def delivery_final(channel: str, status: str) -> None:
    if enabled():
        DELIVERIES.labels(channel, provider(channel), status).inc()


def delivery_retry(channel: str) -> None:
    if enabled():
        RETRIES.labels(channel, provider(channel)).inc()
