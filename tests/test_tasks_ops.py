"""Operating the runner: the overview, `manage.py tasks`, the admin, the /tasks/ page and its socket."""

import asyncio
from datetime import timedelta
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.management import CommandError, call_command
from django.utils import timezone

from tasks import registry, runner
from tasks.consumers import TaskMonitorConsumer
from tasks.models import TaskRecord, WorkerRecord
from tasks.monitor import overview, prune
from tests import sample_tasks

pytestmark = pytest.mark.django_db(transaction=True)

W1 = "ops-host:1:aaaaaa"


def busy_queues() -> dict[str, str]:
    """Two due tasks and a deferred one on compute, one running on default, one failed."""
    failed = sample_tasks.flaky.using(priority=10).enqueue("/nonexistent", 0)
    failing = runner.claim(["compute"], W1)  # the highest priority: the flaky one
    failing.max_attempts = 1
    runner.record_failure(failing, W1, RuntimeError("disk full"))
    sample_tasks.add.enqueue(1, 1)
    sample_tasks.add.enqueue(2, 2)
    sample_tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(3, 3)
    running = sample_tasks.noop.enqueue()
    record = runner.claim(["default"], W1)
    runner.ProgressContext(task_result=runner.to_task_result(record)).progress(3, 8, "pages")
    return {"running": running.id, "failed": failed.id}


def test_overview_counts_queues_and_lists_running_tasks_and_failures():
    ids = busy_queues()
    data = overview()
    queues = {q["queue"]: q for q in data["queues"]}
    assert set(queues) == {"default", "thumbnails", "notifications", "compute"}
    assert queues["compute"] == {"queue": "compute", "ready": 2, "deferred": 1, "running": 0, "paused": False}
    assert queues["default"] == {"queue": "default", "ready": 0, "deferred": 0, "running": 1, "paused": False}
    assert queues["thumbnails"] == {"queue": "thumbnails", "ready": 0, "deferred": 0, "running": 0, "paused": False}
    (running,) = data["running"]
    assert running["id"] == ids["running"] and running["worker"] == W1 and running["task"] == "tests.sample_tasks.noop"
    assert (running["done"], running["total"], running["note"]) == (3, 8, "pages")
    assert 0 <= running["heartbeat_age"] < 30
    (failure,) = data["failures"]
    assert failure["id"] == ids["failed"] and failure["error"] == "builtins.RuntimeError: disk full"


def test_tasks_command_prints_the_overview():
    busy_queues()
    out = StringIO()
    call_command("tasks", stdout=out)
    text = out.getvalue()
    assert "queue          ready  deferred  running" in text
    assert "compute        2      1         0" in text
    assert W1 in text and "3/8 pages" in text
    assert "builtins.RuntimeError: disk full" in text


def test_overview_and_the_command_show_slots_in_use_per_worker():
    W2 = "ops-host:2:bbbbbb"
    for key in range(4):
        sample_tasks.add.enqueue(key, key)
    sample_tasks.noop.enqueue()
    assert len(runner.claim_many(["compute"], W1, 3)) == 3
    runner.claim(["default"], W1)
    runner.claim(["compute"], W2)
    # W1 and an idle W3 beat (W2 has not yet): their slots show too.
    W3 = "ops-host:3:cccccc"
    registry.beat(W1, {"compute": {"sync": 8, "async": 64}, "default": {"sync": 4, "async": 64}}, timezone.now())
    registry.beat(W3, {"compute": {"sync": 2, "async": 64}}, timezone.now())
    assert overview()["workers"] == [
        {"worker": W1, "in_use": 4, "queues": {"compute": 3, "default": 1}, "slots": 12,
         "limits": {"compute": 8, "default": 4}, "by_queue": "compute=3/8, default=1/4"},
        {"worker": W2, "in_use": 1, "queues": {"compute": 1}, "slots": None, "limits": {}, "by_queue": "compute=1"},
        {"worker": W3, "in_use": 0, "queues": {}, "slots": 2, "limits": {"compute": 2}, "by_queue": "compute=0/2"},
    ]  # fmt: skip
    out = StringIO()
    call_command("tasks", stdout=out)
    assert "Slots in use per worker (3)" in out.getvalue()
    assert f"{W1}  4       12     compute=3/8, default=1/4" in out.getvalue()
    assert f"{W2}  1       ?      compute=1" in out.getvalue()
    # A worker that stops cleanly takes its row; one that stopped beating is forgotten after the lease.
    registry.gone(W3)
    WorkerRecord.objects.filter(pk=W1).update(beat_at=timezone.now() - timedelta(seconds=60))
    assert [w["slots"] for w in overview()["workers"]] == [None, None]
    registry.beat(W3, {"compute": {"sync": 2, "async": 64}}, timezone.now())
    assert list(WorkerRecord.objects.values_list("pk", flat=True)) == [W3]


