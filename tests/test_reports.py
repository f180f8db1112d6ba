"""Room exports and insights: the files, the numbers, access, limits, progress and cancel.

Jobs run on the real task runner in this process (tests/run_tasks.py, as a
worker's consumer calls it); the e2e tests in test_reports_e2e.py use real workers.
"""

import asyncio
import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import connection
from django.tasks.base import TaskResultStatus
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts import avatars
from accounts.models import User
from chat import edits
from chat.models import Membership, Message, Room
from project.asgi import application
from reports.export import job_messages, room_changes, write_export
from reports.forms import export_options
from reports.jobs import TooManyJobs, start_export, start_insights
from reports.live import RateMeter, job_frame
from reports.models import Job
from tasks.models import TaskRecord
from tests.chat_helpers import fresh_channel_layer, join, next_of, send, session_cookie
from tests.run_tasks import run_one, run_queue

__all__ = ["fresh_channel_layer"]  # a fixture

pytestmark = pytest.mark.django_db(transaction=True)

TRICKY = [
    "plain",
    "commas, and more, commas",
    'She said "hi" and \'bye\'',
    "two\nlines\r\nand a CRLF",
    "<script>alert('x')</script> & <b>bold</b>",
    "unicode: ünïcödé 🎉 — ok",
    "",
]


def run_jobs(limit: int = 10) -> int:
    """Run due compute tasks, here; how many ran."""
    return run_queue(["compute"], limit)


def make_room(label: str = "lobby", private: bool = True, members=()) -> Room:
    room = Room.objects.create(label=label, is_private=private)
    for user in members:
        Membership.objects.create(room=room, user=user)
    return room


def post(room: Room, user: User, text: str, at: datetime | None = None) -> Message:
    message = Message.objects.create(room=room, user=user, text=text, client_id=f"c{Message.objects.count()}-{text[:8]}")
    if at is not None:
        Message.objects.filter(pk=message.pk).update(created_at=at)
        message.created_at = at
    return message


def bulk_messages(room: Room, users: list[User], count: int) -> None:
    for start in range(0, count, 5000):
        Message.objects.bulk_create(
            Message(room=room, user=users[i % len(users)], text=f"message {i}, with a comma", client_id=f"b{room.pk}-{i}")
            for i in range(start, min(count, start + 5000))
        )


def read(job: Job) -> str:
    job.refresh_from_db()
    with default_storage.open(job.file.name, "rb") as fh:
        return fh.read().decode()


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", display_name="Alice <A>")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob")


@pytest.fixture
def mallory(db):
    return User.objects.create_user("mallory")


@pytest.fixture
def room(alice, bob):
    room = make_room(members=[alice, bob])
    for i, text in enumerate(TRICKY):
        post(room, alice if i % 2 else bob, text)
    return room


def expected_rows(room: Room) -> list[tuple]:
    return list(room.messages.order_by("id").values_list("id", "user__username", "text"))


def test_jsonl_export_round_trips(room, alice):
    job, created = start_export(alice, room, "jsonl")
    assert created and run_jobs() == 1
    lines = read(job).splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["id"], r["user"], r["text"]) for r in records] == expected_rows(room)
    assert records[1]["display_name"] == "Alice <A>"
    first = room.messages.order_by("id").first()
    assert datetime.fromisoformat(records[0]["created_at"]) == first.created_at
    job.refresh_from_db()
    assert job.status == Job.Status.DONE and job.rows_done == len(TRICKY)
    assert job.expires_at - job.finished_at == timedelta(days=7)
    assert not default_storage.exists(job.part_name(1))  # parts are joined and removed


def test_csv_export_escapes_commas_quotes_and_newlines(room, alice):
    job, _ = start_export(alice, room, "csv")
    run_jobs()
    text = read(job)
    assert '"She said ""hi"" and \'bye\'"' in text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["id", "created_at", "user", "display_name", "text"]
    assert [(int(r[0]), r[2], r[4]) for r in rows[1:]] == expected_rows(room)


