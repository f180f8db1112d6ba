"""/metrics: this web process's Prometheus metrics, with the task queues' depths, for METRICS_TOKEN bearers.

Each daphne serves what it counted itself (sockets, messages, broadcasts, and
whatever tasks it enqueued or, on the embedded default, ran); workers serve
theirs on their own port (tasks.metrics.serve). Prometheus scrapes every
process directly, not through the load balancer. Why per process and not
prometheus_client's multiprocess mode: README.md, Operations, Metrics.
"""

from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from tasks.metrics import QueueDepths, authorized

# Read from the database at each scrape, by web processes only: a worker's scrape stays off the database.
_database = CollectorRegistry()
_database.register(QueueDepths())


@login_not_required
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format; a 404, like any unknown page, without the bearer token."""
    if not authorized(request.headers.get("Authorization", "")):
        raise Http404
    return HttpResponse(generate_latest(REGISTRY) + generate_latest(_database), content_type=CONTENT_TYPE_LATEST)
