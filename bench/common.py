"""What every benchmark in bench/ shares: servers, processes, percentiles, the report.

A benchmark prints a readable table, then ONE JSON line (the last line of its
output) with the keys its issue names; `--smoke` makes it a few-second run for
`make test`. This module imports only the standard library, so that scripts
running in the peers' virtualenv (.venv-bench) can use it too; the servers come
from tests/servers.py, imported only when asked for.
"""

import argparse
import contextlib
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
OUT_DIR = ROOT / "bench" / "out"


def arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="a few-second run that checks the benchmark works")
    return parser


def bench_python() -> Path | None:
    """The peers' interpreter (`make bench` builds .venv-bench), or None when absent."""
    return BENCH_VENV_PYTHON if BENCH_VENV_PYTHON.exists() else None


@contextlib.contextmanager
def servers(durable: bool = True) -> Iterator[tuple[Any, Any]]:
    """A Redis and a PostgreSQL of our own on free loopback ports, for one run.

    `durable=True` keeps PostgreSQL's fsync on: what a production database does.
    """
    from tests.servers import PostgresServer, RedisServer  # main .venv only (imports pytest)

    redis = RedisServer().start()
    try:
        postgres = PostgresServer(durable=durable).start()
        try:
            yield redis, postgres
        finally:
            postgres.close()
    finally:
        redis.close()


def setup_parley(redis_url: str, database_url: str, media: Path) -> None:
    """Make this process a migrated Parley (production settings) on the bench's own servers."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings", DATABASE_URL=database_url, REDIS_URL=redis_url,
        MEDIA_ROOT=str(media), LOG_LEVEL="WARNING", DEBUG="0", SECRET_KEY="bench-only",
    )  # fmt: skip
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def spawn(cmd: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """Start a process in its own session, output to `log_path` (stop() ends its whole group)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


class ClientProcess:
    """A bench/load/ client process spoken to in JSON lines: a config first, then commands, one answer a line."""

    def __init__(self, script: str, config: dict, log_path: Path, quit_timeout: float = 15.0) -> None:
        self.log = open(log_path, "ab")
        self.quit_timeout = quit_timeout
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "load" / script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, cwd=ROOT,
        )  # fmt: skip
        # A thread reads the answers: select() on a buffered pipe misses lines already read ahead.
        self.answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(config)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.answers.put(line)
        self.answers.put("")

    def send(self, payload: dict) -> None:
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> dict:
        try:
            line = self.answers.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if not line:
            raise RuntimeError(f"{self.proc.args[-1]} gave no answer in {timeout:.0f}s (exit {self.proc.poll()})")
        return json.loads(line)

    def ask(self, payload: dict, timeout: float = 30.0) -> dict:
        self.send(payload)
        return self.answer(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(self.quit_timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def stop(procs: Sequence[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM each process group, then SIGKILL what is still there after `timeout`."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def cpu_seconds(procs: Sequence[subprocess.Popen]) -> float:
    """CPU time (user + system) used so far by the process groups spawn() started.

    On a shared machine, CPU per unit of work varies much less than wall-clock rates.
    """
    groups = {proc.pid for proc in procs}
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in groups:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
                total += int(fields[11]) + int(fields[12])
    return total / tick


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(interval)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain-text table; floats get thousands separators and decimals as their size needs."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.2f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
        return "-" if value is None else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    sys.stdout.flush()


def emit(result: dict[str, Any]) -> None:
    """The benchmark's machine-readable result: the last line of its output."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    print(json.dumps(clean, sort_keys=False), flush=True)


def last_json_line(output: str) -> dict[str, Any]:
    """The JSON result a benchmark (or a measuring child process) ended its output with."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output")
    return json.loads(lines[-1])
