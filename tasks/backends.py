"""Parley's `django.tasks` backend: the database holds each task, the channel layer rings the bell."""

import asyncio
import atexit
import collections
import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.core import checks
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.tasks import task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskError, TaskResult
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import metrics
from .models import TaskRecord

logger = logging.getLogger(__name__)

# What channels accepts as a channel name (channels.layers.BaseChannelLayer).
CHANNEL_NAME = re.compile(r"^[a-zA-Z\d\-_.]{1,99}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ParleyTask(Task):
    """A django.tasks Task with Parley's retry policy, set on @task.

    `@task(queue_name="notifications", max_attempts=5, retry_backoff=2.0)` retries a
    failing task up to 5 attempts in all, waiting about 2 s, 4 s, 8 s, ... (+-20%
    jitter, capped at `retry_backoff_max`) between them. `timeout` is each
    attempt's time limit in seconds (None: the queue's default, see
    ChannelsBackend.timeout_for); README, "Time limits", says what happens past it.
    """

    max_attempts: int = 1
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    timeout: float | None = None


class ChannelsBackend(BaseTaskBackend):
    task_class = ParleyTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.channel_layer_alias = self.options.get("CHANNEL_LAYER", "default")

    @functools.cached_property
    def timeouts(self) -> dict[str, float]:
        """OPTIONS["TIMEOUT"] as {queue or "*": seconds}; ValueError if malformed (the check says so)."""
        return parse_timeouts(self.options.get("TIMEOUT") or {}, self.queues)

    def timeout_for(self, queue_name: str) -> float | None:
        """The time limit of a task of `queue_name` that sets none itself; None: no limit."""
        return self.timeouts.get(queue_name, self.timeouts.get("*"))

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if isinstance(task, ParleyTask):
            if int(task.max_attempts) != task.max_attempts or task.max_attempts < 1:
                raise InvalidTask("max_attempts must be a whole number of at least 1.")
            if task.retry_backoff < 0 or task.retry_backoff_max < 0:
                raise InvalidTask("retry_backoff and retry_backoff_max must not be negative.")
            if task.timeout is not None and not is_time_limit(task.timeout):
                raise InvalidTask(f"timeout must be a finite number of seconds above 0, or None; got {task.timeout!r}.")

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        return self._enqueue(task, [(args, kwargs)], many=False)[0]

    def enqueue_many(self, task: Task, calls: Iterable[tuple[Any, Any]]) -> list[TaskResult]:
        """Enqueue `task` once per `(args, kwargs)` of `calls`: one INSERT, bells after commit.

        All or nothing: every call is checked before anything is stored, and an
        error names the item at fault. The rows go in one statement (several,
        in one transaction, past the database's limit of parameters), each task
        is announced by `task_enqueued`, and the queue's bells are rung together
        once the transaction commits (never if it rolls back).
        """
        return self._enqueue(task, calls, many=True)

    def _enqueue(self, task: Task, calls: Iterable[tuple[Any, Any]], many: bool) -> list[TaskResult]:
        self.validate_task(task)
        now = timezone.now()
        records = []
        for index, call in enumerate(calls):
            item = f" (item {index} of enqueue_many())" if many else ""
            if not (
                isinstance(call, (list, tuple)) and len(call) == 2
                and isinstance(call[0], (list, tuple)) and isinstance(call[1], dict)
            ):  # fmt: skip
                raise InvalidTask(f"Item {index} of enqueue_many() must be an (args, kwargs) pair: {call!r:.100}")
            records.append(self._record(task, *self._serializable(task, *call, item), now))
        if not records:
            return []
        insert(records)
        metrics.enqueued(task.queue_name, len(records))
        results = [to_task_result(record, task) for record in records]
        # Announced before the bell, so task_enqueued comes before task_started.
        for result in results:
            task_enqueued.send(type(self), task_result=result)
        # Inside atomic(), the rows are only real once committed: ring then, and
        # never if the transaction rolls back (the rows go with it).
        ring_on_commit(task.queue_name, self.channel_layer_alias, len(records))
        return results

    def _record(self, task: Task, args: list, kwargs: dict, now: Any) -> TaskRecord:
        return TaskRecord(
            task_path=task.module_path,
            backend=self.alias,
            queue_name=task.queue_name,
            priority=task.priority,
            args=args,
            kwargs=kwargs,
            enqueued_at=now,
            run_after=task.run_after,
            available_at=task.run_after or now,
            max_attempts=getattr(task, "max_attempts", 1),
            retry_backoff=getattr(task, "retry_backoff", 1.0),
            retry_backoff_max=getattr(task, "retry_backoff_max", 300.0),
        )

    def enqueue_unique(
        self, task: Task, key: str, args: Any, kwargs: Any, mode: str, while_running: bool | None
    ) -> TaskResult:
        """See enqueue_unique(). One INSERT ... ON CONFLICT against the partial unique
        index: the database, not a read-then-write here, decides who holds the key."""
        self.validate_task(task)
        if mode not in (KEEP, REPLACE):
            raise InvalidTask(f"enqueue_unique() mode must be {KEEP!r} or {REPLACE!r}, not {mode!r}.")
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise InvalidTask(f"A unique key must be a string of 1 to 200 characters, not {key!r:.100}.")
        if mode == REPLACE and while_running:
            raise InvalidTask("mode='replace' holds its key only while the task waits (while_running=False).")
        if not (isinstance(args, (list, tuple)) and isinstance(kwargs, dict)):
            raise InvalidTask("enqueue_unique() takes args as a list or tuple and kwargs as a dict.")
        record = self._record(task, *self._serializable(task, args, kwargs, ""), timezone.now())
        record.unique_key = key
        record.unique_while_running = mode == KEEP and while_running is not False
        fields = TaskRecord._meta.concrete_fields
        params = [field.get_db_prep_save(getattr(record, field.attname), connection) for field in fields]
        # The holder may finish between our conflict and our read of it: then the
        # key is free and the INSERT goes in on the next round.
        for _ in range(5):
            with connection.cursor() as cursor:
                cursor.execute(_upsert_sql(connection.vendor, mode), params)
                row = cursor.fetchone()
            if row is not None and str(row[0]) == str(record.pk):
                result = to_task_result(record, task)
                task_enqueued.send(type(self), task_result=result)
                ring_on_commit(task.queue_name, self.channel_layer_alias)
                logger.info("event=task_enqueued_unique task=%s key=%s mode=%s outcome=new", record.pk, key, mode)
                return result
            if row is not None:  # replaced the waiting holder's arguments and run_after
                ring_on_commit(task.queue_name, self.channel_layer_alias)
                holder = TaskRecord.objects.filter(pk=row[0]).first()
                outcome = "replaced"
            else:
                holder = TaskRecord.objects.filter(unique_key=key, status__in=UNFINISHED, cancel_requested=False).first()
                outcome = "kept"
            if holder is not None:
                logger.info("event=task_enqueued_unique task=%s key=%s mode=%s outcome=%s", holder.pk, key, mode, outcome)
                return to_task_result(holder)
        raise RuntimeError(f"Task key {key!r} kept changing hands; nothing enqueued.")

    def get_result(self, result_id: str) -> TaskResult:
        try:
            record = TaskRecord.objects.get(pk=result_id)
        except (TaskRecord.DoesNotExist, ValidationError) as exc:  # ValidationError: not a UUID
            raise TaskResultDoesNotExist(result_id) from exc
        return to_task_result(record)

    async def aget_result(self, result_id: str) -> TaskResult:
        try:
            record = await TaskRecord.objects.aget(pk=result_id)
        except (TaskRecord.DoesNotExist, ValidationError) as exc:
            raise TaskResultDoesNotExist(result_id) from exc
        return to_task_result(record)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = []
        for queue in sorted(self.queues):
            if not CHANNEL_NAME.match(queue):
                errors.append(
                    checks.Error(
                        f"Queue {queue!r} of task backend {self.alias!r} is not a valid channel name.",
                        hint="Queue names are channel names: letters, digits, '-', '_' or '.', under 100.",
                        id="tasks.E001",
                    )
                )
        try:
            self.timeouts
        except ValueError as exc:
            errors.append(checks.Error(f"Task time limits: {exc}", hint="See README, Time limits.", id="tasks.E020"))
        if get_channel_layer(self.channel_layer_alias) is None:
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r} needs channel layer {self.channel_layer_alias!r}.",
                    hint="Configure CHANNEL_LAYERS.",
                    id="tasks.E002",
                )
            )
        return errors

    @staticmethod
    def _serializable(task: Task, args: Any, kwargs: Any, item: str) -> tuple[list, dict]:
        """Arguments as they will reach the worker, or a clear error now rather than there."""
        try:
            return to_json(args), to_json(kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidTask(
                f"Arguments of task {task.module_path}{item} must be JSON-serializable: {exc}"
            ) from exc


def is_time_limit(seconds: Any) -> bool:
    """Whether `seconds` can be a time limit: a finite number above 0 (not a bool)."""
    return isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 < seconds < float("inf")


def parse_timeouts(value: str | dict, queues: Iterable[str]) -> dict[str, float]:
    """`600` (every queue) or `compute=3600,notifications=120`, or such a dict, as {queue or "*": seconds}.

    ValueError, saying what is wrong, for anything else, or a queue that is not one of `queues`.
    """
    if isinstance(value, str):
        text, value = value, {}
        for part in filter(None, (part.strip() for part in text.split(","))):
            name, _, seconds = part.rpartition("=")
            try:
                value[name.strip() or "*"] = float(seconds)
            except ValueError:
                raise ValueError(f"time limits take SECONDS or queue=SECONDS,queue=SECONDS; got {text!r}") from None
    found = {}
    for name, seconds in value.items():
        if name != "*" and name not in queues:
            raise ValueError(f"a time limit names {name!r}, which is not a task queue")
        if not is_time_limit(seconds):
            raise ValueError(f"the time limit of {name!r} must be a finite number of seconds above 0; got {seconds!r}")
        found[name] = float(seconds)
    return found


def enqueue_many(task: Task, calls: Iterable[tuple[Any, Any]]) -> list[TaskResult]:
    """`task.enqueue(*args, **kwargs)` for each `(args, kwargs)` of `calls`, in one INSERT.

    For fan-outs (one delivery per user mentioned, an export's follow-ups): see
    ChannelsBackend.enqueue_many().
    """
    backend = task.get_backend()
    if not isinstance(backend, ChannelsBackend):
        raise InvalidTask(f"enqueue_many() needs a ChannelsBackend, not {type(backend).__name__}.")
    return backend.enqueue_many(task, calls)


KEEP, REPLACE = "keep", "replace"
UNFINISHED = ["READY", "RUNNING"]


def enqueue_unique(
    task: Task, key: str, args: Any = (), kwargs: Any = None, *, mode: str = KEEP, while_running: bool | None = None
) -> TaskResult:
    """Enqueue `task(*args, **kwargs)` unless a task holding `key` is unfinished; the task holding it.

    - mode="keep": an unfinished task with this key stays as it is and is
      returned; this call enqueues nothing. The key is held from enqueue until
      the task finishes (SUCCESSFUL or FAILED) or is cancelled, retries included; with
      while_running=False it is given up when the task starts, so one more may
      wait while it runs.
    - mode="replace" (a debounce): a task with this key that is still waiting
      takes this call's arguments, priority and run_after (`task.using(...)`)
      instead of its own; the key is given up when the task starts.

    A database constraint (a partial unique index) enforces it, so calls racing
    from any number of processes leave one task. Check the returned
    TaskResult's id to learn whether this call made a new one.
    """
    backend = task.get_backend()
    if not isinstance(backend, ChannelsBackend):
        raise InvalidTask(f"enqueue_unique() needs a ChannelsBackend, not {type(backend).__name__}.")
    return backend.enqueue_unique(task, key, args, {} if kwargs is None else kwargs, mode, while_running)


async def aenqueue_unique(
    task: Task, key: str, args: Any = (), kwargs: Any = None, *, mode: str = KEEP, while_running: bool | None = None
) -> TaskResult:
    """enqueue_unique() from async code (a consumer), on the thread that holds its database connection."""
    return await sync_to_async(enqueue_unique, thread_sensitive=True)(
        task, key, args, kwargs, mode=mode, while_running=while_running
    )


@functools.lru_cache(maxsize=8)
def _upsert_sql(vendor: str, mode: str) -> str:
    """INSERT one row, or on a key already held: nothing (keep), or the waiting holder updated (replace).

    The conflict target repeats the partial index's predicate, as Django
    wrote it in the index, so both PostgreSQL and SQLite pick tasks_unique_key.
    """
    table = connection.ops.quote_name(TaskRecord._meta.db_table)
    (constraint,) = [c for c in TaskRecord._meta.constraints if c.name == "tasks_unique_key"]
    target = f"(unique_key) WHERE {constraint._get_condition_sql(TaskRecord, connection.schema_editor())}"
    if mode == KEEP:
        action = "DO NOTHING"
    else:
        sets = ", ".join(f"{column} = excluded.{column}" for column in ("args", "kwargs", "priority", "run_after", "available_at"))
        action = f"DO UPDATE SET {sets} WHERE {table}.status = 'READY'"
    return f"{_insert_sql(vendor, 1)} ON CONFLICT {target} {action} RETURNING id"


def insert(records: list[TaskRecord]) -> None:
    """INSERT these new rows in one statement (on SQLite, one per batch it allows, atomically).

    Plain SQL sent to the cursor: through the ORM, building the INSERT of this
    27-column model costs more than the round trip it makes. On PostgreSQL
    several rows travel as one array per column, so the statement's text is
    the same for any number of rows and PostgreSQL prepares it once (one row
    goes as plain values: cheaper to send than 27 arrays of one).
    """
    fields = TaskRecord._meta.concrete_fields
    columns = [[field.get_db_prep_save(getattr(record, field.attname), connection) for record in records] for field in fields]
    if connection.vendor == "postgresql" and len(records) > 1:
        with connection.cursor() as cursor:
            cursor.execute(_insert_sql(connection.vendor, 0), columns)
        return
    batch = connection.ops.bulk_batch_size(fields, records) or len(records)
    with transaction.atomic(savepoint=False) if batch < len(records) else contextlib.nullcontext():
        with connection.cursor() as cursor:
            for start in range(0, len(records), batch):
                rows = zip(*(column[start : start + batch] for column in columns))
                params = [value for row in rows for value in row]
                cursor.execute(_insert_sql(connection.vendor, len(params) // len(fields)), params)


@functools.lru_cache(maxsize=16)
def _insert_sql(vendor: str, rows: int) -> str:
    """The INSERT of `rows` rows; with `rows` 0, of any number, as arrays (PostgreSQL only)."""
    fields = TaskRecord._meta.concrete_fields
    table = connection.ops.quote_name(TaskRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    if rows == 0:
        arrays = ", ".join(f"%s::{field.cast_db_type(connection)}[]" for field in fields)
        return f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays})"
    row = f"({', '.join(['%s'] * len(fields))})"
    return f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * rows)}"


