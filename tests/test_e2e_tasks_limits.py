"""Time limits with a real `manage.py runworker` process: a sync task that never stops by itself."""

import re
import time

import pytest

from tasks.exceptions import TimeLimitExceeded, error_path
from tests import sample_tasks
from tests.processes import wait_until
from tests.test_e2e_tasks import finished, start_workers, workers_stack  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_stuck_sync_task_fails_at_its_limit_the_worker_serves_on_then_recycles_in_place(workers_stack, tmp_path):
    notes = tmp_path / "notes"
    (proc,) = start_workers(workers_stack, 1, "compute", concurrency="compute=1")
    (log,) = workers_stack.log_dir.glob("worker-*.log")
    started = time.monotonic()
    stuck = sample_tasks.stuck.enqueue(str(notes), 12)  # limit 1 s, no progress reports, sleeps 12 s
    after = sample_tasks.add.enqueue(2, 3)  # waits for the worker's one compute slot

    record = finished(stuck.id, 10)  # within the limit plus one TASKS_HEARTBEAT_INTERVAL (2 s)
    assert record.status == "FAILED" and [e["exception_class_path"] for e in record.errors] == [
        error_path(TimeLimitExceeded)
    ]
    assert "time.sleep(seconds)" in record.errors[0]["traceback"]
    assert (record.finished_at - record.last_attempted_at).total_seconds() < 1.0 + 2.0 + 1.0
    assert finished(after.id, 10).return_value == 5  # the slot serves on, the stuck thread still asleep
    assert "end" not in notes.read_text()

    # Idle with a thread still stuck, the worker starts afresh in the same process.
    wait_until(lambda: log.read_text().count("event=worker_started") == 2, timeout=20, message="recycled")
    text = log.read_text()
    assert "event=worker_recycling" in text and "event=worker_reexec" in text
    old, new = re.findall(r"event=worker_started worker=(\S+)", text)
    assert proc.poll() is None and old.split(":")[1] == new.split(":")[1] == str(proc.pid) and old != new
    again = sample_tasks.add.enqueue(1, 1)
    record = finished(again.id, 10)
    assert record.return_value == 2 and record.worker_ids == [new]
    # The stuck thread went with the old image: it never wakes to finish its sleep.
    time.sleep(max(0.0, started + 13 - time.monotonic()))
    assert [line.split()[0] for line in notes.read_text().splitlines()] == ["start"]
    assert sample_tasks.stuck.get_result(stuck.id).status == "FAILED"


def test_a_real_worker_cancels_an_async_task_and_stops_a_reporting_sync_task_at_their_limits(workers_stack, tmp_path):
    start_workers(workers_stack, 1, "compute", concurrency="compute=2")
    waits = sample_tasks.alimited.enqueue(str(tmp_path / "async"), 30)  # limit 0.5 s, 2 attempts
    steps = sample_tasks.limited_steps.enqueue(str(tmp_path / "sync"), 20, 0.6)  # limit 1 s, 2 attempts
    limit = error_path(TimeLimitExceeded)
    for result in (waits, steps):
        record = finished(result.id, 15)
        assert record.status == "FAILED" and [e["exception_class_path"] for e in record.errors] == [limit, limit]
    assert (tmp_path / "async").read_text().split() == ["start", "cancelled"] * 2
    assert [line.split()[1] for line in (tmp_path / "sync").read_text().splitlines()] == ["0", "1", "0", "1"]
