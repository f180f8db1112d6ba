"""Room export through Parley's task runner, in each format, vs `psql \\copy` of the same rows to CSV.

    .venv/bin/python bench/export.py            # what `make bench` runs: 1,000,000 messages
    .venv/bin/python bench/export.py --smoke    # a few seconds, for `make test`

One room of N messages (generated in PostgreSQL with generate_series: 200
posters, texts of 20 to 200 characters, some with commas, quotes and
newlines), then, on the same machine and database:

- jsonl / csv / html: reports.jobs.start_export (what the room page's button
  does), run by one `manage.py runworker compute` process, already started and
  warmed up. Rate = N / (enqueue -> the job's file is ready). The worker's RSS
  is sampled every 20 ms with psutil; the peak over the run is reported, and
  the worker's RSS at rest after the warm-up (what the peak is made of, mostly).
- copy: `psql -c "\\copy (SELECT the same columns, same order) TO file CSV HEADER"`:
  the limit (PostgreSQL formats the rows itself, in C, no Python at all).

CSV and \\copy take turns --rounds times (3); their medians are reported.

PostgreSQL (fsync on) and Redis of the benchmark's own. Targets: CSV within 3x
of \\copy; peak worker RSS under 150 MB for every format.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project root, not bench/, first on sys.path

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    OUT_DIR, arg_parser, emit, median, print_table, servers, setup_parley, spawn, stop, wait_until,
)

FORMATS = ("jsonl", "csv", "html")
POSTERS = 200

GENERATE = """
INSERT INTO chat_message (room_id, user_id, text, client_id, created_at)
SELECT %(room)s,
       %(first_user)s + (g %% %(posters)s),
       CASE WHEN g %% 10 = 0 THEN 'a line, with "quotes"' || chr(10) || 'and a second line '
            ELSE '' END || repeat(md5(g::text), 1 + (g %% 6)),
       'bench-' || g,
       timestamptz '2026-01-01' + g * interval '7 seconds'
FROM generate_series(1, %(count)s) AS g
"""
COPY_QUERY = (
    "SELECT m.id, m.created_at, u.username, u.display_name, m.text FROM chat_message m "
    "JOIN accounts_user u ON u.id = m.user_id WHERE m.room_id = {room} ORDER BY m.id"
)


class PeakRss:
    """The highest RSS of a process, sampled in a thread until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.running = threading.Event()
        self.running.set()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(self.interval)

    def stop(self) -> float:
        """Peak RSS in MB."""
        self.running.clear()
        self.thread.join(5)
        return self.peak / 1e6


class Parley:
    def __init__(self, redis_url: str, database_url: str, media: Path, log_dir: Path) -> None:
        setup_parley(redis_url, database_url, media)
        self.media = media
        self.log_dir = log_dir
        self.worker: subprocess.Popen | None = None

    def make_room(self, label: str, count: int):
        from django.db import connection

        from accounts.models import User
        from chat.models import Room

        users = User.objects.bulk_create(User(username=f"{label}-{i}", display_name=f"Poster {i}") for i in range(POSTERS))
        room = Room.objects.create(label=label)
        first = min(u.pk for u in users)
        with connection.cursor() as cursor:
            cursor.execute(GENERATE, {"room": room.pk, "first_user": first, "posters": POSTERS, "count": count})
            cursor.execute("ANALYZE chat_message")
        return room, users[0]

    def start_worker(self) -> None:
        cmd = [sys.executable, "manage.py", "runworker", "compute"]
        self.worker = spawn(cmd, dict(os.environ), self.log_dir / "export-worker.log")

    def stop_worker(self) -> None:
        stop([self.worker])

    def export(self, user, room, format: str, count: int) -> tuple[float, float, Path]:
        """(messages/s, worker peak RSS in MB, the file) of one export, enqueue to file ready."""
        from reports.jobs import start_export
        from reports.models import Job

        rss = PeakRss(self.worker.pid)
        started = time.perf_counter()
        job, _ = start_export(user, room, format)
        finished = lambda: Job.objects.filter(pk=job.pk, finished_at__isnull=False).exists()  # noqa: E731
        failed = lambda: Job.objects.get(pk=job.pk).status == Job.Status.FAILED  # noqa: E731
        wait_until(lambda: finished() or failed(), timeout=60 + count / 2000, interval=0.02, what=f"{format} export")
        elapsed = time.perf_counter() - started
        peak = rss.stop()
        job.refresh_from_db()
        if job.status != Job.Status.DONE or job.rows_done != count:
            raise RuntimeError(f"{format} export ended {job.status} with {job.rows_done} of {count} rows: {job.user_error}")
        return count / elapsed, peak, self.media / job.file.name