def to_json(value: Any) -> Any:
    """`value` as the database will store it; TypeError/ValueError if it cannot be.

    NaN and infinities are refused too: PostgreSQL's jsonb has no place for them.
    """
    value = normalize_json(value)
    json.dumps(value, allow_nan=False)
    return value


def task_queues() -> set[str]:
    """Every queue name of every ChannelsBackend: the channels that carry bells."""
    return {
        queue
        for alias in settings.TASKS
        if isinstance(backend := task_backends[alias], ChannelsBackend)
        for queue in backend.queues
    }


def to_task_result(record: TaskRecord, task: Task | None = None) -> TaskResult:
    """The django.tasks view of a stored task."""
    if task is None:
        task = load_task(record.task_path).using(
            priority=record.priority, queue_name=record.queue_name, run_after=record.run_after,
            backend=record.backend,
        )
    result = TaskResult(
        task=task,
        id=str(record.id),
        status=record.status,
        enqueued_at=record.enqueued_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        last_attempted_at=record.last_attempted_at,
        args=record.args,
        kwargs=record.kwargs,
        backend=record.backend,
        errors=[TaskError(**error) for error in record.errors],
        worker_ids=list(record.worker_ids),
    )
    object.__setattr__(result, "_return_value", record.return_value)
    return result


