"""The process behind `manage.py runworker`: channels' Worker, made a safe task runner."""

import asyncio
import itertools
import logging
import os
import queue
import signal
import socket
import sys
import threading
import uuid
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime
from inspect import iscoroutinefunction
from pathlib import Path

from channels.db import database_sync_to_async
from channels.worker import Worker
from django.conf import settings
from django.core import checks
from django.db import connections
from django.tasks.base import Task
from django.utils import timezone
from django.utils.crypto import get_random_string

from . import metrics, registry, runner, schedules
from .backends import aring, ring, task_queues
from .models import TaskRecord
from .monitor import paused_queues

logger = logging.getLogger(__name__)


def parse_concurrency(text: str) -> dict[str, int]:
    """`8` (every queue) or `notifications=16,compute=1` as {queue: slots}, `*` for every queue.

    ValueError, saying what is wrong, for anything else.
    """
    found: dict[str, int] = {}
    for part in text.split(","):
        name, equals, count = part.strip().rpartition("=")
        if not count.strip().isdigit() or int(count) < 1 or (equals and not name.strip()):
            raise ValueError(f"concurrency takes N or queue=N,queue=N with N >= 1; got {text!r}")
        found[name.strip() or "*"] = int(count)
    return found


def slots_per_queue(queues: list[str], override: str = "") -> dict[str, int]:
    """Slots per queue: TASKS OPTIONS["CONCURRENCY"], then TASKS_CONCURRENCY, then `override`
    (runworker --concurrency). A queue named by none gets one slot."""
    slots = dict.fromkeys(queues, 1)
    for layer in (settings.TASKS["default"]["OPTIONS"]["CONCURRENCY"], settings.TASKS_CONCURRENCY, override):
        if not layer:
            continue
        found = parse_concurrency(layer) if isinstance(layer, str) else layer
        for name, count in found.items():
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"concurrency of queue {name!r} must be an integer >= 1; got {count!r}")
            if name == "*":
                slots = dict.fromkeys(slots, count)
            elif name not in task_queues():
                raise ValueError(f"concurrency names {name!r}, which is not a task queue")
            elif name in slots:
                slots[name] = count
    return slots


def check_slots(app_configs, **kwargs) -> list[checks.Error]:
    """System check: bad CONCURRENCY or TASKS_CONCURRENCY stops every command, saying why."""
    try:
        slots_per_queue(list(task_queues()))
    except ValueError as exc:
        return [checks.Error(f"Task slots: {exc}", hint="See README, Slots.", id="tasks.E001")]
    async_slots = settings.TASKS["default"]["OPTIONS"]["ASYNC_CONCURRENCY"]
    if not isinstance(async_slots, int) or async_slots < 1:
        return [checks.Error(f"ASYNC_CONCURRENCY must be an integer >= 1; got {async_slots!r}", id="tasks.E002")]
    return []


class SlotThreads(Executor):
    """The threads that run a queue's sync tasks, each with its own database connection.

    A thread that waits longer than the connection's CONN_MAX_AGE for work
    closes its connection, so a quiet worker does not hold one per slot.
    """

    def __init__(self, count: int, name: str) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.name = name
        self.started = itertools.count()
        self.threads: list[threading.Thread] = []
        # Threads stuck in a task given up on at its time limit (retire()).
        self.retired: set[threading.Thread] = set()
        for _ in range(count):
            self.add_thread()

    def add_thread(self) -> None:
        max_age = settings.DATABASES["default"].get("CONN_MAX_AGE", 0)
        thread = threading.Thread(
            target=self.serve, args=(max_age,), name=f"{self.name}-{next(self.started)}", daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def retire(self, thread: threading.Thread) -> None:
        """`thread` is stuck in a task given up on: a new thread takes its place; it ends if ever it returns."""
        self.retired.add(thread)
        self.threads.remove(thread)
        self.add_thread()

    def stuck(self) -> list[threading.Thread]:
        """Retired threads still in their task: what only a fresh process gets rid of."""
        return [thread for thread in list(self.retired) if thread.is_alive()]

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self.jobs.put((future, fn, args, kwargs))
        return future

    def serve(self, max_age: float | None) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=max_age)
            except queue.Empty:
                connections.close_all()
                job = self.jobs.get()
            if job is None:
                connections.close_all()
                return
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
            if threading.current_thread() in self.retired:  # back from a task given up on: replaced already
                connections.close_all()
                self.retired.discard(threading.current_thread())
                return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self.threads:
            self.jobs.put(None)


