"""Access that ends when it should: every open socket learns within a second that its access ended.

A socket's access is checked at connect (channels' AuthMiddlewareStack, then
the socket's own rule), but a socket lives for hours. When something that
grants access changes (a logout, a password change, a deactivation, a user
deleted, a member removed from a private room, a staff flag removed), the
change is announced after it commits on a channel-layer group of the user
(`access_group`), or of the room, which every daphne's sockets of that user or
room have joined. Each socket that hears it re-verifies its access in the
database and closes with a code the client understands (README.md, Close
codes) once it has ended. Redis may lose the announcement, so every socket
also re-verifies on a timer (RECHECK_INTERVAL), and the frames that store or
read room content re-verify before acting.

It lives in project/ because tasks/ (the /tasks/ monitor socket) may not import
a feature app, and every socket needs it.
"""

import asyncio
import hashlib
import logging
import random
import time
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils.crypto import constant_time_compare

logger = logging.getLogger(__name__)

ACCESS_EVENT = "access.check"
CLOSE_SESSION_ENDED = 4401  # logged out, password changed, deactivated, deleted: log in again
CLOSE_ACCESS_ENDED = 4403  # this room or page is no longer yours: do not retry
# A socket re-verifies on its own this often, for an announcement Redis lost.
RECHECK_INTERVAL = 10.0


class AccessEnded(Exception):
    """The socket's access has ended; `code` is the close code (CLOSE_SESSION_ENDED or CLOSE_ACCESS_ENDED)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def frame(self, **extra: Any) -> dict[str, Any]:
        """The error frame a socket answers the refused frame with, before it closes."""
        return {"type": "error", "code": "access_ended", "detail": self.detail, **extra}


def access_group(user_id: int) -> str:
    """The channel-layer group every socket of this user joins, on every daphne."""
    return f"access.{user_id}"


def session_tag(session_key: str | None) -> str | None:
    """What announcements say about an ended session: a digest, so no usable key travels through Redis."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32] if session_key else None


def announce(group: str, reason: str, session_key: str | None = None) -> None:
    """Tell every socket in `group` to re-verify its access, once the current transaction commits.

    `session_key`, when one session ended (a logout), closes that session's
    sockets without a database read: logout() sends its signal before it
    deletes the session, so a socket quick to re-verify would still find it.
    Never raises: a lost announcement is caught by each socket's timer.
    """
    event = {"type": ACCESS_EVENT, "reason": reason, "session": session_tag(session_key)}

    def send() -> None:
        try:
            async_to_sync(get_channel_layer().group_send)(group, event)
        except Exception as exc:
            logger.warning("event=access_announce_failed group=%s reason=%s error=%r", group, reason, exc)
        else:
            logger.info("event=access_announced group=%s reason=%s", group, reason)

    transaction.on_commit(send)


def announce_access_change(user_id: int, reason: str, session_key: str | None = None) -> None:
    """Every socket of this user re-verifies its access after the current transaction commits (see announce)."""
    announce(access_group(user_id), reason, session_key)


def session_user(session_key: str | None) -> AbstractBaseUser | None:
    """The user the session `session_key` is still logged in as, or None.

    django.contrib.auth.get_user()'s rules (the session exists, names an
    allowed backend, whose get_user() finds the user and refuses an inactive
    one, and its auth hash is the user's current one), using Django's own
    functions, but read-only: get_user() would flush a stale session and cycle
    the key of one signed with a fallback secret, which is the next HTTP
    request's business, not a socket's.
    """
    if not session_key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except KeyError:
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return None
    stored = session.get(HASH_SESSION_KEY)
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not stored or not any(constant_time_compare(stored, current) for current in hashes):
        return None
    return user


def require_session(session_key: str | None, user_id: int) -> AbstractBaseUser:
    """The session's user, or AccessEnded(4401) once the session no longer logs in user `user_id`."""
    user = session_user(session_key)
    if user is None or user.pk != user_id:
        raise AccessEnded(CLOSE_SESSION_ENDED, "Your session has ended; log in again.")
    return user


class AccessGuard:
    """Mixin for a WebSocket consumer whose access must end when it should.

    The consumer calls `guard_access()` once it has accepted a user, and
    `unguard_access()` in disconnect(); it defines `may_stay(user)`, its own
    rule, run on the database thread. From then on an `access.check` event, or
    the timer, re-verifies the session and the rule, and closes the socket
    (4401, 4403) once either fails; `access_ended` is then set, and the
    consumer answers no more frames.
    """

    access_ended = False
    access_verified_at = 0.0
    access_timer: asyncio.Task | None = None
    access_joined: str | None = None

    def may_stay(self, user: AbstractBaseUser) -> bool:
        """The socket's own rule (the room, the staff flag, the job), for the session's current user."""
        raise NotImplementedError

    def access_session_key(self) -> str | None:
        session = self.scope.get("session")
        return session.session_key if session is not None else None

    def verify_access(self) -> None:
        """Raise AccessEnded unless the session still logs the socket's user in and `may_stay` holds (database thread)."""
        user = require_session(self.access_session_key(), self.scope["user"].pk)
        if not self.may_stay(user):
            raise AccessEnded(CLOSE_ACCESS_ENDED, "You no longer have access to this.")

    async def guard_access(self) -> None:
        self.access_verified_at = time.monotonic()
        self.access_joined = access_group(self.scope["user"].pk)
        await self.channel_layer.group_add(self.access_joined, self.channel_name)
        self.access_timer = asyncio.create_task(self.recheck_periodically())

    async def unguard_access(self) -> None:
        if self.access_timer is not None:
            self.access_timer.cancel()
        if self.access_joined is not None:
            await self.channel_layer.group_discard(self.access_joined, self.channel_name)
            self.access_joined = None

    async def access_check(self, event: dict[str, Any]) -> None:
        """An announcement (see announce): this socket's session ended, or its access may have."""
        if event.get("session") and event["session"] == session_tag(self.access_session_key()):
            await self.end_access(CLOSE_SESSION_ENDED, event.get("reason", ""))
            return
        await self.recheck_access(reason=event.get("reason", ""))

    async def recheck_access(self, max_age: float = 0.0, reason: str = "") -> bool:
        """Whether access holds, verified in the database unless it was less than `max_age` seconds ago."""
        if self.access_ended:
            return False
        if max_age and time.monotonic() - self.access_verified_at < max_age:
            return True
        try:
            await database_sync_to_async(self.verify_access)()
        except AccessEnded as ended:
            await self.end_access(ended.code, reason)
            return False
        self.access_verified_at = time.monotonic()
        return True

    async def end_access(self, code: int, reason: str = "") -> None:
        if self.access_ended:
            return
        self.access_ended = True
        logger.info("event=ws_access_ended path=%s user=%s code=%s reason=%s",
                    self.scope.get("path", ""), self.scope["user"].pk, code, reason or "check")  # fmt: skip
        await self.close(code=code)

    async def recheck_periodically(self) -> None:
        """Re-verify every RECHECK_INTERVAL (spread, so sockets that connected together do not check together)."""
        delay = RECHECK_INTERVAL * random.uniform(0.9, 1.0)
        while not self.access_ended:
            await asyncio.sleep(delay)
            delay = RECHECK_INTERVAL * random.uniform(0.9, 1.0)
            try:
                await self.recheck_access()
            except Exception:  # the database is away: keep the socket, try again next time
                logger.exception("event=access_recheck_failed user=%s", self.scope["user"].pk)
