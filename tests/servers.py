"""Real Redis and PostgreSQL servers, started by the test session on free loopback ports.

Also a pytest plugin (`-p tests.servers`): `--stack=postgres` (default) starts
both before Django's settings are read and points DATABASE_URL and REDIS_URL at
them; `--stack=embedded` leaves both unset, so the suite runs on SQLite and the
in-memory layer. The benchmarks use the same classes.
"""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A redis-server of our own; stop() and start() keep the port (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="parley-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        cmd = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # as a crash would: whatever it held is gone
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def pg_bindir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found: run `make test` (it installs postgresql)")
    return os.path.dirname(candidates[-1])


class PostgresServer:
    """A throw-away PostgreSQL cluster. Runs as user postgres when we are root (initdb refuses root)."""

    def __init__(self, durable: bool = False) -> None:
        self.port = free_port()
        self.bindir = pg_bindir()
        self.durable = durable
        self.dir = tempfile.mkdtemp(prefix="parley-pg-")
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.dir, self.user)
        self.proc: subprocess.Popen | None = None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *cmd: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(cmd, user=self.user, cwd=self.dir, **kwargs)

    def start(self) -> "PostgresServer":
        data = os.path.join(self.dir, "data")
        initdb = self._run(
            f"{self.bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = initdb.communicate(timeout=120)
        if initdb.returncode:
            raise RuntimeError(f"initdb failed: {err.decode(errors='replace')}")
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"]
        settings += ["-c", "max_connections=200"]
        if not self.durable:  # tests: speed over crash safety
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.log = open(os.path.join(self.dir, "postgres.log"), "wb")
        self.proc = self._run(f"{self.bindir}/postgres", "-D", data, "-p", str(self.port), *settings,
                              stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for_port(self.port, timeout=60, proc=self.proc)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.psql("SELECT 1", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("PostgreSQL did not accept connections")

    def psql(self, sql: str, dbname: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [f"{self.bindir}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", dbname, "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, check=check, timeout=300,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- pytest plugin ------------------------------------------------------------

_servers: dict[str, object] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stack",
        choices=["postgres", "embedded"],
        default="postgres",
        help="postgres: PostgreSQL + channels-redis (servers started here); embedded: SQLite + in-memory layer",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Point the settings at our servers before pytest-django imports them.

    Under pytest-xdist (`-n N`) each worker process does this for itself, so
    every worker has its own PostgreSQL, Redis, media and SQLite folders and
    workers never see each other's data; the controller runs no test and
    starts nothing.
    """
    stack = early_config.known_args_namespace.stack
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ["PARLEY_TEST_STACK"] = stack
    # The controller too loads the settings, and would leave an empty db.sqlite3 in the checkout.
    os.environ["SQLITE_PATH"] = os.path.join(tempfile.mkdtemp(prefix="parley-sqlite-"), "db.sqlite3")
    if getattr(early_config.known_args_namespace, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        return (yield)
    os.environ.setdefault("MEDIA_ROOT", tempfile.mkdtemp(prefix="parley-media-"))
    if stack == "postgres":
        os.environ["DATABASE_URL"] = shared_postgres().url("parley")
        os.environ["REDIS_URL"] = shared_redis().url
    return (yield)


def shared_redis() -> RedisServer:
    if "redis" not in _servers:
        _servers["redis"] = RedisServer().start()
    return _servers["redis"]


def shared_postgres() -> PostgresServer:
    if "postgres" not in _servers:
        _servers["postgres"] = PostgresServer().start()
    return _servers["postgres"]


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _servers.values():
        server.close()
    _servers.clear()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The session's shared Redis. Tests that stop Redis must start their own RedisServer."""
    return shared_redis()


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    return shared_postgres()


@pytest.fixture
def own_redis():
    """A Redis server this test alone uses, free to stop and start."""
    server = RedisServer().start()
    yield server
    server.close()
