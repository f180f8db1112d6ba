"""The runner's rules, function by function, on whichever stack the session runs.

The functions are called directly; the real-process behaviour is in test_e2e_tasks.py.
"""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.db import connection, transaction
from django.tasks import task
from django.tasks.base import TaskResultStatus
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks import progress, runner
from tasks.exceptions import LeaseLost, RetryLater, TaskCancelled
from tasks.models import TaskRecord
from tests import sample_tasks
from tests.run_tasks import run_one

pytestmark = pytest.mark.django_db(transaction=True)

W1, W2 = "test-host:1:aaaaaa", "test-host:2:bbbbbb"


def record_of(result) -> TaskRecord:
    return TaskRecord.objects.get(pk=result.id)


# --- enqueue --------------------------------------------------------------------


def test_enqueue_stores_the_task_and_get_result_reads_it_back():
    result = sample_tasks.add.using(priority=7).enqueue(2, b=40)
    record = record_of(result)
    assert (record.task_path, record.queue_name, record.priority) == ("tests.sample_tasks.add", "compute", 7)
    assert (record.args, record.kwargs, record.status) == ([2], {"b": 40}, "READY")
    fetched = sample_tasks.add.get_result(result.id)
    assert fetched.status == TaskResultStatus.READY
    assert (fetched.args, fetched.kwargs, fetched.attempts, fetched.errors) == ([2], {"b": 40}, 0, [])
    assert fetched.enqueued_at == record.enqueued_at
    with pytest.raises(TaskResultDoesNotExist):
        sample_tasks.add.get_result("5b1c3f0e-0000-4000-8000-000000000000")
    with pytest.raises(TaskResultDoesNotExist):
        sample_tasks.add.get_result("not-a-uuid")


def test_unserializable_arguments_are_refused_at_enqueue():
    for bad in (object(), {1, 2}, float("nan")):
        with pytest.raises(InvalidTask, match="must be JSON-serializable"):
            sample_tasks.add.enqueue(bad, 1)
    assert not TaskRecord.objects.exists()


def test_a_task_not_at_module_level_is_refused():
    with pytest.raises(InvalidTask, match="module level"):

        @task(queue_name="compute")
        def inner() -> None:
            pass


def test_an_unknown_queue_is_refused_before_anything_is_stored():
    # Task.using() validates against the backend's QUEUES, so the bad queue
    # never gets as far as the database or a channel.
    with pytest.raises(InvalidTask, match="Queue 'nope' is not valid"):
        sample_tasks.add.using(queue_name="nope").enqueue(1, 2)
    with pytest.raises(InvalidTask, match="Queue 'nope' is not valid"):
        task(queue_name="nope")(sample_tasks.noop.func)
    assert not TaskRecord.objects.exists()


def test_retry_policy_is_validated():
    with pytest.raises(InvalidTask, match="max_attempts"):
        task(queue_name="compute", max_attempts=0)(sample_tasks.noop.func)
    with pytest.raises(InvalidTask, match="must not be negative"):
        task(queue_name="compute", retry_backoff=-1)(sample_tasks.noop.func)


async def test_enqueue_in_a_transaction_rings_on_commit_and_never_on_rollback(task_layer):
    def enqueue_and_roll_back():
        with transaction.atomic():
            sample_tasks.add.enqueue(1, 1)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await database_sync_to_async(enqueue_and_roll_back)()
    assert not await TaskRecord.objects.aexists()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task_layer.receive("compute"), 0.3)

    def enqueue_and_commit():
        with transaction.atomic():
            for _ in range(3):
                sample_tasks.add.enqueue(1, 1)
            sample_tasks.noop.enqueue()
            assert TaskRecord.objects.count() == 4

    await database_sync_to_async(enqueue_and_commit)()
    # One bell per task (so as many idle workers wake), rung together after the commit,
    # plus the rolled-back task's spare one.
    for _ in range(4):
        assert await asyncio.wait_for(task_layer.receive("compute"), 2) == {"type": "task.ready"}
    assert await asyncio.wait_for(task_layer.receive("default"), 2) == {"type": "task.ready"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task_layer.receive("compute"), 0.3)


# --- claim ------------------------------------------------------------------------