@pytest.mark.parametrize("format", ["csv", "jsonl"])
def test_rows_from_postgresql_copy_are_what_python_writes(room, alice, monkeypatch, format):
    """On PostgreSQL, COPY writes the CSV and JSON Lines rows; the bytes must not depend on the database.

    Batches of 3 rows handed on in pieces of a few bytes: a batch's count and last
    id come with its last piece only, where a part may end.
    """
    from reports import export

    carol = User.objects.create_user("carol", display_name='Carol, "C"\nthe second')
    for text in [*TRICKY, "back\\slash \t tab \x01\x02 controls \x7f del \u2028 separator", "\\."]:
        post(room, carol, text)
    monkeypatch.setattr(export, "COPY_BATCH_SIZE", 3)
    monkeypatch.setattr(export, "COPY_PIECE_BYTES", 10)
    job, _ = start_export(alice, room, format)
    writer = export.WRITERS[format](job)
    in_python = list(export.Writer.batches(writer, job_messages(job), 0))
    as_used = list(writer.batches(job_messages(job), 0))
    assert b"".join(data for data, _, _ in as_used) == b"".join(data for data, _, _ in in_python)
    if export.connections[job_messages(job).db].vendor == "postgresql":
        ids = list(job_messages(job).order_by("id").values_list("id", flat=True))
        boundaries = [(rows, last_id) for _, rows, last_id in as_used if last_id is not None]
        assert boundaries == [(len(ids[i : i + 3]), ids[i : i + 3][-1]) for i in range(0, len(ids), 3)]
        assert len(as_used) > len(boundaries)  # pieces inside batches


def test_html_export_escapes_messages_and_inlines_avatars(room, alice, bob):
    # Alice has a thumbnail; Bob gets the initials placeholder.
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 50
    User.objects.filter(pk=alice.pk).update(avatar_digest="d" * 64)
    default_storage.save(avatars.thumbnail_name(alice.pk, "d" * 64, "32.png"), ContentFile(png))
    job, _ = start_export(alice, room, "html")
    run_jobs()
    page = read(job)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "Alice &lt;A&gt;" in page and "Alice <A>" not in page
    assert "data:image/png;base64," in page and "data:image/svg+xml;base64," in page
    assert f".a{alice.pk} " in page and f".a{bob.pk} " in page
    assert page.count("<article") == len(TRICKY)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained
    assert page.rstrip().endswith("</html>")


def test_date_range_export(alice, bob):
    room = make_room(members=[alice, bob])
    days = [datetime(2026, 3, d, 12, tzinfo=UTC) for d in (1, 2, 3, 4, 5)]
    for day in days:
        post(room, alice, f"on {day:%d}", at=day)
    since, until = export_options({"format": "json", "since": "2026-03-02", "until": "2026-03-04"})[1:]
    job, _ = start_export(alice, room, "jsonl", since, until)
    run_jobs()
    assert [json.loads(line)["text"] for line in read(job).splitlines()] == ["on 02", "on 03", "on 04"]


def test_export_options():
    assert export_options({}) == ("jsonl", None, None)
    assert export_options({"format": "CSV"})[0] == "csv"
    assert export_options({"format": "html", "since": "2026-01-01"}) == ("html", datetime(2026, 1, 1, tzinfo=UTC), None)
    for bad in ({"format": "pdf"}, {"format": "csv", "since": "2026-13-01"}, {"since": "2026-02-02", "until": "2026-02-01"}):
        with pytest.raises(ValueError, match="Usage"):
            export_options(bad)


