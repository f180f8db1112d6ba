"""What a new user sees (issue 18), in real Chromium against `runserver` (DEBUG, as `make run`) and a worker."""

import re
import time

import pytest
from playwright.sync_api import expect

from tests.test_browser_chat import browser, signed_up_page  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def reload_until_visible(page, locator, timeout: float = 30) -> None:
    """The profile page is not live: reload it until what the worker did shows (bounded)."""
    deadline = time.monotonic() + timeout
    while not locator.is_visible():
        assert time.monotonic() < deadline, f"{locator} not visible after {timeout}s"
        page.wait_for_timeout(300)
        page.reload()


def test_profile_shows_a_code_that_could_not_be_sent_and_no_sms_choice(stack, browser):  # noqa: F811
    """Items 3, 4 and 16 on /me/ with no Twilio configured (the stack sets none)."""
    _, port = stack.runserver()
    stack.runworker("notifications")
    _, page = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    page.goto("/me/")
    radios = page.locator("input[name=mention_channel]")
    expect(radios).to_have_count(1)
    expect(page.get_by_label("In Parley only")).to_be_checked()

    # The help text's own example is accepted.
    example = re.search(r"e\.g\. (\+[\d ]+\d)", page.locator("#notifications small", has_text="e.g.").inner_text())
    page.fill("#id_phone", example.group(1))
    page.get_by_role("button", name="Save notification settings").click()
    expect(page.locator(".flash")).to_contain_text("We are texting a code")
    expect(page.locator(".flash .error")).to_have_count(0)

    failed = page.locator("#sms-confirmation-failed")
    reload_until_visible(page, failed)
    expect(failed).to_contain_text("The code could not be texted to +447400123456: SMS is not set up")
    expect(failed.get_by_role("button", name="Text me a code again")).to_be_visible()
    expect(page.locator("#phone-state")).to_have_text("not confirmed")
    expect(page.locator("input[name=code]")).to_have_count(0)  # no box for a code never sent
    expect(radios).to_have_count(1)  # SMS cannot be chosen

    page.get_by_role("button", name="Send me a test notification").click()
    expect(page.locator(".flash")).to_contain_text("A test notification is on its way to your bell, here in Parley")
    page.goto("/notifications/")
    test_item = page.locator(".notifications li", has_text="Test notification")
    reload_until_visible(page, test_item)
    expect(test_item.locator("time")).to_have_text("just now")


def test_404_is_parleys_page_pages_have_a_favicon_and_rooms_say_just_now(stack, browser):  # noqa: F811
    """Items 6 and 16 under runserver with DEBUG on, as `make run` serves."""
    _, port = stack.runserver()
    _, page = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    missing = []
    page.on("response", lambda response: response.status == 404 and missing.append(response.url))
    page.goto("/lobby/")
    page.goto("/")
    expect(page.locator(".room-list li", has_text="lobby")).to_contain_text("active just now")
    icon = page.locator("link[rel=icon]").get_attribute("href")
    answer = page.request.get(icon)
    assert answer.status == 200 and answer.headers["content-type"].startswith("image/svg+xml")
    assert missing == []

    response = page.goto("/no/such/page/")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_role("link", name="Back to the rooms")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("URLconf")
