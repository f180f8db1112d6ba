"""Task runners compared: Parley, Celery and django-tasks-db on one machine, one Redis, one PostgreSQL.

    .venv/bin/python bench/tasks.py            # what `make bench` runs
    .venv/bin/python bench/tasks.py --smoke    # a few seconds, for `make test`

For each system, with a no-op task, on its own fresh database of one durable
PostgreSQL (fsync on) and the same Redis:

- enqueue rate: N tasks enqueued one after another by one process, workers stopped;
- drain rate: then 2 worker processes start; N / (the moment the benchmark sees
  the last one done - the moment the first one started), so workers' start-up
  time is not counted;
- workers' CPU per task during the drain (user + system time of the worker
  process groups, start-up excluded): on a shared machine it varies far less
  than rates do;
- enqueue-to-start latency: with the workers idle, tasks enqueued one at a time
  at a modest rate; each task returns time.time() when it starts, compared with
  the time taken just before its enqueue call (p50/p99);
- I/O-bound drain (Parley and Celery): N tasks that each wait 50 ms, the work of
  the `notifications` queue (a provider's HTTP call), drained like the no-op
  ones by 2 fresh worker processes: for Parley once as sync tasks
  (time.sleep) and once as async ones (await asyncio.sleep), for Celery as
  sync tasks on `--pool=threads --concurrency=8` (2 processes, so 16 threads).
  Parley's workers get `runworker --concurrency 8` when runworker has that
  option (slots per process; without it a process runs one task at a time).
  Each worker process's resident memory is sampled during these runs, and the
  peak of the biggest process reported.

Workers: Parley `manage.py runworker default` x2 (from .venv); Celery one
`celery worker --pool=prefork --concurrency=2` (Redis broker, acks_late,
task_reject_on_worker_lost, default prefetch); django-tasks-db `db_worker
--interval 0.1` x2 (1 s by default, which alone would set its enqueue-to-start latency).
Each system logs warnings only, so no worker pays for a terminal.

Each system is measured in a child process (`--system NAME`) so that each has
its own settings; peers run from .venv-bench (bench/requirements.txt). With
`--rounds R` the systems take turns R times and the table shows medians: the
machine is shared, and turns spread the noise over all of them. `--systems
parley` measures Parley alone (peers are skipped anyway when .venv-bench is absent).
`--metrics on` runs Parley's processes with Prometheus metrics counted (METRICS_TOKEN
set), `--metrics both` measures Parley twice a round, metrics off and on, in turns
whose order flips every round (the row "Parley, metrics on"; JSON keys parley_metrics_*).
"""

import sys
from pathlib import Path

# `python bench/tasks.py` puts bench/ first on sys.path, where this very file
# would shadow Parley's `tasks` app: the project root goes there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import (  # noqa: E402
    OUT_DIR,
    arg_parser,
    bench_python,
    cpu_seconds,
    emit,
    last_json_line,
    median,
    percentile,
    print_table,
    servers,
    spawn,
    stop,
    wait_until,
)

SYSTEMS = ("parley", "celery", "dtdb")
LABELS = {"parley": "Parley", "parley_metrics": "Parley, metrics on", "celery": "Celery", "dtdb": "django-tasks-db"}
WORKERS = 2
IO_SLEEP = 0.05  # seconds each I/O-bound task waits


# --- The systems, each driven from its own child process -----------------------


