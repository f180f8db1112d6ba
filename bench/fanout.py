"""Fan-out benchmark: N WebSocket clients in one room, Parley against the bare Channels chat.

Both run under real daphne processes on the same Redis in the same run; Parley
also on a durable PostgreSQL (fsync on). Senders post at a fixed total rate
(each at most ~1.5 msg/s, under Parley's 10-per-5-s limit); every client times
every message from its send to its receipt. Clients live in several
bench/load/loadgen.py processes and are spread round-robin over the daphnes.

    .venv/bin/python bench/fanout.py              # full run (~12 min)
    .venv/bin/python bench/fanout.py --smoke      # ~30 s
    .venv/bin/python bench/fanout.py --profile    # py-spy on a loaded daphne, both targets
    .venv/bin/python bench/fanout.py --metrics both --daphnes 1 --layers ''   # Parley, metrics off and on
    .venv/bin/python bench/fanout.py --metrics both --daphnes 1 --layers '' --parley-layers pubsub --rounds 3 --small-only

Prints a table per scenario, then one JSON line: parley_p50_ms, parley_p99_ms,
baseline_p50_ms, baseline_p99_ms (100 clients x 20 msg/s on one daphne),
parley_knee_deliveries_per_s, baseline_knee_deliveries_per_s (largest
deliveries/s with p99 < 100 ms and nothing lost, stepping the rate by 10 msg/s
until two steps in a row fail, 100 clients). `--metrics on` runs Parley's daphnes with
Prometheus metrics counted (METRICS_TOKEN set); `--metrics both` measures each Parley
variant twice, off and on (targets named `...-metrics`; JSON keys parley_metrics_*).
`--rounds R` has the targets take R turns, in an order that flips every round, and
reports medians over the rounds (the knee: the median of each round's); the machine is
shared, and turns spread its noise over every target. `--small-only` measures the
100-client fixed step only, the one the JSON reports (the knee's keys are then null):
enough for `--metrics both`, and it spares a loaded machine the 200 connections.
"""

import functools
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from bench.common import OUT_DIR, ROOT, ClientProcess, arg_parser, emit, median, percentile, print_table, servers, spawn, stop  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

PY = sys.executable
ROOM = "bench"
KNEE_P99_MS = 100.0
LOSS_ALLOWED = 0.001  # a step that loses more than 0.1% of deliveries fails, whatever its p99
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
CORE = "channels_redis.core.RedisChannelLayer"
# Parley's variants, by environment: as shipped (the pub/sub layer), and on channels-redis' core layer.
PARLEY_ENV = {"pubsub": {}, "core": {"CHANNEL_LAYER": "core"}}
METRICS_ENV = {"off": {"METRICS_TOKEN": ""}, "on": {"METRICS_TOKEN": "bench-metrics-token"}}


class Target:
    """One server under test: how to start its daphnes and how its clients connect."""

    def __init__(self, name: str, proto: str, app: str, env: dict[str, str]) -> None:
        self.name, self.proto, self.app, self.env = name, proto, app, env

    def path(self) -> str:
        return f"/chat/{ROOM}/" if self.proto == "parley" else f"/ws/chat/{ROOM}/"


def start_daphnes(target: Target, count: int, log_dir: Path) -> tuple[list[subprocess.Popen], list[int]]:
    procs, ports = [], []
    for i in range(count):
        port = free_port()
        # Parley runs as shipped (the Procfile's web server); the bare baseline on plain daphne.
        server = "project.webserver" if target.proto == "parley" else "daphne"
        cmd = [PY, "-m", server, "--bind", "127.0.0.1", "--port", str(port),
               "--websocket-max-message-size", "65536", target.app]  # fmt: skip
        procs.append(spawn(cmd, target.env, log_dir / f"{target.name}-daphne{count}-{i}.log"))
        ports.append(port)
    try:
        for proc, port in zip(procs, ports):
            wait_for_port(port, timeout=30, proc=proc)
    except BaseException:
        stop(procs)
        raise
    return procs, ports


