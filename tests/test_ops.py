"""Operations: health checks, the worker's liveness file, SMTP by URL, Sentry, JSON logs (issue 23)."""

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from project.settings import smtp_mailer
from tests.processes import ROOT, Stack, base_env, wait_until
from tests.servers import PostgresServer, free_port

# --- /healthz and /readyz in the test process --------------------------------------


def test_probes_answer_any_host_over_http_without_login(client, settings):
    """A probe by pod IP over plain HTTP gets its answer, where any page gets a 400 or a redirect."""
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["parley.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/login/", HTTP_HOST="10.1.2.3:8000").status_code == 400  # Django's host check is on
    assert client.get("/login/", HTTP_HOST="parley.example.com").status_code == 301  # and the HTTPS redirect

    response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"
    assert client.post("/healthz", HTTP_HOST="10.1.2.3:8000").status_code == 405


@pytest.mark.django_db
def test_readyz_is_ready_on_a_migrated_database(client, settings):
    settings.ALLOWED_HOSTS = ["parley.example.com"]
    response = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "migrations": "ok"}


# --- runworker's liveness file ------------------------------------------------------


def test_tasks_alive_reads_the_files_age(tmp_path, settings):
    settings.TASKS_ALIVE_FILE = str(tmp_path / "alive")
    with pytest.raises(SystemExit) as exited:
        call_command("tasks", "alive")
    assert exited.value.code == 1  # no heartbeat yet

    (tmp_path / "alive").touch()
    call_command("tasks", "alive", "--max-age", "5")  # returns: exit status 0

    past = time.time() - 60
    os.utime(tmp_path / "alive", (past, past))
    with pytest.raises(SystemExit) as exited:
        call_command("tasks", "alive", "--max-age", "30")
    assert exited.value.code == 1


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)  # as every e2e test: the session's test database exists
def test_runworker_touches_its_alive_file_while_its_loop_turns(stack, tmp_path):
    alive = tmp_path / "alive"
    stack.env.update(TASKS_ALIVE_FILE=str(alive), TASKS_HEARTBEAT_INTERVAL="0.3")
    worker = stack.runworker("default")
    wait_until(alive.exists, timeout=60, message="the worker's first heartbeat")
    assert manage(stack.env, "tasks", "alive", "--max-age", "5").returncode == 0

    worker.send_signal(signal.SIGSTOP)  # hung, as a deadlocked loop would be
    try:
        wait_until(lambda: time.time() - alive.stat().st_mtime > 5, timeout=10, message="a 5 s old heartbeat")
        stuck = manage(stack.env, "tasks", "alive", "--max-age", "5")
        assert stuck.returncode == 1, stuck.stdout
        assert "not alive: last heartbeat" in stuck.stderr
    finally:
        worker.send_signal(signal.SIGCONT)


# --- SMTP through one URL -------------------------------------------------------------


def test_smtp_mailer_reads_scheme_port_and_encoded_credentials():
    mailer = smtp_mailer("smtp+tls://bot%40example.com:p%40ss%3Aw@mail.example.com", timeout=7)
    assert mailer == {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "mail.example.com", "port": 587, "username": "bot@example.com",
                    "password": "p@ss:w", "timeout": 7, "use_tls": True},
    }  # fmt: skip
    assert smtp_mailer("smtps://mail.example.com", 10)["OPTIONS"] == {
        "host": "mail.example.com", "port": 465, "username": "", "password": "", "timeout": 10, "use_ssl": True,
    }  # fmt: skip
    assert smtp_mailer("smtp://127.0.0.1:2525", 10)["OPTIONS"]["port"] == 2525
    with pytest.raises(ImproperlyConfigured):
        smtp_mailer("postmark://token@", 10)