def load_task(task_path: str) -> Task:
    """The Task object a stored path names; ImportError with the path when it is gone."""
    try:
        task = import_string(task_path)
    except ImportError as exc:
        raise ImportError(f"Task {task_path!r} cannot be imported: {exc}") from exc
    if not isinstance(task, Task):
        raise ImportError(f"{task_path!r} is not a task (decorate it with @task).")
    return task


# Bells owed by this thread's enqueues, rung together after a commit.
_owed = threading.local()


def bell_layer_alias() -> str:
    """The channel layer alias bells ring on: the default task backend's CHANNEL_LAYER option."""
    return getattr(task_backends["default"], "channel_layer_alias", "default")


def ring_on_commit(queue_name: str, layer_alias: str, count: int = 1) -> None:
    """Ring `count` bells for `queue_name` once the current transaction commits (at once outside one).

    Each task owes a bell, so that as many idle workers wake as there are new
    tasks (_send_bell() leaves out those no worker could answer). A
    transaction's bells are rung together by the first of its on_commit
    callbacks, and sent by the bell loop while the caller goes on: the
    committed rows are what matters, and a bell that never arrives costs
    latency only. Bells owed by a transaction that rolled back are rung with
    the next commit: a spare bell costs one empty claim.
    """
    bells = _owed.__dict__.setdefault("bells", collections.Counter())
    bells[(queue_name, layer_alias)] += count
    transaction.on_commit(_ring_owed)


