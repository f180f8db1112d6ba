"""Parley's `django.tasks` backend: the database holds each task, the channel layer rings the bell."""

import asyncio
import collections
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from django.conf import settings
from django.core import checks
from django.core.exceptions import ValidationError
from django.db import transaction
from django.tasks import task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskError, TaskResult
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from .models import TaskRecord

logger = logging.getLogger(__name__)

# What channels accepts as a channel name (channels.layers.BaseChannelLayer).
CHANNEL_NAME = re.compile(r"^[a-zA-Z\d\-_.]{1,99}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ParleyTask(Task):
    """A django.tasks Task with Parley's retry policy, set on @task.

    `@task(queue_name="notifications", max_attempts=5, retry_backoff=2.0)` retries a
    failing task up to 5 attempts in all, waiting about 2 s, 4 s, 8 s, ... (+-20%
    jitter, capped at `retry_backoff_max`) between them.
    """

    max_attempts: int = 1
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0


class ChannelsBackend(BaseTaskBackend):
    task_class = ParleyTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.channel_layer_alias = self.options.get("CHANNEL_LAYER", "default")

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if isinstance(task, ParleyTask):
            if int(task.max_attempts) != task.max_attempts or task.max_attempts < 1:
                raise InvalidTask("max_attempts must be a whole number of at least 1.")
            if task.retry_backoff < 0 or task.retry_backoff_max < 0:
                raise InvalidTask("retry_backoff and retry_backoff_max must not be negative.")

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        args, kwargs = self._serializable(task, args, kwargs)
        now = timezone.now()
        record = TaskRecord.objects.create(
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
        result = to_task_result(record, task)
        # Announced before the bell, so task_enqueued comes before task_started.
        task_enqueued.send(type(self), task_result=result)
        # Inside atomic(), the row is only real once committed: ring then, and
        # never if the transaction rolls back (the row goes with it).
        ring_on_commit(record.queue_name, self.channel_layer_alias)
        return result

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
    def _serializable(task: Task, args: Any, kwargs: Any) -> tuple[list, dict]:
        """Arguments as they will reach the worker, or a clear error now rather than there."""
        try:
            return to_json(args), to_json(kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidTask(
                f"Arguments of task {task.module_path} must be JSON-serializable: {exc}"
            ) from exc


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


def ring_on_commit(queue_name: str, layer_alias: str) -> None:
    """Ring one bell for `queue_name` once the current transaction commits (at once outside one).

    Each enqueue owes a bell, so that as many idle workers wake as there are
    new tasks. A transaction's bells are rung together by the first of its
    on_commit callbacks, from one event loop, rather than one loop and Redis
    connection per task: a transaction that enqueues thousands of tasks would
    otherwise stall its commit for seconds. Bells owed by a transaction that
    rolled back are rung with the next commit: a spare bell costs one empty claim.
    """
    bells = _owed.__dict__.setdefault("bells", collections.Counter())
    bells[(queue_name, layer_alias)] += 1
    transaction.on_commit(_ring_owed)


def _ring_owed() -> None:
    bells = _owed.__dict__.pop("bells", None)
    if bells:  # else an earlier callback of the same commit rang them
        _ring_from_sync(bells)


def ring(queue_name: str, layer_alias: str | None = None) -> None:
    """Tell the workers of `queue_name` that it has work, from sync code. Never raises.

    A lost bell costs latency, not a task: workers also look at the database
    when no bell has come for a while.
    """
    _ring_from_sync({(queue_name, layer_alias or bell_layer_alias()): 1})


async def aring(queue_name: str, layer_alias: str | None = None) -> None:
    """See ring()."""
    await _send_bell(get_channel_layer(layer_alias or bell_layer_alias()), queue_name)


def _ring_from_sync(bells: dict[tuple[str, str], int]) -> None:
    """Ring {(queue, layer alias): count} bells from sync code.

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
    if remote:
        asyncio.run_coroutine_threadsafe(_ring_all(remote, _bell_layer), bell_loop()).result(timeout=10)


async def _ring_all(bells: dict[tuple[str, str], int], layer_for) -> None:
    for (queue_name, layer_alias), count in bells.items():
        for _ in range(count):
            await _send_bell(layer_for(layer_alias), queue_name)


async def _send_bell(layer, queue_name: str) -> None:
    try:
        await layer.send(queue_name, {"type": "task.ready"})
    except ChannelFull:
        logger.debug("event=bell_dropped queue=%s reason=channel_full", queue_name)
    except Exception as exc:  # Redis down, say: the task is safe in the database.
        logger.warning("event=bell_failed queue=%s error=%r", queue_name, exc)


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
