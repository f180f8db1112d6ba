"""Parley's pages work in real Chromium under their Content-Security-Policy, which nothing on them violates."""

import pytest
from playwright.sync_api import expect

from tests.test_browser_chat import browser, say, signed_up_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e

# Collects every violation the page reports (the init script runs before the page's own, outside its CSP).
LISTEN = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


def test_pages_work_under_the_csp_and_report_no_violation(stack, browser):  # noqa: F811
    _, port = stack.daphne()
    context, page = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    context.add_init_script(LISTEN)
    console = []
    page.on("console", lambda message: console.append(message.text))
    response = page.goto("/lobby/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")  # the socket is allowed
    say(page, "hello under a strict policy, see https://example.com/")
    expect(page.locator("#message-list .msg[data-id]")).to_have_count(1)
    expect(page.locator(".msg a")).to_have_attribute("href", "https://example.com/")
    violations = page.evaluate("window.__cspViolations")
    for path in ("/", "/me/", "/notifications/", "/reports/rooms/lobby/export/new/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        violations += page.evaluate("window.__cspViolations")
    assert violations == []
    assert not [text for text in console if "Content Security Policy" in text]
