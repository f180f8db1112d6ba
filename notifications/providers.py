"""The two providers behind Parley's notifications, and what their answers mean.

Email goes through Django's mail API (an anymail backend in production); SMS
through the twilio client. Both are reduced to one vocabulary so delivery.py can
decide: Sent, PermanentFailure (never retry), TransientFailure (retry; `sent`
says whether the provider may have taken the message anyway).

anymail, twilio and requests are imported by the functions that call them, not
here: every process imports this module (the notifications tasks are known to
all), and only one that sends an email or an SMS needs their memory.
"""

import email.utils
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMultiAlternatives
from django.utils import timezone

logger = logging.getLogger(__name__)

# Twilio error codes that no retry can fix.
# https://www.twilio.com/docs/api/errors
TWILIO_UNSUBSCRIBED = 21610  # the recipient replied STOP
TWILIO_PERMANENT = {
    21211: "invalid phone number",
    21212: "invalid sender number",
    21408: "SMS to this region is not enabled",
    21610: "this number replied STOP to Parley's texts",
    21612: "this number cannot be reached by SMS",
    21614: "not a mobile number",
}
# Retry-After is trusted up to an hour; a longer wait is the backoff's job.
MAX_RETRY_AFTER = 3600.0


class PermanentFailure(Exception):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class TransientFailure(Exception):
    """Worth retrying. `maybe_sent`: the provider may have taken the message (a read timeout)."""

    def __init__(self, message: str, retry_after: float | None = None, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent


@dataclass(frozen=True)
class ProviderMessage:
    provider_id: str
    body: str
    created_at: datetime | None


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (email.utils.parsedate_to_datetime(value) - timezone.now()).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _connection_failure(exc: BaseException, provider: str) -> TransientFailure:
    # A connect timeout never reached the provider; anything later (read
    # timeout, connection dropped mid-answer) may have been taken.
    import requests

    maybe_sent = not isinstance(exc, requests.ConnectTimeout)
    return TransientFailure(f"{provider} unreachable: {type(exc).__name__}", maybe_sent=maybe_sent)


# --- Email ------------------------------------------------------------------------


def send_email(
    *, to: str, subject: str, body: str, html: str, headers: dict[str, str], metadata: dict[str, str]
) -> str:
    """Send one email; the ESP's message id ("" when the backend has none, e.g. console)."""
    from anymail.exceptions import AnymailRecipientsRefused, AnymailRequestsAPIError

    message = EmailMultiAlternatives(subject=subject, body=body, to=[to], headers=headers)
    if html:
        message.attach_alternative(html, "text/html")
    # Anymail sends this along with the message (Postmark "Metadata"); other backends ignore it.
    message.metadata = metadata
    try:
        message.send()
    except AnymailRecipientsRefused as exc:
        raise PermanentFailure(
            "the address was refused: it bounced or complained before, or it is invalid", code="refused"
        ) from exc
    except AnymailRequestsAPIError as exc:
        response = exc.response
        if response is None:
            raise _connection_failure(exc.__cause__ or exc, "email provider") from exc
        if response.status_code == 429:
            raise TransientFailure(
                "email provider rate limit", retry_after=retry_after_seconds(response.headers.get("Retry-After"))
            ) from exc
        if response.status_code >= 500:
            raise TransientFailure(f"email provider error {response.status_code}") from exc
        raise PermanentFailure(f"email provider refused the message ({response.status_code})",
                               code=str(response.status_code)) from exc  # fmt: skip
    status = getattr(message, "anymail_status", None)
    return (status.message_id or "") if status is not None else ""


# --- SMS ----------------------------------------------------------------------------


def send_sms(*, to: str, body: str, status_callback: str) -> str:
    """Send one SMS; Twilio's message SID."""
    import requests
    from twilio.base.exceptions import TwilioException, TwilioRestException

    from .twilio_client import twilio_client

    try:
        client = twilio_client()
    except ImproperlyConfigured as exc:
        raise PermanentFailure(str(exc), code="not-configured") from exc
    kwargs = {"status_callback": status_callback} if status_callback else {}
    try:
        message = client.messages.create(to=to, from_=settings.TWILIO_FROM_NUMBER, body=body, **kwargs)
    except TwilioRestException as exc:
        if exc.status == 429:
            retry_after = retry_after_seconds(client.http_client.last_headers.get("Retry-After"))
            raise TransientFailure("Twilio rate limit", retry_after=retry_after) from exc
        if exc.status >= 500:
            raise TransientFailure(f"Twilio error {exc.status}") from exc
        reason = TWILIO_PERMANENT.get(exc.code, f"Twilio refused the message: {exc.msg}")
        raise PermanentFailure(reason, code=str(exc.code or exc.status)) from exc
    except requests.RequestException as exc:
        raise _connection_failure(exc, "Twilio") from exc
    except TwilioException as exc:  # an answer Twilio's client could not read
        raise TransientFailure(f"Twilio: {exc}", maybe_sent=True) from exc
    return message.sid


def sms_sent_since(to: str, since: datetime) -> list[ProviderMessage]:
    """Messages Twilio accepted for `to` since `since`: how a cut-off attempt is looked up.

    Filtered here on date_created (set when Twilio accepts a message), not
    with Twilio's DateSent> filter: a message Twilio accepted but still holds
    in its queue has no date_sent yet, and must be found all the same.
    Twilio lists newest first; one number's last 100 cover the window.
    """
    import requests
    from twilio.base.exceptions import TwilioException

    from .twilio_client import twilio_client

    try:
        client = twilio_client()
        messages = client.messages.list(to=to, limit=100)
    except (ImproperlyConfigured, TwilioException, requests.RequestException) as exc:
        raise TransientFailure(f"Twilio lookup failed: {exc}") from exc
    since = since.replace(microsecond=0)  # Twilio's dates have whole seconds
    return [
        ProviderMessage(m.sid, m.body or "", m.date_created)
        for m in messages
        if m.date_created is None or m.date_created >= since
    ]