def cpu_seconds(procs: list[subprocess.Popen]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = psutil.Process(proc.pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class Session:
    """N clients of one target connected through `daphnes` daphne processes."""

    def __init__(self, target: Target, n_clients: int, daphnes: int, gens: int, sessions: list[str],
                 log_dir: Path) -> None:  # fmt: skip
        self.target, self.n = target, n_clients
        self.procs, ports = start_daphnes(target, daphnes, log_dir)
        self.gens: list[ClientProcess] = []
        try:
            clients = [
                {"index": g, "url": f"ws://127.0.0.1:{ports[g % daphnes]}{target.path()}",
                 "origin": f"http://127.0.0.1:{ports[g % daphnes]}",  # Parley checks the port too
                 "cookie": sessions[g] if target.proto == "parley" else None}
                for g in range(n_clients)
            ]  # fmt: skip
            for k in range(gens):
                config = {"proto": target.proto, "clients": clients[k::gens]}
                self.gens.append(ClientProcess("loadgen.py", config, log_dir / f"loadgen-{target.name}-{k}.log"))
            answers = [gen.answer(120) for gen in self.gens]
            failed = [f for a in answers for f in a["failed"]]
            if failed:
                raise RuntimeError(f"{len(failed)} clients of {target.name} could not connect, e.g. {failed[:3]}")
            for gen in self.gens:
                gen.answer(60)  # settled
        except BaseException:
            self.close()
            raise

    def step(self, step_id: int, rate: float, warmup: float, duration: float, drain: float) -> dict:
        senders = min(self.n, max(1, math.ceil(rate)))
        if rate / senders > 1.8:
            raise ValueError(f"{rate} msg/s needs more than {self.n} senders to stay under the rate limit")
        start = time.monotonic() + 0.3
        cpu_before = cpu_seconds(self.procs)
        for gen in self.gens:
            gen.send({"cmd": "run", "step": step_id, "rate": rate, "senders": senders, "start": start,
                      "warmup": warmup, "duration": duration, "drain": drain})  # fmt: skip
        answers = [gen.answer(warmup + duration + drain + 60) for gen in self.gens]
        cpu = cpu_seconds(self.procs) - cpu_before
        latencies = [v for a in answers for v in a["latencies_ms"]]
        sent = sum(a["sent"] for a in answers)
        expected = sent * self.n
        missing = max(0, expected - len(latencies))
        errors = Counter()
        for a in answers:
            errors.update(a["errors"])
        # A delivery that never came counts as infinitely late.
        ranked = latencies + [math.inf] * missing
        return {
            "target": self.target.name, "clients": self.n, "daphnes": len(self.procs), "rate": rate,
            "sent": sent, "delivered": len(latencies), "missing": missing,
            "deliveries_per_s": len(latencies) / duration,
            "p50_ms": percentile(ranked, 50) if ranked else math.nan,
            "p99_ms": percentile(ranked, 99) if ranked else math.nan,
            "max_ms": max(ranked) if ranked else math.nan,
            "daphne_cpu_pct": 100 * cpu / (duration + warmup + drain),
            "cpu_us_per_delivery": 1e6 * cpu / max(1, len(latencies)) if latencies else math.nan,
            "errors": dict(errors),
            "load_avg": os.getloadavg()[0],  # the machine is shared: how busy it was
        }  # fmt: skip

    def close(self) -> None:
        for gen in self.gens:
            gen.close()
        stop(self.procs)


def passes(result: dict) -> bool:
    return result["p99_ms"] < KNEE_P99_MS and result["missing"] <= LOSS_ALLOWED * max(1, result["sent"] * result["clients"])


def row(r: dict) -> list:
    errors = ",".join(f"{k}={v}" for k, v in sorted(r["errors"].items())) or ""
    return [r["target"], r["daphnes"], r["clients"], r["rate"], r["deliveries_per_s"], r["p50_ms"], r["p99_ms"],
            r["missing"], r["daphne_cpu_pct"], r["cpu_us_per_delivery"], r["load_avg"], errors]  # fmt: skip


HEADERS = ["target", "daphnes", "clients", "msg/s", "deliv/s", "p50 ms", "p99 ms", "lost", "daphne cpu%",
           "cpu us/deliv", "load", "errors"]  # fmt: skip


def prepare_parley(redis, postgres, n_users: int, log_dir: Path) -> tuple[dict[str, str], list[str]]:
    """A migrated bench database, `n_users` users logged in (session keys) and the room."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings", DATABASE_URL=postgres.create_database("parley_bench"),
        REDIS_URL=redis.url, DEBUG="0", SECRET_KEY="bench-only-secret-key-" + "x" * 40,
        ALLOWED_HOSTS="127.0.0.1,localhost", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=300)
    os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "DEBUG",
                                           "SECRET_KEY", "ALLOWED_HOSTS")})  # fmt: skip
    import django

    django.setup()
    return env, login_users(n_users)


def login_users(count: int, prefix: str = "bench") -> list[str]:
    """Users `<prefix>0..`, each with a logged-in session (as django.contrib.auth.login stores it)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from chat.models import Room

    User = get_user_model()
    Room.objects.get_or_create(label=ROOM)
    keys = []
    for i in range(count):
        user, created = User.objects.get_or_create(username=f"{prefix}{i:04d}")
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    return keys


def summarize_profile(path: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) from py-spy's collapsed stacks, most inclusive first."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # a frame name with a newline in it splits its line
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    rows = [(f, 100 * own[f] / total, 100 * inclusive[f] / total) for f in inclusive]
    return sorted(rows, key=lambda r: -r[2])[:top] + [("-- by self time --", math.nan, math.nan)] + \
        sorted(rows, key=lambda r: -r[1])[:top]


def profile(targets: list[Target], sessions: list[str], rate: float, seconds: float, log_dir: Path) -> None:
    """py-spy on the one daphne of each target while 100 clients get `rate` msg/s."""
    py_spy = Path(PY).parent / "py-spy"
    for target in targets:
        session = Session(target, 100, 1, 3, sessions, log_dir)
        try:
            out = log_dir / f"profile-{target.name}.txt"
            spy = subprocess.Popen([str(py_spy), "record", "--nonblocking", "--format", "raw", "--rate", "100", "--duration",
                                    str(int(seconds)), "--pid", str(session.procs[0].pid), "--output", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            result = session.step(0, rate, 1.0, seconds, 3.0)
            spy.wait(seconds + 30)
        finally:
            session.close()
        print_table(f"{target.name}: {rate} msg/s x 100 clients", HEADERS, [row(result)])
        print_table(f"py-spy, {target.name} daphne (collapsed stacks in {out})", ["function", "self %", "incl %"],
                    summarize_profile(out))  # fmt: skip


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--daphnes", default="1,2,4", help="daphne process counts to measure (comma-separated)")
    parser.add_argument("--loadgens", type=int, default=3, help="load generator processes")
    parser.add_argument("--layers", default="core,pubsub", help="channel layers of the baseline: core, pubsub")
    parser.add_argument("--parley-layers", default="pubsub,core",
                        help="Parley variants: pubsub (as shipped), core (CHANNEL_LAYER=core)")
    parser.add_argument("--metrics", choices=("off", "on", "both"), default="off",
                        help="Parley's daphnes with Prometheus metrics counted: off, on, or both (two targets each)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="turns each target takes, in an order flipping every round; figures are medians")
    parser.add_argument("--small-only", action="store_true",
                        help="the 100-client fixed step only: no knee search, no 200-client step")
    parser.add_argument("--profile", action="store_true", help="only profile one loaded daphne per target")
    parser.add_argument("--profile-rate", type=float, default=60.0)
    args = parser.parse_args()

    smoke = args.smoke
    daphne_counts = [1] if smoke else [int(x) for x in args.daphnes.split(",")]
    small, big = ((20, 5.0), (40, 10.0)) if smoke else ((100, 20.0), (200, 50.0))
    knee_rates = [10.0, 20.0] if smoke else [20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0, 120.0, 150.0]
    if args.small_only:
        knee_rates = []
    warmup, duration, drain = (0.5, 1.5, 2.0) if smoke else (2.0, 5.0, 3.0)
    layers = ["core"] if smoke else [x for x in args.layers.split(",") if x]
    parley_layers = ["pubsub"] if smoke else [x for x in args.parley_layers.split(",") if x]
    log_dir = OUT_DIR / f"fanout-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)

    with servers(durable=True) as (redis, postgres):
        parley_env, sessions = prepare_parley(redis, postgres, big[0], log_dir)
        bare_env = {**parley_env, "DJANGO_SETTINGS_MODULE": "bench.peers.bare_chat.settings"}
        targets = [
            Target(f"baseline-{layer}", "bare", "bench.peers.bare_chat.asgi:application",
                   {**bare_env, "BARE_CHANNEL_LAYER": PUBSUB if layer == "pubsub" else CORE})
            for layer in layers
        ] + [
            Target(f"parley-{variant}" + ("-metrics" if metrics == "on" else ""), "parley", "project.asgi:application",
                   {**parley_env, **PARLEY_ENV[variant], **METRICS_ENV[metrics]})
            for variant in parley_layers
            for metrics in (("off", "on") if args.metrics == "both" else (args.metrics,))
        ]  # fmt: skip
        if args.profile:
            profile(targets, sessions, args.profile_rate, 10.0, log_dir)
            return

        results: list[dict] = []
        step_id = 0
        for turn in range(args.rounds):
            for daphnes in daphne_counts:
                for target in targets if turn % 2 == 0 else targets[::-1]:
                    # The fixed point, then the knee, on the same 100 connected clients.
                    session = Session(target, small[0], daphnes, args.loadgens, sessions, log_dir)
                    try:
                        step_id += 1
                        fixed = session.step(step_id, small[1], warmup, duration, drain)
                        fixed.update(scenario="fixed", round=turn)
                        results.append(fixed)
                        failures = 0  # in a row: one stall of a shared machine must not end the search
                        for rate in knee_rates:
                            step_id += 1
                            r = session.step(step_id, rate, warmup, duration, drain)
                            r.update(scenario="knee", round=turn)
                            results.append(r)
                            failures = 0 if passes(r) else failures + 1
                            if failures == 2:
                                break
                    finally:
                        session.close()
                    if args.small_only:
                        continue
                    session = Session(target, big[0], daphnes, args.loadgens, sessions, log_dir)
                    try:
                        step_id += 1
                        # Saturated runs build a backlog: give it time to arrive rather than call it lost.
                        r = session.step(step_id, big[1], warmup, duration, drain * 3)
                        r.update(scenario="fixed", round=turn)
                        results.append(r)
                    finally:
                        session.close()
                print_table(f"{daphnes} daphne process(es)" + (f", round {turn + 1}" if args.rounds > 1 else ""),
                            HEADERS, [row(r) for r in results if r["daphnes"] == daphnes and r["round"] == turn])  # fmt: skip

    def fixed(name: str, daphnes: int, clients: int, rate: float, key: str) -> list[float]:
        """A fixed step's figure, one per round."""
        return [r[key] for r in results if r["target"] == name and r["daphnes"] == daphnes
                and r["clients"] == clients and r["rate"] == rate and r["scenario"] == "fixed"]  # fmt: skip

    def pick(name: str, daphnes: int, clients: int, rate: float, key: str) -> float | None:
        values = fixed(name, daphnes, clients, rate, key)
        return median(values) if values else None

    def knee(name: str, daphnes: int) -> float | None:
        if args.small_only:
            return None
        return median([
            max((r["deliveries_per_s"] for r in results
                 if r["target"] == name and r["daphnes"] == daphnes and r["round"] == turn and passes(r)), default=0.0)
            for turn in range(args.rounds)
        ])  # fmt: skip

    summary = []
    for daphnes in daphne_counts:
        for target in targets:
            a, b = functools.partial(pick, target.name, daphnes, *small), functools.partial(pick, target.name, daphnes, *big)
            summary.append([target.name, daphnes, a("p50_ms"), a("p99_ms"), a("cpu_us_per_delivery"), b("p50_ms"),
                            b("p99_ms"), b("deliveries_per_s"), b("cpu_us_per_delivery"), knee(target.name, daphnes)])  # fmt: skip
    print_table(
        f"Summary ({small[0]} x {small[1]:g} msg/s, {big[0]} x {big[1]:g} msg/s, knee = most deliveries/s with "
        f"p99 < {KNEE_P99_MS:g} ms)" + (f", medians of {args.rounds} rounds" if args.rounds > 1 else ""),
        ["target", "daphnes", "p50 small", "p99 small", "cpu us/deliv small", "p50 big", "p99 big", "deliv/s big",
         "cpu us/deliv big", "knee deliv/s"],
        summary,
    )  # fmt: skip
    for variant in parley_layers:
        off = fixed(f"parley-{variant}", daphne_counts[0], *small, "cpu_us_per_delivery")
        on = fixed(f"parley-{variant}-metrics", daphne_counts[0], *small, "cpu_us_per_delivery")
        if off and on:
            print(f"parley-{variant} metrics on/off daphne CPU per delivery, per round: "
                  + ", ".join(f"{a / b:.3f}" for a, b in zip(on, off)))  # fmt: skip
    (log_dir / "results.json").write_text(json.dumps(results, default=str, indent=1))
    first = daphne_counts[0]

    def figure(prefix: str, key: str, metrics: bool = False) -> float | None:
        name = next((t.name for t in targets if t.name.startswith(prefix) and t.name.endswith("-metrics") == metrics), None)
        if name is None:
            return None
        value = knee(name, first) if key == "knee" else pick(name, first, *small, key)
        return None if value is None or math.isinf(value) else round(value, 1)

    emit({
        "parley_p50_ms": figure("parley", "p50_ms"),
        "parley_p99_ms": figure("parley", "p99_ms"),
        "baseline_p50_ms": figure("baseline", "p50_ms"),
        "baseline_p99_ms": figure("baseline", "p99_ms"),
        "parley_knee_deliveries_per_s": figure("parley", "knee"),
        "baseline_knee_deliveries_per_s": figure("baseline", "knee"),
        "parley_metrics_p50_ms": figure("parley", "p50_ms", metrics=True),
        "parley_metrics_p99_ms": figure("parley", "p99_ms", metrics=True),
        "parley_metrics_knee_deliveries_per_s": figure("parley", "knee", metrics=True),
        "parley_cpu_us_per_delivery": figure("parley", "cpu_us_per_delivery"),
        "parley_metrics_cpu_us_per_delivery": figure("parley", "cpu_us_per_delivery", metrics=True),
    })  # fmt: skip


if __name__ == "__main__":
    main()
