"""The task runner with real `manage.py runworker` processes, real Redis and real PostgreSQL.

Tasks are enqueued by separate `manage.py shell` processes (as application code
would), and the test reads the stack's task table straight from PostgreSQL.
Side effects are lines appended to a file (tests/sample_tasks.py), so "exactly
once" is counted from what really happened, not from what the database says.
"""

import collections
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.processes import Stack, base_env, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class Tasks:
    """The stack's tasks_taskrecord table, read with plain SQL."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.conn = psycopg.connect(stack.env["DATABASE_URL"], autocommit=True, row_factory=dict_row)

    def get(self, task_id: str) -> dict:
        return self.conn.execute("SELECT * FROM tasks_taskrecord WHERE id = %s", [task_id]).fetchone()

    def statuses(self) -> collections.Counter:
        rows = self.conn.execute("SELECT status, count(*) AS n FROM tasks_taskrecord GROUP BY status").fetchall()
        return collections.Counter({row["status"]: row["n"] for row in rows})

    def wait_finished(self, task_id: str, timeout: float) -> dict:
        return wait_until(
            lambda: (row := self.get(task_id))["status"] in ("SUCCESSFUL", "FAILED") and row,
            timeout=timeout, interval=0.05, message=f"task {task_id} finished",
        )  # fmt: skip

    def close(self) -> None:
        self.conn.close()


def python(stack: Stack, code: str) -> dict:
    """Run `code` in a `manage.py shell` of the stack; it prints one JSON line, returned decoded."""
    return json.loads(stack.manage("shell", "--no-imports", "-c", code).stdout.strip().splitlines()[-1])


def start_workers(stack: Stack, count: int, *queues: str) -> list[subprocess.Popen]:
    """Start `count` workers and wait until each serves its queues."""
    before = set(stack.log_dir.glob("worker-*.log"))
    procs = [stack.runworker(*queues) for _ in range(count)]
    logs = set(stack.log_dir.glob("worker-*.log")) - before

    def all_started() -> bool:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a worker exited during start-up:\n{stack.logs()}")
        return all("event=worker_started" in log.read_text() for log in logs)

    wait_until(all_started, timeout=30, interval=0.1, message="workers started")
    return procs


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def tasks(stack):
    table = Tasks(stack)
    yield table
    table.close()


def test_three_workers_run_two_thousand_tasks_each_exactly_once_spread_over_all(stack, tasks, tmp_path):
    marks = tmp_path / "marks"
    workers = start_workers(stack, 3, "compute")
    started = time.monotonic()
    # One transaction: 2,000 rows, then 2,000 bells once it commits.
    count = python(stack, f"""
import json
from django.db import transaction
from tests.sample_tasks import mark
with transaction.atomic():
    for i in range(2000):
        mark.enqueue({str(marks)!r}, str(i))
print(json.dumps(2000))
""")
    assert count == 2000
    wait_until(lambda: tasks.statuses()["SUCCESSFUL"] == 2000, timeout=90, interval=0.2, message="2,000 done")
    elapsed = time.monotonic() - started

    runs = collections.Counter(key for key, _pid in lines(marks))
    assert len(runs) == 2000 and set(runs.values()) == {1}, "every side effect exactly once"
    assert tasks.statuses() == {"SUCCESSFUL": 2000}
    rows = tasks.conn.execute("SELECT worker_ids FROM tasks_taskrecord").fetchall()
    assert all(len(row["worker_ids"]) == 1 for row in rows), "no task ran twice"
    per_worker = collections.Counter(row["worker_ids"][0] for row in rows)
    assert len(per_worker) == 3, per_worker
    assert min(per_worker.values()) >= 100, f"one worker hoarded the queue: {per_worker}"
    pids = {int(pid) for _key, pid in lines(marks)}
    assert pids == {proc.pid for proc in workers}
    print(f"2,000 tasks on 3 workers: {elapsed:.1f}s from enqueue to the last done; per worker {dict(per_worker)}")


def test_a_task_whose_worker_is_killed_runs_again_elsewhere_within_15s(stack, tasks, tmp_path):
    """Production lease settings (TASKS_LEASE=10, heartbeat every 2 s)."""
    log = tmp_path / "slow"
    workers = start_workers(stack, 3, "compute")
    task_id = python(stack, f"""
