"""Health checks for load balancers and orchestrators: /healthz and /readyz.

Both are answered by a middleware placed first, before Django's host check
(CommonMiddleware), the HTTPS redirect (SecurityMiddleware) and the login
requirement: probes come over plain HTTP from inside the cluster, addressed by
the pod's IP, and carry no session. Nothing else is served this way.

- /healthz: the process answers. No dependency is touched, so a database or
  Redis outage never gets every web process restarted at once.
- /readyz: PostgreSQL (or SQLite) answers, the channel layer's Redis answers,
  and every migration is applied; 503 otherwise, so a load balancer stops
  sending traffic to a process that could only fail it.
"""

import logging
import time
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger("project.health")

# A probe that waits longer than its own timeout (Kubernetes: 1 s by default) counts as failed anyway.
REDIS_TIMEOUT = 0.5

_migrations_applied = False  # once true it stays true: migrations are never unapplied under a running process
_redis_clients: dict[str, redis.Redis] = {}
_last_failing: tuple[str, ...] = ()


def check_database() -> str | None:
    """None when the default database answers a query, else why not."""
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        # A persistent connection (DB_CONN_MAX_AGE) broken by a restart must not
        # fail every later check: drop it, the next check connects afresh.
        connection.close()
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def check_redis() -> str | None:
    """None when the channel layer's Redis (REDIS_URL) answers PING, else why not; None without Redis."""
    url = settings.REDIS_URL
    if not url:
        return None
    client = _redis_clients.get(url)
    if client is None:
        client = _redis_clients[url] = redis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
        )
    try:
        client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def check_migrations() -> str | None:
    """None when every migration is applied, else how many are not.

    Loading the migration graph costs tens of milliseconds, so once everything
    is applied the answer is kept for the life of the process.
    """
    global _migrations_applied
    if _migrations_applied:
        return None
    try:
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    if pending:
        return f"{len(pending)} migration(s) not applied"
    _migrations_applied = True
    return None


def readiness() -> dict[str, str]:
    """Each check's result, "ok" or why it failed; the database first, as the migration check needs it."""
    results = {"database": check_database(), "redis": check_redis()}
    results["migrations"] = check_migrations() if results["database"] is None else "database unreachable"
    return {name: problem or "ok" for name, problem in results.items()}


def _log_change(checks: dict[str, str]) -> None:
    """One line when the set of failing checks changes, not one per probe."""
    global _last_failing
    failing = tuple(name for name, result in checks.items() if result != "ok")
    if failing != _last_failing:
        _last_failing = failing
        if failing:
            details = " ".join(f"{name}={checks[name]!r}" for name in failing)
            logger.warning("event=not_ready failing=%s %s", ",".join(failing), details)
        else:
            logger.info("event=ready")


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    started = time.monotonic()
    checks = readiness()
    _log_change(checks)
    ready = all(result == "ok" for result in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks, "ms": round(1000 * (time.monotonic() - started), 1)}
    response = JsonResponse(body, status=200 if ready else 503)
    # Django logs every 5xx at ERROR (and Sentry would make each an event): one
    # probe every few seconds. _log_change() logs the transitions instead.
    response._has_been_logged = True
    return response


PROBES = {"/healthz": healthz, "/readyz": readyz}


class HealthCheckMiddleware:
    """Answers the probes' paths before any other middleware sees the request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is None:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
        response = probe(request)
        response["Cache-Control"] = "no-store"
        return response
