"""Pause, resume and re-run end to end: a real `runworker`, the real `manage.py tasks` commands."""

import time

import pytest
from django.conf import settings
from playwright.sync_api import expect

from tasks.models import PausedQueue, TaskRecord
from tests import sample_tasks
from tests.test_browser_chat import browser  # noqa: F401 (fixture)
from tests.test_e2e_tasks import finished, lines, start_workers, workers_stack  # noqa: F401 (fixture)
from tests.test_e2e_tasks_browser import off_the_loop, tasks_page


pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_pause_stops_claims_within_a_poll_interval_and_rerun_runs_a_failed_task_again(workers_stack, tmp_path):
    stack = workers_stack
    start_workers(stack, 1, "compute", concurrency="2")
    marks = tmp_path / "marks"
    assert finished(sample_tasks.mark.enqueue(str(marks), "before").id, 15).status == "SUCCESSFUL"

    assert "Queue compute paused." in stack.manage("tasks", "pause", "compute").stdout
    time.sleep(settings.TASKS_POLL_INTERVAL + 0.3)  # one poll interval (and the command's exit)
    waiting = [sample_tasks.mark.enqueue(str(marks), f"paused-{i}").id for i in range(4)]
    flaky = sample_tasks.flaky.enqueue(str(tmp_path / "flaky"), 1)  # fails once, then succeeds
    TaskRecord.objects.filter(pk=flaky.id).update(max_attempts=1)  # fails for good the first time
    time.sleep(3 * settings.TASKS_POLL_INTERVAL)
    assert set(TaskRecord.objects.filter(pk__in=[*waiting, flaky.id]).values_list("status", flat=True)) == {"READY"}
    assert [line[0] for line in lines(marks)] == ["before"]
    assert "paused" in stack.manage("tasks").stdout

    assert "Queue compute resumed." in stack.manage("tasks", "resume", "compute").stdout
    for task_id in waiting:
        assert finished(task_id, 15).status == "SUCCESSFUL"
    failed = finished(flaky.id, 15)
    assert failed.status == "FAILED" and failed.attempts == 1

    out = stack.manage("tasks", "retry", flaky.id).stdout
    assert f"Re-queued {flaky.id}" in out
    again = finished(flaky.id, 15)
    assert again.status == "SUCCESSFUL" and again.return_value == 2
    assert again.attempts == 2 and [e["exception_class_path"] for e in again.errors] == ["builtins.RuntimeError"]


def test_the_monitor_pages_pause_and_resume_buttons_work_after_live_updates(workers_stack, browser):  # noqa: F811
    page = tasks_page(workers_stack, browser)
    compute = page.locator("#tasks-queues tr").filter(has_text="compute")
    off_the_loop(lambda: sample_tasks.add.enqueue(1, 2))
    # The row is now the live script's (rebuilt from a frame), button and CSRF token included.
    expect(compute.locator("td")).to_have_text(["compute", "1", "0", "0", "serving", "Pause"], timeout=8_000)
    compute.get_by_role("button", name="Pause").click()
    expect(page.locator("body")).to_contain_text("Queue compute paused.")
    expect(compute.locator("td")).to_have_text(["compute", "1", "0", "0", "paused", "Resume"])
    assert off_the_loop(lambda: list(PausedQueue.objects.values_list("queue_name", "paused_by"))) == [("compute", "ops")]
    off_the_loop(lambda: sample_tasks.add.enqueue(3, 4))
    expect(compute.locator("td")).to_have_text(["compute", "2", "0", "0", "paused", "Resume"], timeout=8_000)
    compute.get_by_role("button", name="Resume").click()
    expect(page.locator("body")).to_contain_text("Queue compute resumed.")
    expect(compute.locator("td")).to_have_text(["compute", "2", "0", "0", "serving", "Pause"])
    assert off_the_loop(lambda: PausedQueue.objects.exists()) is False
    page.context.close()
