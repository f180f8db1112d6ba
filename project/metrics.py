"""Metrics: whether Parley counts them, who may read them, and /metrics, this web process's own
with the task queues' depths.

Each daphne serves what it counted itself (sockets, messages, broadcasts, and
whatever tasks it enqueued or, on the embedded default, ran); workers serve
theirs on their own port (tasks.metrics.serve). Prometheus scrapes every
process directly, not through the load balancer. Why per process and not
prometheus_client's multiprocess mode: README.md, Operations, Metrics. Each
app defines and counts its own metrics (tasks.metrics, chat.metrics,
notifications.metrics), asking enabled() first.
"""

import functools
import hmac
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.signals import setting_changed
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

# Read once: a Django setting costs ~1 µs a read, several times per task and per delivery.
_enabled = bool(settings.METRICS_TOKEN)


def enabled() -> bool:
    """Whether to count: not while METRICS_TOKEN is unset, as nobody could read the figures."""
    return _enabled


@functools.partial(setting_changed.connect, weak=False)
def _token_changed(*, setting: str, value: Any, **kwargs: Any) -> None:
    """Settings changed at run time (override_settings) turn counting on or off, as Django's own caches follow them."""
    global _enabled
    if setting == "METRICS_TOKEN":
        _enabled = bool(value)


def authorized(header: str) -> bool:
    """Whether an Authorization header carries METRICS_TOKEN (never, while it is unset)."""
    token = settings.METRICS_TOKEN
    scheme, _, given = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@functools.cache
def _database() -> CollectorRegistry:
    """Figures read from the database at each scrape, by web processes only: a worker's scrape stays off it."""
    from tasks.metrics import QueueDepths  # tasks.metrics imports this module

    registry = CollectorRegistry()
    registry.register(QueueDepths())
    return registry


@login_not_required
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format; a 404, like any unknown page, without the bearer token."""
    if not authorized(request.headers.get("Authorization", "")):
        raise Http404
    return HttpResponse(generate_latest(REGISTRY) + generate_latest(_database()), content_type=CONTENT_TYPE_LATEST)
