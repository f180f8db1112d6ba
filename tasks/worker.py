"""The process behind `manage.py runworker`: channels' Worker, made a safe task runner."""

import asyncio
import logging
import os
import signal
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.worker import Worker
from django.conf import settings
from django.utils.crypto import get_random_string

from . import runner
from .backends import aring, ring, task_queues

logger = logging.getLogger(__name__)


@dataclass
class QueueState:
    """What a queue's listener and its consumer share (passed in the ASGI scope)."""

    name: str
    worker_id: str
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    running: uuid.UUID | None = None  # the task being run, whose lease the heartbeat renews
    next_due: float | None = None  # loop time of the earliest deferred task
    # The one thread that claims, runs and records this queue's sync tasks.
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "parley-queue"))


class TaskWorker(Worker):
    """channels.worker.Worker with three changes for task queues' channels.

    - Backpressure: it takes the next bell off a queue's channel only once that
      channel's consumer is idle, so a busy worker never sits on bells an idle
      one could answer (tasks spread over every idle worker).
    - Self-ringing: with no bell for `TASKS_POLL_INTERVAL` seconds (or when a
      deferred task falls due) it rings itself, so lost bells cost latency only.
    - Liveness: a heartbeat for its RUNNING tasks, a sweep that hands the tasks of
      dead workers to the living, and SIGTERM handling (see run()).

    Channels that are not task queues are served exactly as channels does.
    """

    def __init__(self, application, channels, channel_layer, max_applications=1000) -> None:
        super().__init__(application, channels, channel_layer, max_applications)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{get_random_string(6)}"
        self.queues = [channel for channel in channels if channel in task_queues()]
        self.poll_interval = settings.TASKS_POLL_INTERVAL
        self.states: dict[str, QueueState] = {}
        self.stopping: asyncio.Event | None = None

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT.

        The first signal stops taking work and lets running tasks finish (a task
        that reports progress hands itself back at its next report); the worker
        then exits. A second signal hands running tasks back to the queue, not
        failed, and exits at once: another worker runs them again.
        """
        asyncio.run(self.serve_until_signalled())

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        await self.arun()

    def on_signal(self, signum: int) -> None:
        if self.stopping is not None and not self.stopping.is_set():
            logger.info("event=worker_stopping worker=%s signal=%s", self.worker_id, signum)
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
        logger.info("event=worker_started worker=%s queues=%s channels=%s", self.worker_id, self.queues, self.channels)
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
        # Let running tasks finish (or hand themselves back), beating all the while.
        await asyncio.gather(*(state.idle.wait() for state in self.states.values()))
        maintenance.cancel()
        logger.info("event=worker_stopped worker=%s", self.worker_id)

    async def queue_listener(self, channel: str) -> None:
        state = QueueState(name=channel, worker_id=self.worker_id)
        state.idle.set()
        self.states[channel] = state
        scope = {"type": "channel", "channel": channel, "parley.queue": state}
        loop = asyncio.get_running_loop()
        while True:
            await state.idle.wait()
            timeout = self.poll_interval
            if state.next_due is not None:
                timeout = max(0.0, min(timeout, state.next_due - loop.time()))
            try:
                message = await asyncio.wait_for(self.channel_layer.receive(channel), timeout)
            except TimeoutError:
                message = {"type": "task.ready", "bell": "self"}
            except Exception as exc:  # Redis away: keep serving from the database
                logger.warning("event=bell_receive_failed queue=%s error=%r", channel, exc)
                await asyncio.sleep(self.poll_interval)
                message = {"type": "task.ready", "bell": "self"}
            state.idle.clear()
            await self.get_or_create_application_instance(channel, scope).put(message)

    async def application_exception(self, exception: BaseException, application_details: dict) -> None:
        """A queue's consumer died (channels logs why): let its listener go on."""
        await super().application_exception(exception, application_details)
        state = application_details["scope"].get("parley.queue")
        if state is not None:
            state.idle.set()

    async def maintain(self) -> None:
        """Heartbeat our tasks; rescue those of workers that stopped beating; fail late cancels."""
        interval = runner.heartbeat_interval()
        while True:
            try:
                running = [state.running for state in self.states.values() if state.running is not None]
                await database_sync_to_async(runner.heartbeat)(self.worker_id, running)
                for queue in await database_sync_to_async(runner.reclaim_lost)():
                    await aring(queue)
                await database_sync_to_async(runner.fail_cancelled)()
            except Exception:
                logger.exception("event=maintenance_failed worker=%s", self.worker_id)
            await asyncio.sleep(interval)

