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


def off_the_loop(work) -> None:
    """Playwright's sync API runs an event loop in this thread, so the ORM works from another."""

    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result()


def test_monitor_page_updates_live(workers_stack, browser, tmp_path):  # noqa: F811
    off_the_loop(lambda: get_user_model().objects.create_user("ops", password="a long passphrase 42", is_staff=True))
    _, port = workers_stack.daphne()
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto("/login/?next=/tasks/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "a long passphrase 42")
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
    expect(page.locator("#tasks-live")).to_have_text("live")
    compute = page.locator("#tasks-queues tr").filter(has_text="compute")
    expect(compute.locator("td")).to_have_text(["compute", "0", "0", "0", "serving", "Pause"])

    # No worker runs here: the tasks stay where the page can see them.
    off_the_loop(lambda: sample_tasks.add.enqueue(1, 2))
    off_the_loop(lambda: sample_tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(3, 4))
    expect(compute.locator("td")).to_have_text(["compute", "1", "1", "0", "serving", "Pause"], timeout=8_000)
    expect(page.locator("#tasks-workers td")).to_have_text(["No worker is running a task."])

    # A worker of two slots takes the due task, then two slow ones side by side: the page shows both slots in use.
    (worker,) = start_workers(workers_stack, 1, "compute", concurrency="compute=2")
    off_the_loop(lambda: [sample_tasks.slow_mark.enqueue(str(tmp_path / "slow"), str(key), 6.0) for key in range(2)])
    row = page.locator("#tasks-workers tr")
    expect(row.locator("td")).to_have_text([re.compile(f":{worker.pid}:"), "2", "compute=2"], timeout=8_000)
    expect(compute.locator("td")).to_have_text(["compute", "0", "1", "2", "serving", "Pause"])
    context.close()
