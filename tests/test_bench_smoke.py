"""Every benchmark in bench/ still runs: `--smoke` in a subprocess, its last line the JSON the issue names.

The benchmarks start their own Redis and PostgreSQL (and real worker processes),
so the suite's servers are left alone. Peers run only where .venv-bench exists
(`make bench` builds it); Parley itself always runs.
"""

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The soak is `make soak` only (ten minutes by design), never part of `make test`.
NOT_BENCHMARKS = {"common.py", "soak.py"}
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name not in NOT_BENCHMARKS)

# The keys each benchmark's issue asks for in its JSON line.
EXPECTED_KEYS = {
    "tasks.py": {
        "parley_drain_per_s", "celery_drain_per_s", "dtdb_drain_per_s", "parley_p50_ms", "parley_p99_ms",
        "celery_p50_ms", "celery_p99_ms", "ratio_vs_celery",
        "io_sync_per_s", "io_async_per_s", "celery_io_per_s", "parley_rss_mb", "celery_rss_mb",
    },
    "thumbnails.py": {"parley_avatars_per_s", "loop_avatars_per_s", "naive_avatars_per_s", "ratio_vs_loop"},
    "sidebar.py": {"sidebar_ms", "sidebar_p95_ms", "sidebar_unvacuumed_ms", "naive_ms"},
    "export.py": {"jsonl_msgs_per_s", "csv_msgs_per_s", "html_msgs_per_s", "copy_msgs_per_s", "peak_rss_mb"},
    "fanout.py": {
        "parley_p50_ms", "parley_p99_ms", "baseline_p50_ms", "baseline_p99_ms",
        "parley_knee_deliveries_per_s", "baseline_knee_deliveries_per_s",
    },
    "search.py": {"search_p50_ms", "search_p95_ms", "ilike_p95_ms", "sidebar_ms"},
    "sockets.py": {
        "open_per_s", "idle_cpu_pct_10k", "kb_per_socket", "reconnect_all_s_10k",
        "bare_open_per_s", "bare_idle_cpu_pct_10k", "bare_kb_per_socket", "bare_reconnect_all_s_10k",
    },
}  # fmt: skip

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@functools.cache  # one run per script (per pytest-xdist worker) serves every test below
def run_smoke(script: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    proc = subprocess.run(
        [sys.executable, f"bench/{script}", "--smoke"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, f"bench/{script} --smoke exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    last_line = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last_line)
    assert isinstance(result, dict), f"last line of bench/{script} is not a JSON object: {last_line}"
    return proc, result


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_ends_with_its_json_line(script):
    proc, result = run_smoke(script)
    missing = EXPECTED_KEYS.get(script, set()) - result.keys()
    assert not missing, f"bench/{script} JSON lacks {sorted(missing)}: {result}"
    # A readable table comes before the JSON line.
    assert len(proc.stdout.strip().splitlines()) > 3


def test_tasks_benchmark_measures_parley():
    """Parley's own figures are real measurements, whether or not the peers' venv exists."""
    _, result = run_smoke("tasks.py")
    for key in ("parley_drain_per_s", "parley_p50_ms", "parley_p99_ms", "parley_enqueue_per_s",
                "io_sync_per_s", "io_async_per_s", "parley_rss_mb"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (key, result)
    assert result["parley_p50_ms"] <= result["parley_p99_ms"]
    peers = (ROOT / ".venv-bench" / "bin" / "python").exists()
    assert (result["ratio_vs_celery"] is not None) == peers


def test_sockets_benchmark_measures_parley_and_the_floor():
    """Every socket opened and came back after the restart, on both targets: the figures are real."""
    _, result = run_smoke("sockets.py")
    for prefix in ("", "bare_"):
        for key in ("open_per_s", "kb_per_socket", "reconnect_all_s_10k"):
            value = result[prefix + key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (prefix + key, result)
        assert result[prefix + "idle_cpu_pct_10k"] >= 0, result