class Slot:
    """One running task's place in its queue: a thread (a sync task) or a coroutine (async).

    A slot may hold both for a moment: a slot about to claim its next task
    holds what that task may need, whichever kind it is, and gives back the
    other once it knows (see runner.drain_sync). Whatever it still holds when
    it ends goes back to the queue.
    """

    def __init__(self, state: "QueueState", sync: int = 0, async_: int = 0) -> None:
        self.state = state
        self.held = {"sync": sync, "async": async_}
        self.task: uuid.UUID | None = None  # the task in hand, whose lease the heartbeat renews
        # A sync task in hand with a time limit: (record, task, deadline, thread), for stop_overdue().
        self.attempt: tuple | None = None
        self.abandoned = False  # its thread was given up on at a time limit: the slot is not its own any more
        self.lock = threading.Lock()
        self.life: asyncio.Task | None = None  # the coroutine serving this slot (QueueState.run)

    def begin(self, record: TaskRecord, task: Task, deadline: datetime | None) -> None:
        """A sync task starts in this slot, on the calling thread."""
        with self.lock:
            self.task = record.pk
            if deadline is not None:
                self.attempt = (record, task, deadline, threading.current_thread())

    def end(self) -> bool:
        """The sync task in hand returned; False if it was given up on meanwhile (abandon())."""
        with self.lock:
            self.task = self.attempt = None
            return not self.abandoned

    def abandon(self, attempt: tuple) -> bool:
        """Give up on `attempt`, the sync task in hand, if it still is; from the worker's watch."""
        with self.lock:
            if self.attempt is not attempt:
                return False
            self.abandoned = True
            self.task = self.attempt = None  # no more heartbeats for it
            return True

    def reserve(self, kind: str) -> bool:
        with self.state.lock:
            if self.state.busy[kind] >= self.state.limits[kind]:
                return False
            had_room = self.state.free_locked() > 0
            self.state.busy[kind] += 1
            self.held[kind] += 1
            wake = had_room and self.state.free_locked() == 0  # the listener must stop taking bells
        if wake:
            self.state.wake()
        return True

    def release(self, kind: str) -> None:
        with self.state.lock:
            full = self.state.free_locked() == 0
            self.state.busy[kind] -= 1
            self.held[kind] -= 1
            # Wake the loop only when the listener or a shutdown has something to
            # learn: a thread draining a queue passes here twice per task.
            wake = (full and self.state.free_locked() > 0) or not any(self.state.busy.values())
        if wake:
            self.state.wake()

    def release_all(self) -> None:
        for kind, count in self.held.items():
            for _ in range(count):
                self.release(kind)

    def ran_dry(self) -> None:
        """The queue had nothing due: note when its next deferred task is (from a slot thread)."""
        self.state.next_due = runner.next_due([self.state.name])


