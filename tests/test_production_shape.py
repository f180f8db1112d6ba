"""README's "The production shape, locally", run as written: two daphnes serve a room, the worker runs a task.

The commands are read out of README.md's code block, so the README and this
test cannot drift apart. Only the values of the `export` line are the test
session's (its PostgreSQL, Redis and a free pair of ports); `createdb` reaches the
session's PostgreSQL through libpq's PGHOST/PGPORT/PGUSER.
"""

import os
import re
import signal
import socket
import subprocess

import pytest
import requests

from tests.processes import ROOT, base_env, wait_until
from tests.servers import free_port, wait_for_port

pytestmark = pytest.mark.e2e

EXPORT = re.compile(r"export DATABASE_URL=\S+ REDIS_URL=\S+ PORT=\d+(\s+#.*)?")
PASSWORD = "a long passphrase 42"


def readme_commands() -> list[str]:
    """The lines of the shell block under "The production shape, locally", comments dropped."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The production shape, locally", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def two_free_ports() -> int:
    """A port p with p + 1 also free: honcho gives web.1 $PORT and web.2 $PORT+1."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def signed_up_session(base: str, handle: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/signup/", timeout=10).raise_for_status()
    response = session.post(f"{base}/signup/", timeout=10, data={
        "csrfmiddlewaretoken": session.cookies["csrftoken"], "username": handle,
        "password1": PASSWORD, "password2": PASSWORD,
    })  # fmt: skip
    assert response.url == f"{base}/", response.text[:500]
    return session


def test_the_readme_production_shape_starts_and_serves(postgres_server, redis_server, tmp_path):
    commands = readme_commands()
    assert commands[0].startswith("createdb parley")
    [export] = [i for i, line in enumerate(commands) if line.startswith("export ")]
    assert EXPORT.fullmatch(commands[export]), commands[export]
    postgres_server.psql("DROP DATABASE IF EXISTS parley WITH (FORCE)")
    port = two_free_ports()
    commands[export] = (
        f"export DATABASE_URL={postgres_server.url('parley')} REDIS_URL={redis_server.url} PORT={port}"
    )
    env = {k: v for k, v in base_env().items() if k not in {"VIRTUAL_ENV", "PORT", "DJANGO_SETTINGS_MODULE"}}
    # The PATH of a shell that never activated the virtualenv: `python` there has no Django.
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env.update(PGHOST="127.0.0.1", PGPORT=str(postgres_server.port), PGUSER="postgres")
    log = open(tmp_path / "honcho.log", "wb")
    shell = subprocess.Popen(
        ["bash", "-e", "-c", "\n".join(commands)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        for web in (port, port + 1):
            wait_for_port(web, timeout=120, proc=shell)
        base = f"http://127.0.0.1:{port}"
        ann = signed_up_session(base, "ann")
        for web in (port, port + 1):
            page = ann.get(f"http://127.0.0.1:{web}/lobby/", timeout=10)
            assert page.status_code == 200 and "<h1>#lobby</h1>" in page.text, web
        # The worker runs a task: the test notification lands in the list.
        me = ann.get(f"{base}/me/", timeout=10)
        ann.post(f"{base}/notifications/test/", timeout=10,
                 data={"csrfmiddlewaretoken": ann.cookies["csrftoken"], "next": "/me/"})  # fmt: skip
        assert me.status_code == 200
        wait_until(lambda: "Test notification" in ann.get(f"{base}/notifications/", timeout=10).text,
                   timeout=30, interval=0.5, message="the worker running the test notification")  # fmt: skip
        # Two daphnes and two workers, all still up (honcho stops them all when one exits).
        assert shell.poll() is None
        text = (tmp_path / "honcho.log").read_text(errors="replace")
        for name in ("web.1", "web.2", "worker.1", "worker.2"):
            assert f"{name} " in text or f"{name} |" in text, name
    except BaseException:
        print((tmp_path / "honcho.log").read_text(errors="replace"))
        raise
    finally:
        try:
            os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(5)
        except ProcessLookupError:
            pass