import json
from tests.sample_tasks import slow_mark
print(json.dumps(slow_mark.enqueue({str(log)!r}, "k", 1.0).id))
""")
    first = wait_until(lambda: lines(log), timeout=10, message="task started")[0]
    victim = int(first[2])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()

    row = tasks.wait_finished(task_id, timeout=20)
    assert row["status"] == "SUCCESSFUL" and row["return_value"] == "k"
    assert row["finished_at"].timestamp() - killed_at < 15
    assert len(row["worker_ids"]) == 2 and row["worker_ids"][0] != row["worker_ids"][1]
    assert [e["exception_class_path"] for e in row["errors"]] == ["tasks.exceptions.WorkerLost"]
    events = lines(log)
    assert [e[0] for e in events] == ["start", "start", "end"]
    assert int(events[1][2]) != victim and events[1][2] == events[2][2]
    assert [p.poll() is None for p in workers if p.pid != victim] == [True, True]


@pytest.fixture
def redis_stack(request, postgres_server, own_redis, tmp_path):
    log_dir = tmp_path / "redis-logs"
    log_dir.mkdir()
    stack = Stack.postgres(postgres_server, own_redis.url, log_dir)
    yield stack
    stack.stop_all()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(stack.logs())


def test_tasks_queued_while_redis_is_down_all_finish_once_it_is_back(redis_stack, own_redis, tmp_path):
    log = tmp_path / "marks"
    tasks = Tasks(redis_stack)
    workers = start_workers(redis_stack, 2, "compute")
    enqueue = """
import json
from django.db import transaction
from tests.sample_tasks import slow_mark
with transaction.atomic():
    for i in range({start}, {stop}):
        slow_mark.enqueue({path!r}, str(i), 0.05)
print(json.dumps({stop}))
"""
    python(redis_stack, enqueue.format(start=0, stop=40, path=str(log)))
    own_redis.stop()  # a crash: no persistence, every bell gone
    python(redis_stack, enqueue.format(start=40, stop=80, path=str(log)))  # the bells fail; the rows do not
    done_while_down = wait_until(
        lambda: tasks.statuses()["SUCCESSFUL"] >= 50 and tasks.statuses()["SUCCESSFUL"],
        timeout=20, interval=0.1, message="work goes on from the database while Redis is down",
    )  # fmt: skip
    own_redis.start()
    python(redis_stack, enqueue.format(start=80, stop=100, path=str(log)))
    wait_until(lambda: tasks.statuses()["SUCCESSFUL"] == 100, timeout=30, interval=0.1, message="all 100 done")

    ends = collections.Counter(key for kind, key, _pid in lines(log) if kind == "end")
    starts = collections.Counter(key for kind, key, _pid in lines(log) if kind == "start")
    assert len(ends) == 100 and set(ends.values()) == {1} and starts == ends
    assert all(proc.poll() is None for proc in workers)
    print(f"{done_while_down} of 100 finished while Redis was down")
    tasks.close()


def test_retries_back_off_and_deferred_tasks_start_on_time(stack, tasks, tmp_path):
    succeeds, fails = tmp_path / "succeeds", tmp_path / "fails"
    start_workers(stack, 2, "compute")
    ids = python(stack, f"""