@dataclass
class QueueState:
    """A queue's slots in this process: what its listener, its consumer and its slots share.

    `limits["sync"]` threads run its sync tasks, up to `limits["async"]`
    coroutines its async ones; `busy` counts both, reservations included.
    """

    name: str
    worker_id: str
    limits: dict[str, int]
    threads: SlotThreads
    loop: asyncio.AbstractEventLoop
    busy: dict[str, int] = field(default_factory=lambda: {"sync": 0, "async": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)
    slots: set[Slot] = field(default_factory=set)
    claiming: bool = False  # a bell is with the consumer: take no other until it has claimed
    paused: bool = False  # tasks.monitor.pause(): take no bell and claim nothing until resumed
    next_due: datetime | None = None  # the earliest deferred task, when the queue last ran dry
    room: asyncio.Event = field(default_factory=asyncio.Event)  # free slots, no claim under way
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # nothing running or being claimed
    # Paths of the async tasks this queue has run: what coroutine slots may claim with no thread free.
    async_paths: set[str] = field(default_factory=set)
    recorder: "Recorder" = field(init=False)

    def __post_init__(self) -> None:
        self.recorder = Recorder(self)

    def free(self) -> int:
        """Tasks this process can start now: each may turn out sync or async."""
        with self.lock:
            return self.free_locked()

    def free_locked(self) -> int:
        return min(self.limits[kind] - self.busy[kind] for kind in self.busy)

    def reserve(self, count: int) -> int:
        """Reserve up to `count` slots of each kind for a claim; how many."""
        with self.lock:
            count = min(count, *(self.limits[kind] - self.busy[kind] for kind in self.busy))
            for kind in self.busy:
                self.busy[kind] += count
            return count

    def changed(self) -> None:
        """Recompute the listener's and the shutdown's events (on the loop)."""
        with self.lock:
            free = self.free_locked()
            running = any(self.busy.values())
        room = free > 0 and not self.claiming and not self.paused
        self.room.set() if room else self.room.clear()
        self.idle.clear() if running or self.claiming else self.idle.set()

    def wake(self) -> None:
        """changed(), from any thread."""
        self.loop.call_soon_threadsafe(self.changed)

    def running(self) -> list[uuid.UUID]:
        return [slot.task for slot in list(self.slots) if slot.task is not None]

    def note(self, claimed: tuple) -> bool:
        """Whether a claimed task (record, task, result) is async; if so, its path joins async_paths."""
        if iscoroutinefunction(claimed[1].func):
            self.async_paths.add(claimed[0].task_path)
            return True
        return False

    def start(self, slot: Slot, claimed: tuple) -> None:
        """Run a claimed task, and whatever its slot claims after it, in the background."""
        self.note(claimed)
        self.slots.add(slot)
        slot.life = asyncio.ensure_future(self.run(slot, claimed))

    def overdue(self) -> list[Slot]:
        """Slots whose sync task has passed its time limit."""
        now = timezone.now()
        return [slot for slot in list(self.slots) if (attempt := slot.attempt) is not None and attempt[2] <= now]

    def free_stuck(self, slot: Slot, thread: threading.Thread) -> None:
        """After stop_overdue(): the slot's places go back to the queue (its coroutine, which
        waits on the stuck thread, ends), and a new thread takes the stuck one's place."""
        slot.life.cancel()
        self.threads.retire(thread)
        logger.warning("event=slot_thread_stuck queue=%s worker=%s thread=%s", self.name, self.worker_id, thread.name)

    async def run(self, slot: Slot, claimed: tuple | None) -> None:
        """A slot's life: its task, then the next it claims when that ends, and so on.

        Sync tasks run on the queue's threads (runner.drain_sync, which claims
        the next as it records an outcome, in one statement); async ones on
        this loop, their outcomes recorded in batches (Recorder). Either kind
        may follow either.
        """
        queues, worker_id = [self.name], self.worker_id
        try:
            while True:
                if slot.held["sync"]:
                    claimed = await asyncio.wrap_future(
                        self.threads.submit(runner.drain_sync, queues, worker_id, slot, claimed)
                    )
                    slot.release("sync")
                    if claimed is None:
                        return
                record, task, result = claimed
                slot.task = record.pk
                try:
                    ended = await runner.run_async(record, task, result, worker_id)
                finally:
                    slot.task = None
                if ended is None:  # handed back
                    return
                # Recorded with other async slots' outcomes, in one statement that claims their next tasks.
                claimed = await self.recorder.record(slot, ended)
                if claimed is None:
                    return
        except Exception:
            logger.exception("event=slot_failed queue=%s worker=%s", self.name, worker_id)
        finally:
            slot.release_all()
            self.slots.discard(slot)


class Recorder:
    """Records a queue's async outcomes in batches, each with its slots' next claims.

    An async slot whose task ended hands its outcome here and waits. One batch
    at a time goes to a thread of the queue (its pool has one thread more than
    slots, for this): every outcome handed in meanwhile is recorded, and as many
    next tasks claimed as waiting slots could take, in one statement
    (runner.finish_and_start_many). Each waiting slot then gets a task to run,
    or None once the queue runs dry, the worker stops or the queue pauses.

    A claim may bring a sync task, so a slot claims any task only with a thread
    reserved; slots beyond the free threads claim, in a second statement, only
    tasks whose path this queue has seen to be async (QueueState.async_paths),
    after the first claim came back full. So the queue's many coroutine slots
    are not held to its few threads, and a sync task never waits for a thread
    while claimed: of two tasks of a mixed queue, the sync one may wait in the
    database for a thread while a lower-priority async one starts. A slot left
    without a task waits for the next batch while the last claims came back
    full (more may be due), and ends otherwise.
    """

    def __init__(self, state: "QueueState") -> None:
        self.state = state
        self.waiting: list[tuple[Slot, runner.Outcome | None, asyncio.Future]] = []
        self.recording = False

    async def record(self, slot: Slot, ended: runner.Outcome) -> tuple | None:
        """Record `ended`, the outcome of `slot`'s async task; the slot's next task
        (holding what it needs: a thread if sync), or None: the slot ends."""
        future = self.state.loop.create_future()
        self.waiting.append((slot, ended, future))
        if not self.recording:
            self.recording = True
            asyncio.ensure_future(self.drain())
        return await future

    async def drain(self) -> None:
        state = self.state
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                takers, coroutines = [], []  # slots claiming any task (a thread reserved), async ones only
                if not (runner.shutting_down.is_set() or state.paused):
                    takers = list(itertools.takewhile(lambda entry: entry[0].reserve("sync"), batch))
                    if state.async_paths:
                        coroutines = batch[len(takers):]
                outcomes = [ended for _, ended, _ in batch if ended is not None]
                try:
                    claimed, more = await asyncio.wrap_future(state.threads.submit(
                        runner.finish_and_start_many, outcomes, [state.name], state.worker_id, len(takers),
                        len(coroutines), sorted(state.async_paths),
                    ))  # fmt: skip
                except Exception as exc:  # the database is away, say: the slots end (QueueState.run logs it)
                    for slot, _, _ in takers:
                        slot.release("sync")
                    for _, _, future in batch:
                        future.set_exception(exc)
                    continue
                full = len(claimed) == len(takers) and len(more) == len(coroutines) and bool(takers or coroutines)
                given = [*claimed, *more]
                for index, (slot, _, future) in enumerate(batch):
                    one = given[index] if index < len(given) else None
                    if index < len(takers):
                        if one is not None and one[1] is not None and state.note(one):
                            slot.release("sync")  # an async task: the thread reserved goes back
                        elif one is not None and one[1] is not None:
                            slot.release("async")  # a sync task: it runs on the thread reserved
                        else:
                            slot.release("sync")
                    if one is not None and one[1] is not None:
                        future.set_result(one)
                    elif full:  # more may be due: this slot claims with the next batch
                        self.waiting.append((slot, None, future))
                    else:
                        future.set_result(None)
        finally:
            self.recording = False


class TaskWorker(Worker):
    """channels.worker.Worker with three changes for task queues' channels.

    - Slots: it runs up to N tasks of a queue at once (slots_per_queue()), and
      takes the next bell off a queue's channel only while that queue has a free
      slot, so a busy worker never sits on bells an idle one could answer
      (tasks spread over every worker with room).
    - Self-ringing: with no bell for `TASKS_POLL_INTERVAL` seconds (or when a
      deferred task falls due) it rings itself, so lost bells cost latency only.
    - Liveness: a heartbeat for its RUNNING tasks, a sweep that hands the tasks of
      dead workers to the living, and SIGTERM handling (see run()).

    Channels that are not task queues are served exactly as channels does.
    """

    def __init__(
        self, application, channels, channel_layer, max_applications=1000, concurrency: str = "",
        metrics_port: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(application, channels, channel_layer, max_applications)
        # Where this process serves its own metrics (runworker --metrics-port, else METRICS_PORT; 0: nowhere).
        self.metrics_port = settings.METRICS_PORT if metrics_port is None else metrics_port
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{get_random_string(6)}"
        self.queues = [channel for channel in channels if channel in task_queues()]
        self.slots = slots_per_queue(self.queues, concurrency)
        self.async_slots = settings.TASKS["default"]["OPTIONS"]["ASYNC_CONCURRENCY"]
        self.poll_interval = settings.TASKS_POLL_INTERVAL
        self.states: dict[str, QueueState] = {}
        self.paused: set[str] = set()
        self.stopping: asyncio.Event | None = None
        # Whether this worker is the process (runworker), free to start it again
        # afresh (recycle()), or a guest in another's (runserver's embedded worker).
        self.owns_process = False
        self.recycling = False
        self.started_at = timezone.now()

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT.

        The first signal stops taking work and lets running tasks finish (a task
        that reports progress hands itself back at its next report); the worker
        then exits. A second signal hands running tasks back to the queue, not
        failed, and exits at once: another worker runs them again.

        A worker left with a thread stuck in a task given up on at its time
        limit starts itself again once idle (recycle()): the same process
        (pid), a fresh image, so process managers that stop everything when one
        process exits (honcho, the Procfile) see nothing.
        """
        self.owns_process = True
        asyncio.run(self.serve_until_signalled())
        if self.recycling:
            logger.warning("event=worker_reexec worker=%s argv=%s", self.worker_id, sys.orig_argv)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            # The kernel closes every socket and file of this image (Python opens them
            # non-inheritable): the stuck thread's database connection goes with it,
            # and PostgreSQL rolls back whatever transaction it had open.
            os.execv(sys.executable, sys.orig_argv)

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        await self.arun()

    def on_signal(self, signum: int) -> None:
        if self.stopping is not None and (not self.stopping.is_set() or self.recycling):
            logger.info("event=worker_stopping worker=%s signal=%s", self.worker_id, signum)
            self.recycling = False  # asked to stop while recycling: stop, do not start again
            self.stopping.set()
            runner.shutting_down.set()
            return
        logger.warning("event=worker_forced_exit worker=%s signal=%s", self.worker_id, signum)
        # Database calls are not allowed on the event loop's thread, and the
        # loop must not run on: hand back from a thread, bounded, then go.
        handing_back = threading.Thread(target=self.hand_back_all, daemon=True)
        handing_back.start()
        handing_back.join(timeout=5)
        os._exit(1)

    def hand_back_all(self) -> None:
        """Give every task this worker holds back to its queue (not failed), and ring."""
        try:
            for queue in runner.hand_back(self.worker_id):
                ring(queue)
        except Exception:
            logger.exception("event=hand_back_failed worker=%s", self.worker_id)

    async def handle(self) -> None:
        self.stopping = asyncio.Event()
        if settings.SENTRY_DSN:
            # Errors of tasks nobody awaits reach Sentry too. Imported only then: the SDK
            # and what it imports weigh on every worker's memory (README.md, Slots).
            from sentry_sdk.integrations.asyncio import enable_asyncio_integration

            enable_asyncio_integration()
        logger.info(
            "event=worker_started worker=%s queues=%s channels=%s slots=%s async_slots=%s",
            self.worker_id, self.queues, self.channels,
            ",".join(f"{queue}={count}" for queue, count in self.slots.items()), self.async_slots,
        )  # fmt: skip
        self.paused = await database_sync_to_async(paused_queues)()  # before the first claim
        watching = asyncio.ensure_future(self.watch_pauses())
        metrics.SLOTS.sources.append(self.slot_usage)
        server = metrics.serve(self.metrics_port, settings.METRICS_ADDR) if self.metrics_port else None
        listeners = [
            asyncio.ensure_future(self.queue_listener(channel) if channel in self.queues else self.listener(channel))
            for channel in self.channels
        ]
        maintenance = asyncio.ensure_future(self.maintain())
        stopped = asyncio.ensure_future(self.stopping.wait())
        done, _ = await asyncio.wait([*listeners, stopped], return_when=asyncio.FIRST_COMPLETED)
        # A listener only returns by failing (the channel layer broke): re-raise it.
        for future in done:
            if future is not stopped:
                future.result()
        for listener in listeners:
            listener.cancel()
        # Let running tasks finish in every slot (or hand themselves back), beating all the while.
        await asyncio.gather(*(state.idle.wait() for state in self.states.values()))
        maintenance.cancel()
        watching.cancel()
        for state in self.states.values():
            state.threads.shutdown()
        try:
            await database_sync_to_async(registry.gone)(self.worker_id)
        except Exception:  # the database is away: the row goes once its beat is older than the lease
            logger.exception("event=worker_unregister_failed worker=%s", self.worker_id)
        metrics.SLOTS.sources.remove(self.slot_usage)
        if server is not None:
            server.shutdown()
        logger.info("event=worker_stopped worker=%s", self.worker_id)

    def slot_limits(self) -> dict[str, dict[str, int]]:
        """{queue: {"sync": threads, "async": coroutine slots}} of the queues this worker serves."""
        return {state.name: dict(state.limits) for state in list(self.states.values())}

    def slot_usage(self) -> list[tuple[str, dict[str, int], dict[str, int]]]:
        """(queue, slots busy by kind, slots by kind) of each served queue, for the metrics scrape."""
        usage = []
        for state in list(self.states.values()):
            with state.lock:
                usage.append((state.name, dict(state.busy), dict(state.limits)))
        return usage

    async def queue_listener(self, channel: str) -> None:
        """Take the queue's bells while it has free slots and no claim under way; with
        none free it takes none, so the bells go to workers that have."""
        loop = asyncio.get_running_loop()
        state = QueueState(
            name=channel, worker_id=self.worker_id, limits={"sync": self.slots[channel], "async": self.async_slots},
            threads=SlotThreads(self.slots[channel] + 1, f"parley-{channel}"), loop=loop, paused=channel in self.paused,
        )  # fmt: skip
        state.changed()
        self.states[channel] = state
        scope = {"type": "channel", "channel": channel, "parley.queue": state}
        while True:
            await state.room.wait()
            timeout = self.poll_interval
            if state.next_due is not None:
                timeout = max(0.0, min(timeout, (state.next_due - timezone.now()).total_seconds()))
            try:
                message = await asyncio.wait_for(self.channel_layer.receive(channel), timeout)
            except TimeoutError:
                message = {"type": "task.ready", "bell": "self"}
            except Exception as exc:  # Redis away: keep serving from the database
                logger.warning("event=bell_receive_failed queue=%s error=%r", channel, exc)
                await asyncio.sleep(self.poll_interval)
                message = {"type": "task.ready", "bell": "self"}
            state.claiming = True
            state.changed()
            await self.get_or_create_application_instance(channel, scope).put(message)

    async def application_exception(self, exception: BaseException, application_details: dict) -> None:
        """A queue's consumer died (channels logs why): let its listener go on."""
        await super().application_exception(exception, application_details)
        state = application_details["scope"].get("parley.queue")
        if state is not None:
            state.claiming = False
            state.changed()

    async def watch_pauses(self) -> None:
        """Learn which queues are paused every TASKS_POLL_INTERVAL (one small query for all
        queues), so a paused queue's claims stop within that, with nothing added to the claim."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self.paused = await database_sync_to_async(paused_queues)()
            except Exception:
                logger.exception("event=pause_check_failed worker=%s", self.worker_id)
                continue
            for name, state in self.states.items():
                if state.paused != (name in self.paused):
                    state.paused = name in self.paused
                    logger.info("event=queue_%s queue=%s worker=%s", "paused" if state.paused else "resumed", name, self.worker_id)
                    state.changed()

    async def maintain(self) -> None:
        """Heartbeat our tasks; rescue those of workers that stopped beating; fail late cancels;
        give up on sync tasks past their time limit; recycle once idle with a thread stuck;
        enqueue the schedules' due ticks (any worker may: each tick enqueues once)."""
        interval = runner.heartbeat_interval()
        while True:
            try:
                await self.enforce_time_limits()
                running = [task for state in self.states.values() for task in state.running()]
                await database_sync_to_async(runner.heartbeat)(self.worker_id, running)
                for queue in await database_sync_to_async(runner.reclaim_lost)():
                    await aring(queue)
                await database_sync_to_async(runner.fail_cancelled)()
                await database_sync_to_async(schedules.enqueue_due)()
                # Last: what only the monitor shows must never hold up the sweep.
                await database_sync_to_async(registry.beat)(self.worker_id, self.slot_limits(), self.started_at)
                self.recycle_if_stuck()
            except Exception:
                logger.exception("event=maintenance_failed worker=%s", self.worker_id)
            # Liveness for container probes (`manage.py tasks alive`): this loop
            # turned. A database outage fails fast and still turns it (restarting
            # the worker would not help); a loop or a call that hangs does not.
            if settings.TASKS_ALIVE_FILE:
                Path(settings.TASKS_ALIVE_FILE).touch()
            await asyncio.sleep(interval)

    async def enforce_time_limits(self) -> None:
        """Sync tasks past their limit: fail them, free their slots, replace their threads (runner.stop_overdue)."""
        for state in self.states.values():
            for slot in state.overdue():
                attempt = slot.attempt
                if attempt is not None and await database_sync_to_async(runner.stop_overdue)(slot, self.worker_id):
                    state.free_stuck(slot, attempt[3])

    def recycle_if_stuck(self) -> None:
        """Once idle with a thread still stuck in a task given up on, start afresh (see run()).

        Not before idle: the other slots' tasks finish undisturbed, and the stuck
        thread costs no slot meanwhile, only its memory and database connection.
        """
        stuck = [thread.name for state in self.states.values() for thread in state.threads.stuck()]
        if not stuck or not self.owns_process or self.stopping.is_set():
            return
        if all(state.idle.is_set() for state in self.states.values()):
            logger.warning("event=worker_recycling worker=%s stuck_threads=%s", self.worker_id, ",".join(stuck))
            self.recycling = True
            self.stopping.set()
            runner.shutting_down.set()

