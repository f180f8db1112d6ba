"""Where WebSocket connects do their database work: a few threads of their own, and no more.

On channels' one database thread (database_sync_to_async's default) a
reconnecting crowd (a deploy, a network blip) queued every connect's session,
user and room reads behind the others, one at a time, and behind every sync
and access check of the sockets already open. On CONNECT_THREADS threads a few
connects run at once, and no more, so thousands reconnecting do not open
thousands of PostgreSQL sessions. Each daphne holds up to CONNECT_THREADS more
connections.
"""

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.auth import AuthMiddleware, get_user
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware

CONNECT_THREADS = 3
_connect_threads = ThreadPoolExecutor(CONNECT_THREADS, thread_name_prefix="parley-connect")


def on_connect_thread(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """`function`, run on the connect threads (closing stale connections first, as database_sync_to_async does)."""
    return database_sync_to_async(function, thread_sensitive=False, executor=_connect_threads)


# channels' get_user, unwrapped from its trip to the one database thread.
_load_user = on_connect_thread(get_user.func)


class ConnectAuthMiddleware(AuthMiddleware):
    """channels' AuthMiddleware, loading the session and its user on the connect threads."""

    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        scope["user"]._wrapped = await _load_user(scope)


def ConnectAuthMiddlewareStack(inner: Callable) -> Callable:  # noqa: N802 (named like channels' AuthMiddlewareStack)
    return CookieMiddleware(SessionMiddleware(ConnectAuthMiddleware(inner)))
