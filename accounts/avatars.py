"""Avatars in storage: their names, the swap to a new thumbnail set, and showing them.

Everything goes through Django's storage API (default_storage: the local disk,
or a bucket when AWS_STORAGE_BUCKET_NAME is set). The layout:

    avatar-originals/<user pk>/<digest>.<ext>   the upload, byte for byte; never served
                                                (it may carry GPS and camera EXIF)
    avatars/<user pk>/<digest>-<size>.webp      256, 64 and 32 px squares, no metadata
    avatars/<user pk>/<digest>-32.png           for clients without WebP (email)

<digest> is the SHA-256 of the original's bytes. Names follow from content, so a
rerun of the task (a retry after a worker crash, an avatar.refresh) writes the
same names, never a second set, and a thumbnail's content never changes under
its URL: it can be cached for a year.

An upload is checked and rendered by accounts.images, taken in by
accounts.uploads, and made into thumbnails by accounts.tasks.make_thumbnails.
"""

import hashlib
import logging
import re
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, default_storage
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

logger = logging.getLogger(__name__)

ORIGINALS_DIR = "avatar-originals"
THUMBNAILS_DIR = "avatars"
CACHE_FOREVER = "public, max-age=31536000, immutable"
# Rooms the user posted in this recently show their messages: those get the live swap too.
RECENT_POSTS = timedelta(days=30)
# A thumbnail's path under THUMBNAILS_DIR; nothing else there is ever served.
THUMBNAIL_PATH = re.compile(r"\d+/[0-9a-f]{64}-(?:(?:256|64|32)\.webp|32\.png)")


# --- Names, files, and the swap to a new set ---------------------------------------------


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_name(user_id: int, digest: str, image_format: str) -> str:
    # accounts.images imports Pillow: imported where its names are needed, by a process that
    # takes an upload or makes thumbnails, not by every process that imports this module.
    from .images import FORMATS

    return f"{ORIGINALS_DIR}/{user_id}/{digest}.{FORMATS[image_format]}"


def thumbnail_name(user_id: int, digest: str, output: str) -> str:
    return f"{THUMBNAILS_DIR}/{user_id}/{digest}-{output}"


def write_exactly(storage: Storage, name: str, content: bytes) -> None:
    """Make `name` hold `content`, whatever an earlier attempt left there.

    Storage.save() never overwrites on the local disk (it picks another name),
    so a half-written file from a crashed worker is replaced here instead of
    gaining a sibling; a file that is already right is left alone.
    """
    if storage.exists(name):
        with storage.open(name, "rb") as existing:
            if existing.read() == content:
                return
        storage.delete(name)
    saved = storage.save(name, ContentFile(content))
    if saved != name:
        # A concurrent run of the same task wrote `name` in between: same bytes, by construction.
        storage.delete(saved)


def swap_in(storage: Storage, user_id: int, digest: str, original: str) -> bool:
    """Point the user at the set `digest` and remove the files of their other avatars.

    False if the user has uploaded another avatar since `original`: then this
    set belongs to no one (unless it is also the current one) and is removed.
    The row lock that keeps a new upload's original safe from the sweep (see
    point_at_set) is needed only when there is something to sweep: files that
    appear after the listing are never touched. So a first avatar, with nothing
    else in the user's folders, is one statement and no transaction (no BEGIN
    and COMMIT round trips), and deletes nothing, so its commit need not wait
    for the disk either.
    """
    if not stale_files(storage, user_id, digest, original):
        if point_at_set(user_id, original, digest, durable=False):
            return True
        with transaction.atomic():
            discard_superseded(storage, user_id, digest)
        return False
    with transaction.atomic():
        if not point_at_set(user_id, original, digest, durable=True):
            discard_superseded(storage, user_id, digest)
            return False
        for path in stale_files(storage, user_id, digest, original):  # again, under the lock
            storage.delete(path)
            logger.info("event=avatar_file_removed user=%s name=%s", user_id, path)
    return True


def point_at_set(user_id: int, original: str, digest: str, *, durable: bool) -> bool:
    """Make `digest` the user's thumbnail set if their avatar is still `original`.

    One statement is the check (still this upload?), the row lock (inside a
    transaction it keeps a new upload's original safe from the sweep that
    follows: store_avatar takes the same lock while it writes one), and the
    write. Plain SQL: the ORM's update() cost the worker measurably more CPU
    per avatar (README.md, Benchmarks: Thumbnails).

    With durable=False, PostgreSQL commits the transaction without waiting for
    its flush to disk (the same statement sets synchronous_commit, so no round
    trip is added). Safe when no file is deleted on the strength of it: the
    runner's own synchronous commit of the task's success comes later and
    flushes this too, and a crash before that reruns this idempotent task.
    """
    meta = get_user_model()._meta
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {quote(meta.get_field('avatar_digest').column)} = %s "
        f"WHERE {quote(meta.pk.column)} = %s AND {quote(meta.get_field('avatar').column)} = %s"
    )
    if not durable and connection.vendor == "postgresql":
        sql += " AND set_config('synchronous_commit', 'off', true) = 'off'"
    with connection.cursor() as cursor:
        cursor.execute(sql, [digest, user_id, original])
        return cursor.rowcount == 1


