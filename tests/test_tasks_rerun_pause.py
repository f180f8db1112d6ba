"""Re-running failed tasks, pausing queues, and a cancel that is no failure, on either stack."""

import asyncio
import logging
import re
import time
from datetime import timedelta
from io import StringIO

import pytest
from channels.routing import get_default_application
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from tasks import progress, runner
from tasks.backends import enqueue_unique
from tasks.exceptions import TaskCancelled
from tasks.models import PausedQueue, TaskRecord
from tasks.monitor import overview, pause, rerun, resume
from tasks.worker import TaskWorker
from tests import sample_tasks

pytestmark = pytest.mark.django_db(transaction=True)

W1 = "rerun-host:1:aaaaaa"


def fail(result_id: str, error: BaseException = RuntimeError("disk full")) -> TaskRecord:
    """Claim the given READY task (the only one due on its queue) and fail it for good."""
    record = runner.claim([TaskRecord.objects.get(pk=result_id).queue_name], W1)
    assert str(record.pk) == result_id
    runner.record_failure(record, W1, error)
    return TaskRecord.objects.get(pk=result_id)


def cancelled_while_running(tmp_path) -> TaskRecord:
    """A counted() task cancelled while it ran, run to its end as a worker would."""
    result = sample_tasks.counted.enqueue(str(tmp_path / "steps"), 5, 0)
    record, task, task_result = runner.claim_and_start(["compute"], W1)
    progress.cancel(result.id)
    ended = runner.run_sync(record, task, task_result, W1, runner.deadline_of(record, task))
    assert isinstance(ended.error, TaskCancelled)
    runner.finish(ended, W1)
    return TaskRecord.objects.get(pk=result.id)


# --- a cancel is no failure ------------------------------------------------------------


