"""In real Chromium: an avatar uploaded on /me/ appears on another user's open room page, no reload.

Real daphne and a real `runworker thumbnails` on PostgreSQL and Redis.
"""

import re

import pytest
from playwright.sync_api import expect

from tests.avatar_images import camera_jpeg
from tests.processes import wait_until
from tests.test_browser_chat import browser, signed_up_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e

THUMBNAIL_32 = re.compile(r"^/media/avatars/\d+/[0-9a-f]{64}-32\.webp$")


def loaded_width(locator) -> int:
    return locator.evaluate("img => img.complete ? img.naturalWidth : 0")


def test_new_avatar_swaps_in_live_on_open_room_pages(stack, browser, tmp_path):  # noqa: F811
    stack.env["MEDIA_ROOT"] = str(tmp_path / "media")
    _, port = stack.daphne()
    stack.runworker("thumbnails")
    base = f"http://127.0.0.1:{port}"
    ann_context, ann = signed_up_page(browser, base, "ann")
    _, bob = signed_up_page(browser, base, "bob")
    for page in (ann, bob):
        page.goto("/lobby/")
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    ann.fill("#text", "hello")
    ann.press("#text", "Enter")

    in_message = bob.locator(".msg[data-id] img[data-avatar-user=ann]")
    in_presence = bob.locator("#presence img[data-avatar-user=ann]")
    for image in (in_message, in_presence):  # the placeholder, through the stable URL
        expect(image).to_have_attribute("src", "/avatars/ann/32")
    wait_until(lambda: loaded_width(in_message) > 0, timeout=10, message="placeholder loaded")

    # ann, in another tab (still in the lobby in the first), picks a photo: preview first, then upload.
    profile = ann_context.new_page()
    profile.goto("/me/")
    profile.set_input_files(
        "input[name=avatar]", files=[{"name": "me.jpg", "mimeType": "image/jpeg", "buffer": camera_jpeg(6, 1200, 800)}]
    )
    expect(profile.locator("#avatar-preview")).to_be_visible()
    expect(profile.locator("#avatar-preview")).to_have_attribute("src", re.compile(r"^blob:"))
    profile.locator("form[enctype='multipart/form-data'] button[type=submit]").click()
    expect(profile.locator(".flash")).to_contain_text("Avatar uploaded")

    # bob's page, never reloaded, swaps both images once the worker is done.
    for image in (in_message, in_presence):
        expect(image).to_have_attribute("src", THUMBNAIL_32, timeout=30_000)
    wait_until(lambda: loaded_width(in_message) == 32, timeout=10, message="new thumbnail loaded")
    # A reload finds it through the stable URL's redirect.
    bob.reload()
    expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    expect(in_message).to_have_attribute("src", "/avatars/ann/32")
    wait_until(lambda: loaded_width(in_message) == 32, timeout=10, message="thumbnail after reload")
