"""The Twilio client Parley sends SMS with (notifications.providers).

A module of its own, imported by the functions that send or look up an SMS:
twilio and requests are loaded only by the processes that text someone.
"""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

TWILIO_API = "https://api.twilio.com"


class ParleyTwilioHttpClient(TwilioHttpClient):
    """Twilio's own HTTP client, with two additions.

    - `api_url` replaces https://api.twilio.com: a custom HTTP client is how
      Twilio documents reaching another host (a test double, a proxy).
    - It keeps the last response's headers: TwilioRestException drops them,
      and a 429's Retry-After is needed to wait the right time.
    """

    def __init__(self, api_url: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.api_url = api_url.rstrip("/")
        self.last_headers: dict[str, str] = {}

    def request(self, method: str, url: str, *args, **kwargs):
        if self.api_url and url.startswith(TWILIO_API):
            url = self.api_url + url.removeprefix(TWILIO_API)
        self.last_headers = {}
        response = super().request(method, url, *args, **kwargs)
        self.last_headers = dict(response.headers or {})
        return response


def twilio_client() -> Client:
    if not (settings.TWILIO_ACCOUNT_SID and settings.TWILIO_AUTH_TOKEN and settings.TWILIO_FROM_NUMBER):
        raise ImproperlyConfigured(
            "SMS is not set up on this Parley server (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER)."
        )
    http_client = ParleyTwilioHttpClient(api_url=settings.TWILIO_API_URL, timeout=settings.TWILIO_TIMEOUT)
    return Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client)
