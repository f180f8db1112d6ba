"""Time limits (@task(timeout=...) and the queue default), at the level of the runner's functions.

What only a real worker does (stopping a sync task that does not report) is in
test_tasks_worker.py and test_e2e_tasks_limits.py.
"""

import asyncio
import math
import signal
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.tasks import task
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from tasks import runner
from tasks.backends import parse_timeouts
from tasks.exceptions import TimeLimitExceeded, error_path
from tasks.models import TaskRecord
from tasks.worker import Slot, TaskWorker
from tests import sample_tasks
from tests.run_tasks import run_one
from tests.test_tasks_worker import finished, slotted  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = error_path(TimeLimitExceeded)


def run_next() -> TaskRecord:
    record = async_to_sync(run_one)(["compute"])
    assert record is not None
    return record


def test_an_async_task_is_cancelled_at_its_limit_and_retried_like_any_failure(tmp_path):
    notes = tmp_path / "notes"
    sample_tasks.alimited.enqueue(str(notes), 30)  # limit 0.5 s, max_attempts 2
    started = time.monotonic()
    record = run_next()
    assert time.monotonic() - started < 3
    assert notes.read_text().split() == ["start", "cancelled"]
    assert record.status == "READY" and [e["exception_class_path"] for e in record.errors] == [LIMIT]
    # The stored traceback says where the task was when it was stopped.
    assert "asyncio.sleep(seconds)" in record.errors[0]["traceback"]
    assert "time limit of 0.5s passed" in record.errors[0]["traceback"]
    record = run_next()  # the second and last attempt
    assert record.status == "FAILED" and [e["exception_class_path"] for e in record.errors] == [LIMIT, LIMIT]


def test_an_async_task_that_swallows_the_cancel_still_fails_at_its_limit(tmp_path):
    notes = tmp_path / "notes"
    sample_tasks.alimited_stubborn.enqueue(str(notes), 30)
    record = run_next()
    assert notes.read_text().split() == ["swallowed"]
    assert record.status == "FAILED" and record.return_value is None
    assert [e["exception_class_path"] for e in record.errors] == [LIMIT]


def test_a_sync_task_that_reports_progress_is_stopped_at_its_first_report_past_the_limit(tmp_path):
    notes = tmp_path / "notes"
    sample_tasks.limited_steps.enqueue(str(notes), 20, 0.6)  # limit 1 s: reports at 0.6, 1.2 s
    record = run_next()
    assert notes.read_text().splitlines() == ["step 0 attempt 1", "step 1 attempt 1"]
    assert record.progress_done == 1  # the report past the limit stored nothing
    assert record.status == "READY" and [e["exception_class_path"] for e in record.errors] == [LIMIT]
    record = run_next()
    assert record.status == "FAILED" and record.attempts == 2
    assert [e["exception_class_path"] for e in record.errors] == [LIMIT, LIMIT]


def test_the_queue_default_limits_tasks_that_set_none_and_a_tasks_own_limit_wins(settings, tmp_path):
    settings.TASKS = {"default": {**settings.TASKS["default"], "OPTIONS": {
        **settings.TASKS["default"]["OPTIONS"], "TIMEOUT": "compute=0.3",
    }}}  # fmt: skip
    notes = tmp_path / "notes"
    sample_tasks.aslow_mark.enqueue(str(notes), "k", 30)
    record = run_next()
    assert record.status == "FAILED" and [e["exception_class_path"] for e in record.errors] == [LIMIT]
    # limited_steps' own 1 s, not the queue's 0.3 s: four steps of 0.15 s fit.
    sample_tasks.limited_steps.enqueue(str(notes), 4, 0.15)
    record = run_next()
    assert record.status == "SUCCESSFUL" and record.return_value == 4


def test_without_a_limit_a_task_runs_as_long_as_it_takes(tmp_path):
    sample_tasks.counted.enqueue(str(tmp_path / "notes"), 3, 0.3)  # no limit anywhere
    assert run_next().status == "SUCCESSFUL"


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True])
def test_a_bad_task_limit_is_refused_when_the_task_is_declared(bad):
    with pytest.raises(InvalidTask, match="timeout must be"):
        task(queue_name="compute", timeout=bad)(sample_tasks.noop.func)


@pytest.mark.parametrize(
    "bad, says",
    [("x", "SECONDS"), ("compute=", "SECONDS"), ("compute=0", "above 0"), ("compte=5", "not a task queue"),
     ({"compute": -2}, "above 0"), ({"compute": "5"}, "above 0")],
)  # fmt: skip
def test_a_bad_queue_default_is_a_clear_system_check_error(settings, bad, says):
    settings.TASKS = {"default": {**settings.TASKS["default"], "OPTIONS": {
        **settings.TASKS["default"]["OPTIONS"], "TIMEOUT": bad,
    }}}  # fmt: skip
    from django.tasks import task_backends

    (error,) = [e for e in task_backends["default"].check() if e.id == "tasks.E020"]
    assert says in error.msg


def test_queue_defaults_parse_from_the_environment_form():
    queues = {"default", "compute"}
    assert parse_timeouts("600", queues) == {"*": 600.0}
    assert parse_timeouts("compute=3600, default=1.5", queues) == {"compute": 3600.0, "default": 1.5}
    assert parse_timeouts("", queues) == {}


# --- in a worker: sync tasks that do not stop by themselves ---------------------------


