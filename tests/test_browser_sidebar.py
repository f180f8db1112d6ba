"""The sidebar in real Chromium: a live unread badge, the read position shared by two browser contexts
(two devices) of one user, the room opening at its first unread, day dividers and grouped messages."""

import pytest
from playwright.sync_api import expect

from tests.test_browser_chat import browser, say, signed_up_page  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

PASSWORD = "a long passphrase 42"
DESKTOP = {"width": 1280, "height": 800}

SEED_OLD = """
from datetime import timedelta
from django.utils import timezone
from accounts.models import User
from chat.models import Message, Room
user = User.objects.create_user("oldtimer")
room = Room.objects.create(label="lobby")
Message.objects.create(room=room, user=user, text="nine days ago", client_id="old-1")
Message.objects.update(created_at=timezone.now() - timedelta(days=9))
"""


def new_page(browser, base: str, viewport: dict = DESKTOP):  # noqa: F811
    context = browser.new_context(base_url=base, viewport=viewport)
    context.set_default_timeout(10_000)
    return context.new_page()


def sign_up(browser, base: str, handle: str):
    return signed_up_page(browser, base, handle, DESKTOP)[1]


def log_in(browser, base: str, handle: str):  # noqa: F811
    page = new_page(browser, base)
    page.goto("/login/")
    page.fill("#id_username", handle)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Rooms")).to_be_visible()
    return page


def open_room(page, label: str) -> None:
    page.goto(f"/{label}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")


def badge(page, label: str):
    return page.locator(f'#sidebar li[data-room="{label}"] [data-room-unread]')


def test_live_unread_badge_and_a_read_position_shared_by_two_devices(stack, browser):  # noqa: F811
    stack.manage("shell", "-c", SEED_OLD)
    _, port = stack.daphne()
    base = f"http://127.0.0.1:{port}"
    ann = sign_up(browser, base, "ann")
    laptop = sign_up(browser, base, "bob")
    open_room(laptop, "lobby")
    laptop.click("#join-room")
    expect(laptop.locator('#sidebar li[data-room="lobby"]')).to_have_class("active")
    phone = log_in(browser, base, "bob")
    for page in (laptop, phone):
        open_room(page, "elsewhere")  # a room bob has not joined: lobby is not on screen
        expect(page.locator('#sidebar li[data-room="lobby"]')).to_be_visible()
        expect(badge(page, "lobby")).to_be_hidden()

    open_room(ann, "lobby")
    for text in ("one", "two", "three"):
        say(ann, text)
    for page in (laptop, phone):
        expect(badge(page, "lobby")).to_have_text("unread: 3")  # live, no reload

    # Dates: the old message under its day, today's three under "Today", grouped under one name.
    dividers = ann.locator("#message-list .day-divider")
    expect(dividers).to_have_count(2)
    expect(dividers.nth(1)).to_have_text("Today")
    assert dividers.nth(0).inner_text() not in ("Today", "Yesterday")
    expect(ann.locator("#message-list .msg.grouped")).to_have_count(2)
    expect(ann.locator("#message-list .msg[data-id]").first.locator("time")).to_have_attribute(
        "title", __import__("re").compile(r"\d{4}")  # the full date, year included, on hover
    )

    # The laptop opens the room at the first unread; the phone's badge clears live, and after a reload.
    laptop.locator('#sidebar li[data-room="lobby"] a').click()
    expect(laptop.locator("#status")).to_have_attribute("data-state", "connected")
    first = laptop.locator(".msg.first-unread")
    expect(first.locator(".text")).to_have_text("one")
    expect(first.locator(".unread-divider")).to_have_text("New messages")
    expect(badge(phone, "lobby")).to_be_hidden()
    phone.reload()
    expect(phone.locator('#sidebar li[data-room="lobby"]')).to_be_visible()
    expect(badge(phone, "lobby")).to_be_hidden()
    phone.goto("/lobby/")
    expect(phone.locator("#message-list .msg[data-id]")).to_have_count(4)
    expect(phone.locator(".msg.first-unread")).to_have_count(0)  # read on the laptop


def test_a_direct_message_from_the_sidebar_on_a_phone(stack, browser):  # noqa: F811
    _, port = stack.daphne()
    base = f"http://127.0.0.1:{port}"
    sign_up(browser, base, "carol")
    dave = sign_up(browser, base, "dave")
    phone = new_page(browser, base, {"width": 390, "height": 740})
    phone.goto("/login/")
    phone.fill("#id_username", "dave")
    phone.fill("#id_password", PASSWORD)
    phone.click("button[type=submit]")
    open_room(phone, "lobby")
    expect(phone.locator("#sidebar")).not_to_be_in_viewport()  # a drawer, closed
    phone.click("#sidebar-toggle")
    expect(phone.locator("#sidebar")).to_be_in_viewport()
    phone.fill("#sidebar .dm-start input[name=to]", "@carol")
    phone.click("#sidebar .dm-start button")
    expect(phone.locator("h1.dm-title")).to_contain_text("@carol")
    expect(phone.locator("#status")).to_have_attribute("data-state", "connected")
    say(phone, "psst")
    expect(phone.locator(".msg[data-id] .text")).to_have_text(["psst"])
    dave.close()
