"""Avatar images: checking an upload before anything is stored, and rendering its thumbnails.

Pillow only: no storage, no database. accounts.avatars names and stores what
this makes; accounts.tasks.make_thumbnails runs the rendering on the worker pool.
"""

import io
import logging
import os
from typing import IO

from django.core.exceptions import ValidationError
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
# What Pillow may read an upload as (the content decides, never the file name).
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
SIZES = (256, 64, 32)
# Every file of a set, as "<size>.<ext>": the name suffixes after "<digest>-".
OUTPUTS = ("256.webp", "64.webp", "32.webp", "32.png")

_SRGB = ImageCms.createProfile("sRGB")

# Pillow hands an image's memory back to malloc the moment the image is dropped, and
# in a `runworker` process glibc then gave it back to the kernel (one madvise per
# avatar): every thumbnail run paid page faults for fresh zeroed pages (what that
# cost is in README.md, at PILLOW_BLOCKS_MAX). Keeping a few freed blocks for the
# next image stops that; at most 4 of Pillow's blocks stay cached per process.
# PILLOW_BLOCKS_MAX, when set, decides.
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
