"""What a new user sees on the room page, in real Chromium on a phone (issue 18, items 7, 9 and 14)."""

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from accounts.models import User
from tests.test_browser_chat import browser, say, signed_up_page  # noqa: F401 (fixture)


@pytest.mark.e2e
def test_only_handles_of_users_are_highlighted(stack, browser):  # noqa: F811
    _, port = stack.daphne()
    base = f"http://127.0.0.1:{port}"
    _, ann = signed_up_page(browser, base, "ann")
    _, bob = signed_up_page(browser, base, "bob")
    for page in (ann, bob):
        page.goto("/lobby/")
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    say(ann, "hi @Bob, @nobody and @here")
    for page in (ann, bob):
        message = page.locator(".msg[data-id]").filter(has_text="hi @Bob")
        expect(message.locator(".mention")).to_have_text(["@Bob", "@here"])
        expect(message.locator(".text span")).to_have_count(3)  # @nobody is found, but plain
    # A user who signs up later is highlighted in the next message naming them.
    signed_up_page(browser, base, "nobody")
    say(ann, "welcome @nobody")
    expect(bob.locator(".msg[data-id]").filter(has_text="welcome").locator(".mention")).to_have_text("@nobody")
    # A reload (history) asks once for all its messages: the first one's @nobody is a user now.
    bob.reload()
    expect(bob.locator(".msg[data-id] .mention")).to_have_text(["@Bob", "@nobody", "@here", "@nobody"])


@pytest.mark.django_db
def test_the_handles_endpoint_answers_which_handles_are_users(client):
    ann = User.objects.create_user("Ann")
    User.objects.create_user("gone", is_active=False)
    client.force_login(ann)
    url = reverse("notifications:handles")
    response = client.get(url, {"h": ["ann", "BOB", "gone", "nobody"]})
    assert response.status_code == 200 and response.json() == {"handles": ["ann"]}
    for bad in ([], ["not a handle"], ["x" * 31], [f"u{i}" for i in range(51)]):
        assert client.get(url, {"h": bad}).status_code == 400
    client.logout()
    assert client.get(url, {"h": ["ann"]}).status_code == 302  # to the login page: no handle probing


@pytest.mark.e2e
def test_the_slow_down_notice_goes_once_the_outbox_is_empty(stack, browser):  # noqa: F811
    _, port = stack.daphne()
    _, ann = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    ann.goto("/lobby/")
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected")
    for i in range(12):  # the limit is 10 in 5 s: two wait in the outbox
        say(ann, f"quick {i:02}")
    expect(ann.locator("#notice")).to_have_text("Slow down a little; your message will be sent in a moment.")
    expect(ann.locator(".msg[data-id]")).to_have_count(12, timeout=15_000)
    expect(ann.locator("#notice")).to_have_text("", timeout=1_000)


@pytest.mark.e2e
def test_on_a_phone_messages_come_first_and_room_actions_are_in_a_menu(stack, browser):  # noqa: F811
    _, port = stack.daphne()
    context, ann = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    ann.set_viewport_size({"width": 390, "height": 844})
    ann.goto("/lobby/")
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected")
    say(ann, "hello")
    expect(ann.locator(".msg[data-id]")).to_have_count(1)

    here = ann.get_by_role("heading", name="Here now")
    expect(here).to_be_visible()
    expect(ann.locator("#presence li")).to_have_text(["ann"])
    expect(ann.locator("#export-form")).to_be_hidden()
    expect(ann.get_by_role("link", name="Insights")).to_be_hidden()
    messages, side = ann.locator("#messages").bounding_box(), ann.locator(".side").bounding_box()
    assert messages["y"] + messages["height"] <= side["y"] + 1  # the messages first
    assert messages["height"] >= 400  # most of an 844 px screen
    assert side["y"] + side["height"] <= 844

    ann.get_by_text("Room menu").click()
    for target in (ann.locator("#export-form"), ann.get_by_role("link", name="Insights"),
                   ann.get_by_role("link", name="My exports")):  # fmt: skip
        expect(target).to_be_visible()
        expect(target).to_be_in_viewport()
        box = target.bounding_box()
        assert 0 <= box["x"] and box["x"] + box["width"] <= 390
    # An export started from the menu closes it; its progress shows by the composer.
    ann.get_by_role("button", name="Export").click()
    expect(ann.locator("#export-form")).to_be_hidden()
    expect(ann.locator(".export-line")).to_contain_text("JSONL export")
    ann.get_by_text("Room menu").click()
    ann.get_by_role("link", name="Insights").click()
    expect(ann.get_by_role("heading", name="Insights of #lobby")).to_be_visible()
    context.close()