def test_export_resumes_after_its_checkpoint(settings, alice, bob):
    """An attempt that dies mid-way leaves a checkpoint; the next writes each row exactly once."""
    settings.REPORTS_EXPORT_PART_BYTES = 2000
    room = make_room(members=[alice, bob])
    bulk_messages(room, [alice, bob], 5000)
    job, _ = start_export(alice, room, "jsonl")
    job = Job.objects.select_related("room").get(pk=job.pk)

    class WorkerDied(Exception):
        pass

    def dies_on_second_report(done, total, note, calls=[]):
        calls.append(done)
        if len(calls) == 2:
            raise WorkerDied

    from reports.export import write_export

    with pytest.raises(WorkerDied):
        write_export(job, dies_on_second_report)
    job.refresh_from_db()
    assert 0 < job.rows_done < 5000 and job.parts >= 1 and not job.finished_at
    resumed_after = job.last_id
    # The part being written when the worker died is there, cut short; it is written again.
    assert default_storage.exists(job.part_name(job.parts + 1))
    default_storage.delete(job.part_name(job.parts + 1))
    default_storage.save(job.part_name(job.parts + 1), ContentFile(b"garbage\n"))

    notes = []
    write_export(job, lambda done, total, note: notes.append(note))
    assert f"resumed after message {resumed_after}" in notes[0]
    ids = [json.loads(line)["id"] for line in read(job).splitlines()]
    assert ids == list(room.messages.order_by("id").values_list("id", flat=True))


@pytest.mark.parametrize("when", ["after its batch was written", "while the parts are joined"])
def test_a_message_deleted_after_the_export_wrote_it_sends_the_export_back_to_the_start(settings, alice, bob, when):
    """The file never carries a deleted message's text, whenever the deletion comes."""
    settings.REPORTS_EXPORT_PART_BYTES = 2000
    room = make_room(members=[alice, bob])
    bulk_messages(room, [alice, bob], 3000)
    first, last = room.messages.order_by("id")[0], room.messages.order_by("-id")[0]  # both alice's
    Message.objects.filter(pk=first.pk).update(text="a secret to take back")
    job, _ = start_export(alice, room, "jsonl")
    job = Job.objects.select_related("room").get(pk=job.pk)
    notes = []

    def progress(done, total, note):
        notes.append(note)
        due = len(notes) == 1 if when == "after its batch was written" else note == "joining the parts"
        if due and not Message.objects.get(pk=first.pk).deleted_at:
            edits.delete_message(room, alice, first.pk)

    write_export(job, progress)
    data = read(job)
    assert "a secret to take back" not in data
    ids = [json.loads(line)["id"] for line in data.splitlines()]
    assert ids == list(room.messages.filter(deleted_at__isnull=True).order_by("id").values_list("id", flat=True))
    assert ids[-1] == last.pk and job.rows_done == 2999 and job.finished_at is not None
    assert notes.count("joining the parts") == 2, "one pass, then one more"
    assert sorted(default_storage.listdir(job.storage_dir)[1]) == [job.file.name.rsplit("/", 1)[1]]  # no part left


def test_an_export_whose_messages_keep_being_deleted_gives_up_saying_why(settings, alice, bob):
    room = make_room(members=[alice, bob])
    bulk_messages(room, [alice, bob], 20)
    doomed = list(room.messages.filter(user=alice).order_by("id").values_list("id", flat=True))
    job, _ = start_export(alice, room, "csv")

    def progress(done, total, note):  # one deletion of a message already written, in every pass
        if note == "joining the parts":
            edits.delete_message(room, alice, doomed.pop(0))

    from reports import tasks as report_tasks

    with pytest.raises(report_tasks.DeletedWhileRead):
        with report_tasks.reported_failures(job, "The export"):
            write_export(Job.objects.select_related("room").get(pk=job.pk), progress)
    job.refresh_from_db()
    assert job.error == "The export failed: messages of the room kept being deleted while it ran. Please try again."
    assert job.finished_at is None and not job.file and len(doomed) == 10 - 3


def test_insights_count_again_when_a_message_they_counted_is_deleted(alice, bob):
    from reports.insights import compute, save_charts

    room = make_room(members=[alice, bob])
    gone = post(room, alice, "hello @bob")
    for i in range(5):
        post(room, bob, f"message {i}")
    job, _ = start_insights(alice, room)
    job = Job.objects.select_related("room").get(pk=job.pk)

    def progress(done, total, note):  # after the pass that reads the texts (mentions)
        if note.endswith("messages read") and not Message.objects.get(pk=gone.pk).deleted_at:
            edits.delete_message(room, alice, gone.pk)

    changes_from = room_changes(job)
    data = compute(job, progress)
    assert data["messages"] == 6 and data["mentions"] == [["bob", 1]]  # read before the deletion came
    assert save_charts(job, data, progress, changes_from) is False
    job.refresh_from_db()
    assert job.finished_at is None and job.result is None
    changes_from = room_changes(job)
    data = compute(job, progress)
    assert save_charts(job, data, progress, changes_from) is True
    job.refresh_from_db()
    assert job.result["messages"] == 5 and job.result["mentions"] == [] and job.finished_at is not None