class Parley:
    """Parley's backend through django.tasks; real `manage.py runworker` processes."""

    def __init__(self, redis_url: str, database_url: str, log_dir: Path, metrics: bool = False) -> None:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="project.settings", DATABASE_URL=database_url, REDIS_URL=redis_url,
            LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"), DEBUG="0", SECRET_KEY="bench-only",
            # Counted in the enqueuing process and the workers alike (nothing scrapes them here).
            METRICS_TOKEN="bench-metrics-token" if metrics else "",
        )  # fmt: skip
        import django

        django.setup()
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        async_to_sync(get_channel_layer().flush)()
        from bench.peers.io_jobs import io_async, io_sync
        from bench.peers.jobs import noop
        from tasks.models import TaskRecord

        self.noop, self.records, self.log_dir = noop, TaskRecord.objects, log_dir
        self.io_tasks = {"sync": io_sync, "async": io_async}
        self.procs: list[subprocess.Popen] = []
        # Slots per worker process (`runworker --concurrency N`) exist once runworker lists the option.
        help_text = subprocess.run(
            [sys.executable, "manage.py", "runworker", "--help"], cwd=ROOT, capture_output=True, text=True
        ).stdout  # fmt: skip
        self.has_slots = "--concurrency" in help_text

    def enqueue(self, enqueued_at: float) -> str:
        return self.noop.enqueue(enqueued_at).id

    def start_workers(self, concurrency: int | None = None) -> None:
        cmd = [sys.executable, "manage.py", "runworker", "default"]
        if concurrency and self.has_slots:
            cmd += ["--concurrency", str(concurrency)]
        self.procs = [spawn(cmd, dict(os.environ), self.log_dir / f"parley-worker-{i}.log") for i in range(WORKERS)]

    def io_slots(self, concurrency: int) -> str:
        return f"{concurrency} slots" if self.has_slots else "1 slot (runworker has no --concurrency)"

    def io_enqueue(self, kind: str, count: int) -> list[str]:
        return [self.io_tasks[kind].enqueue(IO_SLEEP).id for _ in range(count)]

    def stop_workers(self) -> None:
        stop(self.procs)

    def done_count(self) -> int:
        return self.records.filter(status="SUCCESSFUL").count()

    def start_times(self, ids: list[str]) -> list[float]:
        started = {str(pk): value for pk, value in self.records.values_list("id", "return_value")}
        return [started[i] for i in ids]