def test_claim_takes_priority_first_then_the_oldest():
    low = sample_tasks.add.enqueue(1, 1)
    high = sample_tasks.add.using(priority=50).enqueue(2, 2)
    low_later = sample_tasks.add.enqueue(3, 3)
    other_queue = sample_tasks.noop.using(priority=100).enqueue()
    claimed = [runner.claim(["compute"], W1) for _ in range(4)]
    assert [str(r.pk) for r in claimed[:3]] == [high.id, low.id, low_later.id]
    assert claimed[3] is None
    assert record_of(other_queue).status == "READY"
    record = record_of(high)
    assert (record.status, record.worker_id, record.worker_ids) == ("RUNNING", W1, [W1])
    assert record.started_at == record.last_attempted_at == record.heartbeat_at


def test_a_claimed_task_runs_as_it_was_enqueued():
    """.using() values stored with the task come back with it; a task enqueued as
    defined runs as the module's own Task, not a copy."""
    plain = sample_tasks.add.enqueue(1, 1)
    tuned = sample_tasks.add.using(priority=7).enqueue(2, 2)
    record, task, result = runner.claim_and_start(["compute"], W1)
    assert (str(record.pk), task.priority, result.task.priority) == (tuned.id, 7, 7)
    ended = runner.outcome_of(record, task, 4, None)
    record, task, result = runner.claim_and_start(["compute"], W1, ended)
    assert str(record.pk) == plain.id
    assert task is result.task is sample_tasks.add


def test_claim_honours_run_after():
    soon = timezone.now() + timedelta(seconds=0.6)
    deferred = sample_tasks.add.using(run_after=soon).enqueue(1, 1)
    assert runner.claim(["compute"], W1) is None
    assert runner.next_due(["compute"]) == soon
    later = timezone.now() + timedelta(hours=1)
    sample_tasks.add.using(run_after=later).enqueue(1, 1)
    while timezone.now() < soon:
        assert runner.claim(["compute"], W1) is None
        time.sleep(0.05)
    record = runner.claim(["compute"], W1)
    assert str(record.pk) == deferred.id and record.started_at >= soon
    assert runner.claim(["compute"], W1) is None
    assert runner.next_due(["compute"]) == later


def test_a_batch_claim_takes_the_highest_priorities_then_the_oldest_and_no_more_than_asked():
    low = [sample_tasks.add.enqueue(i, i) for i in range(3)]
    high = sample_tasks.add.using(priority=50).enqueue(9, 9)
    middle = sample_tasks.add.using(priority=10).enqueue(8, 8)
    sample_tasks.noop.using(priority=100).enqueue()  # another queue
    with CaptureQueriesContext(connection) as queries:
        claimed = runner.claim_many(["compute"], W1, 3)
    assert len(queries) == 1
    assert [str(r.pk) for r in claimed] == [high.id, middle.id, low[0].id]
    assert {(r.status, r.worker_id, r.attempts) for r in claimed} == {("RUNNING", W1, 1)}
    assert [record_of(r).status for r in low[1:]] == ["READY", "READY"]
    assert [str(r.pk) for r in runner.claim_many(["compute"], W2, 5)] == [low[1].id, low[2].id]
    assert runner.claim_many(["compute"], W2, 5) == []


def test_threads_batch_claiming_side_by_side_never_claim_a_task_twice():
    """Slot threads of several workers, each on its own connection, claim from one queue.

    Guards the claim's row lock (FOR UPDATE SKIP LOCKED): without it two
    claims read the same due rows and both take them.
    """
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises every write: there is no side by side")
    now = timezone.now()
    TaskRecord.objects.bulk_create(
        TaskRecord(task_path="tests.sample_tasks.add", queue_name="compute", enqueued_at=now, available_at=now)
        for _ in range(600)
    )
    start = threading.Barrier(8)

    def claim_until_empty(worker_id: str) -> list[str]:
        taken = []
        try:
            start.wait()
            while batch := runner.claim_many(["compute"], worker_id, 4):
                taken += [str(record.pk) for record in batch]
        finally:
            connection.close()
        return taken

    with ThreadPoolExecutor(8) as pool:
        taken = [pk for batch in pool.map(claim_until_empty, [f"h:{i}:x" for i in range(8)]) for pk in batch]
    assert len(taken) == len(set(taken)) == 600
    assert [len(ids) for ids in TaskRecord.objects.values_list("worker_ids", flat=True)] == [1] * 600