def psql_copy(postgres, dbname: str, room_id: int, count: int, out: Path) -> float:
    """messages/s of psql's \\copy of the export's rows to a CSV file."""
    command = f"\\copy ({COPY_QUERY.format(room=room_id)}) TO '{out}' CSV HEADER"
    started = time.perf_counter()
    subprocess.run(
        [f"{postgres.bindir}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres",
         "-d", dbname, "-v", "ON_ERROR_STOP=1", "-c", command],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="turns of CSV and \\copy (medians are reported)")
    args = parser.parse_args()
    count, rounds = (20_000, 1) if args.smoke else (args.messages, args.rounds)

    work = Path(tempfile.mkdtemp(prefix="parley-bench-export-"))
    log_dir = OUT_DIR / "export-logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    rates: dict[str, float] = {}
    peaks: dict[str, float] = {}
    sizes: dict[str, int] = {}
    try:
        with servers(durable=True) as (redis, postgres):
            dbname = "bench_export"
            parley = Parley(redis.url, postgres.create_database(dbname), work / "media", log_dir)
            generated = time.perf_counter()
            room, user = parley.make_room("bench", count)
            warm_room, _ = parley.make_room("warmup", 100)
            print(f"{count:,} messages generated in {time.perf_counter() - generated:.1f} s; 1 runworker compute; "
                  f"CSV and \\copy: median of {rounds} turns")  # fmt: skip
            parley.start_worker()
            copy_file = work / "copy.csv"
            try:
                for format in FORMATS:  # warm-up: worker up, modules imported
                    parley.export(user, warm_room, format, 100)
                rest_rss = psutil.Process(parley.worker.pid).memory_info().rss / 1e6
                for format in FORMATS:
                    rates[format], peaks[format], path = parley.export(user, room, format, count)
                    sizes[format] = path.stat().st_size
                # The target compares CSV with \copy: they take turns, medians count (the machine is shared).
                csv_rates, copy_rates = [rates["csv"]], []
                for turn in range(rounds):
                    copy_rates.append(psql_copy(postgres, dbname, room.pk, count, copy_file))
                    if turn:  # the first CSV run is above
                        rate, peak, _ = parley.export(user, room, "csv", count)
                        csv_rates.append(rate)
                        peaks["csv"] = max(peaks["csv"], peak)
                rates["csv"], rates["copy"] = median(csv_rates), median(copy_rates)
                sizes["copy"] = copy_file.stat().st_size
            finally:
                parley.stop_worker()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        (f"Parley {format} (runner, 1 runworker)", rates[format], sizes[format] / 1e6, peaks[format], rates["copy"] / rates[format])
        for format in FORMATS
    ]  # fmt: skip
    rows.append(("psql \\copy ... CSV (the limit)", rates["copy"], sizes["copy"] / 1e6, None, 1.0))
    print_table(f"Room export, {count:,} messages", ["", "messages/s", "file MB", "peak RSS MB", "x slower than copy"], rows)
    peak = max(peaks.values())
    print(f"CSV vs \\copy: {rates['copy'] / rates['csv']:.2f}x slower (target <= 3x); peak RSS {peak:.0f} MB "
          f"(target < 150; the worker at rest: {rest_rss:.0f} MB)")  # fmt: skip
    emit({
        "jsonl_msgs_per_s": round(rates["jsonl"]),
        "csv_msgs_per_s": round(rates["csv"]),
        "html_msgs_per_s": round(rates["html"]),
        "copy_msgs_per_s": round(rates["copy"]),
        "peak_rss_mb": round(peak, 1),
        "worker_rest_rss_mb": round(rest_rss, 1),
        "messages": count,
        "rounds": rounds,
    })  # fmt: skip


if __name__ == "__main__":
    main()
