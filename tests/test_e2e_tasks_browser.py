"""The /tasks/ page in real Chromium, served by real daphne: it follows /tasks/live/ without reloads,
slots in use per worker included."""

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from playwright.sync_api import expect

from tests import sample_tasks
from tests.test_browser_chat import browser  # noqa: F401 (fixture)
from tests.test_e2e_tasks import start_workers, workers_stack  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def off_the_loop(work):
    """`work()`'s value, from another thread: Playwright's sync API runs an event loop in this one."""

    def run():
        try:
            return work()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def tasks_page(stack, browser, **context_options):
    """A page logged in as staff user "ops" (made here, unless it exists) on /tasks/ of the stack's daphne, once live."""

    def ops():
        if not get_user_model().objects.filter(username="ops").exists():
            get_user_model().objects.create_user("ops", password="a long passphrase 42", is_staff=True)

    off_the_loop(ops)
    _, port = stack.daphne()
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}", **context_options)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto("/login/?next=/tasks/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "a long passphrase 42")
    page.click("button[type=submit]")
    expect(page.locator("#tasks-live")).to_have_text("live")
    return page


def test_monitor_page_updates_live(workers_stack, browser, tmp_path):  # noqa: F811
    page = tasks_page(workers_stack, browser)
    expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
    compute = page.locator("#tasks-queues tr").filter(has_text="compute")
    expect(compute.locator("td")).to_have_text(["compute", "0", "0", "0", "serving", "Pause"])

    # No worker runs here: the tasks stay where the page can see them.
    off_the_loop(lambda: sample_tasks.add.enqueue(1, 2))
    off_the_loop(lambda: sample_tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(3, 4))
    expect(compute.locator("td")).to_have_text(["compute", "1", "1", "0", "serving", "Pause"], timeout=8_000)
    expect(page.locator("#tasks-workers td")).to_have_text(["No worker is running."])

    # A worker of two slots takes the due task, then two slow ones side by side: the page shows both slots in use.
    (worker,) = start_workers(workers_stack, 1, "compute", concurrency="compute=2")
    off_the_loop(lambda: [sample_tasks.slow_mark.enqueue(str(tmp_path / "slow"), str(key), 6.0) for key in range(2)])
    row = page.locator("#tasks-workers tr")
    expect(row.locator("td")).to_have_text([re.compile(f":{worker.pid}:"), "2", "2", "compute=2/2"], timeout=8_000)
    expect(compute.locator("td")).to_have_text(["compute", "0", "1", "2", "serving", "Pause"])
    page.context.close()
