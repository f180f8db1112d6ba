"""Schedules with real `manage.py runworker` processes racing for every tick, on PostgreSQL and Redis.

The workers run tests/schedule_settings.py, which adds a schedule every second
(missed="each", so every tick must appear) whose task notes each run in a file.
"""

import re
import signal
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from playwright.sync_api import expect

from tasks import schedules
from tasks.models import ScheduleTick, TaskRecord
from tests.processes import Stack, base_env, wait_until
from tests.test_browser_chat import browser  # noqa: F401 (fixture)
from tests.test_e2e_tasks import workers_stack  # noqa: F401 (fixture)
from tests.test_e2e_tasks_browser import off_the_loop, tasks_page

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TASK = "tests.scheduled.tasks.note_run"
COALESCED = "tests.scheduled.tasks.note_coalesced_run"


def workers(postgres_server, redis_server, runs, log_dir) -> Stack:
    """Processes on this test's database; each worker looks for due ticks ~3 times a second."""
    log_dir.mkdir()
    return Stack(
        base_env(
            DATABASE_URL=postgres_server.url(connection.settings_dict["NAME"]), REDIS_URL=redis_server.url,
            SCHEDULE_E2E_RUNS=str(runs), TASKS_HEARTBEAT_INTERVAL="0.3", TASKS_LEASE="2",
        ),
        log_dir,
    )  # fmt: skip


def ticks(name: str = "e2e-every-second") -> list[ScheduleTick]:
    return list(ScheduleTick.objects.filter(schedule__name=name).order_by("at"))


def test_three_workers_racing_enqueue_each_tick_exactly_once(postgres_server, redis_server, tmp_path):
    runs, log_dir = tmp_path / "runs", tmp_path / "logs"
    stack = workers(postgres_server, redis_server, runs, log_dir)
    try:
        for _ in range(3):
            stack.runworker("default", settings="tests.schedule_settings")
        wait_until(lambda: ScheduleTick.objects.filter(schedule__name="e2e-every-second").count() >= 12,
                   timeout=60, interval=0.2, message="12 ticks")  # fmt: skip
    finally:
        stack.stop_all()
    try:
        ticked = ticks()
        times = [tick.at for tick in ticked]
        assert times == [times[0] + timedelta(seconds=s) for s in range(len(times))], "every tick once, none missing"
        tasks = TaskRecord.objects.filter(task_path=TASK)
        assert tasks.count() == len(ticked)
        assert set(tasks.values_list("pk", flat=True)) == {tick.task_id for tick in ticked}
        done = tasks.filter(status="SUCCESSFUL").count()
        assert done >= len(ticked) - 3  # the last few may still have been waiting when the workers stopped
        assert len(runs.read_text().splitlines()) == done, "each enqueued task ran once"
        # The race was real: the ticks were enqueued by more than one of the workers.
        enqueuers = [
            len(re.findall(r"event=schedule_tick name=e2e-every-second", log.read_text()))
            for log in sorted(log_dir.glob("worker-*.log"))
        ]
        assert sum(enqueuers) == len(ticked) and sum(1 for count in enqueuers if count) >= 2, enqueuers
    except AssertionError:
        print(stack.logs())
        raise


def test_a_worker_killed_while_enqueuing_a_tick_loses_it_not(postgres_server, redis_server, tmp_path):
    runs, log_dir = tmp_path / "runs", tmp_path / "logs"
    stack = workers(postgres_server, redis_server, runs, log_dir)
    try:
        stalled = stack.runworker("default", settings="tests.schedule_stall_settings")
        log = wait_until(lambda: next(iter(log_dir.glob("worker-*.log")), None), timeout=10, message="worker log")
        wait_until(lambda: "event=e2e_stall_enqueue" in log.read_text(), timeout=60, interval=0.1,
                   message="the worker stalled in a tick's transaction")  # fmt: skip
        killed_at = datetime.now(UTC)
        stalled.send_signal(signal.SIGKILL)
        stalled.wait(10)
        assert ticks() == []  # it had committed nothing
        stack.runworker("default", settings="tests.schedule_settings")
        wait_until(lambda: len(ticks()) >= 8, timeout=60, interval=0.2, message="8 ticks")
    finally:
        stack.stop_all()
    try:
        times = [tick.at for tick in ticks()]
        # The tick the killed worker was enqueuing (at or before the kill) is enqueued by the other, and none after it is missing.
        assert times[0] <= killed_at
        assert times == [times[0] + timedelta(seconds=s) for s in range(len(times))]
        assert TaskRecord.objects.filter(task_path=TASK).count() == len(times)  # the killed worker's task row went too
    except AssertionError:
        print(stack.logs())
        raise


def test_ticks_missed_while_every_worker_was_down_run_once(postgres_server, redis_server, tmp_path):
    """A schedule every 2 s (missed="coalesce"): all workers stop for over 3 ticks; the next worker runs it once."""
    runs, log_dir = tmp_path / "runs", tmp_path / "logs"
    stack = workers(postgres_server, redis_server, runs, log_dir)
    try:
        first = stack.runworker("default", settings="tests.schedule_settings")
        wait_until(lambda: len(ticks("e2e-coalesced")) >= 2, timeout=60, interval=0.2, message="2 ticks")
        first.terminate()
        first.wait(20)
        before = ticks("e2e-coalesced")
        down_at = datetime.now(UTC)
        wait_until(lambda: datetime.now(UTC) - before[-1].at > timedelta(seconds=8.5), timeout=15, message="outage")
        stack.runworker("default", settings="tests.schedule_settings")
        wait_until(lambda: len(ticks("e2e-coalesced")) > len(before), timeout=60, interval=0.1, message="a tick")
        wait_until(lambda: TaskRecord.objects.filter(pk=ticks("e2e-coalesced")[len(before)].task_id,
                                                     status="SUCCESSFUL").exists(),
                   timeout=30, interval=0.1, message="it ran")  # fmt: skip
    finally:
        stack.stop_all()
    try:
        after = ticks("e2e-coalesced")[len(before)]
        missed = round((after.at - before[-1].at).total_seconds() / 2) - 1
        assert after.at > down_at and missed >= 3  # at least 3 ticks fell while no worker ran...
        assert after.coalesced == missed  # ...and this one run stood for them all
        ran = len((tmp_path / "runs.coalesced").read_text().splitlines())
        assert ran == TaskRecord.objects.filter(task_path=COALESCED, status="SUCCESSFUL").count() >= len(before) + 1
    except AssertionError:
        print(stack.logs())
        raise


def test_the_tasks_page_follows_schedules_live(workers_stack, browser):  # noqa: F811
    """Real Chromium on real daphne: the Schedules table of /tasks/ follows a pause and a resume without reloads."""
    page = tasks_page(workers_stack, browser)
    prune = page.locator("#tasks-schedules tr").filter(has_text="tasks.tasks.prune_finished")
    expect(prune.locator("td").nth(1)).to_have_text("cron 0 3 * * * UTC")
    expect(prune.locator("td").nth(2)).to_have_text("active")
    expect(prune.locator("td").nth(3).locator("time")).to_have_attribute("datetime", re.compile(r"T03:00:00\+00:00$"))
    off_the_loop(lambda: schedules.set_paused("tasks.tasks.prune_finished", True))
    expect(prune.locator("td").nth(2)).to_have_text("paused", timeout=8_000)
    expect(prune.locator("td").nth(3)).to_have_text("")
    off_the_loop(lambda: schedules.set_paused("tasks.tasks.prune_finished", False))
    expect(prune.locator("td").nth(2)).to_have_text("active", timeout=8_000)
    page.context.close()
