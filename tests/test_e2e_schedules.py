"""Schedules with real `manage.py runworker` processes racing for every tick, on PostgreSQL and Redis.

The workers run tests/schedule_settings.py, which adds a schedule every second
(missed="each", so every tick must appear) whose task notes each run in a file.
"""

import re
from datetime import timedelta

import pytest
from django.db import connection

from tasks.models import ScheduleTick, TaskRecord
from tests.processes import Stack, base_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TASK = "tests.scheduled.tasks.note_run"


def test_three_workers_racing_enqueue_each_tick_exactly_once(request, postgres_server, redis_server, tmp_path):
    runs = tmp_path / "runs"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    stack = Stack(
        base_env(
            DATABASE_URL=postgres_server.url(connection.settings_dict["NAME"]), REDIS_URL=redis_server.url,
            SCHEDULE_E2E_RUNS=str(runs),
            # Each worker looks for due ticks ~3 times a second: all three race for every tick.
            TASKS_HEARTBEAT_INTERVAL="0.3", TASKS_LEASE="2",
        ),
        log_dir,
    )  # fmt: skip
    try:
        for _ in range(3):
            stack.runworker("default", settings="tests.schedule_settings")
        wait_until(lambda: ScheduleTick.objects.filter(schedule__name="e2e-every-second").count() >= 12,
                   timeout=60, interval=0.2, message="12 ticks")  # fmt: skip
    finally:
        stack.stop_all()
    try:
        ticks = list(ScheduleTick.objects.filter(schedule__name="e2e-every-second").order_by("at"))
        times = [tick.at for tick in ticks]
        assert times == [times[0] + timedelta(seconds=s) for s in range(len(times))], "every tick once, none missing"
        tasks = TaskRecord.objects.filter(task_path=TASK)
        assert tasks.count() == len(ticks)
        assert set(tasks.values_list("pk", flat=True)) == {tick.task_id for tick in ticks}
        done = tasks.filter(status="SUCCESSFUL").count()
        assert done >= len(ticks) - 3  # the last few may still have been waiting when the workers stopped
        assert len(runs.read_text().splitlines()) == done, "each enqueued task ran once"
        # The race was real: the ticks were enqueued by more than one of the workers.
        enqueuers = [
            len(re.findall(r"event=schedule_tick name=e2e-every-second", log.read_text()))
            for log in sorted(log_dir.glob("worker-*.log"))
        ]
        assert sum(enqueuers) == len(ticks) and sum(1 for count in enqueuers if count) >= 2, enqueuers
    except AssertionError:
        print(stack.logs())
        raise
