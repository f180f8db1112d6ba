"""In real Chromium: a room page whose access ends says why and stops reconnecting, or goes to the login page."""

import re
import time

import pytest
from playwright.sync_api import expect

from tests.test_browser_chat import browser, signed_up_page  # noqa: F401 (browser: a fixture)

pytestmark = pytest.mark.e2e

REMOVE_BOB = """
from chat.models import Membership
Membership.objects.filter(user__username="bob").delete()
"""


def chat_sockets(page) -> list[str]:
    """The URLs of the room sockets `page` opens from now on."""
    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url) if "/chat/" in ws.url else None)
    return opened


def test_a_removed_member_is_told_and_a_logged_out_tab_lands_on_login(stack, browser):  # noqa: F811
    _, port = stack.daphne()
    base = f"http://127.0.0.1:{port}"
    ann_context, ann = signed_up_page(browser, base, "ann")
    _, bob = signed_up_page(browser, base, "bob")
    ann.check("input[name=is_private]")
    ann.click("text=New room")
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected")
    room_path = re.sub(r"^https?://[^/]+", "", ann.url)
    ann.get_by_text("Room menu").click()  # the invite form is in the room menu
    ann.fill("input[name=handle]", "bob")
    with ann.expect_navigation():  # the form posts and reloads the room: the old page's socket must not count
        ann.click("button:has-text('Invite')")
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected")

    sockets = chat_sockets(bob)
    bob.goto(room_path)
    expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    stack.manage("shell", "-c", REMOVE_BOB)  # another process: the news comes through Redis
    expect(bob.locator("#notice")).to_have_text("You were removed from this room.")
    expect(bob.locator("#status")).to_have_attribute("data-state", "refused")
    time.sleep(2)  # a reconnect would come within 0.5 s
    assert len(sockets) == 1, sockets

    # Ann logs out in another tab of the same browser: her room tab goes to the login page, and back after.
    other_tab = ann_context.new_page()
    other_tab.goto("/")
    other_tab.click("button:has-text('Log out')")
    expect(ann).to_have_url(re.compile(r"/login/\?next=" + re.escape(room_path.replace("/", "%2F"))))
