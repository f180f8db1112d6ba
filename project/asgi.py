"""ASGI entry point: HTTP and WebSockets for daphne, worker channels for runworker."""

import gc
import os
from collections.abc import Callable

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from . import routing  # noqa: E402
from .connects import ConnectAuthMiddlewareStack  # noqa: E402
from .origins import OriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Another site's page may not open a socket as our user: Origin must be the
        # served origin (scheme, host and port) or a trusted one, as for CSRF.
        # The session and user are loaded on the connect threads (project.connects), not the one database thread.
        "websocket": OriginValidator(ConnectAuthMiddlewareStack(URLRouter(routing.websocket_urlpatterns))),
        "channel": ChannelNameRouter(routing.channel_routes),
    }
)


class AsyncioErrorReporting:
    """Switches Sentry's asyncio integration on at the first connection: it patches the
    running loop, which daphne starts only after loading this module."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.enabled = False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not self.enabled:
            # Imported here: without SENTRY_DSN no process (each worker loads this module too) needs sentry_sdk.
            from sentry_sdk.integrations.asyncio import enable_asyncio_integration

            self.enabled = True
            enable_asyncio_integration()
        await self.app(scope, receive, send)


if settings.SENTRY_DSN:
    application = AsyncioErrorReporting(application)

# What is loaded by now (Django, every app, their modules: ~110,000 objects)
# lives as long as the process. Frozen, it is left out of the collector's full
# passes, which otherwise stall the event loop, and every socket's messages,
# ~60 ms each (bench/fanout.py's p99).
gc.collect()
gc.freeze()
