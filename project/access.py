"""Access that ends when it should: every open socket learns within a second that its access ended.

A socket's access is checked at connect (channels' AuthMiddlewareStack, then
the socket's own rule), but a socket lives for hours. When something that
grants access changes (a logout, a password change, a deactivation, a user
deleted, a member removed from a private room, a staff flag removed), the
change is announced after it commits on a channel-layer group of the user
(`access_group`), or of the room, which every daphne's sockets of that user or
room have joined. Each socket that hears it re-verifies its access in the
database and closes with a code the client understands (README.md, Close
codes) once it has ended. Redis may lose the announcement, so each process
also re-verifies all its sockets within every RECHECK_INTERVAL, in bulk
(AccessRecheck: a few queries per 500 sockets, not three per socket), and the
frames that store or read room content re-verify before acting.

It lives in project/ because tasks/ (the /tasks/ monitor socket) may not import
a feature app, and every socket needs it.
"""

import asyncio
import functools
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare

logger = logging.getLogger(__name__)

ACCESS_EVENT = "access.check"
CLOSE_SESSION_ENDED = 4401  # logged out, password changed, deactivated, deleted: log in again
CLOSE_ACCESS_ENDED = 4403  # this room or page is no longer yours: do not retry
# No socket goes longer than this without re-verifying, for an announcement Redis lost.
RECHECK_INTERVAL = 10.0
# The process looks for sockets due a re-verification this many times per RECHECK_INTERVAL,
# so sockets that connected at different times are re-verified in different slices.
RECHECK_SLICES = 10
# Sockets re-verified in one trip to the database thread (a few queries each).
RECHECK_CHUNK = 500
# Decoded sessions kept for the next round: twice the sessions of the 10,000 sockets a daphne is sized for.
DECODED_SESSIONS = 20_000


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
    Never raises: a lost announcement is caught by the process's AccessRecheck.
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
    """The user the session `session_key` is still logged in as, or None (see session_users)."""
    return session_users([session_key]).get(session_key) if session_key else None


def session_users(session_keys: Collection[str | None]) -> dict[str, AbstractBaseUser]:
    """The user each session is still logged in as, by session key; a session that logs no one in is left out.

    django.contrib.auth.get_user()'s rules (the session exists, names an
    allowed backend, whose get_user() finds the user and refuses an inactive
    one, and its auth hash is the user's current one), using Django's own
    functions, but read-only: get_user() would flush a stale session and cycle
    the key of one signed with a fallback secret, which is the next HTTP
    request's business, not a socket's. In bulk, so that a process re-verifies
    all its sockets in a few queries: one for the sessions, one per backend
    for the users.
    """
    user_pk = get_user_model()._meta.pk
    claims: dict[str, tuple[str, Any, str | None]] = {}  # session key: (backend, user id, auth hash)
    for key, session in load_sessions({key for key in session_keys if key}).items():
        try:
            user_id = user_pk.to_python(session[SESSION_KEY])
            backend_path = session[BACKEND_SESSION_KEY]
        except KeyError:
            continue
        if backend_path in settings.AUTHENTICATION_BACKENDS:
            claims[key] = (backend_path, user_id, session.get(HASH_SESSION_KEY))
    ids_by_backend: dict[str, set[Any]] = defaultdict(set)
    for backend_path, user_id, _ in claims.values():
        ids_by_backend[backend_path].add(user_id)
    users: dict[tuple[str, Any], AbstractBaseUser] = {}
    for backend_path, user_ids in ids_by_backend.items():
        users.update({(backend_path, user.pk): user for user in backend_users(backend_path, user_ids)})
    hashes: dict[tuple[str, Any], list[str]] = {}  # each user's current auth hashes, once however many sessions
    found = {}
    for key, (backend_path, user_id, stored) in claims.items():
        user = users.get((backend_path, user_id))
        if user is None or not stored:
            continue
        if (backend_path, user_id) not in hashes:
            hashes[backend_path, user_id] = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
        if any(constant_time_compare(stored, current) for current in hashes[backend_path, user_id]):
            found[key] = user
    return found


