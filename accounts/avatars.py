"""Avatars: check an upload, keep the original, make thumbnails on the `thumbnails` queue.

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
"""

import hashlib
import io
import logging
import os
import re
from datetime import timedelta
from typing import IO

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, default_storage
from django.db import connection, transaction
from django.tasks import TaskResult, task
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
# What Pillow may read an upload as (the content decides, never the file name).
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
SIZES = (256, 64, 32)
# Every file of a set, as "<size>.<ext>": the name suffixes after "<digest>-".
OUTPUTS = ("256.webp", "64.webp", "32.webp", "32.png")
ORIGINALS_DIR = "avatar-originals"
THUMBNAILS_DIR = "avatars"
CACHE_FOREVER = "public, max-age=31536000, immutable"
# Rooms the user posted in this recently show their messages: those get the live swap too.
RECENT_POSTS = timedelta(days=30)
# A thumbnail's path under THUMBNAILS_DIR; nothing else there is ever served.
THUMBNAIL_PATH = re.compile(r"\d+/[0-9a-f]{64}-(?:(?:256|64|32)\.webp|32\.png)")

_SRGB = ImageCms.createProfile("sRGB")

# Pillow hands an image's memory back to malloc the moment the image is dropped, and
# in a `runworker` process glibc then gave it back to the kernel (one madvise per
# avatar): every thumbnail run paid ~1,000 page faults (4 MB of fresh zeroed pages),
# about 3 ms of CPU per avatar (bench/thumbnails.py). Keeping a few freed blocks for
# the next image stops that; at most 4 blocks of Pillow's 16 MB stay cached per
# process (a thumbnail run uses ~1.5 MB ones). PILLOW_BLOCKS_MAX, when set, decides.
if "PILLOW_BLOCKS_MAX" not in os.environ:
    Image.core.set_blocks_max(4)


# --- Checking an upload -------------------------------------------------------------


def open_image(fp: IO[bytes]) -> Image.Image:
    """Open (headers only) an image Parley accepts, or raise ValidationError.

    Refuses anything that is not JPEG, PNG, WebP or GIF by content, and anything
    over MAX_PIXELS before a single pixel is decoded (decompression bombs).
    """
    try:
        image = Image.open(fp, formats=list(FORMATS))
    except Image.DecompressionBombError as exc:
        # Pillow's own ceiling (2 x Image.MAX_IMAGE_PIXELS) is far above ours.
        raise too_many_pixels() from exc
    except UnidentifiedImageError as exc:
        raise ValidationError(
            "This file is not a JPEG, PNG, WebP or GIF image.", code="not_an_image"
        ) from exc
    if image.width * image.height > MAX_PIXELS:
        raise too_many_pixels(image.width, image.height)
    return image


def too_many_pixels(width: int | None = None, height: int | None = None) -> ValidationError:
    size = f" is {width}x{height} pixels, which" if width else ""
    return ValidationError(
        f"This image{size} is too large: at most {MAX_PIXELS // 1_000_000} megapixels, please.",
        code="too_many_pixels",
    )


def decode(image: Image.Image, draft: bool = True) -> None:
    """Decode the pixels Parley uses: the first frame, shrunk on load for a JPEG.

    libjpeg can decode at 1/2, 1/4 or 1/8 scale; draft() picks the smallest that
    keeps both sides >= 256 px, which for a camera photo skips most of the work.
    """
    if draft and image.format == "JPEG":
        image.draft(None, (SIZES[0], SIZES[0]))
    image.load()


def validate_upload(upload: IO[bytes]) -> str:
    """Check an uploaded avatar before anything is stored or queued.

    Returns the format Pillow read ("JPEG", ...). Raises ValidationError with a
    message for the form: too big, not an image, too many pixels, or damaged
    (truncated or corrupt: caught by verify() and by decoding the whole stream,
    a JPEG's at reduced scale, which still reads every byte of it).
    """
    size = upload.seek(0, os.SEEK_END)
    if size > MAX_UPLOAD_BYTES:
        raise ValidationError(
            f"This file is {size / 1024 / 1024:.1f} MB; an avatar may be at most "
            f"{MAX_UPLOAD_BYTES // 1024 // 1024} MB.",
            code="too_big",
        )
    damaged = ValidationError("This image is damaged or incomplete; please upload it again.", code="damaged")
    try:
        upload.seek(0)
        with open_image(upload) as image:
            image_format = image.format
            image.verify()  # structure and checksums (PNG CRCs); then unusable, so reopen
        upload.seek(0)
        with open_image(upload) as image:
            decode(image)  # a truncated stream fails here ("image file is truncated")
    except ValidationError:
        raise
    except Exception as exc:  # whatever a broken file makes Pillow raise, it is refused
        logger.info("event=avatar_refused reason=damaged error=%r", exc)
        raise damaged from exc
    finally:
        upload.seek(0)
    return image_format


# --- Making thumbnails ------------------------------------------------------------------