@pytest.fixture
def quick_watch(settings):
    """The worker's watch (with its heartbeat) every 0.2 s, and a 1 s lease: limits enforced within 0.2 s."""
    settings.TASKS_HEARTBEAT_INTERVAL = 0.2
    settings.TASKS_LEASE = 1.0


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not reached")


async def test_a_sync_task_that_does_not_report_is_failed_at_its_limit_and_its_slot_serves_on(
    quick_watch, slotted, tmp_path
):
    notes = tmp_path / "notes"
    worker = slotted("compute=1")
    stuck = await sample_tasks.stuck.aenqueue(str(notes), 4)  # limit 1 s, sleeps 4 s
    after = await sample_tasks.add.aenqueue(1, 2)  # waits for the one slot
    record = await finished(stuck.id, 5)
    assert record.status == "FAILED" and record.worker_id == "" and record.return_value is None
    assert [e["exception_class_path"] for e in record.errors] == [LIMIT]
    assert "no progress reported" in record.errors[0]["traceback"]
    assert "time.sleep(seconds)" in record.errors[0]["traceback"]  # where the thread was stuck
    assert 1.0 <= (record.finished_at - record.last_attempted_at).total_seconds() < 2.0
    # The slot went on with the next task while the stuck thread still sleeps.
    assert (await finished(after.id, 5)).return_value == 3
    assert "end" not in notes.read_text()
    state = worker.states["compute"]
    assert len(state.threads.stuck()) == 1 and len(state.threads.threads) == 2  # its slot, the recorder
    # Once the stuck thread returns, what it did is dropped and the thread ends.
    await asyncio.to_thread(wait_for, lambda: "end" in notes.read_text() and not state.threads.stuck(), 6)
    await asyncio.sleep(0.3)
    await record.arefresh_from_db()
    assert record.status == "FAILED" and record.return_value is None and len(record.errors) == 1
    assert (await finished((await sample_tasks.add.aenqueue(2, 2)).id, 5)).return_value == 4
    # The slot frees just after the outcome is recorded, which is what finished() waited for.
    await asyncio.to_thread(wait_for, lambda: state.busy == {"sync": 0, "async": 0}, 2)
    assert state.busy == {"sync": 0, "async": 0}


async def test_a_sync_task_that_reported_progress_has_one_lease_past_its_limit_to_report_again(
    quick_watch, slotted, tmp_path
):
    slotted("compute=1")
    # Its next report comes 1 s in, past the 0.5 s limit but within the lease (1 s) after it: it stops itself.
    notes = tmp_path / "itself"
    result = await sample_tasks.reports_then_hangs.aenqueue(str(notes), 1.0)
    record = await finished(result.id, 5)
    assert notes.read_text().split() == ["reported", "woke"]
    assert [e["exception_class_path"] for e in record.errors] == [LIMIT]
    assert "past its time limit" in record.errors[0]["traceback"]
    # No report by then: the worker gives up on it, at the limit plus the lease.
    notes = tmp_path / "given_up"
    result = await sample_tasks.reports_then_hangs.aenqueue(str(notes), 3.0)
    record = await finished(result.id, 5)
    assert notes.read_text().split() == ["reported"]
    assert "no progress report since" in record.errors[0]["traceback"]
    assert 1.5 <= (record.finished_at - record.last_attempted_at).total_seconds() < 2.5


def test_a_sigterm_during_a_recycle_stops_the_worker_for_good_rather_than_forcing_an_exit():
    worker = TaskWorker(application=None, channels=["compute"], channel_layer=get_channel_layer("tasks"))
    worker.stopping = asyncio.Event()
    worker.recycling = True  # what recycle_if_stuck() does, with the stopping event
    worker.stopping.set()
    try:
        worker.on_signal(signal.SIGTERM)  # the first signal: not the forced exit of a second one
    finally:
        runner.shutting_down.clear()
    assert not worker.recycling  # so run() returns instead of exec'ing a fresh worker


def test_giving_up_on_a_sync_attempt_retries_it_as_any_failure_and_waits_a_lease_for_one_that_reported():
    result = sample_tasks.limited_steps.enqueue("/nonexistent", 10, 0)  # limit 1 s, max_attempts 2
    record = runner.claim(["compute"], "test-worker")
    slot = Slot(state=None)  # the watch needs only the slot's note of its attempt
    now = timezone.now()
    # It reported progress during this attempt: it has until its limit plus TASKS_LEASE to report again.
    TaskRecord.objects.filter(pk=record.pk).update(progress_at=now)
    slot.begin(record, sample_tasks.limited_steps, now - timedelta(seconds=settings.TASKS_LEASE - 1))
    assert not runner.stop_overdue(slot, "test-worker")
    slot.end()
    slot.begin(record, sample_tasks.limited_steps, now - timedelta(seconds=settings.TASKS_LEASE + 1))
    assert runner.stop_overdue(slot, "test-worker")
    assert slot.end() is False  # whatever the thread returns now is dropped
    record.refresh_from_db()
    assert (record.status, record.worker_id) == ("READY", "")  # its lease released, one attempt left
    assert [e["exception_class_path"] for e in record.errors] == [LIMIT]
    assert "no progress report since" in record.errors[0]["traceback"]
    assert "test_giving_up_on_a_sync_attempt" in record.errors[0]["traceback"]  # the thread's stack at the time
    assert result.id == str(record.pk)
