"""Avatar thumbnails: through Parley's task runner vs the same function in a plain loop vs a naive one.

    .venv/bin/python bench/thumbnails.py            # what `make bench` runs
    .venv/bin/python bench/thumbnails.py --smoke    # a few seconds, for `make test`

One set of 3000x2000 camera-sized JPEGs (made here with Pillow, photo-like:
gradients and grain), then, on the same machine, turn by turn:

- parley: the upload path to files on disk. Users get their avatar through
  accounts.uploads.store_avatar (original written through default_storage,
  task row + bell: what the profile view does once the upload has passed its
  checks) and 2 `manage.py runworker thumbnails` processes make the thumbnails.
  The workers are warm and paused (SIGSTOP) while the uploads go in; the rate is
  avatars / (SIGCONT -> the end of the last thumbnail task, as the runner
  recorded it): the runner's throughput, with its bells, claims, bookkeeping
  and storage API included.
  PostgreSQL (fsync on) and Redis of the benchmark's own.
- parley end to end (for information): the same, uploads made by one process
  while the workers run; on 2 cores the uploader takes CPU from the workers.
- loop: accounts.images.render_thumbnails in a plain loop in 2 processes
  (multiprocessing), each reading an original from disk and writing its 4 files.
- naive: the loop with render_thumbnails(draft=False): the JPEG decoded at full
  size (everything else the same).

With --rounds R (5 by default) the three take turns R times, the loop always
between the other two and their order reversed every other round (parley,
loop, naive; then naive, loop, parley), so neither gains from its place. The
table shows medians, as the machine is shared. `ratio_vs_loop` is the median
of the per-round ratios, each round's Parley over the loop measured right next
to it: the machine's drift from one round to the next does not move it as it
moves a ratio of medians (printed too, `ratio_of_medians_vs_loop`). Next to
avatars/s the table shows CPU ms per avatar:
for Parley its two workers plus PostgreSQL and Redis over the drain, for the
loops their own processes. On a busy shared machine the wall-clock ratio
flatters the runner (its processes get a larger share of the CPU); the CPU
ratio does not.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project root, not bench/, first on sys.path

import contextlib  # noqa: E402
import io  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    OUT_DIR,
    arg_parser,
    cpu_seconds,
    emit,
    median,
    print_table,
    servers,
    setup_parley,
    spawn,
    stop,
    wait_until,
)

WORKERS = 2
WIDTH, HEIGHT = 3000, 2000


def photo_jpeg(seed: int) -> bytes:
    """A 3000x2000 JPEG of ~1.5 MB, different for each seed."""
    from PIL import Image

    base = Image.linear_gradient("L").rotate(seed * 37 % 360).resize((WIDTH, HEIGHT))
    grain = Image.effect_noise((WIDTH // 8, HEIGHT // 8), 50 + seed % 20).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    image = Image.merge("RGB", (base, grain, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


# --- The plain loop, in WORKERS processes -----------------------------------------------------


def loop_one(job: tuple[str, str, bool]) -> float:
    """One avatar in a pool process; returns the CPU seconds it took."""
    from accounts.images import render_thumbnails

    cpu = time.process_time()
    source, out_dir, draft = job
    with open(source, "rb") as fh:
        files = render_thumbnails(fh.read(), draft=draft)
    stem = Path(source).stem
    for output, data in files.items():
        with open(os.path.join(out_dir, f"{stem}-{output}"), "wb") as fh:
            fh.write(data)
    return time.process_time() - cpu


def run_loop(sources: list[Path], out_dir: Path, draft: bool) -> tuple[float, float]:
    """Avatars per second of render_thumbnails over `sources` in WORKERS processes, and CPU ms per avatar.

    `out_dir` must be new. Nothing is deleted until every measurement is done:
    this machine's ext4 scans past the recently freed inodes for each new one,
    so removing a turn's files made the next turn's file creation cost kernel
    CPU per avatar, whoever's turn that was.
    """
    out_dir.mkdir(parents=True)
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        pool.map(loop_one, [(str(sources[0]), str(out_dir), draft)] * WORKERS)  # warm up both processes
        started = time.perf_counter()
        cpu = pool.map(loop_one, [(str(s), str(out_dir), draft) for s in sources], chunksize=1)
        elapsed = time.perf_counter() - started
    assert len(list(out_dir.iterdir())) == 4 * len(sources)
    return len(sources) / elapsed, 1000 * sum(cpu) / len(sources)


def settle_filesystem() -> None:
    """Flush dirty data and drop the kernel's clean caches (root only), before anything is measured.

    This machine's ext4 has no journal, and then every new inode scans past
    the recently freed ones whose inode-table blocks are still cached (the
    kernel's recently_deleted(); perf showed it). Whatever ran before (the
    suite, the tasks benchmark's PostgreSQL) leaves thousands: a thumbnail set
    then cost kernel CPU, Parley's more than the loop's, as each of its avatars
    makes a directory. Dropped blocks are not scanned.
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        print(f"Could not drop the page cache ({exc}): file creation may cost more than it should.")


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their children (PostgreSQL's backends)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
    return total


# --- Parley: uploads, runner, workers ---------------------------------------------------------------


class Parley:
    def __init__(self, redis_url: str, database_url: str, media: Path, log_dir: Path, server_pids: list[int]) -> None:
        setup_parley(redis_url, database_url, media)
        self.log_dir = log_dir
        self.server_pids = server_pids
        self.procs: list[subprocess.Popen] = []
        self.round = 0

    def start_workers(self) -> None:
        cmd = [sys.executable, "manage.py", "runworker", "thumbnails"]
        self.procs = [spawn(cmd, dict(os.environ), self.log_dir / f"thumbnail-worker-{i}.log") for i in range(WORKERS)]

    def stop_workers(self) -> None:
        stop(self.procs)

    def upload(self, originals: list[bytes], count: int) -> list[int]:
        """Give `count` new users an avatar (cycling through `originals`) the way the profile view does."""
        from django.core.files.base import ContentFile

        from accounts.uploads import store_avatar
        from accounts.models import User

        self.round += 1
        users = User.objects.bulk_create(User(username=f"r{self.round}u{i}") for i in range(count))
        for i, user in enumerate(users):
            store_avatar(user, ContentFile(originals[i % len(originals)], name="a.jpg"), "JPEG")
        return [user.pk for user in users]

    def wait_ready(self, ids: list[int]) -> float:
        """When (time.time()) the last of these users' thumbnail tasks ended.

        The time is the runner's own record (finished_at of the last task), so
        the poll can be rare: every 0.2 s. A frequent poll took a visible share
        of a 2-core machine (this process and its PostgreSQL backend) from the
        workers it was timing.
        """
        from django.db.models import Max

        from accounts.models import User
        from tasks.models import TaskRecord

        tasks = TaskRecord.objects.filter(task_path="accounts.tasks.make_thumbnails")
        unfinished = tasks.filter(status__in=["READY", "RUNNING"])
        wait_until(lambda: not unfinished.exists(), timeout=60 + len(ids), interval=0.2, what="all thumbnails")
        assert not User.objects.filter(pk__in=ids, avatar_digest="").exists(), "a thumbnail task did not finish its set"
        return tasks.aggregate(end=Max("finished_at"))["end"].timestamp()

    def cpu(self) -> float:
        """CPU seconds of the workers, PostgreSQL and Redis: what the runner's avatars cost the machine."""
        return cpu_seconds(self.procs) + tree_cpu(self.server_pids)

    def drain(self, originals: list[bytes], count: int) -> tuple[float, float]:
        """Avatars/s of 2 warm workers over `count` avatars uploaded while they were paused.

        The workers are started and warmed up, then paused (SIGSTOP) while the
        uploads go in, so the uploading process does not compete with them for
        the CPU; the clock runs from SIGCONT to the last user's thumbnails.
        Also returns the CPU ms per avatar of workers, PostgreSQL and Redis.
        """
        self.start_workers()
        try:
            self.wait_ready(self.upload(originals, WORKERS * 2))  # workers up, Pillow loaded
            for proc in self.procs:
                os.kill(proc.pid, signal.SIGSTOP)
            try:
                ids = self.upload(originals, count)
                os.sync()  # the uploads' writes go to disk now, not during the drain
            finally:
                cpu = self.cpu()
                started = time.time()
                for proc in self.procs:
                    os.kill(proc.pid, signal.SIGCONT)
            rate = count / (self.wait_ready(ids) - started)
            return rate, 1000 * (self.cpu() - cpu) / count
        finally:
            self.stop_workers()

    def end_to_end(self, originals: list[bytes], count: int) -> float:
        """Avatars/s from the first upload to the last ready, uploads made while the workers run."""
        self.start_workers()
        try:
            self.wait_ready(self.upload(originals, WORKERS * 2))  # workers up, Pillow loaded
            started = time.time()
            return count / (self.wait_ready(self.upload(originals, count)) - started)
        finally:
            self.stop_workers()


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--avatars", type=int, default=240, help="avatars per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count, rounds, distinct = (12, 1, 4) if args.smoke else (args.avatars, args.rounds, 24)

    if not args.smoke:
        settle_filesystem()
    work = Path(tempfile.mkdtemp(prefix="parley-bench-thumbs-"))
    log_dir = OUT_DIR / "thumbnails-logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    try:
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            originals = pool.map(photo_jpeg, range(distinct))
        sources = []
        for i in range(count):
            path = work / "originals" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(originals[i % distinct])
            sources.append(path)
        os.sync()  # likewise the loops' sources
        print(f"{count} avatars per run from {distinct} distinct {WIDTH}x{HEIGHT} JPEGs "
              f"(~{sum(map(len, originals)) / distinct / 1e6:.1f} MB each), {WORKERS} processes, {rounds} round(s)")  # fmt: skip

        with servers(durable=True) as (redis, postgres):
            database = postgres.create_database("bench_thumbs")
            parley = Parley(redis.url, database, work / "media", log_dir, [redis.proc.pid, postgres.proc.pid])
            results: dict[str, list[float]] = {"parley": [], "loop": [], "naive": [], "e2e": []}
            cpu: dict[str, list[float]] = {"parley": [], "loop": [], "naive": []}
            for turn in range(rounds):
                turns = [
                    ("parley", lambda: parley.drain(originals, count)),
                    ("loop", lambda: run_loop(sources, work / f"loop-{turn}", draft=True)),
                    ("naive", lambda: run_loop(sources, work / f"naive-{turn}", draft=False)),
                ]
                for name, measure in turns if turn % 2 == 0 else reversed(turns):
                    rate, cpu_ms = measure()
                    results[name].append(rate)
                    cpu[name].append(cpu_ms)
            results["e2e"].append(parley.end_to_end(originals, count))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rates = {name: median(values) for name, values in results.items()}
    cpu_ms = {name: median(values) for name, values in cpu.items()}
    def per_round(name: str, against: str) -> list[float]:
        return [a / b for a, b in zip(results[name], results[against])]

    ratio = {name: median(per_round(name, "loop")) for name in ("parley", "naive")}
    rows = [
        ("Parley: 2 runworker, uploaded avatars", rates["parley"], ratio["parley"], cpu_ms["parley"], cpu_ms["loop"] / cpu_ms["parley"]),
        ("plain loop, 2 processes (draft)", rates["loop"], 1.0, cpu_ms["loop"], 1.0),
        ("naive loop, 2 processes (no draft)", rates["naive"], ratio["naive"], cpu_ms["naive"], cpu_ms["loop"] / cpu_ms["naive"]),
        ("Parley end to end: 1 uploader + 2 workers", rates["e2e"], rates["e2e"] / rates["loop"], None, None),
    ]  # fmt: skip
    headers = ["", "avatars/s", "vs loop", "CPU ms/avatar", "vs loop (CPU)"]
    print_table("Avatar thumbnails (256/64/32 WebP + 32 PNG); medians, vs loop: median of the rounds' ratios", headers, rows)
    vs_naive = median(per_round("parley", "naive"))
    print(f"Parley vs naive: {vs_naive:.2f}x   (targets: vs loop >= 0.9, vs naive >= 1.8)")
    print("Per round, avatars/s: " + "; ".join(f"{k} {', '.join(f'{v:.1f}' for v in vs)}" for k, vs in results.items()))
    print(f"Per round, Parley vs loop: {', '.join(f'{v:.3f}' for v in per_round('parley', 'loop'))}; "
          f"ratio of the medians {rates['parley'] / rates['loop']:.3f}")  # fmt: skip
    print("Parley's CPU counts its workers, PostgreSQL and Redis; the loops' their own processes.")
    emit({
        "parley_avatars_per_s": round(rates["parley"], 1),
        "loop_avatars_per_s": round(rates["loop"], 1),
        "naive_avatars_per_s": round(rates["naive"], 1),
        "ratio_vs_loop": round(ratio["parley"], 3),
        "ratio_vs_naive": round(vs_naive, 3),
        "ratio_of_medians_vs_loop": round(rates["parley"] / rates["loop"], 3),
        "parley_end_to_end_avatars_per_s": round(rates["e2e"], 1),
        "parley_cpu_ms_per_avatar": round(cpu_ms["parley"], 1),
        "loop_cpu_ms_per_avatar": round(cpu_ms["loop"], 1),
        "naive_cpu_ms_per_avatar": round(cpu_ms["naive"], 1),
        "cpu_ratio_vs_loop": round(cpu_ms["loop"] / cpu_ms["parley"], 3),
        "avatars": count,
        "rounds": rounds,
    })  # fmt: skip


if __name__ == "__main__":
    main()