def test_a_superseded_attempt_leaves_the_other_attempts_files_alone(room, alice):
    """A worker that stalled past its lease wakes up while another attempt runs the job."""
    from reports.export import Part, Superseded, save_part
    from reports.tasks import reported_failures
    from tasks.exceptions import LeaseLost

    job, _ = start_export(alice, room, "jsonl")
    stale = Job.objects.select_related("room").get(pk=job.pk)
    current = Job.objects.select_related("room").get(pk=job.pk)
    def part(data: bytes) -> Part:
        return Part(iter([(data, 1, 1)]), limit=1 << 20, on_batch=lambda rows: None)

    save_part(current, part(b"current\n"))
    with pytest.raises(Superseded):
        save_part(stale, part(b"stale\n"))
    # The runner tells a stalled attempt it lost its lease with LeaseLost, at its next report.
    with pytest.raises(LeaseLost), reported_failures(stale, "The export"):
        raise LeaseLost("this attempt lost its lease")
    with default_storage.open(current.part_name(1)) as fh:
        assert fh.read() == b"current\n"
    assert default_storage.listdir(current.storage_dir)[1] == ["part-000001"]
    assert Job.objects.get(pk=job.pk).parts == 1 and not Job.objects.get(pk=job.pk).error


def test_an_attempt_that_lost_its_lease_leaves_the_other_attempts_export_alone(room, alice):
    """A stalled worker's attempt, whose task another worker finished, is told so at its next report."""
    from reports.tasks import export_room, reported_failures
    from tasks import runner
    from tasks.exceptions import LeaseLost
    from tasks.progress import ProgressContext

    job, _ = start_export(alice, room, "csv")
    runner.claim(["compute"], "stalled-worker")
    stale = ProgressContext(task_result=export_room.get_result(str(job.task_id)))
    stale_job = Job.objects.select_related("room").get(pk=job.pk)
    # The stalled worker's lease runs out; another worker runs the export to its end.
    TaskRecord.objects.filter(pk=job.task_id).update(heartbeat_at=datetime.now(UTC) - timedelta(minutes=5))
    runner.reclaim_lost()
    assert run_jobs() == 1
    with pytest.raises(LeaseLost), reported_failures(stale_job, "The export"):
        stale.progress(1, 10)
    job = Job.objects.get(pk=job.pk)
    assert job.status == Job.Status.DONE and not job.error and default_storage.exists(job.file.name)


def test_a_job_keeps_its_task_id_and_fails_when_the_task_is_deleted(room, alice):
    job, _ = start_export(alice, room, "csv")
    TaskRecord.objects.filter(pk=job.task_id).delete()  # by an operator: no foreign key holds it
    job = Job.objects.get(pk=job.pk)
    assert job.task_id is not None and job.task_result is None and job.status == Job.Status.FAILED
    assert not Job.objects.active().exists()


def test_the_admin_list_reads_every_jobs_task_in_one_query(client, room, alice):
    """Each row shows its job's status, which comes from the task: not one query per row."""
    client.force_login(User.objects.create_user("ops", is_staff=True, is_superuser=True))
    start_export(alice, room, "csv")
    with CaptureQueriesContext(connection) as one_job:
        assert client.get("/admin/reports/job/").status_code == 200
    start_export(alice, room, "jsonl")
    start_export(alice, room, "html")
    with CaptureQueriesContext(connection) as three_jobs:
        page = client.get("/admin/reports/job/").content.decode()
    assert page.count(">queued<") == 3 and len(three_jobs) == len(one_job)


