"""Real images for the avatar tests and benchmark, made with Pillow on the spot."""

import io
import struct
import zlib

from PIL import Image

RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)


def quadrants(width: int, height: int) -> Image.Image:
    """An upright picture: red, green / blue, yellow quadrants split at the centre."""
    image = Image.new("RGB", (width, height), YELLOW)
    image.paste(RED, (0, 0, width // 2, height // 2))
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    return image


# How a camera stores an upright picture for each EXIF orientation, from the EXIF
# spec's definitions (not from Pillow's exif_transpose, which is under test):
# the stored pixels are the upright picture with the inverse of the display
# transform applied. Image.Transpose.ROTATE_90 turns counter-clockwise.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,  # display: mirror horizontally
    3: Image.Transpose.ROTATE_180,  # display: rotate 180
    4: Image.Transpose.FLIP_TOP_BOTTOM,  # display: mirror vertically
    5: Image.Transpose.TRANSPOSE,  # display: mirror along the main diagonal
    6: Image.Transpose.ROTATE_90,  # display: rotate 90 clockwise, so stored turned 90 counter-clockwise
    7: Image.Transpose.TRANSVERSE,  # display: mirror along the anti-diagonal
    8: Image.Transpose.ROTATE_270,  # display: rotate 90 counter-clockwise, so stored turned clockwise
}


def camera_jpeg(orientation: int, width: int = 2400, height: int = 1600) -> bytes:
    """A JPEG as a phone writes it: pixels stored sideways, EXIF orientation, GPS position."""
    upright = quadrants(width, height)
    stored = upright if STORED_AS[orientation] is None else upright.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "ParleyTestCam"  # Make
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 22.0, 12.5)  # GPSLatitudeRef, GPSLatitude
    return encode(stored, "JPEG", quality=90, exif=exif)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height`, with one tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")