import json
from datetime import timedelta
from django.utils import timezone
from tests.sample_tasks import add, flaky
print(json.dumps({{
    "succeeds": flaky.enqueue({str(succeeds)!r}, 2).id,  # max_attempts=3, retry_backoff=1
    "fails": flaky.enqueue({str(fails)!r}, 5).id,
    "deferred": add.using(run_after=timezone.now() + timedelta(seconds=2)).enqueue(1, 2).id,
}}))
""")
    row = tasks.wait_finished(ids["succeeds"], timeout=20)
    assert row["status"] == "SUCCESSFUL" and row["return_value"] == 3 and len(row["worker_ids"]) == 3
    assert len(row["errors"]) == 2 and all("fails on purpose" in e["traceback"] for e in row["errors"])
    times = [float(t) for (t,) in lines(succeeds)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 1 s then 2 s, +-20% jitter, plus a little for the claim and the poll.
    assert 0.8 <= gaps[0] <= 1.2 + 0.5, gaps
    assert 1.6 <= gaps[1] <= 2.4 + 0.5, gaps

    row = tasks.wait_finished(ids["fails"], timeout=20)
    assert row["status"] == "FAILED" and len(row["worker_ids"]) == 3
    assert [e["exception_class_path"] for e in row["errors"]] == ["builtins.RuntimeError"] * 3
    assert ["attempt 1", "attempt 2", "attempt 3"] == [
        next(p for p in ("attempt 1", "attempt 2", "attempt 3") if p in e["traceback"]) for e in row["errors"]
    ]

    row = tasks.wait_finished(ids["deferred"], timeout=10)
    assert row["status"] == "SUCCESSFUL"
    late = (row["started_at"] - row["run_after"]).total_seconds()
    assert 0 <= late < 1.0, f"started {late:.3f}s after run_after"


def test_cancel_before_and_during_a_run(stack, tasks, tmp_path):
    steps, queued = tmp_path / "steps", tmp_path / "queued"
    workers = start_workers(stack, 1, "compute")
    ids = python(stack, f"""
import json
from tests.sample_tasks import counted, slow_mark
print(json.dumps({{
    "running": counted.enqueue({str(steps)!r}, 400, 0.05).id,
    "queued": slow_mark.enqueue({str(queued)!r}, "q", 0).id,  # behind it: one task per queue per worker
}}))
""")
    wait_until(lambda: (tasks.get(ids["running"])["progress_done"] or 0) >= 3, timeout=10, message="progress")
    statuses = python(stack, f"""
