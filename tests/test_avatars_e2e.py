"""A worker SIGKILLed in the middle of a thumbnail set: the retry leaves exactly one set.

Real processes: `manage.py runworker thumbnails` on PostgreSQL and Redis. To kill
the worker *between two files* every time, the first worker runs on
tests.e2e_settings, whose storage waits 2 s after each thumbnail file it writes;
the test kills the worker as soon as the first file is on disk.
"""

import json
import os
import signal

import pytest
from PIL import Image

from tests.avatar_images import camera_jpeg
from tests.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

UPLOAD = """
from django.core.files import File
from accounts import images
from accounts.models import User
from accounts.uploads import store_avatar
user = User.objects.create_user("kit")
with open({path!r}, "rb") as fh:
    upload = File(fh, name="kit.jpg")
    store_avatar(user, upload, images.validate_upload(upload))
print(user.pk)
"""

STATE = """
import json
from accounts.models import User
from tasks.models import TaskRecord
user = User.objects.get(username="kit")
record = TaskRecord.objects.get(queue_name="thumbnails")
print(json.dumps({"digest": user.avatar_digest, "status": record.status, "workers": record.worker_ids,
                  "errors": [e["exception_class_path"] for e in record.errors]}))
"""


def test_worker_killed_mid_thumbnail_leaves_one_set_after_the_retry(stack, tmp_path):
    media = tmp_path / "media"
    stack.env.update(
        MEDIA_ROOT=str(media),
        # A dead worker's task is handed on after 4 s instead of 10: a shorter test.
        TASKS_LEASE="4", TASKS_HEARTBEAT_INTERVAL="1",
    )  # fmt: skip
    original = tmp_path / "kit.jpg"
    original.write_bytes(camera_jpeg(6))
    user_pk = int(stack.manage("shell", "--no-imports", "-c", UPLOAD.format(path=str(original))).stdout.split()[-1])
    folder = media / "avatars" / str(user_pk)

    doomed = stack.runworker("thumbnails", settings="tests.e2e_settings")
    wait_until(lambda: folder.exists() and any(folder.iterdir()), timeout=60, message="first thumbnail file")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    partial = sorted(p.name for p in folder.iterdir())
    assert 1 <= len(partial) < 4, partial  # killed mid-set

    stack.runworker("thumbnails")

    def state():
        out = json.loads(stack.manage("shell", "--no-imports", "-c", STATE).stdout.strip().splitlines()[-1])
        return out if out["status"] == "SUCCESSFUL" else None

    final = wait_until(state, timeout=90, interval=0.5, message="thumbnail task retried to success")
    digest = final["digest"]
    assert final["errors"] == ["tasks.exceptions.WorkerLost"] and len(set(final["workers"])) == 2
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"{digest}-{output}" for output in ("256.webp", "64.webp", "32.webp", "32.png"))
    for name in files:
        size = int(name.split("-")[1].split(".")[0])
        with Image.open(folder / name) as image:
            image.load()  # a file the kill cut short would fail here
            assert image.size == (size, size)
    assert [p.name for p in (media / "avatar-originals" / str(user_pk)).iterdir()] == [f"{digest}.jpg"]
