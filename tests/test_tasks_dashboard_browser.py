"""The /tasks/ dashboard in real Chromium on a 390 px phone in another time zone, served by real daphne:
charts of a known run, running tasks with their age, failures with a working Re-run button, local times."""

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone
from playwright.sync_api import expect

from tasks import runner
from tasks.models import TaskRecord
from tasks.monitor import CHART_BUCKET_MINUTES, aggregate_minutes
from tests import sample_tasks
from tests.test_browser_chat import browser  # noqa: F401 (fixture)
from tests.test_e2e_tasks import workers_stack  # noqa: F401 (fixture)
from tests.test_e2e_tasks_browser import off_the_loop, tasks_page
from tests.test_tasks_dashboard import W1, fail_one, known_run

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ZONE = "Asia/Kolkata"  # UTC+05:30: no viewer's clock shows UTC's minutes there


def en_us(when) -> re.Pattern:
    """How Intl.DateTimeFormat("en-US", {dateStyle: "short", timeStyle: "medium"}) writes `when` in ZONE."""
    local = when.astimezone(ZoneInfo(ZONE))
    hour = local.hour % 12 or 12
    text = f"{local.month}/{local.day}/{local:%y}, {hour}:{local:%M:%S}"
    return re.compile(re.escape(text) + r"\s" + ("PM" if local.hour >= 12 else "AM"))


def test_dashboard_on_a_phone_in_the_viewers_time_zone(workers_stack, browser):  # noqa: F811
    state = {}

    def arrange() -> None:
        now = timezone.now()
        state["buckets"] = known_run(now)
        aggregate_minutes(now)
        sample_tasks.flaky.enqueue("/nonexistent", 0)
        state["failed"] = fail_one("compute")
        state["finished_at"] = TaskRecord.objects.get(pk=state["failed"]).finished_at
        sample_tasks.noop.enqueue()
        running = runner.claim(["default"], W1)
        TaskRecord.objects.filter(pk=running.pk).update(started_at=now - timedelta(minutes=2))
        state["running"] = str(running.pk)
        user = get_user_model().objects.create_user("ops", password="a long passphrase 42", is_staff=True)
        user.groups.add(Group.objects.get(name="Task operators"))

    off_the_loop(arrange)
    page = tasks_page(workers_stack, browser, viewport={"width": 390, "height": 844}, timezone_id=ZONE, locale="en-US")
    expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
    expect(page.locator("header a[href='/tasks/']")).to_have_text("Tasks")

    # The charts: one per queue that finished tasks, with the known run's numbers.
    per_day = 24 * 60 // CHART_BUCKET_MINUTES
    compute = page.locator(".tasks-chart[data-queue=compute]")
    expect(compute).to_be_visible()
    expect(compute.locator("g.bucket")).to_have_count(per_day)
    busy = compute.locator("g.bucket:not([data-succeeded='0'])")
    expect(busy).to_have_count(1)
    expect(busy).to_have_attribute("data-start", state["buckets"]["compute"].isoformat())
    expect(busy).to_have_attribute("data-failed", "1")
    expect(busy).to_have_attribute("data-succeeded", "3")
    expect(busy).to_have_attribute("data-run-p95", "10.0")
    expect(page.locator(".tasks-chart[data-queue=default] g.bucket[data-succeeded='2']")).to_have_count(1)
    assert compute.bounding_box()["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out on a phone

    # Running, with its start in the viewer's zone and its age; the failure likewise, with its button.
    running = page.locator(f"#tasks-running tr[title='{state['running']}']")
    expect(running.locator("td").nth(3)).to_have_text(re.compile(r"^1[2-9]\ds$"))
    failure = page.locator(f"#tasks-failures tr[title='{state['failed']}']")
    expect(failure.locator("time")).to_have_text(en_us(state["finished_at"]))
    ticks = page.locator("#tasks-schedules tr").filter(has_text="tasks.tasks.aggregate_minutes").locator("time")
    state["next_tick"] = ticks.first.get_attribute("datetime")
    expect(ticks.first).to_have_text(en_us(datetime.fromisoformat(state["next_tick"])))
    failure.get_by_role("button", name="Re-run").click()
    expect(page.locator(".flash")).to_contain_text(f"Task {state['failed']} is queued to run again.")
    expect(page.locator(f"#tasks-failures tr[title='{state['failed']}']")).to_have_count(0)
    off_the_loop(lambda: state.update(status=TaskRecord.objects.get(pk=state["failed"]).status))
    assert state["status"] == "READY"
    page.context.close()