def _ring_owed() -> None:
    bells = _owed.__dict__.pop("bells", None)
    if bells:  # else an earlier callback of the same commit rang them
        _ring_from_sync(bells, wait=False)


def ring(queue_name: str, layer_alias: str | None = None) -> None:
    """Tell the workers of `queue_name` that it has work, from sync code. Never raises.

    Returns once the bell is sent (a worker handing tasks back exits right
    after). A lost bell costs latency, not a task: workers also look at the
    database when no bell has come for a while.
    """
    _ring_from_sync({(queue_name, layer_alias or bell_layer_alias()): 1}, wait=True)


async def aring(queue_name: str, layer_alias: str | None = None) -> None:
    """See ring()."""
    await _send_bell(get_channel_layer(layer_alias or bell_layer_alias()), queue_name)


def _ring_from_sync(bells: dict[tuple[str, str], int], wait: bool) -> None:
    """Ring {(queue, layer alias): count} bells from sync code; with `wait`, return once sent.

    The in-memory layer's receivers wait on the loop that serves this process
    (runserver's): async_to_sync rings there. For any other layer,
    async_to_sync outside a served thread (a shell, a script, a management
    command) would make a new event loop, and channels-redis a new Redis
    connection, for every call; a loop of our own that lives as long as the
    process rings instead, on one connection.
    """
    local = {key: n for key, n in bells.items() if isinstance(get_channel_layer(key[1]), InMemoryChannelLayer)}
    remote = {key: n for key, n in bells.items() if key not in local}
    if local:
        try:
            async_to_sync(_ring_all)(local, get_channel_layer)
        except RuntimeError:  # called from inside an event loop's own thread
            logger.error("event=bell_failed queues=%s reason=sync_ring_in_event_loop_thread", sorted(local))
    if remote and wait:
        asyncio.run_coroutine_threadsafe(_ring_all(remote, _bell_layer), bell_loop()).result(timeout=10)
    elif remote:
        _post_bells(remote)