# --- outcomes -----------------------------------------------------------------------


def test_failures_retry_with_exponential_backoff_then_fail_keeping_every_error():
    result = sample_tasks.flaky.enqueue("/nonexistent", 0)  # max_attempts=3, retry_backoff=1
    for attempt, (low, high) in enumerate([(0.8, 1.2), (1.6, 2.4)], start=1):
        record = runner.claim(["compute"], W1)
        before = timezone.now()
        assert runner.record_failure(record, W1, RuntimeError(f"boom {attempt}"))
        record.refresh_from_db()
        assert record.status == "READY" and record.worker_id == "" and record.heartbeat_at is None
        delay = (record.available_at - before).total_seconds()
        assert low - 0.05 <= delay <= high + 0.05, delay
        assert runner.claim(["compute"], W1) is None  # not before its backoff
        TaskRecord.objects.filter(pk=record.pk).update(available_at=timezone.now())
    record = runner.claim(["compute"], W1)
    assert runner.record_failure(record, W1, RuntimeError("boom 3"))
    record.refresh_from_db()
    assert record.status == "FAILED" and record.finished_at is not None
    assert [e["exception_class_path"] for e in record.errors] == ["builtins.RuntimeError"] * 3
    assert "boom 1" in record.errors[0]["traceback"] and "boom 3" in record.errors[2]["traceback"]
    fetched = sample_tasks.flaky.get_result(result.id)
    assert fetched.attempts == 3 and [e.exception_class for e in fetched.errors] == [RuntimeError] * 3
    with pytest.raises(ValueError, match="Task failed"):
        fetched.return_value


def test_backoff_is_capped_and_retry_later_sets_its_own_delay():
    sample_tasks.flaky.enqueue("/nonexistent", 0)
    record = runner.claim(["compute"], W1)
    record.retry_backoff, record.retry_backoff_max = 10.0, 15.0
    assert 12.0 <= runner.retry_delay(record, 5) <= 18.0  # 160 s uncapped
    before = timezone.now()
    runner.record_failure(record, W1, RetryLater(30, "429 from the provider"))
    record.refresh_from_db()
    assert record.status == "READY"
    assert 29.9 <= (record.available_at - before).total_seconds() <= 30.5
    TaskRecord.objects.filter(pk=record.pk).update(available_at=timezone.now())
    record = runner.claim(["compute"], W1)
    record.max_attempts = 2  # this is the last attempt: RetryLater cannot buy another
    runner.record_failure(record, W1, RetryLater(30))
    record.refresh_from_db()
    assert record.status == "FAILED" and len(record.errors) == 2


def test_a_cancelled_attempt_fails_at_once_whatever_attempts_are_left():
    sample_tasks.flaky.enqueue("/nonexistent", 0)
    record = runner.claim(["compute"], W1)
    runner.record_failure(record, W1, TaskCancelled("cancelled while running"))
    record.refresh_from_db()
    assert record.status == "FAILED"
    assert record.errors[-1]["exception_class_path"] == "tasks.exceptions.TaskCancelled"


def test_an_outcome_and_the_next_claim_go_together_in_one_statement_on_postgresql():
    first, second = sample_tasks.add.enqueue(1, 1), sample_tasks.add.enqueue(2, 2)
    record = runner.claim(["compute"], W1)
    ended = runner.outcome_of(record, sample_tasks.add, 2, None)
    with CaptureQueriesContext(connection) as queries:
        held, claimed = runner.release_and_claim(ended, ["compute"], W1)
    assert len(queries) == (1 if connection.vendor == "postgresql" else 2)
    assert held and str(claimed.pk) == second.id and claimed.worker_id == W1 and claimed.attempts == 1
    done = record_of(first)
    assert (done.status, done.return_value, done.worker_id, done.heartbeat_at) == ("SUCCESSFUL", 2, "", None)
    assert (record.status, record.worker_id) == ("SUCCESSFUL", "")  # the caller's copy follows

    # A lost lease: the outcome is not written, the claim still is; with nothing left, no claim.
    TaskRecord.objects.filter(pk=claimed.pk).update(worker_id=W2)
    failed = runner.outcome_of(claimed, sample_tasks.add, None, RuntimeError("boom"))
    assert runner.release_and_claim(failed, ["compute"], W1) == (False, None)
    again = record_of(second)
    assert (again.status, again.worker_id, again.errors) == ("RUNNING", W2, [])


