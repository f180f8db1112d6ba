"""An export whose worker is SIGKILLed mid-way finishes on another worker, and its watcher sees it go on.

Real processes: daphne, two `manage.py runworker compute`, PostgreSQL, Redis.
"""

import json
import signal
import threading

import psycopg
import pytest
from websockets.sync.client import connect

from tests.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MESSAGES = 100_000
SETUP = f"""
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from accounts.models import User
from chat.models import Membership, Room
from reports.jobs import start_export

alice = User.objects.create_user("alice")
room = Room.objects.create(label="big", is_private=True)
Membership.objects.create(room=room, user=alice)
with connection.cursor() as cursor:
    cursor.execute(
        "INSERT INTO chat_message (room_id, user_id, text, client_id, created_at) "
        "SELECT %s, %s, 'message ' || g || ', \\"quoted\\"', 'g' || g, now() - ({MESSAGES} - g) * interval '1 second' "
        "FROM generate_series(1, {MESSAGES}) g",
        [room.pk, alice.pk],
    )
job, _ = start_export(alice, room, "jsonl")
session = SessionStore()
session[SESSION_KEY] = str(alice.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = alice.get_session_auth_hash()
session.create()
print(job.pk, session.session_key)
"""


def test_export_survives_a_sigkilled_worker(stack, tmp_path):
    media = tmp_path / "media"
    stack.env.update(
        MEDIA_ROOT=str(media), TASKS_LEASE="4", TASKS_HEARTBEAT_INTERVAL="1", REPORTS_EXPORT_PART_BYTES="131072"
    )
    job_id, session_key = stack.manage("shell", "--no-imports", "-c", SETUP).stdout.split()
    db = psycopg.connect(stack.env["DATABASE_URL"], autocommit=True)

    def job_row():
        return db.execute(
            "SELECT parts, rows_done, finished_at, file, task_id FROM reports_job WHERE id = %s", [job_id]
        ).fetchone()

    _, port = stack.daphne()
    frames: list[dict] = []
    socket = connect(
        f"ws://127.0.0.1:{port}/reports/{job_id}/live/",
        additional_headers={"Cookie": f"sessionid={session_key}"},
        origin=f"http://127.0.0.1:{port}",
        open_timeout=10,
        legacy=True,  # closed by the test, not a with block: a thread reads it meanwhile
    )
    reader = threading.Thread(target=lambda: frames.extend(json.loads(m) for m in socket), daemon=True)
    reader.start()

    first = stack.runworker("compute")
    wait_until(lambda: job_row()[0] >= 3, timeout=60, message="three parts saved")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at_rows = job_row()[1]
    assert killed_at_rows < MESSAGES

    stack.runworker("compute")
    wait_until(lambda: job_row()[2] is not None, timeout=90, interval=0.2, message="export finished")
    parts, rows, _, name, task_id = job_row()
    assert rows == MESSAGES
    attempts, errors = db.execute("SELECT worker_ids, errors FROM tasks_taskrecord WHERE id = %s", [task_id]).fetchone()
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert errors[0]["exception_class_path"] == "tasks.exceptions.WorkerLost"
    assert "event=export_resumed" in stack.logs()

    with open(media / name, encoding="utf-8") as fh:
        ids = [json.loads(line)["id"] for line in fh]
    expected = [row[0] for row in db.execute("SELECT id FROM chat_message ORDER BY id")]
    assert ids == expected  # every message once, in order, across the two attempts

    wait_until(lambda: frames and frames[-1]["status"] == "done", timeout=10, message="the watcher saw it finish")
    socket.close()
    reader.join(5)
    assert any(f["attempt"] == 1 and f["status"] == "running" for f in frames)
    assert any(f["attempt"] == 2 and f["status"] == "running" for f in frames)  # it went on, live
    assert frames[-1]["url"] == f"/reports/{job_id}/download/" and frames[-1]["percent"] == 100.0