def test_non_member_cannot_start_watch_or_download(client, room, alice, mallory):
    job, _ = start_export(alice, room, "csv")
    run_jobs()
    with pytest.raises(PermissionDenied):
        start_export(mallory, room, "csv")
    with pytest.raises(PermissionDenied):
        start_insights(mallory, room)
    client.force_login(mallory)
    assert client.post(reverse("reports:export", args=[room.label]), {"format": "csv"}).status_code == 404
    assert client.get(reverse("reports:insights", args=[room.label])).status_code == 404
    assert client.get(reverse("reports:job", args=[job.pk])).status_code == 404
    assert client.get(reverse("reports:download", args=[job.pk])).status_code == 404
    assert client.post(reverse("reports:cancel", args=[job.pk])).status_code == 404
    assert Job.objects.filter(requested_by=mallory).count() == 0

    assert async_to_sync(ws_close_code)(mallory, job) == 4403

    # Alice downloads her file; Bob, a member, may not download Alice's export.
    client.force_login(alice)
    response = client.get(reverse("reports:download", args=[job.pk]))
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment")
    assert b"".join(response.streaming_content).decode().startswith("id,created_at")
    client.force_login(User.objects.get(username="bob"))
    assert client.get(reverse("reports:download", args=[job.pk])).status_code == 404
    # A member who leaves the room loses the download too.
    Membership.objects.filter(room=room, user=alice).delete()
    client.force_login(alice)
    assert client.get(reverse("reports:download", args=[job.pk])).status_code == 404


async def ws_close_code(user, job) -> int:
    """The code the job's socket closes with for `user` (accepted first: browsers see close codes only then)."""
    communicator = await sync_to_async(authenticated)(user, f"/reports/{job.pk}/live/")
    assert (await communicator.connect(timeout=5))[0]
    closed = await communicator.receive_output(timeout=5)
    await communicator.disconnect()
    assert closed["type"] == "websocket.close"
    return closed["code"]