def test_a_batch_of_outcomes_and_the_next_claims_go_together_in_one_statement_on_postgresql():
    """The async slots' batch (tasks.worker.Recorder): outcomes of every shape, then claims
    of any task up to `limit`, and of the async paths only up to `async_limit`."""
    ran = [sample_tasks.add.enqueue(i, i) for i in range(4)]
    claimed = runner.claim_many(["compute"], W1, 4)
    low = sample_tasks.add.enqueue(7, 7)
    asleep = [sample_tasks.async_add.using(priority=-5).enqueue(i, i) for i in range(3)]
    high = sample_tasks.add.using(priority=9).enqueue(8, 8)
    TaskRecord.objects.filter(pk=claimed[3].pk).update(worker_id=W2)  # its lease went to W2
    ended = [
        runner.outcome_of(claimed[0], sample_tasks.add, 0, None),
        runner.outcome_of(claimed[1], sample_tasks.add, 2, None),
        runner.outcome_of(claimed[2], sample_tasks.add, None, RuntimeError("boom")),
        runner.outcome_of(claimed[3], sample_tasks.add, 6, None),
    ]
    async_path = sample_tasks.async_add.module_path
    with CaptureQueriesContext(connection) as queries:
        held, records, more = runner.release_many_and_claim(ended, ["compute"], W1, 2, 2, [async_path])
    assert len(queries) == (1 if connection.vendor == "postgresql" else 6)
    assert held == [True, True, True, False]
    assert [str(r.pk) for r in records] == [high.id, low.id]  # any kind, by priority
    assert [str(r.pk) for r in more] == [asleep[0].id, asleep[1].id]  # async paths only
    assert {(r.status, r.worker_id) for r in records + more} == {("RUNNING", W1)}
    stored = [record_of(result) for result in ran]
    assert [(r.status, r.return_value, r.worker_id) for r in stored] == [
        ("SUCCESSFUL", 0, ""), ("SUCCESSFUL", 2, ""), ("FAILED", None, ""), ("RUNNING", None, W2),
    ]
    assert stored[2].errors[0]["exception_class_path"] == "builtins.RuntimeError"
    assert record_of(asleep[2]).status == "READY"
    # Slots with no outcome to record and no thread free claim async tasks only.
    _, records, more = runner.release_many_and_claim([], ["compute"], W1, 0, 3, [async_path])
    assert (records, [str(r.pk) for r in more]) == ([], [asleep[2].id])
    assert runner.release_many_and_claim([], ["compute"], W1, 3, 3, [async_path]) == ([], [], [])


