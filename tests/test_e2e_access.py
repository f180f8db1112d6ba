"""Access ends on every daphne: the change is made through one process, the socket on the other is closed."""

import asyncio
import http.cookiejar
import re
import time
import urllib.parse
import urllib.request

import pytest
import websockets

pytestmark = pytest.mark.e2e

WITHIN = 1.0  # seconds from the change to the close (the bound)


class Browser:
    """One browser's cookies, against any daphne of the stack (they share the database)."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.jar if c.name == name)

    def get(self, port: int, path: str) -> str:
        with self.opener.open(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.url

    def post(self, port: int, path: str, data: dict[str, str]) -> str:
        """POST a form as the page would (with its CSRF token); returns the URL it ended on."""
        if not any(c.name == "csrftoken" for c in self.jar):
            self.get(port, "/signup/")
        form = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": self.cookie("csrftoken")}).encode()
        headers = {"Referer": f"http://127.0.0.1:{port}/"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=form, headers=headers)
        with self.opener.open(request, timeout=30) as response:
            return response.url

    def sign_up(self, port: int, handle: str) -> None:
        self.get(port, "/signup/")
        url = self.post(port, "/signup/", {"username": handle, "password1": "a long passphrase 42",
                                            "password2": "a long passphrase 42"})  # fmt: skip
        assert url == f"http://127.0.0.1:{port}/", url

    async def socket(self, port: int, path: str):
        socket = await websockets.connect(
            f"ws://127.0.0.1:{port}{path}",
            additional_headers={"Origin": f"http://127.0.0.1:{port}", "Cookie": f"sessionid={self.cookie('sessionid')}"},
            open_timeout=10,
        )
        assert '"presence"' in await asyncio.wait_for(socket.recv(), 10)  # in the room
        return socket


async def closed_with(socket, started: float) -> int:
    """The close code of `socket`, which must come within WITHIN seconds of `started`."""
    await asyncio.wait_for(socket.wait_closed(), max(0.01, started + WITHIN - time.monotonic()))
    return socket.close_code


def scalar(postgres_server, dbname: str, sql: str) -> int:
    out = postgres_server.psql(sql, dbname=dbname).stdout.decode()
    return int(re.findall(r"^\s*(\d+)\s*$", out, re.M)[0])


async def test_removal_and_logout_through_one_daphne_close_the_socket_on_the_other(stack, postgres_server):
    _, port_a = stack.daphne()
    _, port_b = stack.daphne()
    dbname = stack.env["DATABASE_URL"].rsplit("/", 1)[1]
    ann, bob = Browser(), Browser()
    ann.sign_up(port_b, "ann")
    bob.sign_up(port_a, "bob")
    postgres_server.psql("UPDATE accounts_user SET is_staff = true, is_superuser = true WHERE username = 'ann'",
                         dbname=dbname)  # fmt: skip
    label = ann.post(port_b, "/new/", {"is_private": "on"}).rstrip("/").rsplit("/", 1)[1]
    ann.post(port_b, f"/{label}/invite/", {"handle": "bob"})
    bob.get(port_a, "/lobby/")  # a public room too

    # Bob's sockets are on A; Ann removes him from her room in the admin, on B.
    in_private = await bob.socket(port_a, f"/chat/{label}/")
    in_lobby = await bob.socket(port_a, "/chat/lobby/")
    membership = scalar(postgres_server, dbname,
                        "SELECT m.id FROM chat_membership m JOIN accounts_user u ON u.id = m.user_id"
                        " WHERE u.username = 'bob'")  # fmt: skip
    started = time.monotonic()
    ann.post(port_b, f"/admin/chat/membership/{membership}/delete/", {"post": "yes"})
    assert await closed_with(in_private, started) == 4403
    assert not in_lobby.close_code  # still open: only that room is gone

    # Bob logs out in a tab served by B: his socket on A ends with the session.
    started = time.monotonic()
    assert bob.post(port_b, "/logout/", {}) == f"http://127.0.0.1:{port_b}/"
    assert await closed_with(in_lobby, started) == 4401