def test_a_cancelled_task_is_not_listed_under_failures_nor_logged_at_error(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="django.tasks")
    record = cancelled_while_running(tmp_path)
    assert record.status == "FAILED" and record.errors[-1]["exception_class_path"] == "tasks.exceptions.TaskCancelled"
    progress.cancel(sample_tasks.add.enqueue(1, 1).id)  # cancelled before it started
    assert overview()["failures"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any("event=task_cancelled" in r.getMessage() for r in caplog.records)
    assert any(re.search(r"Task id=\S+ path=tests.sample_tasks.counted state=FAILED cancelled", r.getMessage())
               for r in caplog.records if r.name == "django.tasks" and r.levelno == logging.INFO)  # fmt: skip

    # A real failure still is one, on both counts.
    caplog.clear()
    result = sample_tasks.unserializable.enqueue()
    record, task, task_result = runner.claim_and_start(["compute"], W1)
    runner.finish(runner.run_sync(record, task, task_result, W1, runner.deadline_of(record, task)), W1)
    assert [f["id"] for f in overview()["failures"]] == [result.id]
    assert [r.name for r in caplog.records if r.levelno == logging.ERROR] == ["django.tasks"]


# --- re-running ------------------------------------------------------------------------


def test_rerun_puts_a_failed_task_back_with_its_history_and_a_fresh_retry_budget():
    result = sample_tasks.flaky.enqueue("/nonexistent", 0)  # max_attempts=3
    TaskRecord.objects.filter(pk=result.id).update(max_attempts=1)
    failed = fail(result.id)
    assert failed.status == "FAILED" and failed.attempts == 1
    assert rerun([result.id, "5b1c3f0e-0000-4000-8000-000000000000", "not-a-uuid"]) == (
        [result.id],
        ["5b1c3f0e-0000-4000-8000-000000000000: no such task, not FAILED", "not-a-uuid: not a task id"],
    )
    record = TaskRecord.objects.get(pk=result.id)
    assert (record.status, record.finished_at, record.max_attempts) == ("READY", None, 1 + 3)
    assert record.errors == failed.errors and record.worker_ids == [W1]
    again = runner.claim(["compute"], "rerun-host:2:bbbbbb")
    runner.record_success(again, "rerun-host:2:bbbbbb", 7)
    done = sample_tasks.flaky.get_result(result.id)
    assert done.status == "SUCCESSFUL" and done.worker_ids == [W1, "rerun-host:2:bbbbbb"]
    assert [e.exception_class_path for e in done.errors] == ["builtins.RuntimeError"]
    assert rerun([result.id]) == ([], [f"{result.id}: SUCCESSFUL, not FAILED"])


def test_rerun_of_a_cancelled_task_clears_the_cancel(tmp_path):
    record = cancelled_while_running(tmp_path)
    assert rerun([record.pk]) == ([str(record.pk)], [])
    again = TaskRecord.objects.get(pk=record.pk)
    assert again.status == "READY" and not again.cancel_requested and again.progress_done is None
    assert runner.claim(["compute"], W1).pk == record.pk  # claimable again


def test_rerun_leaves_a_task_whose_unique_key_is_taken():
    first = enqueue_unique(sample_tasks.add, "k", (1, 1))
    fail(first.id)
    second = enqueue_unique(sample_tasks.add, "k", (2, 2))
    assert second.id != first.id
    done, skipped = rerun([first.id])
    assert done == [] and "its unique key 'k' is held by another unfinished task" in skipped[0]
    assert TaskRecord.objects.get(pk=first.id).status == "FAILED"


def test_tasks_retry_command_by_id_and_by_selection(tmp_path):
    old = fail(sample_tasks.add.enqueue(1, 1).id)
    TaskRecord.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(hours=5))
    recent = fail(sample_tasks.add.enqueue(2, 2).id)
    other = fail(sample_tasks.pair.enqueue(3, 3).id)
    cancelled = cancelled_while_running(tmp_path)

    out = StringIO()
    call_command("tasks", "retry", "--failed", "--task", "tests.sample_tasks.add", "--since", "1h", stdout=out)
    assert f"Re-queued {recent.pk}" in out.getvalue() and "Re-queued 1 task(s), skipped 0." in out.getvalue()
    statuses = dict(TaskRecord.objects.values_list("pk", "status"))
    assert statuses == {old.pk: "FAILED", recent.pk: "READY", other.pk: "FAILED", cancelled.pk: "FAILED"}

    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    call_command("tasks", "retry", "--failed", "--since", since, stdout=StringIO())
    assert TaskRecord.objects.get(pk=cancelled.pk).status == "FAILED"  # a cancel is not a failure
    assert {TaskRecord.objects.get(pk=pk).status for pk in (old.pk, other.pk)} == {"READY"}

    out = StringIO()
    call_command("tasks", "retry", str(cancelled.pk), str(recent.pk), stdout=out, stderr=out)
    assert f"Skipped {recent.pk}: READY, not FAILED" in out.getvalue()
    assert TaskRecord.objects.get(pk=cancelled.pk).status == "READY"

    with pytest.raises(CommandError, match="Name task ids"):
        call_command("tasks", "retry")
    with pytest.raises(CommandError, match="--since takes a time"):
        call_command("tasks", "retry", "--failed", "--since", "yesterday")


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("ops", password="pw-for-tests-1", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


def test_admin_action_reruns_selected_failed_tasks(client, staff):
    failed = fail(sample_tasks.add.enqueue(1, 1).id)
    ready = sample_tasks.add.enqueue(2, 2)
    response = client.post(
        "/admin/tasks/taskrecord/", {"action": "rerun_tasks", "_selected_action": [failed.pk, ready.id]}, follow=True
    )
    assert "Re-queued 1 task(s), their history kept." in response.text
    assert f"{ready.id}: READY, not FAILED" in response.text
    assert TaskRecord.objects.get(pk=failed.pk).status == "READY"


# --- pausing -------------------------------------------------------------------------


def test_pause_and_resume_are_shown_and_refuse_unknown_queues():
    assert pause("compute", by="ops") and not pause("compute")
    assert {q["queue"]: q["paused"] for q in overview()["queues"]}["compute"] is True
    out = StringIO()
    call_command("tasks", stdout=out)
    assert re.search(r"compute\s+0\s+0\s+0\s+paused", out.getvalue())
    assert resume("compute") and not resume("compute")
    with pytest.raises(ValueError, match="'nope' is not a task queue"):
        pause("nope")


def test_tasks_pause_and_resume_commands():
    out = StringIO()
    call_command("tasks", "pause", "compute", stdout=out)
    call_command("tasks", "pause", "compute", stdout=out)
    assert "Queue compute paused." in out.getvalue() and "Queue compute was already paused." in out.getvalue()
    assert PausedQueue.objects.get().paused_by == "manage.py"
    call_command("tasks", "resume", "compute", stdout=out)
    assert "Queue compute resumed." in out.getvalue() and not PausedQueue.objects.exists()
    with pytest.raises(CommandError, match="not a task queue"):
        call_command("tasks", "pause", "nope")


def test_monitor_page_pauses_and_resumes_with_a_csrf_checked_post(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    page = client.get("/tasks/")
    assert 'action="/tasks/queues/compute/pause/"' in page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    assert client.post("/tasks/queues/compute/pause/").status_code == 403  # no token
    assert not PausedQueue.objects.exists()
    response = client.post("/tasks/queues/compute/pause/", {"csrfmiddlewaretoken": token}, follow=True)
    assert "Queue compute paused." in response.text and 'action="/tasks/queues/compute/resume/"' in response.text
    assert PausedQueue.objects.get().paused_by == "ops"
    assert client.get("/tasks/queues/compute/pause/").status_code == 405
    assert client.post("/tasks/queues/nope/pause/", {"csrfmiddlewaretoken": token}).status_code == 404
    client.post("/tasks/queues/compute/resume/", {"csrfmiddlewaretoken": token})
    assert not PausedQueue.objects.exists()


def test_monitor_page_buttons_are_for_staff_only(client):
    member = get_user_model().objects.create_user("member", password="pw-for-tests-1")
    client.force_login(member)
    response = client.post("/tasks/queues/compute/pause/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not PausedQueue.objects.exists()


def test_admin_pauses_by_adding_and_resumes_by_deleting(client, staff):
    response = client.post("/admin/tasks/pausedqueue/add/", {"queue_name": "thumbnails"}, follow=True)
    assert response.status_code == 200
    assert PausedQueue.objects.get().paused_by == "ops"
    assert client.post("/admin/tasks/pausedqueue/add/", {"queue_name": "nope"}).status_code == 200  # form error
    assert PausedQueue.objects.count() == 1
    client.post(
        "/admin/tasks/pausedqueue/", {"action": "resume_queues", "_selected_action": ["thumbnails"]}, follow=True
    )
    assert not PausedQueue.objects.exists()


@pytest.fixture
async def worker(task_layer):
    worker = TaskWorker(
        application=get_default_application(), channels=["compute"], channel_layer=task_layer, concurrency="1"
    )
    serving = asyncio.create_task(worker.handle())
    yield worker
    worker.stopping.set()
    await asyncio.wait_for(serving, 20)
    for instance in worker.application_instances.values():
        instance["future"].cancel()


async def statuses(ids: list[str]) -> list[str]:
    return [(await TaskRecord.objects.aget(pk=pk)).status for pk in ids]


async def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_a_paused_queue_takes_tasks_but_its_worker_claims_none_until_resumed(worker, settings, tmp_path):
    path = str(tmp_path / "marks")
    results = [await sample_tasks.slow_mark.aenqueue(path, str(i), 0.3) for i in range(6)]
    ids = [r.id for r in results]
    await wait_for(lambda: _any_done(ids), timeout=10)  # the one slot is draining the queue
    await asyncio.to_thread(pause, "compute")
    await asyncio.sleep(settings.TASKS_POLL_INTERVAL + 0.5)  # one poll, plus the task in hand
    frozen = await statuses(ids)
    late = await sample_tasks.add.aenqueue(1, 1)  # enqueues are still accepted
    await asyncio.sleep(2 * settings.TASKS_POLL_INTERVAL)
    assert await statuses(ids) == frozen and "READY" in frozen and "RUNNING" not in frozen
    assert (await TaskRecord.objects.aget(pk=late.id)).status == "READY"
    await asyncio.to_thread(resume, "compute")
    await wait_for(lambda: _all_done([*ids, late.id]), timeout=15)


async def _any_done(ids: list[str]) -> bool:
    return "SUCCESSFUL" in await statuses(ids)


async def _all_done(ids: list[str]) -> bool:
    return set(await statuses(ids)) == {"SUCCESSFUL"}


async def test_a_worker_started_while_its_queue_is_paused_claims_nothing(task_layer, settings):
    await asyncio.to_thread(pause, "compute")
    result = await sample_tasks.add.aenqueue(1, 2)
    worker = TaskWorker(application=get_default_application(), channels=["compute"], channel_layer=task_layer)
    serving = asyncio.create_task(worker.handle())
    try:
        await asyncio.sleep(2 * settings.TASKS_POLL_INTERVAL)
        assert (await TaskRecord.objects.aget(pk=result.id)).status == "READY"
        await asyncio.to_thread(resume, "compute")
        await wait_for(lambda: _all_done([result.id]), timeout=10)
    finally:
        worker.stopping.set()
        await asyncio.wait_for(serving, 20)
        for instance in worker.application_instances.values():
            instance["future"].cancel()
