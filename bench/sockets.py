"""Idle sockets benchmark (issue 21): what N silent chat sockets cost one daphne, and how fast they (re)connect.

One daphne per target on the same Redis, Parley also on a durable PostgreSQL
(fsync on): Parley as shipped (`python -m project.webserver`, the pub/sub
layer), and as the floor the bare Channels-tutorial chat on the same pub/sub
layer (no presence, no database). Clients live in several
bench/load/idlers.py processes: they open N sockets over 20 rooms as N/10
logged-in users (`--users`; socket i is user i % users in room i % 20, so a
user's sockets share a room and only the first announces a join), send
nothing, answer pings, and reconnect with the browser's backoff and jitter. A
socket counts as open when its first frame arrives (Parley's `presence`; the
bare chat sends none, so there at the handshake). A size that does not open
within `--open-timeout` ends the target's run (its clients still retrying, it
has no idle figures).

For each N (cumulative: open to 1,000, measure, open to 5,000, ...): connect
rate while opening, daphne CPU per connect (its CPU seconds over the opening /
sockets opened), daphne RSS per socket (RSS growth since it started / N),
daphne CPU (% of one core) over `--idle-seconds` of silence; at the largest N,
the daphne is restarted (SIGTERM, SIGKILL after 15 s, a new one on the same
port) and timed until every client is open again.

    .venv/bin/python bench/sockets.py                 # full run (~15 min once Parley opens 10,000)
    .venv/bin/python bench/sockets.py --smoke         # < 60 s
    .venv/bin/python bench/sockets.py --profile       # and py-spy on each daphne: 5,000 connecting, then idle

Prints a table per target, then one JSON line: open_per_s, idle_cpu_pct_10k,
kb_per_socket, reconnect_all_s_10k (Parley's; open_per_s over the whole
opening, kb_per_socket at the largest N, the `_10k` figures at the largest N),
the same under `bare_...`, and per-N figures (`..._<N>`).
"""

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from bench.common import OUT_DIR, ClientProcess, arg_parser, emit, print_table, servers, spawn, stop  # noqa: E402
from bench.fanout import PUBSUB, prepare_parley, summarize_profile  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

PY = sys.executable
ROOMS = [f"idle{r:02d}" for r in range(20)]
SOCKETS_PER_USER = 10  # under CHAT_MAX_SOCKETS_PER_USER (20) even while a killed daphne's rows are still fresh
# A browser waits as long as the server takes; a short timeout would turn a slow server into a retry storm.
HANDSHAKE_TIMEOUT = 120.0
PROFILE_CONNECT_S, PROFILE_IDLE_S = 30.0, 20.0
STOP_TIMEOUT = 15.0


class Target:
    """One server under test: how its daphne starts and where its clients connect."""

    def __init__(self, name: str, proto: str, env: dict[str, str]) -> None:
        self.name, self.proto, self.env = name, proto, env

    def path(self, room: str) -> str:
        return f"/chat/{room}/" if self.proto == "parley" else f"/ws/chat/{room}/"

    def start(self, port: int, log_dir: Path) -> subprocess.Popen:
        # Parley runs as shipped (the Procfile's web server); the bare chat on plain daphne.
        server, app = (("project.webserver", "project.asgi:application") if self.proto == "parley"
                       else ("daphne", "bench.peers.bare_chat.asgi:application"))  # fmt: skip
        cmd = [PY, "-m", server, "--bind", "127.0.0.1", "--port", str(port), "--websocket-max-message-size", "65536", app]
        proc = spawn(cmd, self.env, log_dir / f"{self.name}-daphne.log")
        try:
            wait_for_port(port, timeout=60, proc=proc)
        except BaseException:
            stop([proc])
            raise
        return proc


