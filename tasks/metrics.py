"""The task runner's Prometheus metrics, and the endpoint a worker process serves them on.

Each process counts what it does itself (prometheus_client's default registry,
no multiprocess mode): a counter is a lock and an add in memory, where the
multiprocess mode writes every increment to a shared mmap file. Prometheus
scrapes each daphne's /metrics (project.metrics) and each worker's own port,
and sums over processes. Queue depths are not counted at all: the web
endpoint reads them from the database when scraped (QueueDepths), so they are
right however many processes enqueue and run tasks.

Nothing is counted while METRICS_TOKEN is unset (project.metrics.enabled): nobody could read it.
"""

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from project.metrics import authorized, enabled

logger = logging.getLogger(__name__)

ENQUEUED = Counter("parley_tasks_enqueued", "Tasks enqueued (inserted), by queue.", ["queue"])
STARTED = Counter("parley_tasks_started", "Attempts started (claimed and loaded), by queue.", ["queue"])
FINISHED = Counter(
    "parley_tasks_finished",
    "Attempts ended, by queue and outcome: succeeded; failed (for good); retry (READY again, after its "
    "backoff); lease_lost (the sweep had given the task to another worker, whose outcome counts).",
    ["queue", "outcome"],
)
RUN_SECONDS = Histogram(
    "parley_task_run_seconds", "Time a task's function ran, by queue.", ["queue"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 7200),
)  # fmt: skip
WAIT_SECONDS = Histogram(
    "parley_task_wait_seconds",
    "Time from when a task could run (enqueued, or its run_after or retry backoff reached) to its start, by queue.",
    ["queue"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)  # fmt: skip
WORKER_LOSSES = Counter("parley_task_worker_losses", "Silent workers whose tasks this process's sweep took back.")
RECLAIMS = Counter(
    "parley_task_lease_reclaims",
    "RUNNING tasks of silent workers taken back by the sweep, by queue and outcome (requeued, failed).",
    ["queue", "outcome"],
)
BELL_FAILURES = Counter("parley_task_bell_failures", "Bells the channel layer failed to ring, by queue.", ["queue"])


# Each labelled series, looked up once: labels() validates and locks on every call,
# which measurably added to a no-op task's CPU (README.md, Operations, Metrics).
_enqueued = functools.cache(ENQUEUED.labels)
_started = functools.cache(STARTED.labels)
_finished = functools.cache(FINISHED.labels)
_run_seconds = functools.cache(RUN_SECONDS.labels)
_wait_seconds = functools.cache(WAIT_SECONDS.labels)


def enqueued(queue: str, count: int) -> None:
    if enabled():
        _enqueued(queue).inc(count)


def started(queue: str, available_at: datetime, claimed_at: datetime) -> None:
    if enabled():
        _started(queue).inc()
        _wait_seconds(queue).observe(max(0.0, (claimed_at - available_at).total_seconds()))


def ran(queue: str, seconds: float) -> None:
    if enabled():
        _run_seconds(queue).observe(seconds)


def finished(queue: str, outcome: str) -> None:
    if enabled():
        _finished(queue, outcome).inc()


def reclaimed(queue: str, outcome: str) -> None:
    if enabled():
        RECLAIMS.labels(queue, outcome).inc()


def workers_lost(count: int) -> None:
    if enabled() and count:
        WORKER_LOSSES.inc(count)


def bell_failed(queue: str) -> None:
    if enabled():
        BELL_FAILURES.labels(queue).inc()


class SlotsInUse(Collector):
    """Slots of this worker process busy and available, by queue and kind (sync thread, async
    coroutine), read from its queues' state when scraped rather than counted per task."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[tuple[str, dict[str, int], dict[str, int]]]]] = []

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        busy, limits = self._families()
        for source in list(self.sources):
            for queue, in_use, limit in source():
                for kind in in_use:
                    busy.add_metric([queue, kind], in_use[kind])
                    limits.add_metric([queue, kind], limit[kind])
        return [busy, limits]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("parley_task_slots_in_use", "Slots running (or claiming) a task, by queue and kind.",
                              labels=["queue", "kind"]),
            GaugeMetricFamily("parley_task_slots", "Slots of this process, by queue and kind.", labels=["queue", "kind"]),
        )  # fmt: skip


SLOTS = SlotsInUse()
REGISTRY.register(SLOTS)


class QueueDepths(Collector):
    """READY (due), deferred and RUNNING tasks, and the age of the oldest due task, per queue:
    one query when scraped. Served by the web endpoint only, so a worker's scrape never
    touches the database; every daphne reports the same figures (take max, not sum)."""

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from .backends import task_queues
        from .models import TaskRecord
        from .runner import READY, RUNNING

        depth, age = self._families()
        now = timezone.now()
        rows = {name: {"ready": 0, "deferred": 0, "running": 0, "oldest": None} for name in task_queues()}
        due = Q(status=READY, available_at__lte=now)
        for row in (
            TaskRecord.objects.filter(status__in=[READY, RUNNING])
            .values("queue_name")
            .annotate(
                ready=Count("pk", filter=due),
                deferred=Count("pk", filter=Q(status=READY, available_at__gt=now)),
                running=Count("pk", filter=Q(status=RUNNING)),
                oldest=Min("available_at", filter=due),
            )
            .order_by()
        ):
            rows[row.pop("queue_name")] = row
        for queue, row in sorted(rows.items()):
            for state in ("ready", "deferred", "running"):
                depth.add_metric([queue, state], row[state])
            age.add_metric([queue], (now - row["oldest"]).total_seconds() if row["oldest"] else 0.0)
        return [depth, age]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("parley_task_queue_depth", "Tasks by queue and state (ready: due now; deferred; running).",
                              labels=["queue", "state"]),
            GaugeMetricFamily("parley_task_oldest_ready_age_seconds",
                              "How long the oldest due READY task of a queue has waited (0: none waiting).",
                              labels=["queue"]),
        )  # fmt: skip


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve(port: int, addr: str) -> WSGIServer | None:
    """Serve this process's metrics on addr:port, in a thread, to METRICS_TOKEN bearers only.

    None (and a warning) while METRICS_TOKEN is unset: an endpoint nobody may read is no use.
    """
    if not enabled():
        logger.warning("event=metrics_not_served port=%s reason=METRICS_TOKEN_unset", port)
        return None
    exposition = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if not authorized(environ.get("HTTP_AUTHORIZATION", "")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"A bearer token (METRICS_TOKEN) is required.\n"]
        return exposition(environ, start_response)

    server = make_server(addr, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="parley-metrics", daemon=True).start()
    logger.info("event=metrics_serving addr=%s port=%s", addr, server.server_port)
    return server
