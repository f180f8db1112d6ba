"""Two people chat in real Chromium; one drops offline, types, comes back: nothing lost, nothing twice."""

import pytest
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


PHONE = {"width": 390, "height": 740}


def signed_up_page(browser, base: str, handle: str, viewport: dict = PHONE):
    context = browser.new_context(base_url=base, viewport=viewport)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto("/signup/")
    page.fill("#id_username", handle)
    page.fill("#id_password1", "a long passphrase 42")
    page.fill("#id_password2", "a long passphrase 42")
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Rooms")).to_be_visible()
    return context, page


def say(page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def texts(page) -> list[str]:
    return page.locator("#message-list .msg .text").all_inner_texts()


def assert_each_once(page, expected: list[str]) -> None:
    """Every expected text stored (has an id) exactly once, in order, nothing pending."""
    for text in expected:
        # Generous: rate-limited resends wait out the 5 s window.
        expect(page.locator("#message-list .msg[data-id]").filter(has_text=text)).to_have_count(1, timeout=20_000)
    expect(page.locator("#message-list .msg:not([data-id])")).to_have_count(0)
    ids = [int(i) for i in page.locator("#message-list .msg").evaluate_all("els => els.map(e => e.dataset.id)")]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert texts(page) == expected


SEED_ARCHIVE = """
from accounts.models import User
from chat.models import Message, Room
user = User.objects.create_user("archivist")
room = Room.objects.create(label="archive")
Message.objects.bulk_create(Message(room=room, user=user, text=f"old {i:03}", client_id=str(i)) for i in range(70))
"""


def test_offline_messages_arrive_once(stack, browser):
    stack.manage("shell", "-c", SEED_ARCHIVE)
    _, port = stack.daphne()
    base = f"http://127.0.0.1:{port}"
    ann_context, ann = signed_up_page(browser, base, "ann")
    bob_context, bob = signed_up_page(browser, base, "bob")
    for page in (ann, bob):
        page.goto("/lobby/")
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(ann.locator("#presence li")).to_have_text(["ann", "bob"])
    bob.fill("#text", "typing...")
    expect(ann.locator("#typing")).to_have_text("bob is typing…")

    say(ann, "hello bob, see https://example.com/x?a=1&b=<2>")
    expect(bob.locator(".msg[data-id]")).to_have_count(1)
    link = bob.locator(".msg a")
    expect(link).to_have_attribute("href", "https://example.com/x?a=1&b=")
    expect(link).to_have_attribute("rel", "noopener nofollow")
    say(bob, "<b>not bold</b>")
    expect(ann.locator(".msg .text").last).to_have_text("<b>not bold</b>")  # escaped, shown as typed

    # bob drops off the network.
    bob_context.set_offline(True)
    expect(bob.locator("#status")).to_have_attribute("data-state", "offline")
    expect(ann.locator("#presence li")).to_have_text(["ann"])
    say(ann, "are you there?")
    # More than the rate limit allows at once (10 in 5 s): the outbox keeps and retries the rest.
    offline = [f"offline message {i:02}" for i in range(12)]
    for text in offline:
        say(bob, text)
    expect(bob.locator(".msg.pending")).to_have_count(12)
    say(ann, "guess not")

    bob_context.set_offline(False)
    expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    expected = [
        "hello bob, see https://example.com/x?a=1&b=<2>",
        "<b>not bold</b>",
        "are you there?",
        "guess not",
        *offline,
    ]
    assert_each_once(bob, expected)
    assert_each_once(ann, expected)
    expect(ann.locator("#presence li")).to_have_text(["ann", "bob"])

    # A reload renders the same history from the server, and the outbox is empty.
    bob.reload()
    expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    assert_each_once(bob, expected)
    assert bob.evaluate("localStorage.getItem('parley.outbox.bob.lobby')") == "[]"

    # Scrolling up loads older messages from the history endpoint.
    ann.goto("/archive/")
    expect(ann.locator(".msg[data-id]")).to_have_count(50)
    ann.locator("#messages").evaluate("el => { el.scrollTop = 0; }")
    expect(ann.locator(".msg[data-id]")).to_have_count(70)
    assert texts(ann) == [f"old {i:03}" for i in range(70)]
    ann_context.close()
    bob_context.close()


def test_export_typed_in_the_chat_box_sends_an_export_frame(stack, browser):
    """`/export ...` is client-side sugar: the socket carries a typed export frame, and nothing is posted."""
    _, port = stack.daphne()
    _, ann = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    sent = []
    ann.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    ann.goto("/lobby/")
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected")

    say(ann, "/export CSV 2026-01-01")
    expect(ann.locator("#export-progress .export-line").first).to_contain_text("CSV export")
    assert '{"type":"export","format":"csv","since":"2026-01-01"}' in sent
    say(ann, "/export pdf")  # the server checks the format, as the export form does
    expect(ann.locator("#export-progress")).to_contain_text("Usage: /export")
    frames_before = len(sent)
    say(ann, "/export csv 2026-01-01 2026-01-31 extra")  # more than a frame can say: the usage, nothing sent
    expect(ann.locator("#export-progress")).to_contain_text("Usage: /export")
    assert len(sent) == frames_before and all('"message"' not in frame for frame in sent)
    expect(ann.locator("#message-list .msg")).to_have_count(0)
