"""Running stored tasks: claim one, run it, record what happened.

Plain functions over TaskRecord, called by the worker's consumers and by tests.
The rules that make the runner lose nothing and double nothing live here:

- a task is claimed in one short transaction (SELECT ... FOR UPDATE SKIP
  LOCKED on PostgreSQL; SQLite's IMMEDIATE transactions serialise it), so
  however many bells ring and however many workers listen, one worker gets it;
- a RUNNING task belongs to a worker only while that worker's heartbeat for
  it is fresh (its lease); the sweep hands tasks of silent workers to others;
- every outcome is written conditionally on still holding the task.
"""

import asyncio
import functools
import itertools
import logging
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from inspect import iscoroutinefunction
from types import TracebackType
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.tasks.base import Task, TaskResultStatus
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from project import rows

from . import metrics
from .backends import ChannelsBackend, aring, load_task, ring, to_json, to_task_result
from .exceptions import (
    CANCELLED,
    WORKER_LOST,
    HandedBack,
    RetryLater,
    TaskCancelled,
    TimeLimitExceeded,
    WorkerLost,
    error_entry,
)
from .models import TaskRecord
from .progress import ProgressContext, broadcast, shutting_down

logger = logging.getLogger(__name__)

READY, RUNNING = TaskResultStatus.READY, TaskResultStatus.RUNNING
SUCCESSFUL, FAILED = TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED


def heartbeat_interval() -> float:
    return settings.TASKS_HEARTBEAT_INTERVAL


def lease_seconds() -> float:
    """How long a silent worker keeps its tasks before the others take them."""
    return settings.TASKS_LEASE


def max_worker_losses() -> int:
    """A task that keeps killing its worker (OOM, say) must not loop for ever."""
    return settings.TASKS_MAX_WORKER_LOSSES


# --- The hot path: claim a task, record an outcome ---------------------------------
#
# Every task pays these statements, so they go straight to the cursor as SQL
# built once per shape: through the ORM, building the query and loading the
# row cost as much CPU as a thumbnail's WebP encoding (README.md, Benchmarks). On
# PostgreSQL the outcome of the task just run and the claim of the next are
# one statement (one round trip, one commit): see release_and_claim().

FIELDS = TaskRecord._meta.concrete_fields
_FIELD = {field.name: field for field in FIELDS}


@dataclass(slots=True)
class Outcome:
    """How an attempt ended: the columns to write, if its worker still holds the task."""

    record: TaskRecord
    task: Task
    changes: dict[str, Any]
    error: BaseException | None = None


def outcome_of(record: TaskRecord, task: Task, value: Any, exc: BaseException | None) -> Outcome:
    """The outcome of an attempt that returned `value` or raised `exc`."""
    if exc is None:
        try:
            return Outcome(record, task, success_changes(to_json(value)))
        except (TypeError, ValueError) as error:
            exc = TypeError(f"Return value of task {record.task_path} is not JSON-serializable: {error}")
    return Outcome(record, task, failure_changes(record, exc), exc)


def success_changes(return_value: Any) -> dict[str, Any]:
    return {"status": SUCCESSFUL, "finished_at": timezone.now(), "return_value": return_value}


def retry_delay(record: TaskRecord, failures: int) -> float:
    """Exponential backoff, +-20% jitter so retries of a burst do not stampede."""
    delay = min(record.retry_backoff_max, record.retry_backoff * 2 ** (failures - 1))
    return delay * random.uniform(0.8, 1.2)


def failure_changes(record: TaskRecord, exc: BaseException) -> dict[str, Any]:
    """Keep the error; retry later if the task has attempts left, else FAILED."""
    errors = [*record.errors, error_entry(exc)]
    failures = sum(1 for e in errors if e["exception_class_path"] != WORKER_LOST)
    now = timezone.now()
    if isinstance(exc, TaskCancelled) or failures >= record.max_attempts:
        return {"status": FAILED, "errors": errors, "finished_at": now}
    delay = exc.delay if isinstance(exc, RetryLater) else retry_delay(record, failures)
    logger.info("event=task_retry task=%s path=%s failures=%d delay=%.2f", record.pk, record.task_path, failures, delay)
    return {"status": READY, "errors": errors, "available_at": now + timedelta(seconds=delay)}