import json
from tasks.runner import cancel
print(json.dumps([cancel({ids["queued"]!r}).status, cancel({ids["running"]!r}).status]))
""")
    assert statuses == ["FAILED", "RUNNING"]  # the running one is told, and stops at its next report
    row = tasks.wait_finished(ids["running"], timeout=5)
    assert row["status"] == "FAILED"
    assert row["errors"][-1]["exception_class_path"] == "tasks.exceptions.TaskCancelled"
    assert 3 <= len(lines(steps)) < 400

    # The worker goes on serving, and the cancelled READY task never started.
    after = python(stack, "import json; from tests.sample_tasks import add; print(json.dumps(add.enqueue(1, 1).id))")
    assert tasks.wait_finished(after, timeout=10)["status"] == "SUCCESSFUL"
    assert not queued.exists() and tasks.get(ids["queued"])["started_at"] is None
    assert workers[0].poll() is None


def test_sigterm_finishes_or_hands_back_and_a_second_sigterm_exits_at_once(stack, tasks, tmp_path):
    log, steps = tmp_path / "slow", tmp_path / "steps"
    enqueue_slow = "import json; from tests.sample_tasks import slow_mark; print(json.dumps(slow_mark.enqueue({!r}, {!r}, {}).id))"

    # 1. SIGTERM: the running task finishes, then the worker exits 0.
    (first,) = start_workers(stack, 1, "compute")
    slow = python(stack, enqueue_slow.format(str(log), "a", 1.5))
    wait_until(lambda: lines(log), timeout=10, message="slow task started")
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    row = tasks.get(slow)
    assert row["status"] == "SUCCESSFUL" and len(row["worker_ids"]) == 1
    assert [e[0] for e in lines(log)] == ["start", "end"]

    # 2. SIGTERM: a task that reports progress hands itself back at its next report.
    (second,) = start_workers(stack, 1, "compute")
    counted = python(stack, f"import json; from tests.sample_tasks import counted; print(json.dumps(counted.enqueue({str(steps)!r}, 30, 0.1).id))")
    wait_until(lambda: (tasks.get(counted)["progress_done"] or 0) >= 2, timeout=10, message="progress")
    second.send_signal(signal.SIGTERM)
    assert second.wait(5) == 0
    row = tasks.get(counted)
    assert (row["status"], row["errors"], row["worker_id"]) == ("READY", [], "")

    # 3. A second SIGTERM exits at once; the task goes back to READY, not FAILED.
    (third,) = start_workers(stack, 1, "compute")
    row = tasks.wait_finished(counted, timeout=20)  # the handed-back task, run again
    assert row["status"] == "SUCCESSFUL" and len(row["worker_ids"]) == 2 and row["errors"] == []
    assert {line[3] for line in lines(steps)} == {"1", "2"}  # `step N attempt A pid`: attempts 1 and 2
    slow = python(stack, enqueue_slow.format(str(log), "b", 30))
    wait_until(lambda: len(lines(log)) == 3, timeout=10, message="long task started")
    third.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    signalled = time.monotonic()
    third.send_signal(signal.SIGTERM)
    assert third.wait(5) != 0 and time.monotonic() - signalled < 3
    row = tasks.get(slow)
    assert (row["status"], row["errors"], row["worker_id"]) == ("READY", [], "")

    start_workers(stack, 1, "compute")
    wait_until(lambda: len(lines(log)) == 4, timeout=10, message="long task restarted on another worker")
    restarted = lines(log)[3]
    assert restarted[:2] == ["start", "b"] and int(restarted[2]) != third.pid
    assert len(tasks.get(slow)["worker_ids"]) == 2


def test_a_missing_task_module_fails_that_task_only_and_results_read_from_anywhere(stack, tasks):
    workers = start_workers(stack, 1, "compute")
    ids = python(stack, """
import json
from django.utils import timezone
from tasks.backends import ring
from tasks.models import TaskRecord
from tests.sample_tasks import add
now = timezone.now()
gone = TaskRecord.objects.create(task_path="tests.removed_module.task", queue_name="compute", enqueued_at=now, available_at=now)
ring("compute")
print(json.dumps({"gone": str(gone.pk), "add": add.enqueue(2, 40).id}))
""")
    row = tasks.wait_finished(ids["gone"], timeout=10)
    assert row["status"] == "FAILED" and row["errors"][-1]["exception_class_path"] == "builtins.ImportError"
    assert "tests.removed_module.task" in row["errors"][-1]["traceback"]
    assert tasks.wait_finished(ids["add"], timeout=10)["status"] == "SUCCESSFUL"
    assert workers[0].poll() is None

    # get_result and aget_result in one process; refresh() in another while a worker runs its task.
    seen = python(stack, f"""
import asyncio, json
from tests.sample_tasks import add
sync, coro = add.get_result({ids["add"]!r}), asyncio.run(add.aget_result({ids["add"]!r}))
print(json.dumps([sync.status, sync.return_value, sync.attempts, coro.status, coro.return_value, len(coro.worker_ids)]))
""")
    assert seen == ["SUCCESSFUL", 42, 1, "SUCCESSFUL", 42, 1]
    refreshed = python(stack, """
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
    enqueued by the server's own views get the bell at once.
    """
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    db = tmp_path / "db.sqlite3"
    stack = Stack(base_env(SQLITE_PATH=str(db)), log_dir)
    try:
        stack.manage("migrate", "--noinput", "-v0")
        stack.runserver()
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
