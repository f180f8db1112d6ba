"""Local HTTP servers that play Postmark's send API and Twilio's Messages API, errors included.

Parley reaches them through the real anymail Postmark backend (POSTMARK_API_URL)
and the real twilio client (TWILIO_API_URL, see notifications.providers). Each
server answers from a script: `server.script(...)` queues the behaviour of the
next send requests, after which it accepts. Behaviours:

- ("accept",): take the message and answer as the provider does;
- ("error", status, extra): answer `status` with the provider's error body
  (Twilio: extra is the error code, e.g. 21211; Postmark: the ErrorCode, e.g. 406)
  and, for 429, a Retry-After header of `retry_after` seconds;
- ("accept_then_hang", seconds): take the message (it is listed, it counts as
  sent) and then answer nothing for `seconds`: the provider accepted, the
  client never heard. A worker killed here, or timing out, must not send again;
- ("hang", seconds): answer nothing and take nothing, as a request lost on
  its way would.

Everything is bound to 127.0.0.1 and every wait is bounded.
"""

import base64
import json
import threading
import uuid
from collections import deque
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


class FakeProvider:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.behaviours: deque[tuple] = deque()
        self.requests: list[dict] = []  # every request, as (method, path, headers, body)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stop_hanging = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeProvider":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop_hanging.set()
        self.server.shutdown()
        self.server.server_close()

    def script(self, *behaviours: tuple) -> None:
        with self.lock:
            self.behaviours.extend(behaviours)

    def next_behaviour(self) -> tuple:
        with self.lock:
            return self.behaviours.popleft() if self.behaviours else ("accept",)

    def hang(self, seconds: float) -> None:
        self.stop_hanging.wait(seconds)

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                provider.handle(self, "GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                provider.handle(self, "POST", self.rfile.read(length))

            def reply(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def handle(self, request, method: str, body: bytes) -> None:
        raise NotImplementedError


class FakeTwilio(FakeProvider):
    """Twilio's 2010-04-01 Messages API: create (form POST) and list (GET, filters To and DateSent>).

    With queue_messages set, accepted messages stay queued, without date_sent, as
    real Twilio keeps them while its queue for a sender is backed up.
    """

    account_sid = "AC" + "0" * 32
    auth_token = "fake-twilio-auth-token"
    from_number = "+15005550006"

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict] = []
        self.list_queries: list[dict] = []
        self.list_failures = 0  # how many listings answer 500 before they work
        self.queue_messages = False  # accept messages but keep them queued (no date_sent yet)

    @property
    def path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def sent_to(self, number: str) -> list[dict]:
        with self.lock:
            return [m for m in self.messages if m["to"] == number]

    def handle(self, request, method: str, body: bytes) -> None:
        url = urlsplit(request.path)
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return request.reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if url.path != self.path:
            return request.reply(404, {"code": 20404, "message": "Not found", "status": 404})
        if method == "GET":
            return self.list(request, parse_qs(url.query))
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        with self.lock:
            self.requests.append({"method": method, "form": form})
        behaviour = self.next_behaviour()
        if behaviour[0] == "hang":
            self.hang(behaviour[1])
            return None
        if behaviour[0] == "error":
            status = behaviour[1]
            code = behaviour[2] if len(behaviour) > 2 else None
            headers = {"Retry-After": str(behaviour[3])} if status == 429 and len(behaviour) > 3 else {}
            message = {21211: f"The 'To' number {form.get('To')} is not a valid phone number."}.get(code, "Error")
            return request.reply(status, {"code": code, "message": message, "more_info": "", "status": status}, headers)
        message = self.store(form)
        if behaviour[0] == "accept_then_hang":
            self.hang(behaviour[1])
            return None
        return request.reply(201, message)

    def store(self, form: dict) -> dict:
        now = datetime.now(UTC)
        # Real Twilio sets date_sent only when the message leaves its queue.
        sent_at = None if self.queue_messages else now
        message = {
            "sid": "SM" + uuid.uuid4().hex, "account_sid": self.account_sid, "to": form["To"],
            "from": form["From"], "body": form["Body"], "status": "queued" if sent_at is None else "sent",
            "direction": "outbound-api", "num_segments": "1", "date_created": format_datetime(now, usegmt=True),
            "date_sent": sent_at and format_datetime(sent_at, usegmt=True),
            "date_updated": format_datetime(now, usegmt=True),
            "_sent_at": sent_at, "status_callback": form.get("StatusCallback"),
        }  # fmt: skip
        with self.lock:
            self.messages.append(message)
        return {k: v for k, v in message.items() if not k.startswith("_")}

    def list(self, request, query: dict) -> None:
        to = query.get("To", [None])[0]
        after = query.get("DateSent>", [None])[0]
        with self.lock:
            self.list_queries.append({"to": to, "after": after})
            found = [m for m in self.messages if to is None or m["to"] == to]
            failing, self.list_failures = self.list_failures > 0, max(0, self.list_failures - 1)
        if failing:
            return request.reply(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
        if after:
            since = datetime.strptime(after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            found = [m for m in found if m["_sent_at"] is not None and m["_sent_at"] >= since]
        page = [{k: v for k, v in m.items() if not k.startswith("_")} for m in reversed(found)]  # newest first
        request.reply(200, {"messages": page, "next_page_uri": None, "page": 0, "page_size": 50,
                            "first_page_uri": self.path, "previous_page_uri": None, "uri": self.path,
                            "start": 0, "end": len(page)})  # fmt: skip


class FakePostmark(FakeProvider):
    """Postmark's POST /email (what anymail's Postmark backend calls for one message)."""

    token = "fake-postmark-server-token"

    def __init__(self) -> None:
        super().__init__()
        self.emails: list[dict] = []

    def sent_to(self, address: str) -> list[dict]:
        with self.lock:
            return [e for e in self.emails if e["To"] == address]

    def handle(self, request, method: str, body: bytes) -> None:
        if request.headers.get("X-Postmark-Server-Token") != self.token:
            return request.reply(401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."})
        if method != "POST" or urlsplit(request.path).path != "/email":
            return request.reply(404, {"ErrorCode": 404, "Message": "Not found"})
        payload = json.loads(body)
        with self.lock:
            self.requests.append({"method": method, "json": payload})
        behaviour = self.next_behaviour()
        if behaviour[0] == "hang":
            self.hang(behaviour[1])
            return None
        if behaviour[0] == "error":
            status = behaviour[1]
            if status == 422 and behaviour[2] == 406:
                message = (
                    "You tried to send to a recipient that has been marked as inactive.\n"
                    f"Found inactive addresses: {payload['To']}.\n"
                    "Inactive recipients are ones that have generated a hard bounce or a spam complaint. "
                )
                return request.reply(422, {"ErrorCode": 406, "Message": message})
            headers = {"Retry-After": str(behaviour[3])} if status == 429 and len(behaviour) > 3 else {}
            return request.reply(status, {"ErrorCode": 100, "Message": "Error"}, headers)
        message_id = str(uuid.uuid4())
        with self.lock:
            self.emails.append({**payload, "MessageID": message_id})
        if behaviour[0] == "accept_then_hang":
            self.hang(behaviour[1])
            return None
        request.reply(200, {"To": payload["To"], "SubmittedAt": datetime.now(UTC).isoformat(),
                            "MessageID": message_id, "ErrorCode": 0, "Message": "OK"})  # fmt: skip


def provider_env(twilio: FakeTwilio, postmark: FakePostmark) -> dict[str, str]:
    """Environment pointing a Parley process at the fakes (for e2e tests)."""
    return {
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL_POSTMARK_SERVER_TOKEN": postmark.token,
        "ANYMAIL_POSTMARK_API_URL": postmark.url + "/",
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_FROM_NUMBER": twilio.from_number,
        "TWILIO_API_URL": twilio.url,
        "PARLEY_BASE_URL": "https://parley.test",
    }


@pytest.fixture
def fake_twilio():
    server = FakeTwilio().start()
    yield server
    server.close()


@pytest.fixture
def fake_postmark():
    server = FakePostmark().start()
    yield server
    server.close()


@pytest.fixture
def providers(settings, fake_twilio, fake_postmark):
    """Settings of this (test) process pointing at both fakes, with short timeouts."""
    settings.MAILERS = {"default": {"BACKEND": "anymail.backends.postmark.EmailBackend"}}
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": fake_postmark.token,
                        "POSTMARK_API_URL": fake_postmark.url + "/", "REQUESTS_TIMEOUT": 1.0}  # fmt: skip
    settings.TWILIO_ACCOUNT_SID = fake_twilio.account_sid
    settings.TWILIO_AUTH_TOKEN = fake_twilio.auth_token
    settings.TWILIO_FROM_NUMBER = fake_twilio.from_number
    settings.TWILIO_API_URL = fake_twilio.url
    settings.TWILIO_TIMEOUT = 1.0
    settings.PARLEY_BASE_URL = "https://parley.test"
    return fake_twilio, fake_postmark