def load_sessions(session_keys: Collection[str]) -> dict[str, dict[str, Any]]:
    """The data of each session that still exists (not expired), by key.

    The database engine's sessions are read in one query, as its
    SessionStore.load() reads one and decoded by it; another engine's are
    loaded one by one through its own SessionStore.
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not issubclass(store, DatabaseSessionStore):
        sessions = {key: store(key).load() for key in session_keys}
        return {key: data for key, data in sessions.items() if data}
    rows = store.get_model_class().objects.filter(session_key__in=session_keys, expire_date__gt=timezone.now())
    rows = rows.values_list("session_key", "session_data")
    return {key: decoded_session(settings.SESSION_ENGINE, data) for key, data in rows}


@functools.lru_cache(maxsize=DECODED_SESSIONS)
def decoded_session(engine: str, data: str) -> dict[str, Any]:
    """A session's stored data, decoded by its engine's SessionStore (read-only: shared between calls).

    The same signed string decodes to the same data, and a session rarely
    changes between two re-verifications, so each is decoded once, not every
    round (its signature check is most of the cost of a round).
    """
    return import_module(engine).SessionStore().decode(data)


def backend_users(backend_path: str, user_ids: Collection[Any]) -> list[AbstractBaseUser]:
    """What backend.get_user(id) finds for each id: in one query when that is ModelBackend's own get_user."""
    backend = load_backend(backend_path)
    if isinstance(backend, ModelBackend) and type(backend).get_user is ModelBackend.get_user:
        users = get_user_model()._default_manager.filter(pk__in=user_ids)
        return [user for user in users if backend.user_can_authenticate(user)]
    return [user for user_id in user_ids if (user := backend.get_user(user_id)) is not None]


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
    rule, run on the database thread, and may define `may_stay_many`, the same
    rule for many sockets at once. From then on an `access.check` event, or the
    process's AccessRecheck, re-verifies the session and the rule, and closes
    the socket (4401, 4403) once either fails; `access_ended` is then set, and
    the consumer answers no more frames.
    """

    access_ended = False
    access_verified_at = 0.0
    access_joined: str | None = None

    def may_stay(self, user: AbstractBaseUser) -> bool:
        """The socket's own rule (the room, the staff flag, the job), for the session's current user."""
        raise NotImplementedError

    @classmethod
    def may_stay_many(cls, pairs: Sequence[tuple["AccessGuard", AbstractBaseUser]]) -> set["AccessGuard"]:
        """The sockets of `pairs` (socket, its session's user) that `may_stay` lets stay (database thread).

        One check per socket; a consumer that is open by the thousand does it in one query.
        """
        return {socket for socket, user in pairs if socket.may_stay(user)}

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
        AccessRecheck.register(self)

    async def unguard_access(self) -> None:
        AccessRecheck.unregister(self)
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


def ended_access(sockets: Sequence[AccessGuard]) -> dict[AccessGuard, int]:
    """The sockets whose access has ended, with their close code: verify_access for many, in a few queries.

    Runs on the database thread: one query for the sessions, one for their
    users, and each consumer class's `may_stay_many` for the sockets whose
    session still holds.
    """
    users = session_users({socket.access_session_key() for socket in sockets})
    ended: dict[AccessGuard, int] = {}
    staying: dict[type[AccessGuard], list[tuple[AccessGuard, AbstractBaseUser]]] = defaultdict(list)
    for socket in sockets:
        user = users.get(socket.access_session_key())
        if user is None or user.pk != socket.scope["user"].pk:  # require_session's rule
            ended[socket] = CLOSE_SESSION_ENDED
        else:
            staying[type(socket)].append((socket, user))
    for consumer_class, pairs in staying.items():
        allowed = consumer_class.may_stay_many(pairs)
        ended.update({socket: CLOSE_ACCESS_ENDED for socket, _ in pairs if socket not in allowed})
    return ended


def recheck_chunks(sockets: Collection[AccessGuard]) -> list[list[AccessGuard]]:
    """`sockets` in chunks of RECHECK_CHUNK, a user's sockets together: each user is read and hashed once."""
    ordered = sorted(sockets, key=lambda socket: socket.scope["user"].pk)
    return [ordered[start : start + RECHECK_CHUNK] for start in range(0, len(ordered), RECHECK_CHUNK)]


class AccessRecheck:
    """The re-verification of every guarded socket of a process (of an event loop), for announcements Redis lost.

    One timer per socket cost three queries per socket every RECHECK_INTERVAL,
    which grows with the sockets a process holds. Here one task wakes
    RECHECK_SLICES times per interval, takes the sockets that would otherwise
    go unverified for longer than RECHECK_INTERVAL before its next wake-up,
    and re-verifies them in chunks of RECHECK_CHUNK, each a few queries on the
    database thread (ended_access), which other work gets between chunks.
    Sockets that connected at different times fall in different slices; a
    frame that re-verifies (recheck_access) postpones its socket's turn. The
    task starts with the first socket and ends with the last.
    """

    by_loop: dict[asyncio.AbstractEventLoop, "AccessRecheck"] = {}  # the recheck of each event loop with sockets

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sockets: set[AccessGuard] = set()
        self.task: asyncio.Task | None = None

    @classmethod
    def register(cls, socket: AccessGuard) -> None:
        """Re-verify `socket` from now on, with the other sockets of its event loop (starting their task if need be)."""
        loop = asyncio.get_running_loop()
        if loop not in cls.by_loop:
            cls.by_loop[loop] = recheck = cls(loop)
            recheck.task = loop.create_task(recheck.run())
        cls.by_loop[loop].sockets.add(socket)

    @classmethod
    def unregister(cls, socket: AccessGuard) -> None:
        recheck = cls.by_loop.get(asyncio.get_running_loop())
        if recheck is not None:
            recheck.sockets.discard(socket)

    async def run(self) -> None:
        try:
            while self.sockets:
                await asyncio.sleep(RECHECK_INTERVAL / RECHECK_SLICES)
                try:
                    await self.recheck_due()
                except Exception:  # the database is away: keep the sockets, they are still due next time
                    logger.exception("event=access_recheck_failed sockets=%s", len(self.sockets))
        finally:
            # Nothing awaits between the loop's test and here: a socket registered later starts a new task.
            del self.by_loop[self.loop]

    async def recheck_due(self) -> None:
        """Re-verify the sockets that would go unverified for over RECHECK_INTERVAL before the next slice."""
        due_before = time.monotonic() - RECHECK_INTERVAL + RECHECK_INTERVAL / RECHECK_SLICES
        for socket in [socket for socket in self.sockets if socket.access_ended]:
            self.sockets.discard(socket)
        due = [socket for socket in self.sockets if socket.access_verified_at <= due_before]
        for chunk in recheck_chunks(due):
            checked_at = time.monotonic()
            ended = await database_sync_to_async(ended_access)(chunk)
            for socket in chunk:
                if socket in ended:
                    await socket.end_access(ended[socket])
                else:
                    socket.access_verified_at = max(socket.access_verified_at, checked_at)