def authenticated(user, path: str) -> WebsocketCommunicator:
    """A communicator whose scope carries `user`'s session cookie, as a browser's would."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    headers = [(b"host", b"localhost"), (b"cookie", cookie.encode()), (b"origin", b"http://localhost")]
    return WebsocketCommunicator(application, path, headers=headers)


def test_a_label_the_room_page_refuses_is_a_404_here_too(client, alice):
    """A room whose label is not a valid one (made outside the room page, e.g. in the admin) is no room."""
    Room.objects.create(label="Odd-Case")
    client.force_login(alice)
    assert client.get(reverse("reports:insights", args=["Odd-Case"])).status_code == 404
    assert client.post(reverse("reports:export", args=["Odd-Case"]), {"format": "csv"}).status_code == 404


def test_export_form_with_dates(client, room, alice):
    client.force_login(alice)
    assert b'name="since"' in client.get(reverse("reports:export_form", args=[room.label])).content
    url = reverse("reports:export", args=[room.label])
    bad = client.post(url, {"format": "csv", "since": "2026-02-02", "until": "2026-02-01"})
    assert bad.status_code == 400 and b"must not be after" in bad.content
    response = client.post(url, {"format": "csv", "since": "2026-02-01", "until": "2026-02-01"})
    job = Job.objects.get()
    assert response["Location"] == job.get_absolute_url()
    assert (job.since, job.until) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC))
    page = client.get(job.get_absolute_url()).content.decode()
    assert f'data-live="/reports/{job.pk}/live/"' in page and "Cancel" in page


def test_start_attaches_to_the_running_export_and_limits_to_three(client, room, alice):
    first, created = start_export(alice, room, "jsonl")
    again, created_again = start_export(alice, room, "jsonl")
    assert created and not created_again and again.pk == first.pk
    start_export(alice, room, "csv")
    start_insights(alice, room)
    with pytest.raises(TooManyJobs, match="already have 3"):
        start_export(alice, room, "html")
    client.force_login(alice)
    response = client.post(reverse("reports:export", args=[room.label]), {"format": "html"})
    assert response.status_code == 429 and b"already have 3" in response.content
    # The same export as a running one still attaches at the limit.
    response = client.post(reverse("reports:export", args=[room.label]), {"format": "jsonl"})
    assert response.status_code == 302 and response["Location"] == first.get_absolute_url()
    assert Job.objects.count() == 3
    run_jobs()
    assert start_export(alice, room, "html")[1]  # room again once they finished


async def test_progress_over_websocket_is_monotonic_and_ends_with_download(fresh_channel_layer, alice, bob, settings):
    count = 80_000
    # Enough rows that the export lasts several progress intervals (0.1 s each; an
    # HTML export of 30,000 took 0.2 s on SQLite), small parts for more checkpoints.
    settings.REPORTS_EXPORT_PART_BYTES = 16 * 1024
    room = await sync_to_async(make_room)(members=[alice, bob])
    await sync_to_async(bulk_messages)(room, [alice, bob], count)
    job, _ = await sync_to_async(start_export)(alice, room, "html")
    communicator = await sync_to_async(authenticated)(alice, f"/reports/{job.pk}/live/")
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    first = await communicator.receive_json_from(timeout=5)
    assert first["status"] == "queued" and first["percent"] == 0.0
    worker = asyncio.create_task(run_one(["compute"]))
    frames, received_at = [], []
    while not frames or frames[-1]["status"] in ("queued", "running"):
        frames.append(await communicator.receive_json_from(timeout=10))
        received_at.append(time.monotonic())
    await worker
    await communicator.disconnect()
    percents = [f["percent"] for f in frames]
    assert percents == sorted(percents) and len([f for f in frames if f["status"] == "running"]) >= 2
    running = [(f, at) for f, at in zip(frames, received_at) if f["status"] == "running" and f["done"] < count]
    assert running and all(f["total"] == count for f, _ in running)
    # A rate needs samples 0.2 s apart (reports.live.RateMeter): a fast machine may finish sooner.
    if running[-1][1] - running[0][1] >= 0.5:
        assert any(f["rate"] for f, _ in running) and any(f["eta"] is not None for f, _ in running)
    last = frames[-1]
    assert last["status"] == "done" and last["percent"] == 100.0 and last["url"] == f"/reports/{job.pk}/download/"


def test_rate_and_eta_come_from_the_last_ten_seconds_of_progress(room, alice):
    meter = RateMeter()
    assert meter.rate() is None
    meter.add(100.0, 1000)
    meter.add(100.1, 1500)
    assert meter.rate() is None  # under 0.2 s of samples: no rate yet
    meter.add(102.0, 11000)
    assert meter.rate() == pytest.approx(5000.0)  # 10,000 rows in 2 s
    meter.add(111.0, 38000)  # the samples at 100 and 100.1 s are now over 10 s old: dropped
    assert meter.rate() == pytest.approx(3000.0)  # (38000 - 11000) / 9 s, not 37000 / 11 s
    meter.add(112.0, 500)  # restarted from a checkpoint: the old samples mislead
    assert meter.rate() is None
    job, _ = start_export(alice, room, "csv")
    running = {"status": "RUNNING", "done": 10000, "total": 30000, "note": "", "attempts": 1}
    frame = job_frame(job, running, 5000.0)
    assert (frame["status"], frame["percent"], frame["rate"], frame["eta"]) == ("running", 33.3, 5000.0, 4.0)


async def test_cancel_over_websocket_stops_the_export(fresh_channel_layer, alice, bob):
    room = await sync_to_async(make_room)(members=[alice, bob])
    await sync_to_async(bulk_messages)(room, [alice, bob], 30000)
    job, _ = await sync_to_async(start_export)(alice, room, "html")
    communicator = await sync_to_async(authenticated)(alice, f"/reports/{job.pk}/live/")
    assert (await communicator.connect(timeout=5))[0]
    await communicator.receive_json_from(timeout=5)
    worker = asyncio.create_task(run_one(["compute"]))
    frame = await communicator.receive_json_from(timeout=10)
    while frame["status"] != "running":
        frame = await communicator.receive_json_from(timeout=10)
    await communicator.send_json_to({"action": "cancel"})
    sent_at = asyncio.get_running_loop().time()
    while frame["status"] == "running":
        frame = await communicator.receive_json_from(timeout=5)
    assert asyncio.get_running_loop().time() - sent_at < 2.0
    await asyncio.wait_for(worker, 5)
    assert frame["status"] == "cancelled" and frame["error"] == "Cancelled." and frame["done"] < 30000
    await communicator.send_to(text_data="not json")
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    await communicator.disconnect()
    record = await TaskRecord.objects.aget(pk=job.task_id)
    assert record.status == TaskResultStatus.FAILED and record.cancel_requested
    job = await Job.objects.aget(pk=job.pk)
    assert not job.file and not await sync_to_async(default_storage.exists)(job.part_name(1))


async def test_job_socket_answers_bad_frames_with_the_one_error_frame(fresh_channel_layer, alice, bob):
    """The same shape and codes as every socket (project.sockets), with the old `error` key kept."""
    room = await sync_to_async(make_room)(members=[alice, bob])
    job, _ = await sync_to_async(start_export)(alice, room, "csv")
    communicator = await sync_to_async(authenticated)(alice, f"/reports/{job.pk}/live/")
    assert (await communicator.connect(timeout=5))[0]
    await communicator.send_to(text_data=json.dumps({"action": "delete"}))
    error = await next_of(communicator, "error")
    assert error["code"] == "invalid" and error["detail"].startswith("invalid frame") and error["error"] == error["detail"]
    await communicator.send_to(text_data="x" * 2000)
    assert (await next_of(communicator, "error"))["code"] == "too_large"
    for _ in range(5):
        await communicator.send_to(text_data="not json")
    codes = [(await next_of(communicator, "error"))["code"] for _ in range(5)]
    assert codes[-1] == "rate_limited"
    await communicator.disconnect()


def test_failure_is_shown_to_the_user_without_a_traceback(settings, tmp_path, client, room, alice):
    (tmp_path / "not-a-directory").write_text("")
    settings.MEDIA_ROOT = tmp_path / "not-a-directory" / "media"  # every write fails
    job, _ = start_export(alice, room, "csv")
    run_jobs()
    job = Job.objects.get(pk=job.pk)
    assert job.status == Job.Status.FAILED
    assert job.user_error == "The export failed: the file could not be written (storage error). Please try again."
    assert "Traceback" in job.task_result.errors[-1].traceback  # kept for the operators
    client.force_login(alice)
    page = client.get(reverse("reports:job", args=[job.pk])).content.decode()
    assert "could not be written" in page and "Traceback" not in page


def test_insights_numbers(alice, bob):
    carol = User.objects.create_user("Carol")
    room = make_room(members=[alice, bob, carol])
    monday = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
    posts = [
        (alice, "hi @bob and @Carol", monday),
        (bob, "@alice hello @bob @bob", monday + timedelta(minutes=4)),
        (alice, "mail me at x@bob.com or @nobody", monday + timedelta(minutes=8)),
        (carol, "late @BOB", monday + timedelta(minutes=30)),  # a new thread: 22 min gap
        (carol, "still me", monday + timedelta(minutes=31)),
        (bob, "next day, @carol", monday + timedelta(days=1, hours=5)),  # Tuesday 14:00
    ]
    for user, text, at in posts:
        post(room, user, text, at=at)
    job, created = start_insights(alice, room)
    assert created and run_jobs() == 1
    job.refresh_from_db()
    data = job.result
    assert data["messages"] == 6
    assert data["per_day"] == [["2026-03-02", 5], ["2026-03-03", 1]]
    assert data["heatmap"][0][9] == 5  # Monday, 09:00-09:59
    assert data["heatmap"][1][14] == 1 and sum(map(sum, data["heatmap"])) == 6
    assert sorted(data["top_posters"]) == sorted([["alice", 2], ["bob", 2], ["Carol", 2]])
    # One mention per message per user; unknown handles and e-mail addresses do not count.
    assert data["mentions"] == [["bob", 3], ["Carol", 2], ["alice", 1]]
    threads = data["threads"]
    assert [(t["messages"], t["participants"]) for t in threads] == [(3, 2), (2, 1), (1, 1)]
    assert threads[0]["minutes"] == 8.0
    for name in ("per_day", "heatmap", "top_posters", "mentions"):
        with default_storage.open(data["charts"][name], "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

    # Cached until a new message arrives.
    cached, created = start_insights(bob, room)
    assert not created and cached.pk == job.pk
    post(room, bob, "news")
    fresh, created = start_insights(bob, room)
    assert created and fresh.pk != job.pk


def test_insights_page_and_charts(client, room, alice, mallory):
    client.force_login(alice)
    page = client.get(reverse("reports:insights", args=[room.label]))
    assert page.status_code == 200 and b'id="job"' in page.content  # computing: the progress page
    run_jobs()
    page = client.get(reverse("reports:insights", args=[room.label]))
    assert b"Busiest threads" in page.content
    job = Job.objects.get(kind="insights")
    # A finished report stays reachable after new messages (the job page leads there).
    post(room, alice, "one more")
    page = client.get(reverse("reports:insights", args=[room.label]) + f"?job={job.pk}")
    assert b"Busiest threads" in page.content and Job.objects.filter(kind="insights").count() == 1
    chart = client.get(reverse("reports:chart", args=[job.pk, "heatmap"]))
    assert chart.status_code == 200 and chart["Content-Type"] == "image/png"
    client.force_login(mallory)
    assert client.get(reverse("reports:chart", args=[job.pk, "heatmap"])).status_code == 404


def test_expired_exports_are_refused_and_cleaned_up(client, room, alice):
    job, _ = start_export(alice, room, "csv")
    run_jobs()
    job.refresh_from_db()
    name = job.file.name
    assert default_storage.exists(name)
    # The removal was deferred to the expiry, on the default queue.
    deferred = TaskRecord.objects.get(task_path="reports.tasks.remove_expired")
    assert deferred.available_at == job.expires_at and deferred.args == [job.pk]
    Job.objects.filter(pk=job.pk).update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    client.force_login(alice)
    assert client.get(reverse("reports:download", args=[job.pk])).status_code == 410
    out = io.StringIO()
    call_command("reports_cleanup", stdout=out)
    assert "Cleaned up 1 job" in out.getvalue() and not default_storage.exists(name)
    assert Job.objects.get(pk=job.pk).status == Job.Status.EXPIRED


def test_job_messages_is_a_snapshot(room, alice):
    job, _ = start_export(alice, room, "jsonl")
    post(room, alice, "after the export was asked for")
    assert job_messages(job).count() == len(TRICKY)


async def test_export_frame_on_the_room_socket(fresh_channel_layer, alice, bob):
    """An export frame (what `/export csv` in the chat box sends) starts the export and streams its progress to that socket."""
    await sync_to_async(make_room)(members=[alice, bob])
    socket, _ = await join("lobby", await sync_to_async(session_cookie)(alice))
    await send(socket, {"type": "export", "format": "csv"})
    frame = await next_of(socket, "export.progress")
    assert frame["format"] == "csv" and frame["status"] == "queued"
    worker = asyncio.create_task(run_one(["compute"]))
    while frame["status"] != "done":
        frame = await next_of(socket, "export.progress", timeout=10)
    await worker
    job = await Job.objects.aget(requested_by=alice)
    assert frame["url"] == f"/reports/{job.pk}/download/" and frame["percent"] == 100.0
    assert not await Message.objects.aexists()  # a command, not a message
    await send(socket, {"type": "export", "format": "pdf"})
    assert "Usage: /export" in (await next_of(socket, "export.error"))["error"]
    await send(socket, {"type": "export", "format": "csv", "since": "2026-02-02", "until": "2026-02-01"})
    assert "must not be after" in (await next_of(socket, "export.error"))["error"]
    await send(socket, {"type": "export", "format": "csv", "text": "/export csv"})
    assert (await next_of(socket, "error"))["code"] == "invalid"
    await socket.disconnect()