def claim(queue_names: list[str], worker_id: str) -> TaskRecord | None:
    """Take the next due READY task of these queues for `worker_id`, or None.

    Highest priority first, then the longest due. SKIP LOCKED lets workers
    claim side by side on PostgreSQL; on SQLite a write statement holds the
    database lock, which serialises claims just as well. A READY task whose
    cancel came too late to stop it is never claimed; the sweep fails it
    (fail_cancelled).
    """
    return release_and_claim(None, queue_names, worker_id)[1]


def claim_many(
    queue_names: list[str], worker_id: str, limit: int, task_paths: list[str] | None = None
) -> list[TaskRecord]:
    """Take up to `limit` due READY tasks of these queues for `worker_id`, in one statement;
    with `task_paths`, only tasks of those (a worker's async tasks, for coroutine slots
    that have no thread free should a claim bring a sync task).

    A worker asks for as many as it has free slots, never more, so what it
    cannot start at once stays for idle workers. Returned in claim order
    (highest priority, then the longest due): RETURNING itself has no order.
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    paths = task_paths or []
    params = [RUNNING, worker_id, now, now, now, worker_id, READY, *queue_names, now, *paths, limit]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(connection.vendor, len(queue_names), many=True, paths=len(paths)), params)
        records = [_load(row) for row in cursor.fetchall()]
    return sorted(records, key=lambda r: (-r.priority, r.available_at, r.enqueued_at))


def record_success(record: TaskRecord, worker_id: str, return_value: Any) -> bool:
    return _release(record, worker_id, success_changes(return_value))


def record_failure(record: TaskRecord, worker_id: str, exc: BaseException) -> bool:
    return _release(record, worker_id, failure_changes(record, exc))


def release_and_claim(ended: Outcome | None, queue_names: list[str], worker_id: str) -> tuple[bool, TaskRecord | None]:
    """Record `ended` (the attempt this worker just finished, if any), then claim the next task.

    Returns (whether `ended` was recorded, the claimed task or None). On
    PostgreSQL both are one statement; a worker draining a queue so pays one
    round trip and one commit per task.
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    claim_sql, claim_params = _claim_sql(connection.vendor, len(queue_names)), [
        RUNNING, worker_id, now, now, now, worker_id, READY, *queue_names, now,
    ]  # fmt: skip
    if ended is not None and connection.vendor == "postgresql":
        release_sql, release_params = _release_statement(ended.record, worker_id, ended.changes)
        sql = (
            f"WITH released AS ({release_sql} RETURNING 1), claimed AS ({claim_sql}) "
            "SELECT (SELECT count(*) FROM released), claimed.* FROM (SELECT 1) AS one LEFT JOIN claimed ON true"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, release_params + claim_params)
            held, *row = cursor.fetchone()
        _note_release(ended.record, worker_id, ended.changes, held)
        return bool(held), _load(row) if row[0] is not None else None
    held = ended is not None and _release(ended.record, worker_id, ended.changes)
    with connection.cursor() as cursor:
        cursor.execute(claim_sql, claim_params)
        row = cursor.fetchone()
    return held, _load(row) if row is not None else None