class Inbox:
    """aiosmtpd handler: keeps what it is sent, and the credentials it was given."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.rcpt_tos, envelope.content))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.login == b"bot@example.com" and auth_data.password == b"p@ss:w")


def test_email_url_sends_through_djangos_smtp_backend():
    """EMAIL_URL in the environment reaches a real SMTP server, logged in with its decoded credentials."""
    inbox = Inbox()
    port = free_port()
    smtp = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate, auth_require_tls=False
    )
    smtp.start()
    try:
        env = base_env(DEBUG="1", EMAIL_URL=f"smtp://bot%40example.com:p%40ss%3Aw@127.0.0.1:{port}")
        env.pop("EMAIL_BACKEND", None)
        sent = manage(env, "sendtestemail", "ops@example.com")
        assert sent.returncode == 0, sent.stderr
    finally:
        smtp.stop()
    assert inbox.logins == [(b"bot@example.com", b"p@ss:w")]
    [(recipients, content)] = inbox.messages
    assert recipients == ["ops@example.com"]
    assert b"Test email from" in content


# --- /readyz against real servers going away, Sentry, JSON logs ----------------------------


class PausablePostgres(PostgresServer):
    """The PostgreSQL server of one test, stopped and started again on the same data and port."""

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # fast shutdown
        self.proc.wait(30)

    def resume(self) -> None:
        self.proc = self._run(
            f"{self.bindir}/postgres", "-D", os.path.join(self.dir, "data"), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
            "-c", "fsync=off", stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_ready()


class FakeSentry:
    """Sentry's envelope endpoint on loopback: keeps every envelope, decompressed."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        envelopes = self.envelopes

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                envelopes.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_port}/1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get(port: int, path: str, cookie: str = "") -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def readyz_becomes(port: int, status: int, timeout: float = 20) -> dict:
    return wait_until(
        lambda: (answer := get(port, "/readyz"))[0] == status and answer[1], timeout, interval=0.2,
        message=f"/readyz answering {status}",
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)  # as every e2e test: the session's test database exists
def test_readyz_follows_migrations_redis_and_postgresql_and_sentry_hears_the_500s(own_redis, tmp_path):
    """One daphne on a PostgreSQL and a Redis of its own: not ready until migrated, not ready while
    either server is stopped, ready again once it is back; /healthz stays up all along; a page that
    fails while PostgreSQL is away reaches Sentry; log lines are JSON."""
    postgres = PausablePostgres().start()
    sentry = FakeSentry()
    try:
        dbname = f"ops_{uuid.uuid4().hex[:8]}"
        url = postgres.create_database(dbname)
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        env = base_env(DATABASE_URL=url, REDIS_URL=own_redis.url, SENTRY_DSN=sentry.dsn, LOG_FORMAT="json")
        stack = Stack(env, log_dir)
        try:
            _, port = stack.daphne()
            status, body = get(port, "/readyz")
            assert status == 503 and body["checks"]["migrations"].endswith("migration(s) not applied"), body
            assert body["checks"]["database"] == body["checks"]["redis"] == "ok"

            stack.manage("migrate", "--noinput", "-v0", timeout=300)
            readyz_becomes(port, 200)

            own_redis.stop()
            body = readyz_becomes(port, 503)
            assert body["checks"]["redis"] != "ok" and body["checks"]["database"] == "ok", body
            own_redis.start()
            readyz_becomes(port, 200)

            postgres.pause()
            body = readyz_becomes(port, 503)
            assert body["checks"]["database"].startswith("OperationalError"), body
            assert get(port, "/healthz") == (200, {"status": "ok"})
            assert get(port, "/me/", cookie="sessionid=anything")[0] == 500  # sessions live in the database
            postgres.resume()
            readyz_becomes(port, 200)

            event = wait_until(
                lambda: next((e for e in sentry.envelopes if b'"type":"event"' in e.replace(b" ", b"")), None),
                timeout=10, message="an event at the fake Sentry",
            )  # fmt: skip
            assert b"OperationalError" in event
            lines = [json.loads(line) for line in stack.logs().splitlines() if line.startswith("{")]
            assert not [line for line in lines if "Service Unavailable" in line["message"]]  # one line per change only
            not_ready = [line for line in lines if line["message"].startswith("event=not_ready")]
            assert {"ts", "level", "logger", "pid", "message"} <= set(not_ready[0])
            assert [line["message"].split()[1] for line in not_ready] == [
                "failing=migrations", "failing=redis", "failing=database,migrations"
            ]  # fmt: skip
        finally:
            stack.stop_all()
            print(stack.logs()[-5000:])
    finally:
        sentry.close()
        postgres.close()

