"""In real Chromium: ann edits, reacts, deletes and opens a thread, bob replies; each sees the other live, and a reload the same."""

import pytest
from playwright.sync_api import expect

from tests.test_browser_chat import PHONE, browser, say, signed_up_page

pytestmark = pytest.mark.e2e

__all__ = ["browser"]  # a fixture


def message(page, text: str):
    return page.locator("#message-list .msg[data-id]").filter(has_text=text)


def test_edit_delete_react_and_reply_live_and_after_a_reload(stack, browser):
    _, port = stack.daphne()
    base = f"http://127.0.0.1:{port}"
    _, ann = signed_up_page(browser, base, "ann", {"width": 1200, "height": 800})
    _, bob = signed_up_page(browser, base, "bob", PHONE)
    for page in (ann, bob):
        page.goto("/lobby/")  # ann's first: the lobby is hers
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")

    # Edit: Up-arrow in the empty composer; Escape cancels, Enter saves.
    say(ann, "helo wrold")
    expect(message(bob, "helo wrold")).to_have_count(1)
    ann.press("#text", "ArrowUp")
    ann.keyboard.type(" nope")
    ann.keyboard.press("Escape")
    expect(ann.locator(".edit-box")).to_have_count(0)
    expect(message(ann, "helo wrold").locator(".text")).to_have_text("helo wrold")
    ann.locator("#text").focus()
    ann.press("#text", "ArrowUp")
    edit = ann.locator(".edit-box")
    expect(edit).to_be_focused()
    edit.fill("hello world")
    edit.press("Enter")
    greeting = message(bob, "hello world")
    expect(greeting.locator(".text")).to_have_text("hello world")
    expect(greeting.locator(".edited")).to_have_text("(edited)")

    # React, with the keyboard only: focus the message, Tab to "Add a reaction", pick one.
    mine = message(ann, "hello world")
    mine.focus()
    ann.keyboard.press("Tab")
    expect(mine.get_by_role("button", name="Add a reaction")).to_be_focused()
    ann.keyboard.press("Enter")
    expect(mine.get_by_role("button", name="React with 👍")).to_be_focused()
    ann.keyboard.press("Enter")
    reaction = greeting.locator(".reaction")
    expect(reaction).to_have_text("👍 1")
    expect(reaction).to_have_attribute("title", "ann reacted with 👍")

    # bob replies in a thread: its panel fills his phone's screen.
    greeting.hover()
    greeting.get_by_role("button", name="Reply in thread").click()
    panel = bob.locator("#thread-panel")
    expect(panel).to_be_visible()
    assert panel.bounding_box()["width"] == 390
    panel.get_by_role("textbox", name="Write a reply").fill("a reply")
    panel.get_by_role("textbox", name="Write a reply").press("Enter")
    expect(panel.locator(".thread-replies .msg[data-id] .text")).to_have_text(["a reply"])
    expect(message(bob, "a reply").locator("visible=true")).to_have_count(0)  # out of the room's timeline
    summary = mine.locator(".thread-summary")
    expect(summary).to_contain_text("1 reply")

    # bob drops offline: his reply waits in the outbox; ann edits meanwhile. Back online, both arrive.
    say(ann, "typo here")
    expect(message(bob, "typo here")).to_have_count(1)
    bob.context.set_offline(True)
    expect(bob.locator("#status")).to_have_attribute("data-state", "offline")
    panel.get_by_role("textbox", name="Write a reply").fill("typed offline")
    panel.get_by_role("textbox", name="Write a reply").press("Enter")
    expect(panel.locator(".thread-replies .msg.pending")).to_have_text(["typed offline"])
    ann.locator("#text").focus()
    ann.press("#text", "ArrowUp")
    ann.locator(".edit-box").fill("fixed here")
    ann.locator(".edit-box").press("Enter")
    expect(message(ann, "fixed here")).to_have_count(1)
    bob.context.set_offline(False)
    expect(message(bob, "fixed here")).to_have_count(1)  # the change, synced without a reload
    expect(panel.locator(".thread-replies .msg[data-id] .text")).to_have_text(["a reply", "typed offline"])
    expect(panel.locator(".thread-replies .msg.pending")).to_have_count(0)
    expect(summary).to_contain_text("2 replies")
    summary.click()
    expect(ann.locator("#thread-panel .thread-replies .msg[data-id] .text")).to_have_text(["a reply", "typed offline"])
    ann.keyboard.press("Escape")
    expect(ann.locator("#thread-panel")).to_be_hidden()
    bob.locator("#thread-panel").get_by_role("button", name="Close the thread").click()

    # Delete, from the message menu: a tombstone for both.
    say(ann, "oops, wrong room")
    oops = message(ann, "oops, wrong room")
    expect(message(bob, "oops, wrong room")).to_have_count(1)
    ann.on("dialog", lambda dialog: dialog.accept())
    oops.hover()
    oops.get_by_role("button", name="More actions").click()
    oops.get_by_role("menuitem", name="Delete").click()
    expect(message(bob, "oops, wrong room")).to_have_count(0)
    expect(bob.locator("#message-list .msg.deleted .text")).to_have_text(["message deleted"])

    # A reload shows the same.
    for page in (ann, bob):
        page.reload()
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#message-list .msg[data-id]:visible .text")).to_have_text(["hello world", "fixed here", "message deleted"])
        expect(message(page, "hello world").locator(".edited")).to_have_text("(edited)")
        expect(message(page, "hello world").locator(".reaction")).to_have_text("👍 1")
        expect(message(page, "hello world").locator(".thread-summary")).to_contain_text("2 replies")