def discard_superseded(storage: Storage, user_id: int, digest: str) -> None:
    """Remove a superseded task's set, unless the user's current avatar is that same picture."""
    user = get_user_model().objects.lock(user_id)
    if user is not None and digest != user.avatar_digest and digest not in user.avatar.name:
        delete_set(storage, user_id, digest)


def delete_set(storage: Storage, user_id: int, digest: str) -> None:
    from .images import OUTPUTS  # Pillow: see original_name

    for output in OUTPUTS:
        storage.delete(thumbnail_name(user_id, digest, output))


def stale_files(storage: Storage, user_id: int, digest: str, original: str) -> list[str]:
    """Every file of the user's other avatars: older sets, replaced originals, leftovers."""
    thumbnails = f"{THUMBNAILS_DIR}/{user_id}"
    stale = [f"{thumbnails}/{name}" for name in _files(storage, thumbnails) if not name.startswith(f"{digest}-")]
    originals = f"{ORIGINALS_DIR}/{user_id}"
    return stale + [path for name in _files(storage, originals) if (path := f"{originals}/{name}") != original]


def _files(storage: Storage, directory: str) -> list[str]:
    try:
        return storage.listdir(directory)[1]
    except FileNotFoundError:  # local disk: the folder was never made
        return []


# --- Showing avatars ---------------------------------------------------------------------


def avatar_urls(user) -> dict[str, str]:
    """URLs of the user's thumbnails, or of the placeholder while there are none.

    Keys: "256", "64", "32" (WebP) and "32png".
    """
    if user.avatar_digest:
        url = lambda output: default_storage.url(thumbnail_name(user.pk, user.avatar_digest, output))  # noqa: E731
        return {"256": url("256.webp"), "64": url("64.webp"), "32": url("32.webp"), "32png": url("32.png")}
    placeholder = reverse("avatar_placeholder", args=[user.username])
    return {"256": placeholder, "64": placeholder, "32": placeholder, "32png": placeholder}


def thumbnails_pending(user) -> bool:
    """True while the user's latest upload has no thumbnails yet."""
    return bool(user.avatar) and not (user.avatar_digest and user.avatar_digest in user.avatar.name)


def broadcast_avatar(user_id: int) -> None:
    """Tell the rooms whose open pages show the user (chat.models.rooms_showing), so they swap the images in.

    The user is read only when some room is to be told: a user nobody is
    looking at costs the task one query here.
    """
    from chat.models import Room, rooms_showing  # chat depends on accounts, not the other way round

    room_ids = rooms_showing(user_id, timezone.now() - RECENT_POSTS)
    if not room_ids:
        return
    user = get_user_model().objects.only("username", "avatar_digest").filter(pk=user_id).first()
    if user is None:
        return
    event = {"type": "avatar.changed", "user": user.username, "user_id": user.pk, "avatar": avatar_urls(user)}
    layer = get_channel_layer()
    for room_id in sorted(room_ids):
        try:
            async_to_sync(layer.group_send)(Room(pk=room_id).group_name, event)
        except Exception as exc:  # a page misses a swap and shows the new avatar on reload
            logger.warning("event=avatar_broadcast_failed user=%s room=%s error=%r", user_id, room_id, exc)


def initials(user) -> str:
    """Up to two letters: of the display name's first two words, else the handle's first."""
    words = (user.display_name or "").split()
    if words:
        return "".join(word[0] for word in words[:2]).upper()
    return user.username[:1].upper()


def placeholder_colour(handle: str) -> str:
    """A stable colour per handle, dark enough for white letters."""
    hue = int.from_bytes(hashlib.sha256(handle.lower().encode()).digest()[:2]) % 360
    return f"hsl({hue}, 55%, 42%)"


def placeholder_svg(user) -> str:
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="64" height="64">'
        f'<rect width="64" height="64" fill="{placeholder_colour(user.username)}"/>'
        '<text x="32" y="32" dy=".35em" text-anchor="middle" fill="#fff" '
        'font-family="system-ui, sans-serif" font-size="26" font-weight="600">'
        f"{escape(initials(user))}</text></svg>"
    )
