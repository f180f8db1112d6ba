"""@mentions in real Chromium: highlighted for all, standing out for the one mentioned, and a live bell."""

import pytest
from playwright.sync_api import expect

from tests.test_browser_chat import browser, say, signed_up_page  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def test_mentions_are_highlighted_and_the_bell_counts_live(stack, browser):  # noqa: F811
    _, port = stack.daphne()
    stack.runworker("notifications")
    base = f"http://127.0.0.1:{port}"
    _, ann = signed_up_page(browser, base, "ann")
    _, bob = signed_up_page(browser, base, "bob")
    _, carol = signed_up_page(browser, base, "carol")
    for page in (ann, bob):
        page.goto("/lobby/")
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    carol.goto("/notifications/")
    expect(carol.locator("[data-unread-count]")).to_be_hidden()

    say(ann, "hi @Bob and @carol, write to ann@example.com or https://example.com/@dave")
    for page in (ann, bob):
        expect(page.locator(".msg[data-id] .mention")).to_have_text(["@Bob", "@carol"])
    expect(bob.locator(".msg.mentions-me .mention-me")).to_have_text("@Bob")
    expect(ann.locator(".msg.mentions-me")).to_have_count(0)

    # carol is not in the room: her bell rings without a reload.
    expect(carol.locator("[data-unread-count]")).to_have_text("1")
    carol.reload()
    carol.get_by_role("link", name="@ann in #lobby", exact=False).click()
    expect(carol).to_have_url(f"{base}/lobby/#message-1")
    expect(carol.locator(".msg.target.mentions-me")).to_be_visible()
    expect(carol.locator("[data-unread-count]")).to_be_hidden()
