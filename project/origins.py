"""Which page may open a WebSocket as the logged-in user: the Origin check of every socket.

The session cookie goes with any handshake a browser makes, whichever site's
page asked for it, so the browser's `Origin` header is what tells our pages
from another site's (cross-site WebSocket hijacking). channels'
AllowedHostsOriginValidator compares host names only: a page served on another
port or scheme of the same host passed, while Django's CSRF check refused the
same Origin for a form. This is the CSRF check's rule (django.middleware.csrf,
`_origin_verified`), applied to the handshake: scheme, host and port must be
the origin the socket is served on, or match CSRF_TRUSTED_ORIGINS.
"""

import logging
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def served_origin(scope: dict) -> str | None:
    """`scheme://host[:port]` the handshake was made to, as Django's request.get_host() checks it.

    The host is the Host header (or the server's address when there is none),
    and must be one of ALLOWED_HOSTS; behind a TLS proxy the scheme is what
    SECURE_PROXY_SSL_HEADER says, as for HTTP requests. None: no valid host.
    """
    host = _header(scope, b"host")
    if host is None and scope.get("server"):
        server_host, port = scope["server"]
        host = f"{server_host}:{port}" if port is not None else server_host
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    secure = scope.get("scheme") in ("wss", "https")
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        forwarded = _header(scope, header.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if forwarded is not None:
            secure = forwarded.split(",", 1)[0].strip() == secure_value
    return f"{'https' if secure else 'http'}://{host}"


def origin_allowed(scope: dict) -> bool:
    """Whether the handshake's Origin is Parley's own page (or a trusted one).

    No Origin header: refused. Browsers always send one on a WebSocket
    handshake; a client that sends none is no browser page, and may add one.
    """
    origin = _header(scope, b"origin")
    if not origin:
        return False
    good = served_origin(scope)
    if good is not None and origin == good:
        return True
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    # "https://*.example.com" in CSRF_TRUSTED_ORIGINS trusts its subdomains, as for CSRF.
    return any(
        is_same_domain(parsed.netloc, trusted.split("://", 1)[1][1:])
        for trusted in settings.CSRF_TRUSTED_ORIGINS
        if "://*" in trusted and trusted.split("://", 1)[0] == parsed.scheme
    )


class OriginValidator:
    """ASGI middleware: a WebSocket handshake from another origin is refused (HTTP 403)."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            logger.warning(
                "event=socket_origin_refused path=%s origin=%s", scope.get("path"), _header(scope, b"origin")
            )
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