class DjangoTasksDB:
    """django-tasks-db's DatabaseBackend through django.tasks; `db_worker` processes."""

    def __init__(self, redis_url: str, database_url: str, log_dir: Path) -> None:
        os.environ.update(DJANGO_SETTINGS_MODULE="bench.peers.dtdb_settings", BENCH_DATABASE_URL=database_url)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        from django_tasks_db.models import DBTaskResult

        from bench.peers.jobs import noop

        self.noop, self.records, self.log_dir = noop, DBTaskResult.objects, log_dir
        self.procs: list[subprocess.Popen] = []

    def enqueue(self, enqueued_at: float) -> str:
        return self.noop.enqueue(enqueued_at).id

    def start_workers(self) -> None:
        cmd = [sys.executable, "-m", "django", "db_worker", "--interval", "0.1", "--no-startup-delay", "--no-reload"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.procs = [spawn(cmd, env, self.log_dir / f"dtdb-worker-{i}.log") for i in range(WORKERS)]

    def stop_workers(self) -> None:
        stop(self.procs)

    def done_count(self) -> int:
        return self.records.successful().count()

    def start_times(self, ids: list[str]) -> list[float]:
        started = {str(pk): value for pk, value in self.records.values_list("id", "return_value")}
        return [started[i] for i in ids]


class Celery:
    """Celery with a Redis broker; one prefork worker with 2 processes."""

    def __init__(self, redis_url: str, database_url: str, log_dir: Path) -> None:
        os.environ["BENCH_REDIS_URL"] = redis_url
        import redis

        from bench.peers.celery_app import REDIS_URL, io_sleep, noop

        self.results = redis.Redis.from_url(f"{REDIS_URL}/1")
        self.results.flushall()
        self.noop, self.io_sleep, self.log_dir = noop, io_sleep, log_dir
        self.procs: list[subprocess.Popen] = []

    def enqueue(self, enqueued_at: float) -> str:
        return self.noop.delay(enqueued_at).id

    def start_workers(self, concurrency: int | None = None) -> None:
        """No-op runs: one prefork worker of 2 processes; I/O runs: 2 processes of `concurrency` threads."""
        celery = [sys.executable, "-m", "celery", "-A", "bench.peers.celery_app", "worker", "--loglevel=WARNING"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if concurrency is None:
            cmd = [*celery, "--pool=prefork", f"--concurrency={WORKERS}"]
            self.procs = [spawn(cmd, env, self.log_dir / "celery-worker.log")]
            return
        self.procs = [
            spawn([*celery, "--pool=threads", f"--concurrency={concurrency}", "-n", f"io{i}@%h"], env,
                  self.log_dir / f"celery-io-worker-{i}.log")
            for i in range(WORKERS)
        ]  # fmt: skip

    def io_slots(self, concurrency: int) -> str:
        return f"{concurrency} threads"

    def io_enqueue(self, kind: str, count: int) -> list[str]:
        return [self.io_sleep.delay(IO_SLEEP).id for _ in range(count)]

    def stop_workers(self) -> None:
        stop(self.procs)

    def done_count(self) -> int:
        return self.results.dbsize()

    def start_times(self, ids: list[str]) -> list[float]:
        metas = []
        for start in range(0, len(ids), 1000):
            metas += self.results.mget([f"celery-task-meta-{i}" for i in ids[start : start + 1000]])
        return [json.loads(meta)["result"] for meta in metas]


SYSTEM_CLASSES = {"parley": Parley, "celery": Celery, "dtdb": DjangoTasksDB}


def rss_mb(procs: list[subprocess.Popen]) -> float:
    """Resident memory of the biggest of these process groups (spawn() starts each in its own), in MB.

    Read from /proc rather than with psutil: the peers' virtualenv runs this too.
    """
    groups = dict.fromkeys((proc.pid for proc in procs), 0)
    page = os.sysconf("SC_PAGE_SIZE")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in groups:  # fields after "(comm)": state ppid pgrp ... rss(21)
                groups[int(fields[2])] += int(fields[21]) * page
    return max(groups.values(), default=0) / 2**20


def measure_io(system: Any, kind: str, count: int, concurrency: int) -> tuple[float, float]:
    """Tasks/s of `count` I/O-bound tasks drained by fresh workers, and their peak RSS (MB)."""
    before = system.done_count()
    ids = system.io_enqueue(kind, count)
    system.start_workers(concurrency)
    peak = 0.0
    stop_sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop_sampling.wait(0.2):
            peak = max(peak, rss_mb(system.procs))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # One slot per process at worst: count * IO_SLEEP / WORKERS seconds.
        wait_until(lambda: system.done_count() >= before + count, timeout=60 + count * IO_SLEEP, interval=0.025,
                   what=f"{kind} I/O tasks")  # fmt: skip
        drained_at = time.time()
        per_s = count / (drained_at - min(system.start_times(ids)))
        peak = max(peak, rss_mb(system.procs))
    finally:
        stop_sampling.set()
        sampler.join()
        system.stop_workers()
    return per_s, peak


def measure(system: Any, drain: int, latency: int, rate: float, io: int, concurrency: int) -> dict[str, Any]:
    """One system's figures; its workers are stopped whatever happens."""
    started = time.perf_counter()
    ids = [system.enqueue(0.0) for _ in range(drain)]
    enqueue_per_s = drain / (time.perf_counter() - started)

    system.start_workers()
    try:
        # Workers' CPU per task, from the first task seen done to the last (start-up excluded).
        first_done = wait_until(system.done_count, timeout=120, interval=0.025, what="a first task done")
        cpu_before = cpu_seconds(system.procs)
        wait_until(lambda: system.done_count() >= drain, timeout=60 + drain / 20, interval=0.025, what="drain")
        drained_at = time.time()
        cpu_ms_per_task = (cpu_seconds(system.procs) - cpu_before) * 1000 / max(1, drain - first_done)
        first_start = min(system.start_times(ids))
        drain_per_s = drain / (drained_at - first_start)

        time.sleep(1.0)  # let the workers settle into idle
        sent: list[tuple[str, float]] = []
        next_at = time.monotonic()
        for _ in range(latency):
            enqueued_at = time.time()
            sent.append((system.enqueue(enqueued_at), enqueued_at))
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        wait_until(lambda: system.done_count() >= drain + latency, timeout=60, interval=0.05, what="latency tasks")
        starts = system.start_times([task_id for task_id, _ in sent])
        latencies = [(start - enqueued_at) * 1000 for start, (_, enqueued_at) in zip(starts, sent)]
    finally:
        system.stop_workers()
    figures: dict[str, Any] = {
        "enqueue_per_s": enqueue_per_s,
        "drain_per_s": drain_per_s,
        "worker_cpu_ms_per_task": cpu_ms_per_task,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }
    if hasattr(system, "io_enqueue"):
        kinds = ["sync", "async"] if isinstance(system, Parley) else ["sync"]
        peaks = []
        for kind in kinds:
            figures[f"io_{kind}_per_s"], peak = measure_io(system, kind, io, concurrency)
            peaks.append(peak)
        figures["io_rss_mb"] = max(peaks)
        figures["io_slots"] = system.io_slots(concurrency)
    return figures


# --- The run: servers, turns, table ------------------------------------------------


def run_child(python: Path, name: str, redis: Any, database_url: str, args: Any, log_dir: Path) -> dict[str, Any]:
    """Measure one system (parley_metrics: Parley with metrics on) in its own process; its output goes to the log folder."""
    system = "parley" if name == "parley_metrics" else name
    cmd = [
        str(python), str(ROOT / "bench" / "tasks.py"), "--system", system, "--metrics", "on" if name == "parley_metrics" else "off",
        "--redis-url", redis.url, "--database-url", database_url, "--log-dir", str(log_dir),
        "--drain", str(args.drain), "--latency", str(args.latency), "--rate", str(args.rate),
        "--io", str(args.io), "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    timeout = 180 + args.drain / 20 + args.latency / args.rate + 2 * (60 + args.io * IO_SLEEP)
    # Each system brings its own settings: none inherits ours (Celery, say, sets
    # Django up by itself whenever DJANGO_SETTINGS_MODULE is in its environment).
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL"}}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    (log_dir / f"{name}-child.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"measuring {system} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return last_json_line(proc.stdout)


def main_run(args: Any) -> None:
    peers_python = bench_python()
    pythons: dict[str, Path | None] = {"parley": Path(sys.executable), "parley_metrics": Path(sys.executable),
                                       "celery": peers_python, "dtdb": peers_python}  # fmt: skip
    chosen = set(args.systems.split(","))
    if "parley" in chosen and args.metrics == "both":
        chosen.add("parley_metrics")
    names = [name for name in LABELS if name in chosen]
    if args.metrics == "on":  # measured as parley_metrics only
        names = [("parley_metrics" if name == "parley" else name) for name in names]
    log_dir = OUT_DIR / f"tasks-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in LABELS}
    with servers(durable=True) as (redis, postgres):
        for turn in range(args.rounds):
            for name in names if turn % 2 == 0 else names[::-1]:
                if pythons[name] is None:
                    continue
                database_url = postgres.create_database(f"{name}_{turn}")
                runs[name].append(run_child(pythons[name], name, redis, database_url, args, log_dir))
                print(f"round {turn + 1} {LABELS[name]}: {json.dumps(runs[name][-1])}", flush=True)

    def figure(name: str, key: str) -> float | None:
        values = [run[key] for run in runs[name]]
        return median(values) if values else None

    rows = []
    for name in names:
        if not runs[name]:
            rows.append([LABELS[name], None, None, None, None, None, "skipped: no .venv-bench (`make bench` builds it)"])
            continue
        note = f"median of {len(runs[name])}" if len(runs[name]) > 1 else ""
        rows.append([LABELS[name], *(figure(name, k) for k in ("enqueue_per_s", "drain_per_s", "worker_cpu_ms_per_task", "p50_ms", "p99_ms")), note])
    print_table(
        f"No-op tasks, {WORKERS} worker processes each, durable PostgreSQL + Redis; "
        f"drain of {args.drain}, latency over {args.latency} at {args.rate:g}/s",
        ["system", "enqueue/s", "drain/s", "worker CPU ms/task", "p50 ms", "p99 ms", ""],
        rows,
    )
    io_rows = []
    for name, kind in (("parley", "sync"), ("parley", "async"), ("parley_metrics", "sync"),
                       ("parley_metrics", "async"), ("celery", "sync")):  # fmt: skip
        if name in names and runs[name]:
            slots = runs[name][0]["io_slots"]
            io_rows.append([f"{LABELS[name]} {kind}", figure(name, f"io_{kind}_per_s"), figure(name, "io_rss_mb"), slots])
    if io_rows:
        print_table(
            f"I/O-bound tasks ({args.io} that each wait {IO_SLEEP * 1000:g} ms), {WORKERS} worker processes each",
            ["system", "tasks/s", "worker RSS peak MB", "per process"],
            io_rows,
        )
    parley_drain, celery_drain = figure("parley", "drain_per_s"), figure("celery", "drain_per_s")
    ratios = [p["drain_per_s"] / c["drain_per_s"] for p, c in zip(runs["parley"], runs["celery"])]
    print(f"\nParley/Celery drain ratio per round: {', '.join(f'{r:.2f}' for r in ratios) or '-'}; logs in {log_dir}")
    metrics_ratios = [on["drain_per_s"] / off["drain_per_s"] for on, off in zip(runs["parley_metrics"], runs["parley"])]
    metrics_cpu = [on["worker_cpu_ms_per_task"] / off["worker_cpu_ms_per_task"]
                   for on, off in zip(runs["parley_metrics"], runs["parley"])]  # fmt: skip
    if metrics_ratios:
        print(f"Parley metrics on/off per round: drain {', '.join(f'{r:.3f}' for r in metrics_ratios)}; "
              f"worker CPU per task {', '.join(f'{r:.3f}' for r in metrics_cpu)}")  # fmt: skip
    emit({
        "parley_drain_per_s": parley_drain,
        "celery_drain_per_s": celery_drain,
        "dtdb_drain_per_s": figure("dtdb", "drain_per_s"),
        "parley_p50_ms": figure("parley", "p50_ms"),
        "parley_p99_ms": figure("parley", "p99_ms"),
        "celery_p50_ms": figure("celery", "p50_ms"),
        "celery_p99_ms": figure("celery", "p99_ms"),
        "dtdb_p50_ms": figure("dtdb", "p50_ms"),
        "dtdb_p99_ms": figure("dtdb", "p99_ms"),
        "ratio_vs_celery": median(ratios) if ratios else None,
        "parley_enqueue_per_s": figure("parley", "enqueue_per_s"),
        "celery_enqueue_per_s": figure("celery", "enqueue_per_s"),
        "dtdb_enqueue_per_s": figure("dtdb", "enqueue_per_s"),
        "parley_worker_cpu_ms_per_task": figure("parley", "worker_cpu_ms_per_task"),
        "celery_worker_cpu_ms_per_task": figure("celery", "worker_cpu_ms_per_task"),
        "dtdb_worker_cpu_ms_per_task": figure("dtdb", "worker_cpu_ms_per_task"),
        "io_sync_per_s": figure("parley", "io_sync_per_s"),
        "io_async_per_s": figure("parley", "io_async_per_s"),
        "celery_io_per_s": figure("celery", "io_sync_per_s"),
        "parley_rss_mb": figure("parley", "io_rss_mb"),
        "celery_rss_mb": figure("celery", "io_rss_mb"),
        "parley_slots": runs["parley"][0]["io_slots"] if runs["parley"] else None,
        "parley_metrics_drain_per_s": figure("parley_metrics", "drain_per_s"),
        "parley_metrics_p50_ms": figure("parley_metrics", "p50_ms"),
        "parley_metrics_p99_ms": figure("parley_metrics", "p99_ms"),
        "parley_metrics_worker_cpu_ms_per_task": figure("parley_metrics", "worker_cpu_ms_per_task"),
        "metrics_drain_ratio": median(metrics_ratios) if metrics_ratios else None,
        "metrics_cpu_ratio": median(metrics_cpu) if metrics_cpu else None,
        "smoke": args.smoke,
    })  # fmt: skip


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--drain", type=int, help="tasks enqueued, then drained (default 5000; smoke 200)")
    parser.add_argument("--latency", type=int, help="tasks timed from enqueue to start (default 500; smoke 20)")
    parser.add_argument("--rate", type=float, default=50.0, help="latency tasks enqueued per second")
    parser.add_argument("--io", type=int, help="I/O-bound tasks drained, each kind (default 2000; smoke 20)")
    parser.add_argument("--concurrency", type=int, default=8, help="Celery's threads and Parley's slots per process")
    parser.add_argument("--rounds", type=int, help="turns each system takes; the table shows medians (default 3)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="which to measure, e.g. parley,celery")
    parser.add_argument("--metrics", choices=("off", "on", "both"), default="off",
                        help="Parley with Prometheus metrics counted: off, on, or both (measured in turns)")
    # A child process measuring one system (run_child):
    parser.add_argument("--system", choices=SYSTEMS, help="measure this system only (internal)")
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url")
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args()
    args.drain = args.drain or (200 if args.smoke else 5000)
    args.latency = args.latency or (20 if args.smoke else 500)
    args.io = args.io or (20 if args.smoke else 2000)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    if args.system:
        options = {"metrics": args.metrics == "on"} if args.system == "parley" else {}
        system = SYSTEM_CLASSES[args.system](args.redis_url, args.database_url, args.log_dir, **options)
        emit(measure(system, args.drain, args.latency, args.rate, args.io, args.concurrency))
    else:
        main_run(args)


if __name__ == "__main__":
    main()
