"""The room socket: /chat/<label>/. The protocol is documented in README.md and chat/protocol.py."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.db.models import FilteredRelation, Q

from project.access import CLOSE_ACCESS_ENDED, CLOSE_SESSION_ENDED, AccessEnded, AccessGuard, require_session
from project.connects import on_connect_thread
from project.sockets import FrameError, RateLimit, server_error

from . import metrics, presence, protocol
from .changes import changes_after, latest_change
from .edits import change_frame
from .models import RATE_LIMIT_COUNT, RATE_LIMIT_WINDOW, Message, NoSuchParent, RateLimited, Room, RoomHidden
from .protocol import SYNC_LIMIT, SYNC_MAX_BYTES, encode, message_frame, parse_frame

if TYPE_CHECKING:
    from accounts.models import User

logger = logging.getLogger(__name__)

CLOSE_NOT_LOGGED_IN = CLOSE_SESSION_ENDED
CLOSE_FORBIDDEN = CLOSE_ACCESS_ENDED
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY_SOCKETS = 4409
TYPING_INTERVAL = 2.0

# (room pk, user pk) -> when a typing frame was last relayed. Per process: two
# tabs of one user on two daphnes may each relay once per interval.
_typing_relayed: dict[tuple[int, int], float] = {}


def find_room(label: str, user: "User") -> tuple[Room | None, int | None]:
    """The room to join, or the close code that refuses the socket."""
    try:
        return Room.objects.find(label, user), None
    except RoomHidden:
        return None, CLOSE_FORBIDDEN
    except Room.DoesNotExist:
        return None, CLOSE_NOT_FOUND


def can_still_view(room: Room, user: "User") -> bool:
    """Whether `user` may see `room` now, as the database has it (it may have been made private since)."""
    return Room.objects.filter(Q(is_private=False) | Q(memberships__user=user), pk=room.pk).exists()


def room_gone() -> AccessEnded:
    return AccessEnded(CLOSE_FORBIDDEN, "You can no longer see this room.")


def messages_after(room: Room, after: int) -> tuple[list[dict[str, Any]], bool]:
    rows = list(room.messages.filter(id__gt=after).select_related("user", "room").order_by("id")[: SYNC_LIMIT + 1])
    return [message_frame(m) for m in rows[:SYNC_LIMIT]], len(rows) > SYNC_LIMIT


def sync_page(room: Room, after: int) -> tuple[list[str], bool, int]:
    """A `sync` reply: (encoded message frames, more?, last_id).

    At most SYNC_LIMIT messages and about SYNC_MAX_BYTES of output. last_id is
    never beyond the room's newest message: a client may ask for ids after one
    that does not exist yet, and answering with that id would tell both ends
    the client has messages it was never sent.
    """
    frames, more = messages_after(room, after)
    page: list[str] = []
    size = 0
    for frame in frames:
        text = encode(frame)
        size += len(text.encode())
        if page and size > SYNC_MAX_BYTES:
            more = True
            break
        page.append(text)
    if not page:
        return page, more, min(after, room.latest_message_id())
    return page, more, frames[len(page) - 1]["id"]


def change_event(frame: dict[str, Any]) -> dict[str, Any]:
    """The broadcast of a change frame (chat.edits) to the room's sockets (see chat_change)."""
    return {"type": "chat.change", "text": encode(frame), "seq": frame["seq"], "id": frame["message"]["id"]}


def post_message(
    room: Room, user: "User", text: str, client_id: str, parent_id: int | None = None, also_in_room: bool = False
) -> dict[str, Any]:
    """Store a message; returns the event that broadcasts it to the room's sockets (see chat_message).

    A new reply's event also carries, under "changes", the change events of its parent's reply count.
    """
    message, created = room.post(user, text, client_id, parent_id, also_in_room)
    if not created:
        message = Message.objects.select_related("room", "user").get(pk=message.pk)
    event = {"type": "chat.message", "text": encode(message_frame(message)), "id": message.pk, "previous": message.previous_id}
    if message.parent_change is not None:
        parent = Message.objects.select_related("room", "user").get(pk=message.parent_id)
        event["changes"] = [change_event(change_frame(parent))]
    return event


