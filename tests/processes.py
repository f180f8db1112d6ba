"""Real Parley processes for end-to-end tests: daphne, runworker, runserver.

Each e2e test gets its own PostgreSQL database (migrated) on the session's
server, so processes of different tests never share state.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


class Stack:
    """Environment for Parley processes: one database, one Redis, logs in a folder."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    @classmethod
    def postgres(cls, postgres_server, redis_url: str, log_dir: Path, **extra: str) -> "Stack":
        dbname = f"e2e_{uuid.uuid4().hex[:12]}"
        template = migrated_template(postgres_server)
        postgres_server.psql(f'CREATE DATABASE "{dbname}" TEMPLATE "{template}"')
        env = base_env(DATABASE_URL=postgres_server.url(dbname), REDIS_URL=redis_url, **extra)
        return cls(env, log_dir)

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def daphne(self, port: int | None = None) -> tuple[subprocess.Popen, int]:
        port = port or free_port()
        proc = self._spawn("daphne", [
            sys.executable, "-m", "project.webserver", "--bind", "127.0.0.1", "--port", str(port),
            "--websocket-max-message-size", "65536", "project.asgi:application",
        ])  # fmt: skip
        wait_for_port(port, timeout=30, proc=proc)
        return proc, port

    def runworker(self, *queues: str, concurrency: str = "", settings: str | None = None) -> subprocess.Popen:
        """A worker serving `queues` (all of them by default), with `concurrency` slots if given, on another
        settings module if given (tests.e2e_settings: a worker that dawdles where the test kills it)."""
        queues = queues or ("default", "thumbnails", "notifications", "compute")
        slots = ["--concurrency", concurrency] if concurrency else []
        env = dict(self.env, DJANGO_SETTINGS_MODULE=settings) if settings else None
        return self._spawn("worker", [sys.executable, "manage.py", "runworker", *slots, *queues], env)

    def runserver(self, port: int | None = None) -> tuple[subprocess.Popen, int]:
        port = port or free_port()
        proc = self._spawn("runserver", [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"])
        wait_for_port(port, timeout=60, proc=proc)
        return proc, port

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.log_dir.glob("*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


_templates: dict[int, str] = {}


def migrated_template(postgres_server) -> str:
    """A database migrated once per server; each test's database is a copy (fast)."""
    if postgres_server.port not in _templates:
        name = "e2e_template"
        url = postgres_server.create_database(name)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT, env=base_env(DATABASE_URL=url), check=True, timeout=300,
        )  # fmt: skip
        _templates[postgres_server.port] = name
    return _templates[postgres_server.port]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", PYTHONUNBUFFERED="1", LOG_LEVEL="INFO", **extra)
    return env


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{message} not reached in {timeout}s")