async def _ring_all(bells: dict[tuple[str, str], int], layer_for) -> None:
    for (queue_name, layer_alias), count in bells.items():
        await _send_bell(layer_for(layer_alias), queue_name, count)


# A queue's channel that holds a bell already gets no more: Redis hands a bell
# to a worker blocked on the channel (BZPOPMIN) as soon as the command that
# added it ends, before any other command, so a bell still there means that no
# worker is waiting on it. Each worker is then running tasks, and claims again
# until the queue is empty before it listens, or is on its way to listen, and
# takes the waiting bell first. Whoever takes that bell takes it after this
# commit, and claims after taking it: the new task is seen either way.
_RING_IF_QUIET = """
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return #ARGV - 2
"""


async def _send_bell(layer, queue_name: str, count: int = 1) -> None:
    try:
        if isinstance(layer, RedisChannelLayer) and layer.ring_size == 1:
            # channels-redis' own send is four round trips; this is one.
            bells = [layer.serialize({"type": "task.ready"}) for _ in range(min(count, layer.get_capacity(queue_name)))]
            key = layer.prefix + queue_name
            if not await layer.connection(0).eval(_RING_IF_QUIET, 1, key, time.time(), int(layer.expiry), *bells):
                logger.debug("event=bell_skipped queue=%s reason=bell_waiting", queue_name)
        else:  # the in-memory layer, or bells sharded over several Redis servers
            for _ in range(count):
                await layer.send(queue_name, {"type": "task.ready"})
    except ChannelFull:
        logger.debug("event=bell_dropped queue=%s reason=channel_full", queue_name)
    except Exception as exc:  # Redis down, say: the task is safe in the database.
        logger.warning("event=bell_failed queue=%s error=%r", queue_name, exc)
        metrics.bell_failed(queue_name)