def post_for_socket(
    session_key: str | None, room: Room, user: "User", text: str, client_id: str,
    parent_id: int | None = None, also_in_room: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """post_message() for a socket, only while its session still logs `user` in and `user` may see `room`.

    One trip to the post thread: the session is read first, and Room.post
    checks the room inside its transaction, so no frame sent after access
    ended is stored.
    """
    require_session(session_key, user.pk)
    try:
        return post_message(room, user, text, client_id, parent_id, also_in_room)
    except RoomHidden:
        raise room_gone() from None


def sync_for_socket(
    session_key: str | None, room: Room, user: "User", after: int, changes_after_seq: int | None = None
) -> tuple[list[str], bool, int, list[str], int | None]:
    """sync_page() for a socket, only while its session still logs `user` in and `user` may see `room`.

    With `changes_after_seq`, the page is followed by the changes after it
    (chat.changes), read after the messages: a message read before a change
    is also sent that change; messages and changes together stay within
    SYNC_MAX_BYTES (a cut leaves `more`). Returns (message frames, more?, last_id,
    change frames, last_seq), last_seq None when no changes were asked for.
    """
    require_session(session_key, user.pk)
    if not can_still_view(room, user):
        raise room_gone()
    page, more, last_id = sync_page(room, after)
    if changes_after_seq is None:
        return page, more, last_id, [], None
    changes, more_changes = changes_after(room, changes_after_seq)
    # The changes share the page's bound on encoded output (SYNC_MAX_BYTES); cut in seq order, the rest is `more`.
    size = sum(len(text.encode()) for text in page)
    encoded: list[str] = []
    for frame in changes:
        text = encode(frame)
        size += len(text.encode())
        if (page or encoded) and size > SYNC_MAX_BYTES:
            more_changes = True
            break
        encoded.append(text)
    last_seq = changes[len(encoded) - 1]["seq"] if encoded else min(changes_after_seq, latest_change(room))
    return page, more or more_changes, last_id, encoded, last_seq


# Messages are stored, and missed ones read, on threads of their own, each with
# its own database connection. On daphne's one database thread (channels'
# default) a process stored at most 1 / (one post's round trips) messages a
# second, all rooms together, and a read for sockets waiting on a missed
# message queued behind every presence beat. Room.post's lock still orders a
# room's inserts; sockets put crossing broadcasts back in id order. Each daphne
# holds up to POST_THREADS more connections.
POST_THREADS = 4
_post_threads = ThreadPoolExecutor(POST_THREADS, thread_name_prefix="parley-post")
store_message = database_sync_to_async(post_for_socket, thread_sensitive=False, executor=_post_threads)
read_missed = database_sync_to_async(messages_after, thread_sensitive=False, executor=_post_threads)
read_changes = database_sync_to_async(changes_after, thread_sensitive=False, executor=_post_threads)


# (room pk, id) -> the read of the room's messages after that id, while it runs.
_reads_after: dict[tuple[int, int], asyncio.Future] = {}


async def missed_after(room: Room, after: int, cause: str = "broadcast") -> list[dict[str, Any]]:
    """messages_after() for sockets that missed a broadcast, one query for all of them.

    A broadcast that overtakes its predecessor (two daphnes' publishes cross)
    reaches every socket of the room at once, and they all miss the same
    message: the sockets of this process that ask for the same id share one
    read instead of each making its own.
    """
    key = (room.pk, after)
    read = _reads_after.get(key)
    if read is None:
        metrics.catchup_read(cause)
        read = asyncio.ensure_future(read_missed(room, after))
        _reads_after[key] = read
        read.add_done_callback(lambda _: _reads_after.pop(key, None))
    frames, _ = await asyncio.shield(read)
    return frames


# --- this process: its liveness row and its one beat -----------------------------------------

# This process's room sockets by room pk, the pk of its ServerProcess row (None
# until its first socket), and the task that beats for all of them.
_local: dict[int, set["ChatConsumer"]] = {}
_process_id: int | None = None
_starting: asyncio.Task | None = None
_beating: asyncio.Task | None = None


async def current_process() -> int:
    """This process's liveness row (chat.presence), inserted when its first room socket arrives."""
    if _process_id is None:
        return await restart_process(None)
    return _process_id


async def restart_process(gone: int | None) -> int:
    """Start a new liveness row in place of `gone` (none yet, swept, or stale), once however many ask."""
    global _starting
    if _process_id != gone:
        return _process_id  # another socket started it already
    if _starting is None or _starting.done() or _starting.get_loop() is not asyncio.get_running_loop():
        _starting = asyncio.ensure_future(_start_process())
    return await asyncio.shield(_starting)


async def _start_process() -> int:
    global _process_id
    _process_id = await on_connect_thread(presence.start_process)()
    logger.info("event=presence_process_started process=%s", _process_id)
    return _process_id


def arrived(socket: "ChatConsumer") -> None:
    """Count `socket` among this process's, and make sure the process beats."""
    global _beating
    _local.setdefault(socket.room.pk, set()).add(socket)
    if _beating is None or _beating.done() or _beating.get_loop() is not asyncio.get_running_loop():
        _beating = asyncio.create_task(beat_for_process())


def departed(socket: "ChatConsumer") -> None:
    """Forget `socket`; the process stops beating with its last socket (its row then expires)."""
    sockets = _local.get(socket.room.pk)
    if sockets is not None:
        sockets.discard(socket)
        if not sockets:
            del _local[socket.room.pk]
    if not _local and _beating is not None:
        _beating.cancel()


def process_beat(
    process: int | None, rooms: list[int]
) -> tuple[bool, list[tuple[int, str]], dict[int, tuple[int, int]]]:
    """One beat's database work: (process row refreshed?, leaves of dead processes' users, rooms' heads)."""
    alive = process is not None and presence.refresh_process(process)
    return alive, presence.sweep(), Room.objects.heads(rooms)


async def beat_for_process() -> None:
    """Every CHAT_PRESENCE_TTL / 3, for all this process's sockets: presence, expiry, catch-up."""
    while True:
        await asyncio.sleep(presence.heartbeat_interval())
        try:
            await beat_once()
        except Exception:
            # A database or Redis hiccup must not end presence for this process.
            logger.exception("event=presence_heartbeat_failed process=%s", _process_id)


async def beat_once() -> None:
    """Refresh the process's row, sweep dead processes, send each local socket what no broadcast brought.

    Idle, a beat costs three statements whatever the number of sockets. A
    process that stalled past the TTL was swept (its users' leaves announced):
    it starts a new row and joins its sockets again, announcing joins.
    """
    process = _process_id
    alive, left, heads = await on_connect_thread(process_beat)(process, list(_local))
    if not alive:
        logger.warning("event=presence_process_expired process=%s", process)
        await restart_process(process)
    for room_pk, handle in left:
        logger.info("event=presence_expired room=%s handle=%s", room_pk, handle)
        await announce_leave(room_pk, handle)
    behind = [socket for sockets in _local.values() for socket in sockets if socket.process_id != _process_id]
    await asyncio.gather(*(socket.rejoin() for socket in behind))
    for room_pk, (latest, change_seq) in heads.items():
        await catch_up_room([s for s in _local.get(room_pk, ()) if not s.closing], latest, change_seq)


async def announce_leave(room_pk: int, handle: str) -> None:
    """Tell a room that `handle` left; with Redis away only the leave is lost (the beat goes on)."""
    frame = {"type": "chat.frame", "text": encode({"type": "leave", "handle": handle}), "skip_user": None}
    try:
        await get_channel_layer().group_send(Room(pk=room_pk).group_name, frame)
    except Exception as exc:
        logger.warning("event=broadcast_failed room=%s type=leave error=%r", room_pk, exc)
        metrics.layer_error("group_send")


async def catch_up_room(sockets: list["ChatConsumer"], latest: int, change_seq: int) -> None:
    """Send a room's local sockets the messages and changes they lack: one read of each for all of them."""
    if not sockets:
        return
    room = sockets[0].room
    after = min(socket.last_id for socket in sockets)
    if latest > after:
        frames = await missed_after(room, after, "heartbeat")
        for socket in sockets:
            await socket.send_missed(frames)
    seq = min(socket.last_seq for socket in sockets)
    if change_seq > seq:
        changes, _ = await read_changes(room, seq)
        for socket in sockets:
            await socket.send_missed_changes(changes)


class ChatConsumer(AccessGuard, AsyncWebsocketConsumer):
    """One socket in a room.

    Frame handlers registered with chat.protocol, chat's own and other apps',
    use only this surface: `room` and `user` (set once the socket is in the
    room), `send_frame(frame)` to answer on this socket, `broadcast(frame)` to
    tell the whole room, `state`, a dict where an app keeps what it needs per
    socket (under a key of its own), and `on_disconnect(callback)` for what it
    must undo when the socket closes; channels' `channel_layer` and
    `channel_name` to join groups of its own.

    Messages reach the socket in id order, each once, even when the channel
    layer loses or reorders broadcasts (the pub/sub layer drops what is
    published while it reconnects to Redis; two daphnes' broadcasts race).
    `last_id` is the newest message this socket has been sent, with every
    older one since it connected: a broadcast whose predecessor is not
    `last_id` makes the socket read what it is missing from the database
    (catch_up), and the process's beat does the same for a broadcast that
    never came at all, one read per room for all its sockets there
    (catch_up_room). Changes to messages (chat.edits) come the same way, by the
    room's change number: `last_seq` is the newest change sent, with every
    older one; a change broadcast that is not `last_seq + 1` makes the socket
    read the changes it is missing (catch_up_changes).

    Its access ends with its session or its right to see the room (see
    project.access.AccessGuard): it is closed (4401, 4403), and a message or
    sync frame is checked against both before it is stored or answered.
    """

    room: Room | None = None
    user: "User"
    process_id: int | None = None  # the ServerProcess row this socket's presence row points at
    presence_lock: asyncio.Lock
    closing = False
    left = False
    counted = False  # in the open-sockets gauge
    last_id = 0
    last_seq = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        """Serve the socket; whatever ends it (an error, a cancelled task), its presence goes with it.

        disconnect() runs only for a close daphne reports; a consumer that dies
        another way would leave its presence row to its process's beat for
        ever: a ghost the room sees as present, whose mentions are not mailed.
        """
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.leave_room(None)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Run the handler of `message`, without channels' trip to the database thread first.

        channels' dispatch() runs close_old_connections() on the database thread
        before every handler, so a broadcast cost each socket of the room a turn
        on the one thread that also stores the messages, one turn per socket
        for every message (README.md, Benchmarks, fan-out). Handlers here
        reach the database only through database_sync_to_async, which closes
        old connections itself, on that thread, when it is used.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is not None:
            await handler(message)
        elif message["type"] in protocol.event_handlers:  # an app's event (chat.protocol.register_event)
            await protocol.event_handlers[message["type"]](self, message)
        else:
            raise ValueError(f"No handler for message type {message['type']}")

    async def connect(self) -> None:
        # Accept first so the browser sees our close code (a handshake refusal is a bare 403).
        await self.accept()
        self.user = self.scope["user"]
        if not self.user.is_authenticated:
            await self.close(code=CLOSE_NOT_LOGGED_IN)
            return
        # Listen for the end of access before checking the room: a removal from here on is heard.
        await self.guard_access()
        label = self.scope["url_route"]["kwargs"]["label"]
        room, refusal = await on_connect_thread(find_room)(label, self.user)
        if refusal:
            logger.info("event=ws_refused room=%s user=%s code=%s", label[:60], self.user.pk, refusal)
            await self.end_access(refusal, "refused")
            return
        self.room = room
        self.presence_lock = asyncio.Lock()  # orders this socket's joins and leave (see rejoin)
        self.state: dict[str, Any] = {}
        self.closers: list[Callable[[], Awaitable[None]]] = []
        # A per-socket window stops a client hammering the database with retries;
        # the database count inside Room.post holds across sockets and processes.
        self.message_limit = RateLimit(RATE_LIMIT_COUNT, RATE_LIMIT_WINDOW.total_seconds())
        # Join the group before reading presence, so no join or leave falls in between.
        await self.channel_layer.group_add(room.group_name, self.channel_name)
        self.sync_limit = RateLimit(RATE_LIMIT_COUNT, RATE_LIMIT_WINDOW.total_seconds())
        # Messages up to last_id are the client's to fetch (`sync`); later ones are ours to send.
        try:
            entry = await self.enter()
        except presence.TooManySockets:
            logger.info("event=ws_refused room=%s user=%s code=%s", room.label, self.user.pk, CLOSE_TOO_MANY_SOCKETS)
            self.left = True  # never entered: nothing to undo but the group
            await self.channel_layer.group_discard(room.group_name, self.channel_name)
            await self.close(code=CLOSE_TOO_MANY_SOCKETS)
            return
        self.last_id, self.last_seq = entry.last_id, entry.last_seq
        self.counted = True
        metrics.socket_entered()
        arrived(self)
        names = {"names": entry.names} if entry.names else {}  # absent when nobody present has set one
        await self.send_frame({"type": "presence", "handles": entry.handles, **names})
        if entry.first:
            await self.broadcast({"type": "join", "handle": self.user.username, **self.own_name()})
        logger.info("event=ws_connect room=%s user=%s channel=%s", room.label, self.user.pk, self.channel_name)

    async def enter(self) -> presence.Entry:
        """Record this socket's presence under this process's liveness row, starting a new row if it expired.

        Raises presence.TooManySockets when the user has no socket to spare.
        """
        process = await current_process()
        try:
            entry = await on_connect_thread(presence.join)(self.room, self.user, self.channel_name, process)
        except presence.ProcessGone:
            process = await restart_process(process)
            entry = await on_connect_thread(presence.join)(self.room, self.user, self.channel_name, process)
        self.process_id = process
        return entry

    async def rejoin(self) -> None:
        """Join again under the process's new row (it stalled past the TTL and was swept, leaves announced)."""
        async with self.presence_lock:
            if self.closing:
                return
            try:
                entry = await self.enter()
            except presence.TooManySockets:  # the user opened others meanwhile: this one gives way
                await self.end_access(CLOSE_TOO_MANY_SOCKETS, "too many sockets")
                return
            except Exception:
                logger.exception("event=presence_rejoin_failed room=%s channel=%s", self.room.label, self.channel_name)
                return
        if entry.first:
            await self.broadcast({"type": "join", "handle": self.user.username, **self.own_name()})

    async def disconnect(self, code: int) -> None:
        await self.leave_room(code)

    async def leave_room(self, code: int | None) -> None:
        """Undo connect(), once: from disconnect(), or from __call__ when the consumer died without one."""
        if self.room is None or self.left:
            await self.unguard_access()
            return
        self.left = True
        if self.counted:
            metrics.socket_left()
            departed(self)
        # Once this is set, under the lock, no rejoin (rejoin) can put the row back after the leave below.
        self.closing = True
        _typing_relayed.pop((self.room.pk, self.user.pk), None)
        try:
            # The presence row goes first: an app's clean-up or Redis failing below must not keep it.
            async with self.presence_lock:
                last = await on_connect_thread(presence.leave)(self.room, self.user, self.channel_name)
            if last:
                await self.broadcast({"type": "leave", "handle": self.user.username})
        finally:
            for closer in self.closers:
                await closer()
            await self.channel_layer.group_discard(self.room.group_name, self.channel_name)
            await self.unguard_access()
        logger.info("event=ws_disconnect room=%s user=%s code=%s", self.room.label, self.user.pk, code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.room is None or self.access_ended:
            return
        try:
            frame = parse_frame(text_data, bytes_data)
            await protocol.handlers[frame["type"]](self, frame)
        except FrameError as error:
            await self.send_frame(error.frame())
        except Exception:
            # A handler's bug or a database error costs this frame, not the socket and its presence.
            logger.exception("event=ws_frame_failed room=%s user=%s", self.room.label, self.user.pk)
            await self.send_frame(server_error().frame())

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback()` when this socket leaves the room (a registered handler's clean-up)."""
        self.closers.append(callback)

    # --- inbound frames (registered in chat/apps.py) ------------------------------

    async def on_message(self, frame: dict[str, Any]) -> None:
        client_id = frame["client_id"]
        if not self.message_limit.allow():
            raise FrameError("rate_limited", self.rate_limit_detail(), client_id=client_id)
        try:
            event = await store_message(
                self.access_session_key(), self.room, self.user, frame["text"], client_id,
                frame.get("parent"), frame.get("to_room", False),
            )  # fmt: skip
        except RateLimited:
            raise FrameError("rate_limited", self.rate_limit_detail(), client_id=client_id) from None
        except NoSuchParent:
            raise FrameError("not_found", "No such thread in this room: its message is unknown, deleted or a reply.",
                             client_id=client_id) from None  # fmt: skip
        except AccessEnded as ended:
            await self.refuse_ended(ended, client_id=client_id)
            return
        if event["previous"] is not None:
            metrics.message_stored()
        else:
            # A retry: its sender gets the original back whatever this socket was
            # sent before, as an answer to the resend.
            await self.send(text_data=event["text"])
        # Persisted; now everyone (the sender too) gets it. A retry is broadcast
        # again: its first broadcast may have died with another process, and
        # sockets skip ids they already sent.
        changes = event.pop("changes", [])
        if not await self.group_send(event):
            await self.chat_message(event)  # the sender sees it stored; others read it at their next beat
        for change in changes:
            if not await self.group_send(change):
                await self.chat_change(change)

    async def on_sync(self, frame: dict[str, Any]) -> None:
        # A sync is up to SYNC_LIMIT messages of output for a few bytes in: limited like messages.
        if not self.sync_limit.allow():
            raise FrameError("rate_limited", f"More than {RATE_LIMIT_COUNT} syncs in "
                             f"{int(RATE_LIMIT_WINDOW.total_seconds())} seconds; sync again in a moment.",
                             after=frame["after"])  # fmt: skip
        try:
            page, more, last_id, changes, last_seq = await database_sync_to_async(sync_for_socket)(
                self.access_session_key(), self.room, self.user, frame["after"], frame.get("changes_after")
            )
        except AccessEnded as ended:
            await self.refuse_ended(ended)
            return
        for text in page + changes:
            await self.send(text_data=text)
        synced = {"type": "synced", "last_id": last_id, "more": more}
        if last_seq is not None:
            synced["last_seq"] = last_seq
        await self.send_frame(synced)
        if page:
            # The client has everything up to last_id now: broadcasts of those need not be sent again.
            # (An empty page moves nothing: a message stored since the read must still come live.)
            self.last_id = max(self.last_id, last_id)
        if changes:
            self.last_seq = max(self.last_seq, last_seq)

    async def on_typing(self, frame: dict[str, Any]) -> None:
        if not await self.recheck_access(max_age=1.0):  # only a hint: a check at most 1 s old will do
            return
        key = (self.room.pk, self.user.pk)
        now = time.monotonic()
        if now - _typing_relayed.get(key, -TYPING_INTERVAL) < TYPING_INTERVAL:
            return  # relayed moments ago: drop quietly, it is only a hint
        _typing_relayed[key] = now
        await self.broadcast({"type": "typing", "handle": self.user.username}, skip_user=self.user.pk)

    def own_name(self) -> dict[str, str]:
        return {"name": self.user.display_name} if self.user.display_name else {}

    def may_stay(self, user: "User") -> bool:
        return can_still_view(self.room, user)

    @classmethod
    def may_stay_many(cls, pairs: Sequence[tuple["ChatConsumer", "User"]]) -> set["ChatConsumer"]:
        """may_stay for a process's room sockets in one query: the rooms still public, and the memberships.

        Room sockets are the many (project.access.AccessRecheck). A socket not
        yet in a room stays: its connect() is checking the room itself.
        """
        in_room = [(socket, user) for socket, user in pairs if socket.room is not None]
        users = {user.pk for _, user in in_room}
        rows = list(
            Room.objects.filter(pk__in={socket.room.pk for socket, _ in in_room})
            .annotate(member=FilteredRelation("memberships", condition=Q(memberships__user__in=users)))
            .filter(Q(is_private=False) | Q(member__isnull=False))
            .values_list("pk", "is_private", "member__user")
        )
        public = {room for room, is_private, _ in rows if not is_private}
        members = {(room, user) for room, _, user in rows}
        return {socket for socket, user in pairs
                if socket.room is None or socket.room.pk in public or (socket.room.pk, user.pk) in members}  # fmt: skip

    async def refuse_ended(self, ended: AccessEnded, **extra: Any) -> None:
        """A frame came after access ended: say so, and close the socket."""
        await self.send_frame(ended.frame(**extra))
        await self.end_access(ended.code, "frame")

    # --- outbound -----------------------------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=encode(frame))

    async def broadcast(self, frame: dict[str, Any], skip_user: int | None = None) -> None:
        """Send a frame to every socket in the room, encoded once for all of them."""
        await self.group_send({"type": "chat.frame", "text": encode(frame), "skip_user": skip_user})

    async def group_send(self, event: dict[str, Any]) -> bool:
        """Send an event to the room's group; False when the channel layer failed (Redis away).

        A failed broadcast costs live delivery, not the socket: messages are
        stored first and every socket reads what it missed (see catch_up).
        """
        try:
            await self.channel_layer.group_send(self.room.group_name, event)
        except Exception as exc:
            logger.warning("event=broadcast_failed room=%s type=%s error=%r", self.room.label, event["type"], exc)
            metrics.layer_error("group_send")
            return False
        return True

    async def chat_frame(self, event: dict[str, Any]) -> None:
        if event.get("skip_user") is not None and event["skip_user"] == self.user.pk:
            return
        await self.send(text_data=event["text"])
        metrics.delivered("frame")

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A message broadcast (see post_message): send it unless sent, after any it comes without."""
        if event["id"] <= self.last_id:
            return  # sent already: a retry's second broadcast, or read by catch_up
        if event["previous"] != self.last_id:
            # Its predecessor never reached us (or it is a retry, whose predecessor is unknown).
            await self.catch_up()
            return
        self.last_id = event["id"]
        await self.send(text_data=event["text"])
        metrics.delivered("message")

    async def send_changes(self, frames: list[dict[str, Any]]) -> None:
        """Broadcast change frames (chat.edits) to the room, in change order.

        A failed broadcast costs live delivery only: this socket is sent the
        change itself, the others read it at their next beat.
        """
        for frame in frames:
            event = change_event(frame)
            if not await self.group_send(event):
                await self.chat_change(event)

    async def chat_change(self, event: dict[str, Any]) -> None:
        """A change broadcast (see change_event): send it unless sent, after any it comes without."""
        if event["seq"] <= self.last_seq:
            return  # sent already, or read by catch_up_changes
        if event["id"] > self.last_id:
            # A change of a message whose own broadcast has not come yet (two daphnes' publishes
            # crossed): the message first, read from the database with this change in it.
            await self.catch_up()
        if event["seq"] != self.last_seq + 1:
            await self.catch_up_changes()
            return
        self.last_seq = event["seq"]
        await self.send(text_data=event["text"])
        metrics.delivered("change")

    async def catch_up_changes(self) -> None:
        """Send the changes after last_seq from the database (one page; the next broadcast or beat goes on)."""
        metrics.catchup_read("change")
        await self.send_missed_changes((await read_changes(self.room, self.last_seq))[0])

    async def send_missed_changes(self, frames: list[dict[str, Any]]) -> None:
        """Send changes read from the database, in change order, none last_seq covers (as send_missed)."""
        missed = 0
        for frame in frames:
            if frame["seq"] > self.last_seq:
                self.last_seq = frame["seq"]
                missed += 1
                await self.send_frame(frame)
        if missed:
            logger.info("event=ws_caught_up_changes room=%s channel=%s missed=%d last_seq=%s",
                        self.room.label, self.channel_name, missed, self.last_seq)  # fmt: skip

    async def catch_up(self) -> None:
        """Send the messages after last_id from the database (one sync page; the next broadcast or beat goes on)."""
        await self.send_missed(await missed_after(self.room, self.last_id))

    async def send_missed(self, frames: list[dict[str, Any]]) -> None:
        """Send messages read from the database, in id order, but none last_id already covers.

        The heartbeat reads concurrently with broadcasts being handled, so
        last_id may have moved on while the frames were read, or moves while
        they are sent: it is checked before each one.
        """
        missed = 0
        for message in frames:
            if message["id"] > self.last_id:
                self.last_id = message["id"]
                missed += 1
                await self.send_frame(message)
        if missed:
            metrics.caught_up(missed)
            logger.info("event=ws_caught_up room=%s channel=%s missed=%d last_id=%s",
                        self.room.label, self.channel_name, missed, self.last_id)  # fmt: skip

    @staticmethod
    def rate_limit_detail() -> str:
        seconds = int(RATE_LIMIT_WINDOW.total_seconds())
        return f"More than {RATE_LIMIT_COUNT} messages in {seconds} seconds; wait a moment."
