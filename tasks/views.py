from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .monitor import overview


@require_GET
@staff_member_required
def monitor(request: HttpRequest) -> HttpResponse:
    """Queues, running tasks and failures; the page then follows /tasks/live/."""
    return render(request, "tasks/monitor.html", {"overview": overview()})