class Fleet:
    """The idlers processes of one target, their clients dealt round-robin."""

    def __init__(self, target: Target, port: int, processes: int, concurrency: int, log_dir: Path) -> None:
        config = {"origin": f"http://127.0.0.1:{port}",  # Parley checks the port too
                  "first_frame": target.proto == "parley", "concurrency": max(1, concurrency // processes),
                  "handshake_timeout": HANDSHAKE_TIMEOUT}  # fmt: skip
        self.idlers: list[ClientProcess] = []
        try:
            for k in range(processes):
                # Quitting closes its share of the sockets: give it longer than a load generator.
                self.idlers.append(ClientProcess("idlers.py", config, log_dir / f"idlers-{target.name}-{k}.log", 40.0))
                self.idlers[-1].answer(30.0)
        except BaseException:
            self.close()
            raise

    def add(self, clients: list[dict]) -> None:
        k = len(self.idlers)
        for i, idler in enumerate(self.idlers):
            idler.ask({"cmd": "add", "clients": clients[i::k]})

    def mark(self) -> None:
        for idler in self.idlers:
            idler.ask({"cmd": "mark"})

    def status(self) -> dict:
        answers = [idler.ask({"cmd": "status"}) for idler in self.idlers]
        merged: dict = {"open": 0, "open_since_mark": 0, "attempts": 0, "refused": {}, "failures": {}}
        for a in answers:
            for key in ("open", "open_since_mark", "attempts"):
                merged[key] += a[key]
            for key in ("refused", "failures"):
                for kind, n in a[key].items():
                    merged[key][kind] = merged[key].get(kind, 0) + n
        merged["last_open_at"] = max((a["last_open_at"] for a in answers if a["last_open_at"]), default=None)
        return merged

    def wait_open(self, count: int, timeout: float, key: str = "open") -> dict:
        """Poll until `count` sockets are open (or every client is refused), for at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status[key] >= count or time.monotonic() >= deadline:
                return status
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return [idler.proc.pid for idler in self.idlers]

    def close(self) -> None:
        for idler in self.idlers:
            idler.close()


def raise_fd_limit() -> None:
    """Every socket is a file descriptor on both ends; the daphnes and idlers inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children, so far, the children that ended included.

    PostgreSQL's backends come and go (a daphne thread's connection closes after DB_CONN_MAX_AGE).
    """
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            times = root.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            for child in root.children():
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_kb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 1024


def clients(target: Target, port: int, sessions: list[str], start: int, end: int) -> list[dict]:
    """Sockets start..end-1: socket i is user i % users', in room i % 20 (so each user's sockets share a room)."""
    return [{"url": f"ws://127.0.0.1:{port}{target.path(ROOMS[i % len(ROOMS)])}",
             "cookie": sessions[i % len(sessions)] if target.proto == "parley" else None}
            for i in range(start, end)]  # fmt: skip


def open_to(fleet: Fleet, target: Target, port: int, sessions: list[str], opened: int, n: int,
            timeout: float) -> tuple[dict, float]:  # fmt: skip
    """Open sockets opened..n-1; (status, seconds the opening took)."""
    started = time.monotonic()
    fleet.add(clients(target, port, sessions, opened, n))
    status = fleet.wait_open(n, timeout)
    ended = status["last_open_at"] if status["open"] >= n else time.monotonic()
    return status, max(1e-6, ended - started)


def measure(target: Target, sizes: list[int], sessions: list[str], args, db_pids: list[int], log_dir: Path) -> list[dict]:
    """Open each N in turn, hold it idle, then restart the daphne under the largest: one row per N."""
    port = free_port()
    daphne = target.start(port, log_dir)
    fleet = None
    rows: list[dict] = []
    try:
        time.sleep(1.0)  # let the process settle before its baseline
        rss_start = rss_kb(daphne)
        fleet = Fleet(target, port, args.idlers, args.concurrency, log_dir)
        opened = 0
        for n in sizes:
            profiling = args.profile and n == args.profile_at
            if profiling:
                spy = record(daphne.pid, log_dir / f"profile-{target.name}-connect-{n}.txt", PROFILE_CONNECT_S)
            cpu_before = cpu_seconds([daphne.pid])
            status, seconds = open_to(fleet, target, port, sessions, opened, n, args.open_timeout)
            # CPU per connect: steadier than the rate on a shared machine, where other load slows the opening.
            connect_ms = 1000 * (cpu_seconds([daphne.pid]) - cpu_before) / max(1, status["open"] - opened)
            if profiling:
                spy.wait(PROFILE_CONNECT_S + 30)
            row = {"target": target.name, "n": n, "open": status["open"], "open_s": seconds,
                   "open_per_s": (status["open"] - opened) / seconds, "connect_cpu_ms": connect_ms,
                   "refused": status["refused"], "failures": status["failures"]}  # fmt: skip
            rows.append(row)
            if status["open"] < n:  # the rest still retrying: nothing is idle, so no idle figures
                print(f"{target.name}: only {status['open']} of {n} sockets open after {args.open_timeout:.0f}s; "
                      f"no idle figures at this size, no larger size, no restart", flush=True)  # fmt: skip
                return rows
            opened = n
            time.sleep(2.0)  # the connects' own frames (joins) die down
            pids = [daphne.pid]
            cpu = [cpu_seconds(pids), cpu_seconds(db_pids), cpu_seconds(fleet.pids())]
            began = time.monotonic()
            if profiling:
                spy = record(daphne.pid, log_dir / f"profile-{target.name}-idle-{n}.txt", PROFILE_IDLE_S)
            time.sleep(args.idle_seconds)
            if profiling:
                spy.wait(PROFILE_IDLE_S + 30)
            elapsed = time.monotonic() - began
            after = [cpu_seconds(pids), cpu_seconds(db_pids), cpu_seconds(fleet.pids())]
            daphne_pct, db_pct, idlers_pct = (100 * (b - a) / elapsed for a, b in zip(cpu, after))
            rss = rss_kb(daphne)
            row.update(idle_cpu_pct=daphne_pct, db_cpu_pct=db_pct, idlers_cpu_pct=idlers_pct, rss_mb=rss / 1024,
                       kb_per_socket=(rss - rss_start) / n, still_open=fleet.status()["open"],
                       load_avg=os.getloadavg()[0])  # fmt: skip
        # The restart: every client sees its socket drop and comes back on its own.
        n = sizes[-1]
        fleet.mark()
        began = time.monotonic()
        stop([daphne], timeout=STOP_TIMEOUT)
        stopped = time.monotonic()
        daphne = target.start(port, log_dir)
        listening = time.monotonic()
        status = fleet.wait_open(n, args.reconnect_timeout, key="open_since_mark")
        back = status["open_since_mark"] >= n
        rows[-1].update(
            reconnect_all_s=(status["last_open_at"] - began) if back else math.nan,
            reconnect_from_listen_s=(status["last_open_at"] - listening) if back else math.nan,
            stop_s=stopped - began, restart_s=listening - began, reconnected=status["open_since_mark"],
            reconnect_refused=status["refused"], reconnect_failures=status["failures"],
        )  # fmt: skip
        if not back:
            print(f"{target.name}: only {status['open_since_mark']} of {n} sockets back after "
                  f"{args.reconnect_timeout:.0f}s", flush=True)  # fmt: skip
        return rows
    finally:
        if fleet is not None:
            fleet.close()
        stop([daphne])


def record(pid: int, out: Path, seconds: float) -> subprocess.Popen:
    """py-spy sampling `pid` for `seconds` (collapsed stacks in `out`), without pausing it."""
    return subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--nonblocking", "--format", "raw", "--rate", "100",
                             "--duration", str(int(seconds)), "--pid", str(pid), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


HEADERS = ["target", "sockets", "open/s", "daphne cpu ms/connect", "daphne cpu% idle", "postgres cpu%", "idlers cpu%", "KB/socket",
           "rss MB", "load", "reconnect all s", "from listen s", "stop s", "failures"]  # fmt: skip


def table_row(r: dict) -> list:
    failures = {**r.get("failures", {}), **{f"refused_{k}": v for k, v in r.get("refused", {}).items()}}
    return [r["target"], f"{r['open']:,}/{r['n']:,}", r["open_per_s"], r.get("connect_cpu_ms"), r.get("idle_cpu_pct"), r.get("db_cpu_pct"),
            r.get("idlers_cpu_pct"), r.get("kb_per_socket"), r.get("rss_mb"), r.get("load_avg"),
            r.get("reconnect_all_s"), r.get("reconnect_from_listen_s"), r.get("stop_s"),
            ",".join(f"{k}={v}" for k, v in sorted(failures.items()))]  # fmt: skip


def summary(rows: list[dict], sizes: list[int], prefix: str) -> dict:
    """The JSON figures of one target: at the largest N, and per N."""

    def at(n: int, key: str) -> float | int | None:
        value = next((r.get(key) for r in rows if r["n"] == n), None)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 2)

    opening_s = sum(r["open_s"] for r in rows)
    result = {
        f"{prefix}open_per_s": round(rows[-1]["open"] / opening_s, 1) if rows else None,
        f"{prefix}idle_cpu_pct_10k": at(sizes[-1], "idle_cpu_pct"),
        f"{prefix}kb_per_socket": at(sizes[-1], "kb_per_socket"),
        f"{prefix}reconnect_all_s_10k": at(sizes[-1], "reconnect_all_s"),
    }
    for n in sizes:
        for key in ("open", "open_per_s", "connect_cpu_ms", "idle_cpu_pct", "kb_per_socket"):
            result[f"{prefix}{key}_{n}"] = at(n, key)
    return result


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="socket counts, opened cumulatively")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--targets", default="parley,bare")
    parser.add_argument("--users", type=int, default=0,
                        help="logged-in users, a multiple of 20 (default: one per 10 sockets of the largest size)")
    parser.add_argument("--idlers", type=int, default=4, help="client processes")
    # daphne drops a socket its application has not accepted within 5 s (--websocket_connect_timeout), while
    # the connect's work still runs: more handshakes in flight than it completes in 5 s feed a retry spiral.
    parser.add_argument("--concurrency", type=int, default=40, help="handshakes in flight, over all client processes")
    parser.add_argument("--open-timeout", type=float, default=300.0, help="seconds allowed for each opening step")
    parser.add_argument("--reconnect-timeout", type=float, default=300.0)
    parser.add_argument("--profile", action="store_true",
                        help="py-spy each daphne while the --profile-at sockets connect (30 s), then idle (20 s)")
    parser.add_argument("--profile-at", type=int, default=5000)
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.idle_seconds, args.idlers = "100", 3.0, 2
        args.open_timeout, args.reconnect_timeout = 30.0, 30.0
    sizes = sorted(int(x) for x in args.sizes.split(","))
    names = [x for x in args.targets.split(",") if x]
    raise_fd_limit()
    # Stopped with SIGTERM, still stop the daphnes, the clients and the servers (the `finally`s).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log_dir = OUT_DIR / f"sockets-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)

    with servers(durable=True) as (redis, postgres):
        os.environ["LOG_LEVEL"] = "WARNING"  # this process logs in the users: not a line per login
        users = args.users or max(len(ROOMS), math.ceil(sizes[-1] / SOCKETS_PER_USER / len(ROOMS)) * len(ROOMS))
        parley_env, sessions = prepare_parley(redis, postgres, users, log_dir)
        from chat.models import Room

        for label in ROOMS:
            Room.objects.get_or_create(label=label)
        bare_env = {**parley_env, "DJANGO_SETTINGS_MODULE": "bench.peers.bare_chat.settings",
                    "BARE_CHANNEL_LAYER": PUBSUB}  # fmt: skip
        targets = {"parley": Target("parley", "parley", parley_env), "bare": Target("bare", "bare", bare_env)}
        db_pids = [postgres.proc.pid]
        results: dict[str, list[dict]] = {}
        for name in names:
            results[name] = measure(targets[name], sizes, sessions, args, db_pids, log_dir)
            print_table(f"{name}: {users} users over {len(ROOMS)} rooms, idle {args.idle_seconds:g} s per size",
                        HEADERS, [table_row(r) for r in results[name]])  # fmt: skip
    for out in sorted(log_dir.glob("profile-*.txt")):
        print_table(f"py-spy, {out.stem} (collapsed stacks in {out})", ["function", "self %", "incl %"],
                    summarize_profile(out))  # fmt: skip
    (log_dir / "results.json").write_text(json.dumps(results, default=str, indent=1))
    result: dict = {}
    for name, prefix in (("parley", ""), ("bare", "bare_")):
        if name in results:
            result.update(summary(results[name], sizes, prefix))
    emit(result)


if __name__ == "__main__":
    main()
