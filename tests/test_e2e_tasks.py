"""The task runner with real `manage.py runworker` processes, real Redis and real PostgreSQL.

The worker processes use this test's own database, so the test enqueues with
the ORM as application code would (bells go through the session's Redis) and
reads the results back. Side effects are lines appended to a file
(tests/sample_tasks.py), so "exactly once" is counted from what really ran,
not from what the database says.
"""

import collections
import json
import os
import signal
import sqlite3
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.utils import timezone

from tasks import backends
from tasks.backends import bell_layer_alias, ring
from tasks.models import TaskRecord
from tasks.progress import cancel
from tests import sample_tasks
from tests.processes import Stack, base_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def workers_stack(request, transactional_db, postgres_server, redis_server, tmp_path):
    """Worker processes on this test's database and the session's Redis."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    stack = Stack(
        base_env(DATABASE_URL=postgres_server.url(connection.settings_dict["NAME"]), REDIS_URL=redis_server.url),
        log_dir,
    )
    yield stack
    stack.stop_all()  # before the database is flushed
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(stack.logs())


def python(stack: Stack, code: str):
    """Run `code` in a `manage.py shell` of the stack; it prints one JSON line, returned decoded."""
    return json.loads(stack.manage("shell", "--no-imports", "-c", code).stdout.strip().splitlines()[-1])


def start_workers(stack: Stack, count: int, *queues: str, concurrency: str = "") -> list[subprocess.Popen]:
    """Start `count` workers (with `runworker --concurrency`, if given) and wait until each serves its queues."""
    before = set(stack.log_dir.glob("worker-*.log"))
    procs = [stack.runworker(*queues, concurrency=concurrency) for _ in range(count)]
    logs = set(stack.log_dir.glob("worker-*.log")) - before

    def all_started() -> bool:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a worker exited during start-up:\n{stack.logs()}")
        return all("event=worker_started" in log.read_text() for log in logs)

    wait_until(all_started, timeout=30, interval=0.1, message="workers started")
    return procs


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def finished(task_id: str, timeout: float) -> TaskRecord:
    return wait_until(
        lambda: (record := TaskRecord.objects.get(pk=task_id)).status in ("SUCCESSFUL", "FAILED") and record,
        timeout=timeout, interval=0.05, message=f"task {task_id} finished",
    )  # fmt: skip


def successful() -> int:
    return TaskRecord.objects.filter(status="SUCCESSFUL").count()


def test_three_workers_of_eight_slots_run_three_thousand_tasks_exactly_once_spread_over_all(workers_stack, tmp_path):
    marks, slow = tmp_path / "marks", tmp_path / "slow"
    workers = start_workers(workers_stack, 3, "compute", concurrency="compute=8")

    # Spread: 24 tasks for 24 free slots. A worker claims no more than it has
    # slots free, so each of the three runs 8 of them, side by side.
    with transaction.atomic():
        for i in range(24):
            sample_tasks.slow_mark.enqueue(str(slow), str(i), 1.0)
    wait_until(lambda: successful() == 24, timeout=20, interval=0.1, message="24 slow done")
    assert sorted(collections.Counter(pid for kind, _key, pid in lines(slow) if kind == "start").values()) == [8, 8, 8]
    assert max(running_at_once(slow).values()) == 8

    started = time.monotonic()
    for thousand in range(3):  # each: 1,000 rows, then 1,000 bells once it commits
        with transaction.atomic():
            for i in range(thousand * 1000, (thousand + 1) * 1000):
                sample_tasks.mark.enqueue(str(marks), str(i))
    enqueued = time.monotonic() - started
    wait_until(lambda: successful() == 3024, timeout=90, interval=0.2, message="3,000 done")
    elapsed = time.monotonic() - started

    runs = collections.Counter(key for key, _pid in lines(marks))
    assert len(runs) == 3000 and set(runs.values()) == {1}, "every side effect exactly once"
    # This test's tasks only: a housekeeping schedule may fall due meanwhile, on a queue these workers do not serve.
    ours = TaskRecord.objects.filter(task_path__startswith="tests.sample_tasks.")
    assert dict(collections.Counter(ours.values_list("status", flat=True))) == {"SUCCESSFUL": 3024}
    worker_ids = list(TaskRecord.objects.filter(task_path__endswith=".mark").values_list("worker_ids", flat=True))
    assert all(len(ids) == 1 for ids in worker_ids), "no task ran twice"
    per_worker = collections.Counter(ids[0] for ids in worker_ids)
    assert len(per_worker) == 3, per_worker
    assert min(per_worker.values()) >= 150, f"one worker hoarded the queue: {per_worker}"
    assert {int(pid) for _key, pid in lines(marks)} == {proc.pid for proc in workers}
    print(f"3,000 tasks, 3 workers x 8 slots: rung in {enqueued:.1f}s, done in {elapsed:.1f}s; {dict(per_worker)}")


def test_a_backlog_left_with_one_bell_wakes_every_idle_worker_at_once(workers_stack, tmp_path, redis_server):
    """Tasks enqueued while no worker listens leave a single bell (a queue with a bell
    waiting gets no second one). The worker that takes it passes it on once its slots
    are full, so the next idle worker starts at once, not at its next poll."""
    workers_stack.env["TASKS_POLL_INTERVAL"] = "60"  # no worker rings itself during the test
    layer = get_channel_layer(bell_layer_alias())
    bells, key = redis.Redis.from_url(redis_server.url), layer.prefix + "compute"
    bells.delete(key)  # what earlier tests left
    slow = tmp_path / "slow"
    for i in range(16):  # one commit each, with no worker listening
        sample_tasks.slow_mark.enqueue(str(slow), str(i), 2.0)
    backends._all_sent.wait(5)  # bells from enqueue are sent by the bell loop
    assert bells.zcard(key) == 1

    start_workers(workers_stack, 2, "compute", concurrency="compute=8")
    # Well within the tasks' 2 s: all 16 running side by side, 8 in each worker.
    wait_until(lambda: sum(kind == "start" for kind, *_ in lines(slow)) == 16, timeout=1.5, interval=0.05,
               message="16 tasks started")  # fmt: skip
    assert sorted(running_at_once(slow).values()) == [8, 8]
    wait_until(lambda: successful() == 16, timeout=10, interval=0.1, message="16 done")


def running_at_once(path: Path) -> dict[str, int]:
    """Per pid, the most tasks running at the same time, from `start|end key pid` lines."""
    running: collections.Counter = collections.Counter()
    most: dict[str, int] = {}
    for kind, _key, pid in lines(path):
        running[pid] += 1 if kind == "start" else -1
        most[pid] = max(most.get(pid, 0), running[pid])
    return most


def test_all_eight_slots_of_a_killed_worker_run_again_elsewhere_and_sigterm_waits_for_all(workers_stack, tmp_path):
    """Production lease settings (TASKS_LEASE=10, heartbeat every 2 s); sync and async tasks in one queue."""
    log, steps = tmp_path / "slow", tmp_path / "steps"
    (victim,) = start_workers(workers_stack, 1, "compute", concurrency="compute=8")
    with transaction.atomic():
        results = [
            (sample_tasks.slow_mark if i % 2 else sample_tasks.aslow_mark).enqueue(str(log), f"k{i}", 2.0)
            for i in range(8)
        ]  # fmt: skip
    wait_until(lambda: len(lines(log)) == 8, timeout=10, message="8 tasks started")
    assert running_at_once(log) == {str(victim.pid): 8}
    victim.kill()
    killed_at = timezone.now()
    rescuers = start_workers(workers_stack, 2, "compute", concurrency="compute=8")

    for result in results:
        record = finished(result.id, timeout=25)
        assert record.status == "SUCCESSFUL" and record.return_value == result.args[1]
        assert record.attempts == 2 and record.worker_ids[0] != record.worker_ids[1]
        assert [e["exception_class_path"] for e in record.errors] == ["tasks.exceptions.WorkerLost"]
        assert (record.finished_at - killed_at).total_seconds() < 15
    reran = collections.Counter(pid for kind, _key, pid in lines(log)[8:] if kind == "start")
    assert sum(reran.values()) == 8 and str(victim.pid) not in reran

    # First SIGTERM with 8 slots busy: the 6 plain tasks finish, the 2 that report
    # progress hand themselves back at their next report; then the worker exits 0.
    stay, leave = rescuers
    leave.send_signal(signal.SIGTERM)
    assert leave.wait(10) == 0
    before = len(lines(log))
    with transaction.atomic():
        plain = [
            (sample_tasks.slow_mark if i % 2 else sample_tasks.aslow_mark).enqueue(str(log), f"t{i}", 1.5)
            for i in range(6)
        ]  # fmt: skip
        reporting = [sample_tasks.counted.enqueue(str(steps), 40, 0.1) for _ in range(2)]
    wait_until(lambda: len(lines(log)) == before + 6 and len(lines(steps)) >= 4, timeout=10, message="8 running")
    stay.send_signal(signal.SIGTERM)
    assert stay.wait(10) == 0
    for result in plain:
        record = TaskRecord.objects.get(pk=result.id)
        assert (record.status, record.attempts) == ("SUCCESSFUL", 1)
    for result in reporting:
        record = TaskRecord.objects.get(pk=result.id)
        assert (record.status, record.errors, record.worker_id) == ("READY", [], "")


def test_a_task_whose_worker_is_killed_runs_again_elsewhere_within_15s(workers_stack, tmp_path):
    """Production lease settings (TASKS_LEASE=10, heartbeat every 2 s)."""
    log = tmp_path / "slow"
    workers = start_workers(workers_stack, 3, "compute")
    result = sample_tasks.slow_mark.enqueue(str(log), "k", 1.0)
    victim = int(wait_until(lambda: lines(log), timeout=10, message="task started")[0][2])
    os.kill(victim, signal.SIGKILL)
    killed_at = timezone.now()

    record = finished(result.id, timeout=20)
    assert record.status == "SUCCESSFUL" and record.return_value == "k"
    rescued_in = (record.finished_at - killed_at).total_seconds()
    assert rescued_in < 15, f"finished {rescued_in:.1f}s after the kill"
    print(f"killed worker's task finished elsewhere {rescued_in:.1f}s after the kill")
    assert record.attempts == 2 and record.worker_ids[0] != record.worker_ids[1]
    assert [e["exception_class_path"] for e in record.errors] == ["tasks.exceptions.WorkerLost"]
    events = lines(log)
    assert [e[0] for e in events] == ["start", "start", "end"]
    assert int(events[1][2]) != victim and events[1][2] == events[2][2]
    assert [p.poll() is None for p in workers if p.pid != victim] == [True, True]


def test_tasks_queued_while_redis_is_down_all_finish_once_it_is_back(
    workers_stack, own_redis, settings, tmp_path
):
    # Workers and this process on a Redis of the test's own, free to crash.
    workers_stack.env["REDIS_URL"] = own_redis.url
    layer = {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [own_redis.url]}}
    settings.CHANNEL_LAYERS = {"default": layer, "tasks": layer}
    log = tmp_path / "marks"
    workers = start_workers(workers_stack, 2, "compute")

    def enqueue(keys: range) -> None:
        with transaction.atomic():
            for key in keys:
                sample_tasks.slow_mark.enqueue(str(log), str(key), 0.05)

    enqueue(range(0, 40))
    own_redis.stop()  # a crash: no persistence, every bell gone
    enqueue(range(40, 80))  # their bells fail; the rows do not
    done_while_down = wait_until(
        lambda: (done := successful()) >= 50 and done,
        timeout=20, interval=0.1, message="work goes on from the database while Redis is down",
    )  # fmt: skip
    own_redis.start()
    enqueue(range(80, 100))
    wait_until(lambda: successful() == 100, timeout=30, interval=0.1, message="all 100 done")

    ends = collections.Counter(key for kind, key, _pid in lines(log) if kind == "end")
    starts = collections.Counter(key for kind, key, _pid in lines(log) if kind == "start")
    assert len(ends) == 100 and set(ends.values()) == {1} and starts == ends
    assert all(proc.poll() is None for proc in workers)
    print(f"{done_while_down} of 100 finished while Redis was down")


def test_retries_back_off_and_deferred_tasks_start_on_time(workers_stack, tmp_path):
    succeeds, fails = tmp_path / "succeeds", tmp_path / "fails"
    start_workers(workers_stack, 2, "compute")
    ok = sample_tasks.flaky.enqueue(str(succeeds), 2)  # max_attempts=3, retry_backoff=1
    ko = sample_tasks.flaky.enqueue(str(fails), 5)
    deferred = sample_tasks.add.using(run_after=timezone.now() + timedelta(seconds=2)).enqueue(1, 2)

    record = finished(ok.id, timeout=20)
    assert record.status == "SUCCESSFUL" and record.return_value == 3 and record.attempts == 3
    assert len(record.errors) == 2 and all("fails on purpose" in e["traceback"] for e in record.errors)
    times = [float(t) for (t,) in lines(succeeds)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 1 s then 2 s, +-20% jitter, plus a little for the claim and the poll.
    assert 0.8 <= gaps[0] <= 1.2 + 0.5, gaps
    assert 1.6 <= gaps[1] <= 2.4 + 0.5, gaps

    record = finished(ko.id, timeout=20)
    assert record.status == "FAILED" and record.attempts == 3
    assert [e["exception_class_path"] for e in record.errors] == ["builtins.RuntimeError"] * 3
    for number, error in enumerate(record.errors, start=1):
        assert f"attempt {number} fails on purpose" in error["traceback"]

    record = finished(deferred.id, timeout=10)
    assert record.status == "SUCCESSFUL"
    late = (record.started_at - record.run_after).total_seconds()
    assert 0 <= late < 1.0, f"started {late:.3f}s after run_after"


def test_cancel_before_and_during_a_run(workers_stack, tmp_path):
    steps, queued = tmp_path / "steps", tmp_path / "queued"
    (worker,) = start_workers(workers_stack, 1, "compute")
    running = sample_tasks.counted.enqueue(str(steps), 400, 0.05)
    waiting = sample_tasks.slow_mark.enqueue(str(queued), "q", 0)  # behind it: one task per queue per worker
    wait_until(lambda: (TaskRecord.objects.get(pk=running.id).progress_done or 0) >= 3, timeout=10, message="progress")

    assert cancel(waiting.id) == "FAILED"
    assert cancel(running.id) == "RUNNING"  # told; it stops at its next report
    record = finished(running.id, timeout=5)
    assert record.status == "FAILED"
    assert record.errors[-1]["exception_class_path"] == "tasks.exceptions.TaskCancelled"
    assert 3 <= len(lines(steps)) < 400

    # The worker goes on serving, and the cancelled READY task never started.
    after = sample_tasks.add.enqueue(1, 1)
    assert finished(after.id, timeout=10).status == "SUCCESSFUL"
    assert not queued.exists() and TaskRecord.objects.get(pk=waiting.id).started_at is None
    assert worker.poll() is None


def test_sigterm_finishes_or_hands_back_and_a_second_sigterm_exits_at_once(workers_stack, tmp_path):
    log, steps = tmp_path / "slow", tmp_path / "steps"

    # 1. SIGTERM: the running task finishes, then the worker exits 0.
    (first,) = start_workers(workers_stack, 1, "compute")
    slow = sample_tasks.slow_mark.enqueue(str(log), "a", 1.5)
    wait_until(lambda: lines(log), timeout=10, message="slow task started")
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    record = TaskRecord.objects.get(pk=slow.id)
    assert record.status == "SUCCESSFUL" and record.attempts == 1
    assert [e[0] for e in lines(log)] == ["start", "end"]

    # 2. SIGTERM: a task that reports progress hands itself back at its next report.
    (second,) = start_workers(workers_stack, 1, "compute")
    counted = sample_tasks.counted.enqueue(str(steps), 20, 0.1)
    wait_until(lambda: (TaskRecord.objects.get(pk=counted.id).progress_done or 0) >= 2, timeout=10, message="progress")
    second.send_signal(signal.SIGTERM)
    assert second.wait(5) == 0
    record = TaskRecord.objects.get(pk=counted.id)
    assert (record.status, record.errors, record.worker_id) == ("READY", [], "")

    # ... and another worker runs it again, from the start (attempt 2).
    (third,) = start_workers(workers_stack, 1, "compute")
    record = finished(counted.id, timeout=20)
    assert record.status == "SUCCESSFUL" and record.attempts == 2 and record.errors == []
    assert {line[3] for line in lines(steps)} == {"1", "2"}  # `step N attempt A pid`

    # 3. A second SIGTERM exits at once; the task goes back to READY, not FAILED.
    slow = sample_tasks.slow_mark.enqueue(str(log), "b", 2)
    wait_until(lambda: len(lines(log)) == 3, timeout=10, message="long task started")
    third.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    signalled = time.monotonic()
    third.send_signal(signal.SIGTERM)
    assert third.wait(5) != 0 and time.monotonic() - signalled < 3
    record = TaskRecord.objects.get(pk=slow.id)
    assert (record.status, record.errors, record.worker_id) == ("READY", [], "")

    (fourth,) = start_workers(workers_stack, 1, "compute")
    record = finished(slow.id, timeout=15)
    assert record.status == "SUCCESSFUL" and record.attempts == 2 and record.errors == []
    assert [e[:2] for e in lines(log)[2:]] == [["start", "b"], ["start", "b"], ["end", "b"]]
    assert int(lines(log)[3][2]) == fourth.pid


def test_a_missing_task_module_fails_that_task_only_and_results_read_from_anywhere(workers_stack):
    (worker,) = start_workers(workers_stack, 1, "compute")
    now = timezone.now()
    # As if the module was removed in a deploy after the task was enqueued.
    gone = TaskRecord.objects.create(
        task_path="tests.removed_module.task", queue_name="compute", enqueued_at=now, available_at=now
    )
    ring("compute")
    add = sample_tasks.add.enqueue(2, 40)
    record = finished(gone.pk, timeout=10)
    assert record.status == "FAILED" and record.errors[-1]["exception_class_path"] == "builtins.ImportError"
    assert "tests.removed_module.task" in record.errors[-1]["traceback"]
    assert finished(add.id, timeout=10).status == "SUCCESSFUL"
    assert worker.poll() is None

    # get_result and aget_result in another process; refresh() in a third, while a worker runs its task.
    seen = python(workers_stack, f"""