def test_an_outcome_is_only_recorded_by_the_worker_holding_the_task():
    sample_tasks.add.enqueue(1, 1)
    record = runner.claim(["compute"], W1)
    TaskRecord.objects.filter(pk=record.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert runner.reclaim_lost() == ["compute"]
    again = runner.claim(["compute"], W2)
    assert not runner.record_success(record, W1, 2)  # W1 lost its lease: its result does not count
    assert runner.record_success(again, W2, 2)
    again.refresh_from_db()
    assert (again.status, again.return_value, again.worker_ids) == ("SUCCESSFUL", 2, [W1, W2])


# --- liveness -----------------------------------------------------------------------


def test_reclaim_lost_hands_silent_workers_tasks_on_and_gives_up_after_max_losses(settings):
    settings.TASKS_MAX_WORKER_LOSSES = 2
    result = sample_tasks.add.enqueue(1, 1)
    record = runner.claim(["compute"], W1)
    assert runner.reclaim_lost() == []  # fresh heartbeat: W1 keeps it
    assert runner.heartbeat(W1, [record.pk]) == 1
    assert runner.heartbeat(W2, [record.pk]) == 0  # only the holder renews
    stale = timezone.now() - timedelta(seconds=settings.TASKS_LEASE + 1)
    TaskRecord.objects.filter(pk=record.pk).update(heartbeat_at=stale)
    assert runner.reclaim_lost() == ["compute"]
    record.refresh_from_db()
    assert (record.status, record.worker_id, record.attempts) == ("READY", "", 1)
    assert record.errors[-1]["exception_class_path"] == "tasks.exceptions.WorkerLost"
    assert W1 in record.errors[-1]["traceback"]

    record = runner.claim(["compute"], W2)
    assert record.attempts == 2
    TaskRecord.objects.filter(pk=record.pk).update(heartbeat_at=stale)
    assert runner.reclaim_lost() == []  # second loss: FAILED, nothing to ring
    fetched = sample_tasks.add.get_result(result.id)
    assert fetched.status == "FAILED" and fetched.attempts == 2 and len(fetched.errors) == 2


def test_hand_back_returns_a_running_task_to_the_queue_without_an_error():
    sample_tasks.add.enqueue(1, 1)
    record = runner.claim(["compute"], W1)
    assert runner.hand_back(W2) == []
    assert runner.hand_back(W1) == ["compute"]
    record.refresh_from_db()
    assert (record.status, record.worker_id, record.errors, record.attempts) == ("READY", "", [], 1)


# --- cancel -------------------------------------------------------------------------


def test_cancel_fails_a_ready_task_and_flags_a_running_one():
    ready = sample_tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    assert progress.cancel(ready.id) == "FAILED"
    record = record_of(ready)
    assert record.status == "FAILED" and record.cancel_requested
    assert record.errors[-1]["exception_class_path"] == "tasks.exceptions.TaskCancelled"

    sample_tasks.add.enqueue(2, 2)
    running = runner.claim(["compute"], W1)
    assert progress.cancel(running.pk) == "RUNNING"
    running.refresh_from_db()
    assert running.cancel_requested and running.status == "RUNNING"

    assert runner.record_success(running, W1, 4)
    assert progress.cancel(running.pk) == "SUCCESSFUL"  # too late: nothing changes
    assert progress.cancel("5b1c3f0e-0000-4000-8000-000000000000") is None


def test_a_task_cancelled_while_its_worker_stopped_never_runs_again():
    sample_tasks.add.enqueue(1, 1)
    record = runner.claim(["compute"], W1)
    progress.cancel(record.pk)
    runner.hand_back(W1)  # the worker stopped before the task saw the cancel
    assert runner.claim(["compute"], W2) is None
    assert runner.fail_cancelled() == 1  # the workers' sweep
    record.refresh_from_db()
    assert record.status == "FAILED" and record.errors[-1]["exception_class_path"] == "tasks.exceptions.TaskCancelled"


# --- progress -----------------------------------------------------------------------


def test_progress_is_throttled_stored_and_stops_a_cancelled_task():
    result = sample_tasks.counted.enqueue("/nonexistent", 10, 0)
    record = runner.claim(["compute"], W1)
    context = runner.ProgressContext(task_result=runner.to_task_result(record), min_interval=60)
    context.progress(1, 10, "first")
    context.progress(2, 10, "throttled")
    record.refresh_from_db()
    assert (record.progress_done, record.progress_total, record.progress_note) == (1, 10, "first")
    context.progress(10, 10, "done always goes out")
    record.refresh_from_db()
    assert record.progress_done == 10 and record.progress_at is not None

    progress.cancel(result.id)
    context.progress(3, 10)  # throttled: not looked at until the next report that goes out
    with pytest.raises(TaskCancelled):
        context.progress(10, 10)


def test_progress_stops_an_attempt_that_lost_its_lease_with_lease_lost_not_a_cancel():
    sample_tasks.counted.enqueue("/nonexistent", 10, 0)
    record = runner.claim(["compute"], W1)
    context = runner.ProgressContext(task_result=runner.to_task_result(record))
    TaskRecord.objects.filter(pk=record.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    runner.reclaim_lost()
    runner.claim(["compute"], W2)  # another worker runs it now
    with pytest.raises(LeaseLost, match="lost its lease"):
        context.progress(1, 10)
    record.refresh_from_db()
    assert record.progress_done is None and record.worker_id == W2


def test_the_context_counts_failed_attempts_but_not_those_lost_with_their_worker(tmp_path):
    notes = tmp_path / "attempts"
    result = sample_tasks.always_fails.enqueue(str(notes))  # max_attempts=3
    async_to_sync(run_one)(["compute"], W1)  # attempt 1 fails
    runner.claim(["compute"], W1)  # attempt 2: its worker dies
    TaskRecord.objects.filter(pk=result.id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    runner.reclaim_lost()
    async_to_sync(run_one)(["compute"], W2)  # attempt 3 fails
    async_to_sync(run_one)(["compute"], W2)  # attempt 4: the last, as the runner counts
    assert notes.read_text().splitlines() == ["1 0 False", "3 1 False", "4 2 True"]
    record = record_of(result)
    assert record.status == "FAILED" and record.attempts == 4


def test_progress_hands_the_task_back_when_the_worker_is_stopping():
    sample_tasks.counted.enqueue("/nonexistent", 10, 0)
    record = runner.claim(["compute"], W1)
    context = runner.ProgressContext(task_result=runner.to_task_result(record))
    runner.shutting_down.set()
    try:
        with pytest.raises(runner.HandedBack):
            context.progress(1, 10)
    finally:
        runner.shutting_down.clear()


# --- execute ------------------------------------------------------------------------


async def execute_next(worker_id: str = W1) -> TaskRecord:
    record = await run_one(["compute"], worker_id)
    assert record is not None
    return record


async def test_execute_stores_the_return_value_as_json():
    result = await sample_tasks.pair.aenqueue(1, 2)
    record = await execute_next()
    assert record.status == "SUCCESSFUL" and record.return_value == [[1, 2], {"1": "one"}]
    await result.arefresh()
    assert result.status == "SUCCESSFUL" and result.return_value == [[1, 2], {"1": "one"}]
    assert result.worker_ids == [W1] and result.finished_at >= result.started_at >= result.enqueued_at


async def test_execute_runs_async_tasks():
    result = await sample_tasks.async_add.aenqueue(20, 22)
    await execute_next()
    fetched = await sample_tasks.async_add.aget_result(result.id)
    assert fetched.return_value == 42


async def test_an_unserializable_return_value_fails_the_task_clearly():
    await sample_tasks.unserializable.aenqueue()
    record = await execute_next()
    assert record.status == "FAILED"
    assert record.errors[-1]["exception_class_path"] == "builtins.TypeError"
    assert "Return value of task tests.sample_tasks.unserializable is not JSON-serializable" in (
        record.errors[-1]["traceback"]
    )


async def test_a_task_whose_module_is_gone_fails_with_an_import_error():
    now = timezone.now()
    await TaskRecord.objects.acreate(
        task_path="tests.no_such_module.task", queue_name="compute", enqueued_at=now, available_at=now
    )
    record = await execute_next()
    assert record.status == "FAILED"
    assert record.errors[-1]["exception_class_path"] == "builtins.ImportError"
    assert "'tests.no_such_module.task' cannot be imported" in record.errors[-1]["traceback"]


async def test_execute_sends_signals_and_broadcasts_progress_to_the_task_group(channel_layer):
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((kwargs["signal"], task_result.status))

    for signal in (task_enqueued, task_started, task_finished):
        signal.connect(receiver)
    try:
        result = await sample_tasks.acounted.aenqueue(3)
        watcher = await channel_layer.new_channel()
        await channel_layer.group_add(progress.progress_group(result.id), watcher)
        await execute_next()
    finally:
        for signal in (task_enqueued, task_started, task_finished):
            signal.disconnect(receiver)
    assert seen == [(task_enqueued, "READY"), (task_started, "RUNNING"), (task_finished, "SUCCESSFUL")]
    updates = []
    while len(updates) < 5 and (not updates or updates[-1]["task"]["status"] == "RUNNING"):
        updates.append(await asyncio.wait_for(channel_layer.receive(watcher), 2))
    assert all(u["type"] == "task.update" and u["task"]["id"] == result.id for u in updates)
    # Progress reports (the first, perhaps not the throttled middle one, always
    # the last), then the final state.
    dones = [u["task"]["done"] for u in updates]
    assert dones[0] == 1 and dones[-2:] == [3, 3] and len(dones) in (3, 4)
    assert updates[-1]["task"]["status"] == "SUCCESSFUL" and updates[-1]["task"]["attempts"] == 1
