"""Avatars on room pages: the live swap over real WebSockets, and the avatar.refresh command."""

import asyncio
import contextlib
import io

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from accounts import avatars, images
from accounts.models import User
from accounts.tasks import make_thumbnails
from accounts.uploads import store_avatar
from chat.models import Message, Room
from tasks import runner
from tasks.models import TaskRecord
from tests.avatar_images import camera_jpeg
from tests.chat_helpers import join, next_of, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def run_thumbnail_task() -> None:
    """A worker's turn, in this process: the real runner claims the queued task and runs it."""
    claimed = await sync_to_async(runner.claim_and_start)(["thumbnails"], "test-worker")
    assert claimed is not None, "no thumbnail task queued"
    await runner.execute(*claimed, "test-worker")


async def frames_within(socket, seconds: float) -> list[dict]:
    frames = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                frames.append(await socket.receive_json_from(timeout=seconds))
    return frames


def upload_avatar(user) -> None:
    """What the profile view does with an upload that passed its checks."""
    data = io.BytesIO(camera_jpeg(6, 800, 600))
    store_avatar(user, data, images.validate_upload(data))


@pytest.fixture
def people():
    for label in ("lobby", "history", "elsewhere"):
        Room.objects.create(label=label)
    return {name: User.objects.create_user(name, display_name=name.title()) for name in ("ada", "bob", "cy", "dan")}


async def test_ready_thumbnails_swap_in_on_every_room_showing_the_user(people, channel_layer):
    """ada is in the lobby and posted in #history earlier: pages of both swap; #elsewhere hears nothing."""
    ada = people["ada"]
    await Message.objects.acreate(room=await Room.objects.aget(label="history"), user=ada, text="hi", client_id="1")
    cookies = {name: await sync_to_async(session_cookie)(user) for name, user in people.items()}
    ada_socket, _ = await join("lobby", cookies["ada"])
    bob_socket, _ = await join("lobby", cookies["bob"])
    cy_socket, _ = await join("history", cookies["cy"])  # ada's message is on cy's page
    dan_socket, _ = await join("elsewhere", cookies["dan"])  # nothing of ada's here
    try:
        await sync_to_async(upload_avatar)(ada)
        await run_thumbnail_task()
        ada_now = await User.objects.aget(pk=ada.pk)
        expected = await sync_to_async(avatars.avatar_urls)(ada_now)
        assert expected["32"] == f"/media/avatars/{ada.pk}/{ada_now.avatar_digest}-32.webp"
        for socket in (bob_socket, ada_socket, cy_socket):
            frame = await next_of(socket, "avatar")
            assert frame == {"type": "avatar", "handle": "ada", "avatar": expected}
        assert "avatar" not in [frame["type"] for frame in await frames_within(dan_socket, 0.5)]
    finally:
        for socket in (ada_socket, bob_socket, cy_socket, dan_socket):
            await socket.disconnect()


async def test_avatar_refresh_requeues_the_senders_thumbnails(people, channel_layer):
    ada = people["ada"]
    socket, _ = await join("lobby", await sync_to_async(session_cookie)(ada))
    try:
        await socket.send_json_to({"type": "avatar.refresh"})
        error = await next_of(socket, "error")
        assert error["code"] == "no_avatar" and "profile page" in error["detail"]
        assert not await TaskRecord.objects.filter(queue_name="thumbnails").aexists()

        await sync_to_async(upload_avatar)(ada)
        await run_thumbnail_task()
        await next_of(socket, "avatar")

        await socket.send_json_to({"type": "avatar.refresh"})
        queued = await next_of(socket, "avatar.queued")
        record = await TaskRecord.objects.aget(pk=queued["task"])
        original = (await User.objects.aget(pk=ada.pk)).avatar.name
        assert (record.queue_name, record.task_path, record.args) == (
            "thumbnails", "accounts.tasks.make_thumbnails", [ada.pk, original],
        )  # fmt: skip
        await socket.send_json_to({"type": "avatar.refresh"})
        assert (await next_of(socket, "error"))["code"] == "rate_limited"
        await socket.send_json_to({"type": "avatar.refresh", "user": "bob"})  # no one else's, ever
        assert (await next_of(socket, "error"))["code"] == "invalid"

        await run_thumbnail_task()  # the rerun: same set, said again
        frame = await next_of(socket, "avatar")
        assert frame["avatar"]["256"].endswith(f"{(await User.objects.aget(pk=ada.pk)).avatar_digest}-256.webp")
    finally:
        await socket.disconnect()


def test_stable_avatar_url_redirects_to_the_current_thumbnail(people):
    ada = people["ada"]
    client = Client()
    client.force_login(people["bob"])
    response = client.get("/avatars/ada/32")
    assert response.status_code == 302 and response["Location"] == "/avatars/ada.svg"
    assert response["Cache-Control"] == "private, no-cache"
    upload_avatar(ada)
    assert client.get("/avatars/ada/32")["Location"] == "/avatars/ada.svg"  # queued, not ready yet
    make_thumbnails.func(*TaskRecord.objects.get().args)
    ada.refresh_from_db()
    assert client.get("/avatars/ada/64")["Location"] == f"/media/avatars/{ada.pk}/{ada.avatar_digest}-64.webp"
    assert client.get("/avatars/ada/128").status_code == 404
    assert client.get("/avatars/nobody/32").status_code == 404