def test_prune_deletes_only_finished_tasks_older_than_asked():
    now = timezone.now()
    old, recent = now - timedelta(days=8), now - timedelta(days=1)

    def make(status: str, finished_at=None) -> TaskRecord:
        return TaskRecord.objects.create(
            task_path="tests.sample_tasks.noop", queue_name="default", status=status,
            enqueued_at=old, available_at=old, finished_at=finished_at,
        )  # fmt: skip

    gone = [make("SUCCESSFUL", old), make("FAILED", old)]
    kept = [make("SUCCESSFUL", recent), make("FAILED", recent), make("READY"), make("RUNNING")]
    out = StringIO()
    call_command("tasks", "prune", "--older-than", "7d", stdout=out)
    assert "Deleted 2 finished task(s) older than 7d." in out.getvalue()
    assert set(TaskRecord.objects.values_list("pk", flat=True)) == {r.pk for r in kept}
    assert not TaskRecord.objects.filter(pk__in=[r.pk for r in gone]).exists()
    assert prune(timedelta(hours=12)) == 2  # the day-old finished ones
    assert TaskRecord.objects.count() == 2


@pytest.mark.parametrize("age", ["7", "d7", "7w", "-1d", "7 days", ""])
def test_prune_refuses_an_unclear_age(age):
    TaskRecord.objects.create(
        task_path="tests.sample_tasks.noop", queue_name="default", status="SUCCESSFUL",
        enqueued_at=timezone.now(), available_at=timezone.now(), finished_at=timezone.now() - timedelta(days=30),
    )  # fmt: skip
    with pytest.raises(CommandError, match="--older-than takes a number and a unit"):
        call_command("tasks", "prune", f"--older-than={age}")
    assert TaskRecord.objects.count() == 1


@pytest.mark.parametrize(("age", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800)])
def test_prune_ages(age, seconds):
    from tasks.management.commands.tasks import parse_age

    assert parse_age(age).total_seconds() == seconds