def render_thumbnails(data: bytes, draft: bool = True) -> dict[str, bytes]:
    """The thumbnail files for an original image, keyed by OUTPUTS.

    One decode (shrunk on load for JPEG, first frame of an animation), EXIF
    orientation applied, a centred square crop, colours converted to sRGB, and
    no metadata written: WebP and PNG get no EXIF, XMP or ICC from here.
    `draft=False` decodes at full size (the benchmark's naive baseline).
    """
    with open_image(io.BytesIO(data)) as image:
        decode(image, draft=draft)
        icc = image.info.get("icc_profile")
        image = ImageOps.exif_transpose(image)
    image = _normalise_mode(image)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    # reducing_gap: box-average down to ~3x the target first, then Lanczos (what thumbnail() does).
    largest = image.resize(
        (SIZES[0], SIZES[0]), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side), reducing_gap=3.0
    )
    largest = _to_srgb(largest, icc)
    squares = {SIZES[0]: largest}
    for size in SIZES[1:]:
        squares[size] = largest.resize((size, size), Image.Resampling.LANCZOS)
    files = {}
    for size, square in squares.items():
        files[f"{size}.webp"] = _encode(square, "WEBP", quality=80)
    files["32.png"] = _encode(squares[32], "PNG", optimize=True)
    return files


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGB, RGBA, L or CMYK: modes that resize well (palette and 16-bit ones do not)."""
    if image.mode in ("RGB", "RGBA", "L", "CMYK"):
        return image
    if image.mode.startswith("I;16"):
        # 16-bit greyscale PNG: scale to 8 bits (convert() would clip everything above 255).
        return image.point(lambda value: value / 256).convert("L")
    transparent = image.mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info
    return image.convert("RGBA" if transparent else "RGB")


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB(A) in sRGB: browsers assume sRGB once the profile is gone (phone photos are Display P3)."""
    if icc and image.mode in ("RGB", "CMYK", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            logger.info("event=avatar_icc_ignored error=%r", exc)
    return image if image.mode in ("RGB", "RGBA") else image.convert("RGB")


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    image.info.clear()  # PNG would copy an ICC profile from info
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_name(user_id: int, digest: str, image_format: str) -> str:
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


def request_thumbnails(user) -> TaskResult | None:
    """Queue thumbnails for the user's current avatar; None if they have none.

    The one way in for the upload view and the WebSocket `avatar.refresh`
    command. Reads the avatar from the database, not from `user`, which may be
    a stale copy (a socket's user was loaded when it connected).
    """
    original = get_user_model().objects.filter(pk=user.pk).values_list("avatar", flat=True).first()
    if not original:
        return None
    result = make_thumbnails.enqueue(user.pk, original)
    logger.info("event=avatar_queued user=%s task=%s", user.pk, result.id)
    return result


def store_avatar(user, upload: IO[bytes], image_format: str) -> TaskResult:
    """Keep a validated upload as the user's avatar and queue its thumbnails.

    The user's row is locked while the original is written, so a thumbnail task
    finishing meanwhile cannot sweep the new original away as "old". If the
    database write fails, the file written for it is removed again.
    """
    upload.seek(0)
    data = upload.read()
    name = original_name(user.pk, content_digest(data), image_format)
    User = get_user_model()
    existed = default_storage.exists(name)  # the same picture again: nothing new to clean up
    try:
        with transaction.atomic():
            User.objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
            write_exactly(default_storage, name, data)
            User.objects.filter(pk=user.pk).update(avatar=name)
            user.avatar.name = name
            result = request_thumbnails(user)
    except BaseException:
        if not existed and default_storage.exists(name):
            default_storage.delete(name)
        raise
    logger.info("event=avatar_uploaded user=%s original=%s bytes=%d", user.pk, name, len(data))
    return result


@task(queue_name="thumbnails", max_attempts=3, retry_backoff=2.0)
def make_thumbnails(user_id: int, original: str) -> str | None:
    """Make the thumbnail set of `original` for `user_id`; returns its digest.

    Idempotent: a rerun writes the same names with the same bytes. Only once the
    whole set is written does the user's avatar_digest point at it; then older
    sets and originals are removed, and every room showing the user is told.
    Does nothing (returns None) if the user has uploaded another avatar since.
    """
    storage = default_storage
    try:
        with storage.open(original, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:  # a newer avatar's task already swept it away
        logger.info("event=avatar_superseded user=%s original=%s", user_id, original)
        return None
    digest = original.rsplit("/", 1)[-1].split(".")[0]  # store_avatar named it by its SHA-256
    for output, content in render_thumbnails(data).items():
        write_exactly(storage, thumbnail_name(user_id, digest, output), content)
    if not swap_in(storage, user_id, digest, original):
        logger.info("event=avatar_superseded user=%s original=%s", user_id, original)
        return None
    logger.info("event=avatar_ready user=%s digest=%s", user_id, digest[:12])
    broadcast_avatar(user_id)
    return digest


def swap_in(storage: Storage, user_id: int, digest: str, original: str) -> bool:
    """Point the user at the set `digest` and remove the files of their other avatars.

    False if the user has uploaded another avatar since `original`: then this
    set belongs to no one (unless it is also the current one) and is removed.
    The row lock that keeps a new upload's original safe from the sweep (see
    point_at_set) is needed only when there is something to sweep: files that
    appear after the listing are never touched. So a first avatar, with nothing
    else in the user's folders, is one statement and no transaction (BEGIN and
    COMMIT were two of the five round trips to PostgreSQL per avatar), and
    deletes nothing, so its commit need not wait for the disk either.
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
    write. Plain SQL: the ORM's update() cost a worker 0.26 ms more CPU per
    avatar than this.

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
    user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
    if user is not None and digest != user.avatar_digest and digest not in user.avatar.name:
        delete_set(storage, user_id, digest)


def delete_set(storage: Storage, user_id: int, digest: str) -> None:
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