def release_many_and_claim(
    ended: list[Outcome], queue_names: list[str], worker_id: str, limit: int,
    async_limit: int = 0, async_paths: list[str] | None = None,
) -> tuple[list[bool], list[TaskRecord], list[TaskRecord]]:
    """Record these attempts' outcomes, claim up to `limit` tasks, and up to `async_limit`
    more of `async_paths` only: the async slots' batch (tasks.worker.Recorder).

    Returns (whether each outcome was recorded, the tasks claimed of any kind,
    those of `async_paths`), each in claim order. On PostgreSQL all of it is one
    statement: many async tasks ending together cost one round trip and one
    commit, not one each. Elsewhere the async-only claim is made only if the
    first came back full.
    """
    paths = list(async_paths or []) if async_limit else []
    if connection.vendor != "postgresql":
        held = [_release(outcome.record, worker_id, outcome.changes) for outcome in ended]
        records = claim_many(queue_names, worker_id, limit) if limit else []
        full = len(records) == limit
        return held, records, claim_many(queue_names, worker_id, async_limit, paths) if paths and full else []
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    ctes, params = [], []
    shapes: dict[tuple[str, ...], list[Outcome]] = {}  # a success's columns, a retry's, a failure's
    for outcome in ended:
        shapes.setdefault(tuple(outcome.changes), []).append(outcome)
    for i, (names, outcomes) in enumerate(shapes.items()):
        ctes.append(f"r{i} AS ({_release_many_sql(connection.vendor, names)})")
        columns = [[_FIELD["id"].get_db_prep_value(o.record.pk, connection) for o in outcomes]]
        columns += [[_FIELD[name].get_db_prep_save(o.changes[name], connection) for o in outcomes] for name in names]
        params += [*columns, worker_id]
    claim = [RUNNING, worker_id, now, now, now, worker_id, READY, *queue_names, now]
    ctes.append(f"claimed AS ({_claim_sql(connection.vendor, len(queue_names), many=True)})")
    params += [*claim, limit]
    claims = "SELECT 1 AS kind, * FROM claimed"
    if paths:
        # Not the rows `claimed` took: one statement must not update a row twice.
        ctes.append(f"more AS ({_claim_sql(connection.vendor, len(queue_names), many=True, paths=len(paths), besides='claimed')})")
        params += [*claim, *paths, async_limit]
        claims += " UNION ALL SELECT 2, * FROM more"
    released = " UNION ALL ".join(f"SELECT id FROM r{i}" for i in range(len(shapes))) or "SELECT NULL::uuid WHERE false"
    sql = (
        f"WITH {', '.join(ctes)} SELECT ARRAY({released})::text[], c.* "
        f"FROM (SELECT 1) AS one LEFT JOIN ({claims}) AS c ON true"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    recorded = set(rows[0][0])
    held = [_note_release(o.record, worker_id, o.changes, str(o.record.pk) in recorded) for o in ended]
    order = lambda record: (-record.priority, record.available_at, record.enqueued_at)
    records = sorted((_load(row[2:]) for row in rows if row[1] == 1), key=order)
    return held, records, sorted((_load(row[2:]) for row in rows if row[1] == 2), key=order)


def _release(record: TaskRecord, worker_id: str, changes: dict[str, Any]) -> bool:
    """Write an attempt's outcome if `worker_id` still holds the task."""
    sql, params = _release_statement(record, worker_id, changes)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        held = cursor.rowcount
    return _note_release(record, worker_id, changes, held)


def _release_statement(record: TaskRecord, worker_id: str, changes: dict[str, Any]) -> tuple[str, list]:
    changes = {**changes, "worker_id": "", "heartbeat_at": None}  # the task is no longer held
    params = [_FIELD[name].get_db_prep_save(value, connection) for name, value in changes.items()]
    params += [_FIELD["id"].get_db_prep_value(record.pk, connection), worker_id]
    return _release_sql(connection.vendor, tuple(changes)), params


def _note_release(record: TaskRecord, worker_id: str, changes: dict[str, Any], held: int) -> bool:
    if not held:
        logger.warning("event=lease_lost task=%s worker=%s", record.pk, worker_id)
        metrics.finished(record.queue_name, "lease_lost")
        return False
    for name, value in {**changes, "worker_id": "", "heartbeat_at": None}.items():
        setattr(record, name, value)
    return True


# The SQL below is built once per database vendor (the cache key) and shape.


def _table() -> str:
    return connection.ops.quote_name(TaskRecord._meta.db_table)


@functools.cache
def _release_sql(vendor: str, names: tuple[str, ...]) -> str:
    # worker_id is set only while a task is RUNNING (the claim sets it, every
    # way out of RUNNING clears it), so it alone says who holds the task. With
    # "status = RUNNING" too, PostgreSQL may pick the partial index of running
    # tasks over the primary key and read every running task (seen in EXPLAIN).
    sets = ", ".join(f"{connection.ops.quote_name(_FIELD[name].column)} = %s" for name in names)
    return f"UPDATE {_table()} SET {sets} WHERE id = %s AND worker_id = %s"


@functools.cache
def _release_many_sql(vendor: str, names: tuple[str, ...]) -> str:
    """Outcomes of one shape (these columns) for many tasks, as one array per column
    (PostgreSQL): one plan whatever their number. See _release_sql()."""
    table = _table()
    quote = connection.ops.quote_name
    arrays = ", ".join(f"%s::{_FIELD[name].cast_db_type(connection)}[]" for name in ("id", *names))
    sets = ", ".join(f"{quote(_FIELD[name].column)} = v.{quote(name)}" for name in names)
    return (
        f"UPDATE {table} AS t SET {sets}, worker_id = '', heartbeat_at = NULL "
        f"FROM unnest({arrays}) AS v(id, {', '.join(quote(name) for name in names)}) "
        f"WHERE t.id = v.id AND t.worker_id = %s RETURNING t.id"
    )


@functools.cache
def _claim_sql(vendor: str, queue_count: int, many: bool = False, paths: int = 0, besides: str = "") -> str:
    """The claim: of one task (the fast path), or `many` (LIMIT %s, the last parameter),
    of any task or only of `paths` task paths (parameters before the LIMIT), and
    not of the rows of the CTE `besides` (PostgreSQL only)."""
    if vendor == "postgresql":
        append = "worker_ids || to_jsonb(%s::text)"
    else:
        append = "json_insert(worker_ids, '$[#]', %s)"
    skip_locked = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    queues = ", ".join(["%s"] * queue_count)
    only = f"AND task_path IN ({', '.join(['%s'] * paths)}) " if paths else ""
    if besides:
        only += f"AND id <> ALL(ARRAY(SELECT id FROM {besides})) "
    table = _table()
    columns = rows.columns(TaskRecord)
    due = (
        f"SELECT id FROM {table} WHERE status = %s AND NOT cancel_requested "
        f"AND queue_name IN ({queues}) AND available_at <= %s "
        f"{only}"
        f"ORDER BY priority DESC, available_at, enqueued_at LIMIT {'%s' if many else '1'}{skip_locked}"
    )
    if not many:
        which = f"id = ({due})"
    elif vendor == "postgresql":
        # ARRAY() runs the locking sub-select once; with IN the planner may join
        # against it and lock (and claim) more than LIMIT rows.
        which = f"id = ANY(ARRAY({due}))"
    else:
        which = f"id IN ({due})"
    return (
        f"UPDATE {table} SET status = %s, worker_id = %s, heartbeat_at = %s, last_attempted_at = %s, "
        f"started_at = COALESCE(started_at, %s), worker_ids = {append}, "
        # A key held only while waiting (enqueue_unique) is given up as the task starts.
        f"unique_key = CASE WHEN unique_while_running THEN unique_key END WHERE {which} RETURNING {columns}"
    )


def _load(row: Any) -> TaskRecord:
    return rows.load(TaskRecord, row)


def fail_cancelled() -> int:
    """Fail READY tasks cancelled while they ran (their worker died or handed them back)."""
    failed = 0
    with transaction.atomic():
        for record in TaskRecord.objects.select_for_update(skip_locked=True).filter(
            status=READY, cancel_requested=True
        ):
            record.status = FAILED
            record.finished_at = timezone.now()
            record.errors = [*record.errors, error_entry(TaskCancelled("cancelled before it could run again"))]
            record.save(update_fields=["status", "finished_at", "errors"])
            failed += 1
    return failed


def next_due(queue_names: list[str]) -> datetime | None:
    """When the earliest READY task of these queues may start."""
    return (
        TaskRecord.objects.filter(status=READY, queue_name__in=queue_names)
        .order_by("available_at")
        .values_list("available_at", flat=True)
        .first()
    )


def hand_back(worker_id: str, record: TaskRecord | None = None) -> list[str]:
    """Give a stopping worker's RUNNING tasks back to the queue, not failed.

    Returns the queues that got work back, so the caller can ring them.
    """
    held = TaskRecord.objects.filter(status=RUNNING, worker_id=worker_id)
    if record is not None:
        held = held.filter(pk=record.pk)
    queues = sorted(set(held.values_list("queue_name", flat=True)))
    held.update(status=READY, worker_id="", heartbeat_at=None, available_at=timezone.now())
    return queues


def heartbeat(worker_id: str, task_ids: list[Any]) -> int:
    """Renew the lease on the tasks this worker is running right now.

    Only tasks actually executing are renewed: if the code running a task
    fails before recording its outcome, the lease runs out and the sweep
    gives the task to another worker instead of it staying RUNNING for ever.
    """
    if not task_ids:
        return 0
    return TaskRecord.objects.filter(pk__in=task_ids, status=RUNNING, worker_id=worker_id).update(
        heartbeat_at=timezone.now()
    )


def reclaim_lost() -> list[str]:
    """Hand RUNNING tasks of workers that stopped beating to the others.

    Each counts as an attempt that failed with WorkerLost; after
    max_worker_losses() of those the task is FAILED. Returns the queues to ring.
    """
    now = timezone.now()
    queues = set()
    workers, taken = set(), []  # counted once the transaction commits
    with transaction.atomic():
        stale = TaskRecord.objects.select_for_update(skip_locked=True).filter(
            status=RUNNING, heartbeat_at__lt=now - timedelta(seconds=lease_seconds())
        )
        for record in stale:
            lost = WorkerLost(f"worker {record.worker_id} stopped beating at {record.heartbeat_at.isoformat()}")
            errors = [*record.errors, {"exception_class_path": WORKER_LOST, "traceback": str(lost)}]
            losses = sum(1 for e in errors if e["exception_class_path"] == WORKER_LOST)
            logger.warning("event=task_reclaimed task=%s worker=%s losses=%d", record.pk, record.worker_id, losses)
            workers.add(record.worker_id)
            record.errors = errors
            record.worker_id = ""
            record.heartbeat_at = None
            if losses >= max_worker_losses():
                record.status = FAILED
                record.finished_at = now
            else:
                record.status = READY
                record.available_at = now
                queues.add(record.queue_name)
            record.save(update_fields=["errors", "worker_id", "heartbeat_at", "status", "finished_at", "available_at"])
            taken.append((record.queue_name, "failed" if record.status == FAILED else "requeued"))
    for queue, outcome in taken:
        metrics.reclaimed(queue, outcome)
    metrics.workers_lost(len(workers))
    return sorted(queues)


# The runner's database calls run on the thread that owns this process's
# connection, like channels' database_sync_to_async, but without closing and
# health-checking the connection around every call: on the hot path that is an
# extra round trip per call. The consumer does it once per drain instead.
def on_db_thread(func):
    return sync_to_async(func, thread_sensitive=True)


def claim_and_start(
    queue_names: list[str], worker_id: str, ended: Outcome | None = None
) -> tuple[TaskRecord, Task | None, Any] | None:
    """Record the attempt just ended, if any, claim the next task, and announce both
    (task_finished, then task_started): one trip to the database thread, one statement.

    Returns None when no task is due, and (record, None, None) for a task whose
    code cannot be loaded: that attempt is recorded as failed here.
    """
    held, record = release_and_claim(ended, queue_names, worker_id)
    if ended is not None:
        announce(ended, worker_id, held)
    if record is None:
        return None
    return start(record, worker_id)


def claim_and_start_many(
    queue_names: list[str], worker_id: str, limit: int
) -> list[tuple[TaskRecord, Task | None, Any]]:
    """claim_many() and start() each: what a worker's free slots take on a bell."""
    return [start(record, worker_id) for record in claim_many(queue_names, worker_id, limit)]


def finish_and_start_many(
    ended: list[Outcome], queue_names: list[str], worker_id: str, limit: int,
    async_limit: int = 0, async_paths: list[str] | None = None,
) -> tuple[list[tuple[TaskRecord, Task | None, Any]], list[tuple[TaskRecord, Task | None, Any]]]:
    """release_many_and_claim(), then announce each outcome and start() each claim: a
    batch of async slots' one trip to a thread of the queue (tasks.worker.Recorder).
    Returns (the claims of any kind, the async-only ones)."""
    # Dropped here, not per statement, if it broke or aged: a round trip only after an error.
    connection.close_if_unusable_or_obsolete()
    held, records, more = release_many_and_claim(ended, queue_names, worker_id, limit, async_limit, async_paths)
    for outcome, recorded in zip(ended, held):
        announce(outcome, worker_id, recorded)
    return [start(record, worker_id) for record in records], [start(record, worker_id) for record in more]


def start(record: TaskRecord, worker_id: str) -> tuple[TaskRecord, Task | None, Any]:
    """Load a claimed task's code and announce it (task_started); (record, None, None)
    for a task whose code cannot be loaded: that attempt is recorded as failed here."""
    try:
        task = load_task(record.task_path)
        stored = (record.priority, record.queue_name, record.run_after)
        if stored != (task.priority, task.queue_name, task.run_after):
            # Enqueued through .using(): run it as enqueued. Skipped otherwise, as
            # copying and re-validating the Task for every task is measurable on the hot path.
            task = task.using(priority=record.priority, queue_name=record.queue_name, run_after=record.run_after)
    except (ImportError, InvalidTask) as exc:  # deployed code no longer has it, or no longer allows it
        logger.error("event=task_import_failed task=%s path=%s worker=%s error=%s", record.pk, record.task_path, worker_id, exc)
        if record_failure(record, worker_id, exc):
            metrics.finished(record.queue_name, "retry" if record.status == READY else "failed")
        return record, None, None
    result = to_task_result(record, task)
    task_started.send(sender=ChannelsBackend, task_result=result)
    metrics.started(record.queue_name, record.available_at, record.last_attempted_at)  # the claim's time
    return record, task, result


def finish(ended: Outcome, worker_id: str) -> bool:
    """Record an attempt's outcome and announce it; False if the lease was lost."""
    held = _release(ended.record, worker_id, ended.changes)
    announce(ended, worker_id, held)
    return held


def announce(ended: Outcome, worker_id: str, held: bool) -> None:
    """Log a recorded outcome and tell who listens: task_finished, and the task's
    group for takes_context tasks. An outcome not held (the sweep gave the task
    to another worker, whose outcome counts) is only logged, by _note_release."""
    if not held:
        return
    record, task = ended.record, ended.task
    log = "task=%s path=%s queue=%s attempt=%d worker=%s"
    log_args = (record.pk, record.task_path, record.queue_name, record.attempts, worker_id)
    if ended.error is None:
        logger.info("event=task_succeeded " + log, *log_args)
        metrics.finished(record.queue_name, "succeeded")
    elif isinstance(ended.error, TaskCancelled):
        logger.info("event=task_cancelled " + log, *log_args)
        metrics.finished(record.queue_name, "cancelled")
    else:
        logger.info("event=task_failed " + log + " status=%s error=%r", *log_args, record.status, ended.error)
        metrics.finished(record.queue_name, "retry" if record.status == READY else "failed")
    if record.status != READY:
        task_finished.send(sender=ChannelsBackend, task_result=to_task_result(record, task))
    if task.takes_context:
        record.refresh_from_db()  # progress was written by the context, not on this copy
        broadcast(record)


def log_task_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """django.tasks' own line for a finished task, but a cancelled one is no error.

    Replaces django.tasks.signals.log_task_finished (tasks.apps), which logs
    every FAILED task at ERROR: a cancel is what someone asked for, and must
    not page anyone.
    """
    cancelled = bool(
        task_result.status == FAILED and task_result.errors
        and task_result.errors[-1].exception_class_path == CANCELLED
    )  # fmt: skip
    logging.getLogger("django.tasks").log(
        logging.ERROR if task_result.status == FAILED and not cancelled else logging.INFO,
        "Task id=%s path=%s state=%s" + (" cancelled" if cancelled else ""),
        task_result.id, task_result.task.module_path, task_result.status,
    )  # fmt: skip


def time_limit(task: Task) -> float | None:
    """Seconds an attempt of `task` may run: its @task(timeout=...), else its queue's default; None: no limit.

    Read from the deployed code and settings when the attempt starts, like the
    task's code itself: a raised limit applies to tasks already waiting.
    """
    timeout = getattr(task, "timeout", None)
    if timeout is None and isinstance(backend := task.get_backend(), ChannelsBackend):
        timeout = backend.timeout_for(task.queue_name)
    return timeout


def deadline_of(record: TaskRecord, task: Task) -> datetime | None:
    """When the attempt of `record` just claimed passes its time limit (None: never)."""
    timeout = time_limit(task)
    return None if timeout is None else record.last_attempted_at + timedelta(seconds=timeout)


def task_args(record: TaskRecord, task: Task, result: Any, deadline: datetime | None = None) -> list:
    args = list(record.args)
    if task.takes_context:
        args.insert(0, ProgressContext(task_result=result, max_attempts=record.max_attempts, deadline=deadline))
    return args


def run_sync(record: TaskRecord, task: Task, result: Any, worker_id: str, deadline: datetime | None) -> Outcome | None:
    """Run a claimed sync task in the calling thread, `deadline` its deadline_of(); its
    outcome, still to record, or None if it handed itself back."""
    began = time.perf_counter()
    try:
        value = task.func(*task_args(record, task, result, deadline), **record.kwargs)
    except HandedBack:
        logger.info("event=task_handed_back task=%s path=%s worker=%s", record.pk, record.task_path, worker_id)
        for queue in hand_back(worker_id, record):
            ring(queue)
        return None
    except Exception as exc:
        metrics.ran(record.queue_name, time.perf_counter() - began)
        return outcome_of(record, task, None, exc)
    metrics.ran(record.queue_name, time.perf_counter() - began)
    return outcome_of(record, task, value, None)


def drain_sync(
    queue_names: list[str], worker_id: str, slot: Any, claimed: Any = None, ended: Outcome | None = None
) -> Any:
    """Run a slot's sync tasks in the calling thread (one of the worker's slot threads),
    claiming the next each time one ends, until the queue runs dry.

    The fast path of a worker: a sync task costs one statement, which records
    its outcome and claims the next, and no trip between threads. `claimed` is
    a claim_and_start() tuple to run first; otherwise `ended` (an outcome still
    to record, or None) goes with the first claim.

    `slot` is the worker's slot (tasks.worker.Slot). On entry it holds a thread
    and, when `claimed` is None, an async slot too: whatever comes next may be
    an async task. That async task is returned, still holding its async slot,
    for the event loop to run; otherwise None once nothing is due, the worker
    is stopping, the queue is paused, or the worker has no async slot free to
    claim with.
    `slot.begin()` names the task in hand, for the worker's heartbeat and its
    watch over time limits; a task that `slot.end()` says was stopped at its
    limit meanwhile returned too late: its outcome is dropped, and the thread
    leaves the slot, which is no longer its own (see stop_overdue()).
    """
    close_old_connections()  # a broken or aged connection is dropped here, not per task
    for ran in itertools.count(1):
        if claimed is None:
            if shutting_down.is_set() or slot.state.paused:
                slot.release("async")
                break
            claimed = claim_and_start(queue_names, worker_id, ended)
            ended = None
            if claimed is None:
                slot.release("async")
                slot.ran_dry()
                return None
            if claimed[1] is None:
                claimed = None  # its code could not be loaded; that attempt is recorded as failed
                continue
            if iscoroutinefunction(claimed[1].func):
                return claimed
            slot.release("async")
        record, task, result = claimed
        claimed = None
        deadline = deadline_of(record, task)
        slot.begin(record, task, deadline)
        try:
            ended = run_sync(record, task, result, worker_id, deadline)
        finally:
            kept = slot.end()
        if not kept:  # stopped at its time limit (stop_overdue): the slot is no longer ours
            logger.warning("event=task_returned_late task=%s path=%s worker=%s", record.pk, record.task_path, worker_id)
            return None
        if ran % 100 == 0:
            close_old_connections()
        if shutting_down.is_set() or slot.state.paused or not slot.reserve("async"):
            break
    if ended is not None:  # the slot's last task: no next claim to record it with
        finish(ended, worker_id)
    return None


def run_to_end(record: TaskRecord, task: Task, result: Any, worker_id: str) -> None:
    """Run a claimed sync task and record its outcome."""
    ended = run_sync(record, task, result, worker_id, deadline_of(record, task))
    if ended is not None:
        finish(ended, worker_id)


async def execute(record: TaskRecord, task: Task, result: Any, worker_id: str) -> None:
    """Run a claimed task (from claim_and_start) to an outcome, and record it."""
    if not iscoroutinefunction(task.func):
        await sync_to_async(run_to_end, thread_sensitive=False)(record, task, result, worker_id)
        return
    ended = await run_async(record, task, result, worker_id)
    if ended is not None:
        await on_db_thread(finish)(ended, worker_id)


async def run_async(record: TaskRecord, task: Task, result: Any, worker_id: str) -> Outcome | None:
    """Run a claimed async task on the calling event loop; its outcome, still to
    record, or None if it handed itself back.

    At its time limit the task is cancelled (CancelledError where it awaits),
    and the attempt fails with TimeLimitExceeded, whatever the task did with
    the cancel: re-raised it, raised something else or swallowed it and returned.
    """
    deadline = deadline_of(record, task)
    remaining = None if deadline is None else max(0.0, (deadline - timezone.now()).total_seconds())
    limit = asyncio.timeout(remaining)
    began = time.perf_counter()
    try:
        async with limit:
            value = await task.func(*task_args(record, task, result, deadline), **record.kwargs)
    except HandedBack:
        logger.info("event=task_handed_back task=%s path=%s worker=%s", record.pk, record.task_path, worker_id)
        for queue in await on_db_thread(hand_back)(worker_id, record):
            await aring(queue)
        return None
    except Exception as exc:
        metrics.ran(record.queue_name, time.perf_counter() - began)
        return outcome_of(record, task, None, over_limit(record, task, exc) if limit.expired() else exc)
    metrics.ran(record.queue_name, time.perf_counter() - began)
    if limit.expired():
        return outcome_of(record, task, None, over_limit(record, task, None))
    return outcome_of(record, task, value, None)


def over_limit(record: TaskRecord, task: Task, cause: BaseException | None) -> TimeLimitExceeded:
    """The error of an attempt of `record` stopped at its time limit; `cause`, what the
    task raised as it was stopped, keeps in the stored traceback where it was."""
    logger.warning(
        "event=task_time_limit task=%s path=%s attempt=%d limit=%s", record.pk, record.task_path, record.attempts,
        time_limit(task),
    )  # fmt: skip
    error = TimeLimitExceeded(f"time limit of {time_limit(task):g}s passed; the attempt was stopped")
    error.__cause__ = cause
    return error


def stop_overdue(slot: Any, worker_id: str) -> bool:
    """Fail the sync task in `slot` if it passed its time limit without stopping; True if it did.

    A sync task cannot be stopped from outside its thread, so the worker gives
    up on the attempt instead: recorded as failed with TimeLimitExceeded (its
    traceback is where the thread was), retried as max_attempts allows, its
    lease released, and the slot taken from it (slot.abandon()), so that
    whatever it does if it ever returns is dropped. The caller frees the slot's
    place in its queue and gives it a new thread.

    A task that reported progress during this attempt is stopped at its next
    report (ProgressContext raises TimeLimitExceeded); it is given up on only if
    that report has not come TASKS_LEASE seconds after the limit.
    """
    attempt = slot.attempt
    if attempt is None:
        return False
    record, task, deadline, thread = attempt
    now = timezone.now()
    if now < deadline:
        return False
    reported = TaskRecord.objects.filter(pk=record.pk, progress_at__gte=record.last_attempted_at).exists()
    if reported and now < deadline + timedelta(seconds=lease_seconds()):
        return False
    if not slot.abandon(attempt):
        return False  # it returned meanwhile: its own outcome counts
    error = TimeLimitExceeded(
        f"time limit of {time_limit(task):g}s passed {(now - deadline).total_seconds():.1f}s ago with "
        f"{'no progress report since' if reported else 'no progress reported'}; the worker gave up on the attempt"
    ).with_traceback(stack_of(thread))
    logger.warning(
        "event=task_time_limit task=%s path=%s attempt=%d limit=%s worker=%s thread=%s reported=%s",
        record.pk, record.task_path, record.attempts, time_limit(task), worker_id, thread.name, reported,
    )  # fmt: skip
    finish(Outcome(record, task, failure_changes(record, error), error), worker_id)
    return True


def stack_of(thread: Any) -> TracebackType | None:
    """Where `thread` is now, as a traceback (outermost frame first), for a task's stored error."""
    frame = sys._current_frames().get(thread.ident)
    stack = None
    while frame is not None:
        stack = TracebackType(stack, frame, frame.f_lasti, frame.f_lineno)
        frame = frame.f_back
    return stack