# --- admin and page ---------------------------------------------------------------


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("ops", password="pw-for-tests-1", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


def test_admin_lists_filters_searches_and_shows_tasks_read_only(client, staff):
    ids = busy_queues()
    url = "/admin/tasks/taskrecord/"
    page = client.get(url)
    assert page.status_code == 200 and "tests.sample_tasks.flaky" in page.text
    failed = client.get(url, {"status__exact": "FAILED"})
    assert ids["failed"] in failed.text and ids["running"] not in failed.text
    on_default = client.get(url, {"queue_name__exact": "default"})
    assert ids["running"] in on_default.text and ids["failed"] not in on_default.text
    assert ids["failed"] in client.get(url, {"q": "flaky"}).text
    by_id = client.get(url, {"q": ids["running"]})
    assert ids["running"] in by_id.text and ids["failed"] not in by_id.text

    change = client.get(f"{url}{ids['failed']}/change/")
    assert change.status_code == 200 and "disk full" in change.text
    assert 'name="task_path"' not in change.text and 'name="status"' not in change.text
    assert client.get(f"{url}add/").status_code == 403


def test_admin_action_cancels_selected_tasks(client, staff):
    ready = sample_tasks.add.enqueue(1, 1)
    done = sample_tasks.noop.enqueue()
    record = runner.claim(["default"], W1)
    runner.record_success(record, W1, None)
    response = client.post(
        "/admin/tasks/taskrecord/", {"action": "cancel_tasks", "_selected_action": [ready.id, done.id]}, follow=True
    )
    assert "Cancelled 1 task(s)" in response.text and "1 had already finished" in response.text
    assert TaskRecord.objects.get(pk=ready.id).status == "FAILED"
    assert TaskRecord.objects.get(pk=done.id).status == "SUCCESSFUL"


def test_monitor_page_is_for_staff_only(client):
    assert client.get("/tasks/").status_code == 302  # anonymous: log in first
    user = get_user_model().objects.create_user("member", password="pw-for-tests-1")
    client.force_login(user)
    response = client.get("/tasks/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_monitor_page_shows_the_overview(client, staff):
    busy_queues()
    TaskRecord.objects.filter(status="RUNNING").update(progress_note="<script>alert(1)</script>")
    response = client.get("/tasks/")
    assert response.status_code == 200
    for text in ("compute", "thumbnails", W1, "builtins.RuntimeError: disk full", "tasks/monitor.js"):
        assert text in response.text
    assert "<script>alert(1)</script>" not in response.text and "&lt;script&gt;" in response.text


# --- live socket --------------------------------------------------------------------


async def connect_as(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(TaskMonitorConsumer.as_asgi(), "/tasks/live/")
    communicator.scope["user"] = user
    return communicator


async def test_monitor_socket_refuses_anonymous_and_non_staff_users():
    # Accepted, then closed: a browser sees close codes only after an accept.
    communicator = await connect_as(AnonymousUser())
    assert await communicator.connect() == (True, None)
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}
    member = await database_sync_to_async(get_user_model().objects.create_user)("member", password="pw-for-tests-1")
    communicator = await connect_as(member)
    assert await communicator.connect() == (True, None)
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4403}


async def test_monitor_socket_answers_a_frame_with_the_one_error_frame():
    staff = await database_sync_to_async(get_user_model().objects.create_user)("ops", is_staff=True)
    communicator = await connect_as(staff)
    assert (await communicator.connect())[0]
    try:
        await communicator.send_to(text_data='{"type": "cancel"}')
        while (frame := await communicator.receive_json_from(timeout=5))["type"] != "error":
            pass
        assert frame["code"] == "invalid" and frame["detail"].startswith("invalid frame") and frame["error"] == frame["detail"]
    finally:
        await communicator.disconnect()
        await asyncio.sleep(0)


async def test_monitor_socket_sends_the_overview_every_few_seconds_and_takes_no_frames():
    staff = await database_sync_to_async(get_user_model().objects.create_user)(
        "ops", password="pw-for-tests-1", is_staff=True
    )
    communicator = await connect_as(staff)
    connected, _ = await communicator.connect()
    assert connected
    try:
        first = await communicator.receive_json_from(timeout=5)
        assert first["type"] == "overview"
        assert {q["queue"]: q["ready"] for q in first["overview"]["queues"]}["compute"] == 0
        await sample_tasks.add.aenqueue(1, 2)
        second = await communicator.receive_json_from(timeout=TaskMonitorConsumer.interval + 3)
        assert {q["queue"]: q["ready"] for q in second["overview"]["queues"]}["compute"] == 1

        for _ in range(TaskMonitorConsumer.max_bad_frames):
            await communicator.send_to(text_data='{"type": "cancel"}')
        frames = []
        while (output := await communicator.receive_output(timeout=5))["type"] != "websocket.close":
            frames.append(output)
        assert output["code"] == 4429
        errors = [f for f in frames if '"type": "error"' in f.get("text", "")]
        assert len(errors) == TaskMonitorConsumer.max_bad_frames
    finally:
        await communicator.disconnect()
        await asyncio.sleep(0)