import asyncio, json
from tests.sample_tasks import add
sync, coro = add.get_result({add.id!r}), asyncio.run(add.aget_result({add.id!r}))
print(json.dumps([sync.status, sync.return_value, sync.attempts, coro.status, coro.return_value, len(coro.worker_ids)]))
""")
    assert seen == ["SUCCESSFUL", 42, 1, "SUCCESSFUL", 42, 1]
    refreshed = python(workers_stack, """
import json, time
from tests.sample_tasks import add
result = add.enqueue(20, 22)
before = result.status
for _ in range(200):
    result.refresh()
    if result.is_finished:
        break
    time.sleep(0.05)
print(json.dumps([before, result.status, result.return_value, result.attempts]))
""")
    assert refreshed == ["READY", "SUCCESSFUL", 42, 1]


def test_embedded_runserver_runs_tasks_without_redis(tmp_path):
    """`manage.py runserver` with no DATABASE_URL/REDIS_URL: SQLite, in-memory layer, worker in-process.

    The task is enqueued by another process, whose bell (in its own in-memory
    layer) cannot reach the server: the embedded worker finds the task by
    polling the database every TASKS_POLL_INTERVAL. In `make run`, tasks
    enqueued by the server's own views get the bell at once. With three slots
    (TASKS_CONCURRENCY) it runs three tasks side by side on SQLite.
    """
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    db, log = tmp_path / "db.sqlite3", tmp_path / "slow"
    stack = Stack(base_env(SQLITE_PATH=str(db), TASKS_CONCURRENCY="compute=3"), log_dir)
    try:
        stack.manage("migrate", "--noinput", "-v0")
        stack.runserver()
        python(stack, f"""
import json
from django.db import transaction
from tests.sample_tasks import slow_mark
with transaction.atomic():
    print(json.dumps([slow_mark.enqueue({str(log)!r}, str(key), 1.0).id for key in range(3)]))
""")
        wait_until(lambda: [line[0] for line in lines(log)].count("end") == 3, timeout=15, message="3 slow done")
        assert [line[0] for line in lines(log)] == ["start"] * 3 + ["end"] * 3, "side by side"
        task_id = python(stack, "import json; from tests.sample_tasks import add; print(json.dumps(add.enqueue(2, 40).id))")

        def finished():
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT status, return_value, worker_ids FROM tasks_taskrecord WHERE id = ?", [task_id.replace("-", "")]
                ).fetchone()
            return row if row and row[0] == "SUCCESSFUL" else None

        status, value, worker_ids = wait_until(finished, timeout=15, interval=0.1, message="embedded task done")
        assert json.loads(value) == 42 and len(json.loads(worker_ids)) == 1
        assert "Task worker running in this process" in stack.logs()
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop_all()
