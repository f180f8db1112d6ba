"""Search in real Chromium: the header's box, highlighted results, a click that opens a message 5,000 back."""

import pytest
from playwright.sync_api import expect

from tests.test_browser_chat import browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.e2e

SEED = """
from accounts.models import User
from chat.models import Message, Room
archivist = User.objects.create_user("archivist")
room = Room.objects.create(label="archive")
Message.objects.bulk_create(
    Message(room=room, user=archivist, client_id=str(i),
            text="the zebras escaped <b>again</b>" if i == 100 else f"filler {i}")
    for i in range(5_100)
)
secret = Room.objects.create_by(archivist, "secret", is_private=True)
Message.objects.create(room=secret, user=archivist, client_id="s", text="a zebra in the secret room")
"""


def test_search_then_open_a_result_far_back(stack, browser):  # noqa: F811
    stack.manage("shell", "-c", SEED)
    _, port = stack.daphne()
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}", viewport={"width": 1100, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/signup/")
    page.fill("#id_username", "ann")
    page.fill("#id_password1", "a long passphrase 42")
    page.fill("#id_password2", "a long passphrase 42")
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Rooms")).to_be_visible()

    page.fill(".nav-search input", "zebra")  # stemmed: finds "zebras"
    page.press(".nav-search input", "Enter")
    results = page.locator(".search-result")
    expect(results).to_have_count(1)  # not the private room's
    expect(results.locator("mark")).to_have_text("zebras")
    expect(results.locator(".search-snippet")).to_contain_text("escaped <b>again")  # escaped, shown as typed
    expect(results.locator(".search-room")).to_have_text("#archive")

    page.fill(".search-form input", "zebra in:#secret")
    page.press(".search-form input", "Enter")
    expect(page.locator(".search-error")).to_have_text("There is no room #secret you can see.")
    page.fill(".search-form input", '"unbalanced -')
    page.press(".search-form input", "Enter")
    expect(page.locator(".search-error, .search-empty")).to_be_visible()  # a message, never a 500

    page.go_back()
    page.go_back()
    page.locator(".search-result a").click()
    expect(page).to_have_url(f"http://127.0.0.1:{port}/archive/#message-{target_id(stack)}")
    target = page.locator(".msg.permalinked")
    expect(target).to_have_count(1)
    expect(target.locator(".text")).to_have_text("the zebras escaped <b>again</b>")
    expect(target).to_be_in_viewport()
    # The newest messages are there too, and the gap between fills on demand.
    expect(page.locator(".msg[data-id]").last.locator(".text")).to_have_text("filler 5099")
    expect(page.locator("#message-list .gap")).to_have_count(1)
    page.locator("#message-list .gap").click()
    expect(page.locator(".msg[data-id]").filter(has_text="filler 126")).to_have_count(1)
    context.close()


def target_id(stack) -> int:
    proc = stack.manage(
        "shell", "-c", "from chat.models import Message; print(Message.objects.get(text__startswith='the zebras').pk)"
    )
    return int(proc.stdout.strip().splitlines()[-1])
