"""Avatars: upload checks, the thumbnail task's pixels and files, placeholders, serving."""

import io
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test import Client
from PIL import Image

from accounts import avatars, images
from accounts.models import User
from accounts.tasks import make_thumbnails
from accounts.uploads import request_thumbnails, store_avatar
from tasks.models import TaskRecord
from tests.avatar_images import BLUE, GREEN, RED, YELLOW, camera_jpeg, encode, png_claiming, quadrants
from tests.processes import wait_until

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def close(pixel, colour, tolerance=40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def media_files() -> list[str]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def user():
    return User.objects.create_user("ada", password="correct horse battery 9", display_name="Ada Lovelace")


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


def upload(client, data: bytes, name: str = "me.jpg"):
    return client.post("/me/", {"display_name": "Ada Lovelace", "avatar": SimpleUploadedFile(name, data)})


def run_queued_task(user) -> str | None:
    """Run the thumbnail task the upload queued, as a worker would (same stored arguments)."""
    record = TaskRecord.objects.filter(queue_name="thumbnails").latest("enqueued_at")
    assert record.task_path == "accounts.tasks.make_thumbnails"
    assert record.args == [user.pk, User.objects.get(pk=user.pk).avatar.name]
    return make_thumbnails.func(*record.args)


# --- The thumbnail function: pixels ---------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_comes_out_upright_square_and_without_metadata(orientation):
    original = camera_jpeg(orientation)
    files = images.render_thumbnails(original)
    assert sorted(files) == sorted(images.OUTPUTS)
    for output, data in files.items():
        image = decoded(data)
        size = int(output.split(".")[0])
        assert image.format == ("PNG" if output.endswith("png") else "WEBP")
        assert image.size == (size, size)
        quarter = size // 4
        assert close(image.getpixel((quarter, quarter)), RED), (output, image.getpixel((quarter, quarter)))
        assert close(image.getpixel((size - quarter, quarter)), GREEN), output
        assert close(image.getpixel((quarter, size - quarter)), BLUE), output
        assert close(image.getpixel((size - quarter, size - quarter)), YELLOW), output
        # No EXIF (orientation, camera, GPS), XMP or ICC left anywhere in the file.
        assert not image.getexif() and not {"exif", "xmp", "icc_profile"} & set(image.info), image.info
        assert b"ParleyTestCam" not in data and b"Exif" not in data


def test_jpeg_is_decoded_once_at_reduced_size():
    """Draft mode: a 2400x1600 JPEG decodes at 1/4 scale (600x400), still >= 256 on both sides."""
    with images.open_image(io.BytesIO(camera_jpeg(1))) as image:
        images.decode(image)
        assert image.size == (600, 400)


def test_png_transparency_is_kept():
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image.paste((200, 10, 10, 255), (0, 0, 300, 150))  # top half opaque red, bottom transparent
    files = images.render_thumbnails(encode(image, "PNG"))
    for output in ("256.webp", "32.png"):
        out = decoded(files[output])
        size = out.width
        assert out.mode == "RGBA"
        assert close(out.getpixel((size // 2, size // 4)), (200, 10, 10)) and out.getpixel((size // 2, size // 4))[3] == 255
        assert out.getpixel((size // 2, size - size // 4))[3] == 0


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (120, 80), colour) for colour in (RED, GREEN, BLUE)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(gif.getvalue())).n_frames == 3
    out = decoded(images.render_thumbnails(gif.getvalue())["256.webp"])
    assert out.size == (256, 256) and close(out.getpixel((128, 128)), RED)


def test_webp_and_cmyk_jpeg_and_palette_png():
    webp = encode(quadrants(400, 300), "WEBP", quality=90)
    out = decoded(images.render_thumbnails(webp)["64.webp"])
    assert close(out.getpixel((16, 16)), RED) and close(out.getpixel((48, 48)), YELLOW)

    cmyk = encode(Image.new("CMYK", (500, 400), (0, 255, 255, 0)), "JPEG")  # pure red in ink
    out = decoded(images.render_thumbnails(cmyk)["256.webp"])
    assert out.mode == "RGB" and close(out.getpixel((128, 128)), (255, 0, 0), tolerance=60), out.getpixel((128, 128))

    palette = encode(quadrants(200, 200).convert("P", palette=Image.Palette.ADAPTIVE, colors=4), "PNG")
    out = decoded(images.render_thumbnails(palette)["256.webp"])
    assert close(out.getpixel((64, 64)), RED) and close(out.getpixel((192, 192)), YELLOW)


def test_one_pixel_image_is_scaled_up_to_every_size():
    files = images.render_thumbnails(encode(Image.new("RGB", (1, 1), GREEN), "PNG"))
    for output, data in files.items():
        image = decoded(data)
        size = int(output.split(".")[0])
        assert image.size == (size, size)
        assert close(image.getpixel((0, 0)), GREEN) and close(image.getpixel((size - 1, size - 1)), GREEN)


def test_thumbnails_are_deterministic():
    """Reruns compare what is on disk with what they would write: that needs the same bytes."""
    original = camera_jpeg(6, 1200, 800)
    assert images.render_thumbnails(original) == images.render_thumbnails(original)


# --- Upload checks, through the profile page ----------------------------------------------------


def test_profile_page_shows_handle_display_name_placeholder_and_settings_block(client, user):
    response = client.get("/me/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "@ada" in html and 'value="Ada Lovelace"' in html
    assert f'src="/avatars/{user.username}.svg"' in html
    assert 'type="file" name="avatar"' in html and 'enctype="multipart/form-data"' in html
    assert "accounts/profile.js" in html


def test_profile_saves_display_name(client, user):
    response = client.post("/me/", {"display_name": "Countess"})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.display_name == "Countess" and not user.avatar
    assert not TaskRecord.objects.exists()


def test_upload_stores_original_by_content_hash_and_queues_thumbnails(client, user):
    data = camera_jpeg(1, 800, 600)
    response = upload(client, data, name="holiday.PNG")  # the name lies; the content decides
    assert response.status_code == 302
    user.refresh_from_db()
    digest = avatars.content_digest(data)
    assert user.avatar.name == f"avatar-originals/{user.pk}/{digest}.jpg"
    assert user.avatar.read() == data  # byte for byte
    record = TaskRecord.objects.get()
    assert (record.queue_name, record.args, record.status) == ("thumbnails", [user.pk, user.avatar.name], "READY")
    # Until the task has run: the placeholder, and a note on the profile page.
    assert avatars.thumbnails_pending(user)
    assert avatars.avatar_urls(user)["64"] == f"/avatars/{user.username}.svg"
    assert "being prepared" in client.get("/me/").content.decode()


REFUSALS = {
    "too_big": (lambda: b"\xff\xd8\xff" + b"\0" * (10 * 1024 * 1024), "me.jpg", "at most 10 MB"),
    "text_named_jpg": (lambda: b"I am not a picture.\n" * 50, "me.jpg", "not a JPEG, PNG, WebP or GIF"),
    "bmp": (lambda: encode(Image.new("RGB", (10, 10)), "BMP"), "me.bmp", "not a JPEG, PNG, WebP or GIF"),
    "truncated_jpeg": (lambda: camera_jpeg(1, 800, 600)[:-3000], "me.jpg", "damaged or incomplete"),
    "corrupt_png": (
        lambda: (lambda png: png[:-20] + bytes([png[-20] ^ 0xFF]) + png[-19:])(encode(quadrants(64, 64), "PNG")),  # IDAT byte
        "me.png",
        "damaged or incomplete",
    ),
    # A real 50-megapixel image, cheap to make: 1 bit per pixel, compresses to almost nothing.
    "fifty_megapixels": (lambda: encode(Image.new("1", (10000, 5000)), "PNG"), "big.png", "at most 40 megapixels"),
    # Header claims 10 gigapixels: refused before a pixel is decoded (Pillow's bomb check).
    "claims_huge": (lambda: png_claiming(100_000, 100_000), "bomb.png", "at most 40 megapixels"),
    # Over our 40 MP but under Pillow's own limits: our check, not Pillow's, refuses it.
    "claims_45mp": (lambda: png_claiming(9000, 5000), "bomb.png", "at most 40 megapixels"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_uploads_are_refused_with_a_form_error_and_nothing_stored_or_queued(client, user, case):
    make, name, message = REFUSALS[case]
    response = upload(client, make(), name)
    assert response.status_code == 200
    errors = response.context["form"].errors["avatar"]
    assert any(message in error for error in errors), errors
    assert message in response.content.decode()
    user.refresh_from_db()
    assert not user.avatar and not user.avatar_digest
    assert media_files() == []
    assert not TaskRecord.objects.exists()


# --- The task: files, idempotency, replacement ---------------------------------------------------


def thumbnail_files(user) -> list[str]:
    return [name for name in media_files() if name.startswith(f"avatars/{user.pk}/")]


def test_task_writes_one_set_then_the_avatar_is_ready(client, user):
    data = camera_jpeg(8, 1200, 800)
    upload(client, data)
    digest = avatars.content_digest(data)
    assert run_queued_task(user) == digest
    user.refresh_from_db()
    assert user.avatar_digest == digest and not avatars.thumbnails_pending(user)
    assert thumbnail_files(user) == sorted(f"avatars/{user.pk}/{digest}-{output}" for output in images.OUTPUTS)
    urls = avatars.avatar_urls(user)
    assert urls["256"] == f"/media/avatars/{user.pk}/{digest}-256.webp"
    assert urls["32png"] == f"/media/avatars/{user.pk}/{digest}-32.png"


def test_rerun_after_a_crash_mid_write_leaves_exactly_one_set(client, user):
    """A killed worker leaves some files, one cut short; the retry must not add a second set."""
    data = camera_jpeg(3, 1200, 800)
    upload(client, data)
    digest = avatars.content_digest(data)
    expected = images.render_thumbnails(data)
    folder = Path(settings.MEDIA_ROOT) / f"avatars/{user.pk}"
    folder.mkdir(parents=True)
    (folder / f"{digest}-256.webp").write_bytes(expected["256.webp"])  # finished before the crash
    (folder / f"{digest}-64.webp").write_bytes(expected["64.webp"][:100])  # cut short by it
    for _ in range(2):  # the retry, and a second rerun (avatar.refresh) for good measure
        assert run_queued_task(user) == digest
        names = thumbnail_files(user)
        assert names == sorted(f"avatars/{user.pk}/{digest}-{output}" for output in images.OUTPUTS)
        for output in images.OUTPUTS:
            assert (folder / f"{digest}-{output}").read_bytes() == expected[output]


def test_replacing_keeps_the_old_set_until_the_new_one_is_ready(client, user):
    first, second = camera_jpeg(1, 800, 600), encode(quadrants(300, 300), "PNG")
    upload(client, first)
    run_queued_task(user)
    old_digest = avatars.content_digest(first)
    old_files = thumbnail_files(user)

    upload(client, second)
    user.refresh_from_db()
    # Queued, not run: the old thumbnails are still what everyone sees, and still there.
    assert user.avatar_digest == old_digest and avatars.thumbnails_pending(user)
    assert thumbnail_files(user) == old_files
    assert len([n for n in media_files() if n.startswith("avatar-originals/")]) == 2

    new_digest = run_queued_task(user)
    assert new_digest == avatars.content_digest(second)
    assert thumbnail_files(user) == sorted(f"avatars/{user.pk}/{new_digest}-{output}" for output in images.OUTPUTS)
    assert [n for n in media_files() if n.startswith("avatar-originals/")] == [f"avatar-originals/{user.pk}/{new_digest}.png"]


def test_a_superseded_task_does_nothing(client, user):
    upload(client, camera_jpeg(1, 800, 600))
    stale = TaskRecord.objects.get().args
    upload(client, encode(quadrants(300, 300), "PNG"))
    assert make_thumbnails.func(*stale) is None
    assert thumbnail_files(user) == []
    user.refresh_from_db()
    assert not user.avatar_digest


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(os.environ["PARLEY_TEST_STACK"] != "postgres", reason="row locks are PostgreSQL's")
def test_a_task_finishing_during_an_upload_waits_and_leaves_its_original_alone(client, user):
    """The replaced avatar's task sweeps; an upload in progress meanwhile holds the row lock
    with its original already on disk. The task must wait for it, find itself superseded,
    and remove only its own set."""
    upload(client, camera_jpeg(1, 800, 600))
    first_digest = run_queued_task(user)
    upload(client, encode(quadrants(300, 300), "PNG"))
    second = TaskRecord.objects.filter(queue_name="thumbnails").latest("enqueued_at").args
    third = camera_jpeg(2, 640, 480)
    third_name = avatars.original_name(user.pk, avatars.content_digest(third), "JPEG")
    uploading, finish_upload = threading.Event(), threading.Event()

    def upload_held_open():
        try:
            with transaction.atomic():  # store_avatar's lock and original stay until this commits
                store_avatar(User.objects.get(pk=user.pk), ContentFile(third, name="x.jpg"), "JPEG")
                uploading.set()
                assert finish_upload.wait(10)
        finally:
            connection.close()

    def task_in_a_worker_thread():
        try:
            return make_thumbnails.func(*second)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        uploader = pool.submit(upload_held_open)
        assert uploading.wait(10)
        task = pool.submit(task_in_a_worker_thread)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"

        def task_waits_for_the_lock() -> bool:
            with connection.cursor() as cursor:
                cursor.execute(waiting)
                return cursor.fetchone()[0] == 1

        wait_until(task_waits_for_the_lock, timeout=10, message="the task waiting for the upload's row lock")
        assert not task.done()
        finish_upload.set()
        uploader.result(timeout=10)
        assert task.result(timeout=10) is None  # superseded by the upload it waited for

    assert (Path(settings.MEDIA_ROOT) / third_name).read_bytes() == third
    # The task wrote its set, then took it away again; the first set waits for the third's task.
    assert sorted(thumbnail_files(user)) == sorted(
        avatars.thumbnail_name(user.pk, first_digest, output) for output in images.OUTPUTS
    )
    user.refresh_from_db()
    assert user.avatar.name == third_name


@pytest.mark.skipif(os.environ["PARLEY_TEST_STACK"] != "postgres", reason="synchronous_commit is PostgreSQL's")
def test_the_swap_waits_for_the_disk_only_when_files_are_deleted_after_it(client, user):
    upload(client, camera_jpeg(1, 800, 600))
    user.refresh_from_db()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = on")  # the test server's default is off

    def commit_mode_after_pointing(durable: bool) -> str:
        with transaction.atomic():  # a savepoint, rolled back: so is what the statement set
            assert avatars.point_at_set(user.pk, user.avatar.name, "d" * 64, durable=durable)
            with connection.cursor() as cursor:
                cursor.execute("SHOW synchronous_commit")
                mode = cursor.fetchone()[0]
            transaction.set_rollback(True)
        return mode

    assert commit_mode_after_pointing(durable=True) == "on"
    assert commit_mode_after_pointing(durable=False) == "off"
    assert not avatars.point_at_set(user.pk, "avatar-originals/another.jpg", "d" * 64, durable=False)


@pytest.mark.skipif(os.environ["PARLEY_TEST_STACK"] != "postgres", reason="synchronous_commit is PostgreSQL's")
def test_only_a_replacement_swap_waits_for_the_disk(client, user):
    """A first avatar deletes nothing, so its swap need not wait for the disk; a
    replacement deletes the old files once swapped, so its swap must."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = on")  # the test server's default is off

    def swap_in_current() -> tuple[bool, str]:
        original = User.objects.get(pk=user.pk).avatar.name
        digest = original.rsplit("/", 1)[-1].split(".")[0]
        with transaction.atomic():  # a savepoint, rolled back: so is what the swap set
            swapped = avatars.swap_in(default_storage, user.pk, digest, original)
            with connection.cursor() as cursor:
                cursor.execute("SHOW synchronous_commit")
                mode = cursor.fetchone()[0]
            transaction.set_rollback(True)
        return swapped, mode

    upload(client, camera_jpeg(1, 800, 600))
    assert swap_in_current() == (True, "off")
    upload(client, camera_jpeg(2, 800, 600))  # the first original is now stale
    assert swap_in_current() == (True, "on")


def test_request_thumbnails_uses_the_stored_avatar_and_skips_users_without_one(client, user):
    assert request_thumbnails(user) is None
    upload(client, camera_jpeg(1, 800, 600))
    stale_copy = User.objects.get(pk=user.pk)
    upload(client, encode(quadrants(300, 300), "PNG"))
    result = request_thumbnails(stale_copy)
    assert TaskRecord.objects.get(pk=result.id).args == [user.pk, User.objects.get(pk=user.pk).avatar.name]


# --- Placeholder and serving ------------------------------------------------------------------


def test_placeholder_has_initials_on_a_colour_of_the_handle(client, user):
    response = client.get(f"/avatars/{user.username}.svg")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert "default-src 'none'" in response["Content-Security-Policy"]
    svg = response.content.decode()
    assert ">AL</text>" in svg and avatars.placeholder_colour("ada") in svg
    assert avatars.placeholder_colour("ada") == avatars.placeholder_colour("ADA")
    assert avatars.placeholder_colour("ada") != avatars.placeholder_colour("bob")
    User.objects.create_user("zed", display_name="<script>")
    svg = client.get("/avatars/zed.svg").content.decode()
    assert "<script>" not in svg and "&lt;</text>" in svg
    assert client.get("/avatars/nobody.svg").status_code == 404


def test_thumbnails_are_served_with_a_year_of_cache_and_originals_never(client, user):
    upload(client, camera_jpeg(6, 800, 600))
    digest = run_queued_task(user)
    anonymous = Client()
    url = avatars.avatar_urls(User.objects.get(pk=user.pk))["64"]
    response = anonymous.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/webp"
    assert response["Cache-Control"] == "public, max-age=31536000, immutable"
    assert decoded(b"".join(response.streaming_content)).size == (64, 64)
    assert anonymous.get(f"/media/avatars/{user.pk}/{digest}-32.png")["Content-Type"] == "image/png"
    for path in (
        f"/media/avatar-originals/{user.pk}/{digest}.jpg",
        f"/media/avatars/../avatar-originals/{user.pk}/{digest}.jpg",
        f"/media/avatars/{user.pk}/{digest}-128.webp",
        f"/media/avatars/{user.pk}/{'0' * 64}-64.webp",
    ):
        assert anonymous.get(path).status_code in (302, 404), path


def test_s3_storage_is_configured_from_the_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        AWS_STORAGE_BUCKET_NAME="parley-media",
        AWS_S3_ENDPOINT_URL="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_S3_ADDRESSING_STYLE="path",
    )
    script = (
        "import django; django.setup();"
        "from django.core.files.storage import storages; s = storages['default'];"
        "print(type(s).__name__, s.bucket_name, s.endpoint_url, s.querystring_auth, s.addressing_style, s.object_parameters['CacheControl']);"
        "print(s.url('avatars/1/x-64.webp'))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first == "S3Storage parley-media http://127.0.0.1:9 False path public, max-age=31536000, immutable"
    assert second == "http://127.0.0.1:9/parley-media/avatars/1/x-64.webp"
