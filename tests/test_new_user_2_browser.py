"""What a new user sees, part 2 (issue 18 items 5, 10, 13), in real Chromium against daphne (and a worker)."""

import re

import pytest
from playwright.sync_api import expect

from tests.avatar_images import camera_jpeg
from tests.test_browser_chat import browser, signed_up_page  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

GREEN = "rgb(31, 157, 85)"  # --ok in parley.css
THUMBNAIL_256 = re.compile(r"^/media/avatars/\d+/[0-9a-f]{64}-256\.webp$")


def dot_colour(item) -> str:
    return item.evaluate("li => getComputedStyle(li, '::before').color")


def test_a_private_rooms_member_list_marks_online_only_members_present(stack, browser):  # noqa: F811
    """Item 10: a member who is not in the room has no green dot; it comes and goes with them."""
    _, port = stack.daphne()
    base = f"http://127.0.0.1:{port}"
    _, ann = signed_up_page(browser, base, "ann")
    bob_context, _ = signed_up_page(browser, base, "bob")
    ann.check("input[name=is_private]")
    ann.get_by_role("button", name="New room").click()
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected")
    ann.get_by_text("Room menu").click()  # the invite form is in the room menu
    ann.fill("input[name=handle]", "bob")
    ann.get_by_role("button", name="Invite").click()
    expect(ann.locator(".flash")).to_contain_text("@bob can now join this room")
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected")
    label = ann.url.rstrip("/").rsplit("/", 1)[1]

    members = ann.locator(".members li")
    bob_item, ann_item = members.filter(has_text="bob"), members.filter(has_text="ann")
    expect(members).to_have_count(2)
    assert dot_colour(bob_item) != GREEN  # the bug: every member had the green dot
    expect(ann_item).to_have_class("online")
    assert dot_colour(ann_item) == GREEN
    expect(bob_item).not_to_have_class("online")
    expect(bob_item).to_have_attribute("title", "not here")
    assert dot_colour(bob_item) != GREEN

    # bob opens the room: ann's page marks him online, live; he leaves: not any more.
    bob = bob_context.new_page()
    bob.goto(f"/{label}/")
    expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    expect(bob_item).to_have_class("online")
    expect(bob_item).to_have_attribute("title", "online")
    assert dot_colour(bob_item) == GREEN
    bob.close()
    expect(bob_item).not_to_have_class("online")
    assert dot_colour(bob_item) != GREEN


def test_a_file_that_is_not_an_image_is_refused_before_upload_and_save_is_disabled(stack, browser):  # noqa: F811
    """Item 13: a clear message instead of a broken preview, and no Save until another file is chosen."""
    _, port = stack.daphne()
    _, page = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    page.goto("/me/")
    save = page.locator("form[enctype='multipart/form-data'] button[type=submit]")
    preview, current, error = page.locator("#avatar-preview"), page.locator("#avatar-current"), page.locator("#avatar-client-error")
    files = {
        "notes.txt": ("text/plain", b"I am not a picture.\n"),  # the browser knows the type
        "me.jpg": ("image/jpeg", b"I am not a picture.\n" * 50),  # the name lies: only decoding tells
    }
    for name, (mime_type, data) in files.items():
        page.set_input_files("input[name=avatar]", files=[{"name": name, "mimeType": mime_type, "buffer": data}])
        expect(error).to_have_text(f'"{name}" is not a JPEG, PNG, WebP or GIF image: choose another file.')
        expect(preview).to_be_hidden()
        expect(current).to_be_visible()
        expect(save).to_be_disabled()

    page.set_input_files("input[name=avatar]", files=[{"name": "me.jpg", "mimeType": "image/jpeg", "buffer": camera_jpeg(6, 300, 200)}])
    expect(preview).to_be_visible()
    expect(error).to_have_text("")
    expect(save).to_be_enabled()
    page.wait_for_function("() => document.getElementById('avatar-preview').naturalWidth > 0")


def test_me_shows_the_new_avatar_once_its_thumbnails_are_ready_without_a_reload(stack, browser, tmp_path):  # noqa: F811
    """Item 5: /me/ said "being prepared" until reloaded; now it swaps the thumbnail in."""
    stack.env["MEDIA_ROOT"] = str(tmp_path / "media")
    _, port = stack.daphne()
    _, page = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    page.goto("/me/")
    page.set_input_files(
        "input[name=avatar]", files=[{"name": "me.jpg", "mimeType": "image/jpeg", "buffer": camera_jpeg(6, 1200, 800)}]
    )
    page.locator("form[enctype='multipart/form-data'] button[type=submit]").click()
    expect(page.locator(".flash")).to_contain_text("Avatar uploaded")
    # No worker yet: the thumbnails cannot be ready before the page has said so.
    pending, current = page.locator("#avatar-pending"), page.locator("#avatar-current")
    expect(pending).to_have_text("Your new avatar is being prepared…")
    expect(current).to_have_attribute("src", "/avatars/ann.svg")
    page.evaluate("window.notReloaded = true")

    stack.runworker("thumbnails")
    expect(current).to_have_attribute("src", THUMBNAIL_256, timeout=30_000)
    expect(pending).to_have_count(0)
    page.wait_for_function("() => document.getElementById('avatar-current').naturalWidth === 256")
    assert page.evaluate("window.notReloaded") is True