# Bells rung from sync code and not sent yet, and whether the bell loop is sending them:
# callers go on at once, and what piles up meanwhile goes out together.
_unsent: collections.Counter = collections.Counter()
_unsent_lock = threading.Lock()
_all_sent = threading.Event()
_all_sent.set()


def _post_bells(bells: dict[tuple[str, str], int]) -> None:
    with _unsent_lock:
        _unsent.update(bells)
        if not _all_sent.is_set():
            return  # the sender is running and will take these too
        _all_sent.clear()
    asyncio.run_coroutine_threadsafe(_send_unsent(), bell_loop())


async def _send_unsent() -> None:
    bells: dict = {}
    try:
        while True:
            with _unsent_lock:
                bells = dict(_unsent)
                _unsent.clear()
                if not bells:
                    _all_sent.set()
                    return
            await _ring_all(bells, _bell_layer)
    except BaseException:
        logger.exception("event=bell_failed queues=%s", sorted(queue for queue, _ in bells))
        with _unsent_lock:
            _all_sent.set()
        raise


@atexit.register
def _flush_bells() -> None:
    """A script that enqueues and exits still rings (bounded: a bell is only latency)."""
    _all_sent.wait(timeout=5)


_bell_loop: asyncio.AbstractEventLoop | None = None
_bell_loop_lock = threading.Lock()
_bell_layers: dict[str, Any] = {}


def bell_loop() -> asyncio.AbstractEventLoop:
    """This process's loop for bells rung from sync code (started on first use)."""
    global _bell_loop
    with _bell_loop_lock:
        if _bell_loop is None or _bell_loop.is_closed():
            _bell_loop = asyncio.new_event_loop()
            threading.Thread(target=_bell_loop.run_forever, name="parley-bells", daemon=True).start()
        return _bell_loop


def _bell_layer(alias: str):
    """The bell loop's own layer instance (used on that loop only).

    channels-redis' flush() closes the connections of every loop from the
    caller's loop; the shared instance's flush must not reach into ours.
    """
    if alias not in _bell_layers:
        _bell_layers[alias] = channel_layers.make_backend(alias)
    return _bell_layers[alias]
