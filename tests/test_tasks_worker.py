"""TaskWorker serving the compute queue inside the test's event loop (as the embedded runserver does)."""

import asyncio
import time

import pytest
from channels.routing import get_default_application
from django.core.management import CommandError, call_command
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone

from tasks.models import TaskRecord
from tasks.worker import TaskWorker, check_slots, slots_per_queue
from tests import sample_tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def worker(task_layer):
    worker = TaskWorker(application=get_default_application(), channels=["compute"], channel_layer=task_layer)
    serving = asyncio.create_task(worker.handle())
    yield worker
    worker.stopping.set()  # what the first SIGTERM does, minus the process-wide flag
    await asyncio.wait_for(serving, 10)
    for instance in worker.application_instances.values():
        instance["future"].cancel()


async def finished(result_id: str, timeout: float) -> TaskRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = await TaskRecord.objects.aget(pk=result_id)
        if record.status in ("SUCCESSFUL", "FAILED"):
            return record
        await asyncio.sleep(0.05)
    raise TimeoutError(f"task {result_id} not finished in {timeout}s")


async def test_worker_runs_enqueued_tasks_and_sends_the_signals(worker):
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((kwargs["signal"], task_result.id, task_result.status))

    for signal in (task_enqueued, task_started, task_finished):
        signal.connect(receiver)
    try:
        ok = await sample_tasks.add.aenqueue(2, 40)
        bad = await sample_tasks.unserializable.aenqueue()
        assert (await finished(ok.id, 10)).return_value == 42
        assert (await finished(bad.id, 10)).status == "FAILED"
        # The worker's queue thread announces an outcome just after storing it.
        deadline = time.monotonic() + 5
        while sum(signal is task_finished for signal, _, _ in seen) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        for signal in (task_enqueued, task_started, task_finished):
            signal.disconnect(receiver)
    assert [(signal, status) for signal, task_id, status in seen if task_id == ok.id] == [
        (task_enqueued, "READY"), (task_started, "RUNNING"), (task_finished, "SUCCESSFUL"),
    ]  # fmt: skip
    assert [(signal, status) for signal, task_id, status in seen if task_id == bad.id] == [
        (task_enqueued, "READY"), (task_started, "RUNNING"), (task_finished, "FAILED"),
    ]  # fmt: skip
    await ok.arefresh()
    assert ok.worker_ids == [worker.worker_id]


async def test_worker_finds_tasks_that_rang_no_bell(worker, settings):
    """A row written by another process (whose bell never came) is found by the poll."""
    now = timezone.now()
    record = await TaskRecord.objects.acreate(
        task_path="tests.sample_tasks.add", queue_name="compute", args=[1, 2], enqueued_at=now, available_at=now
    )
    started = time.monotonic()
    assert (await finished(str(record.pk), 10)).return_value == 3
    assert time.monotonic() - started < settings.TASKS_POLL_INTERVAL + 2


async def test_worker_starts_a_deferred_task_when_it_falls_due(worker):
    run_after = timezone.now() + timezone.timedelta(seconds=1.5)
    result = await sample_tasks.add.using(run_after=run_after).aenqueue(1, 1)
    record = await finished(result.id, 10)
    assert run_after <= record.started_at
    assert (record.started_at - run_after).total_seconds() < 1.0


@pytest.fixture
async def slotted(task_layer):
    """Factory: a worker serving compute with the given slots, stopped after the test."""
    served = []

    def start(concurrency: str) -> TaskWorker:
        worker = TaskWorker(
            application=get_default_application(), channels=["compute"], channel_layer=task_layer,
            concurrency=concurrency,
        )  # fmt: skip
        served.append((worker, asyncio.create_task(worker.handle())))
        return worker

    yield start
    for worker, serving in served:
        worker.stopping.set()
        await asyncio.wait_for(serving, 10)
        for instance in worker.application_instances.values():
            instance["future"].cancel()


def most_at_once(path) -> int:
    """The most tasks running at the same time, from their start and end lines."""
    running = most = 0
    for line in path.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    return most


async def test_a_queue_runs_sync_and_async_tasks_side_by_side_in_its_slots(slotted, tmp_path):
    log = tmp_path / "marks"
    slotted("compute=4")
    started = time.monotonic()
    results = []
    for key in range(2):  # interleaved: a claim may bring either kind
        results.append(await sample_tasks.slow_mark.aenqueue(str(log), f"sync{key}", 0.6))
        results.append(await sample_tasks.aslow_mark.aenqueue(str(log), f"async{key}", 0.6))
    for result in results:
        assert (await finished(result.id, 10)).status == "SUCCESSFUL"
    assert most_at_once(log) == 4
    assert time.monotonic() - started < 2.0  # one after another: 2.4 s


async def test_a_worker_never_runs_more_tasks_of_a_queue_than_its_slots(slotted, tmp_path):
    log = tmp_path / "marks"
    worker = slotted("compute=2")
    results = [await sample_tasks.slow_mark.aenqueue(str(log), str(key), 0.3) for key in range(5)]
    for result in results:
        record = await finished(result.id, 10)
        assert record.status == "SUCCESSFUL" and record.worker_ids == [worker.worker_id]
    assert most_at_once(log) == 2


def test_slots_come_from_the_settings_then_tasks_concurrency_then_the_command_line(settings):
    queues = ["default", "notifications", "compute"]
    settings.TASKS = {"default": {**settings.TASKS["default"], "OPTIONS": {
        **settings.TASKS["default"]["OPTIONS"], "CONCURRENCY": {"notifications": 16, "compute": 2},
    }}}  # fmt: skip
    settings.TASKS_CONCURRENCY = ""
    assert slots_per_queue(queues) == {"default": 1, "notifications": 16, "compute": 2}
    settings.TASKS_CONCURRENCY = "4"
    assert slots_per_queue(queues) == {"default": 4, "notifications": 4, "compute": 4}
    assert slots_per_queue(queues, "notifications=32, compute=1") == {"default": 4, "notifications": 32, "compute": 1}
    assert slots_per_queue(queues, "8") == {"default": 8, "notifications": 8, "compute": 8}


@pytest.mark.parametrize("bad", ["0", "x", "compute=", "=3", "compute=-1", "compute=2,", "compute=1.5", "compte=2"])
def test_bad_slot_counts_are_refused_clearly(settings, bad):
    with pytest.raises(CommandError, match="--concurrency: concurrency "):
        call_command("runworker", "compute", "--concurrency", bad)
    settings.TASKS_CONCURRENCY = bad
    (error,) = check_slots(None)
    assert error.id == "tasks.E001" and bad.split("=")[0] in error.msg


async def test_one_thread_fills_many_async_slots_without_waiting_for_bells(slotted, tmp_path, settings):
    """A claim is bounded by the free threads (a claim may bring a sync task), but a claim
    that came back full claims again, and async slots beyond the threads claim async
    tasks only: a queue of one slot runs a wave of async tasks at once."""
    log = tmp_path / "marks"
    settings.TASKS_POLL_INTERVAL = 30  # no self-ringing: only the first bells wake the worker
    slotted("compute=1")
    started = time.monotonic()
    first = [await sample_tasks.aslow_mark.aenqueue(str(log), f"a{key}", 0.5) for key in range(12)]
    for result in first:
        assert (await finished(result.id, 10)).status == "SUCCESSFUL"
    assert most_at_once(log) == 12
    assert time.monotonic() - started < 3.0  # one after another: 6 s
