from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from .monitor import charts, overview, pause, rerun, resume


@require_GET
@staff_member_required
def monitor(request: HttpRequest) -> HttpResponse:
    """The dashboard: charts of the last 24 h, queues, running tasks and failures; the tables then follow /tasks/live/."""
    return render(request, "tasks/monitor.html", {"overview": overview(), "charts": charts()})


@require_POST
@staff_member_required
def pause_or_resume(request: HttpRequest, queue: str, action: str) -> HttpResponse:
    """The Pause/Resume buttons of /tasks/ (a form with CSRF): back to the page, which says what changed."""
    try:
        changed = pause(queue, by=request.user.get_username()) if action == "pause" else resume(queue)
    except ValueError as exc:
        raise Http404(str(exc)) from exc
    state = "paused" if action == "pause" else "resumed"
    messages.success(request, f"Queue {queue} {state}." if changed else f"Queue {queue} was already {state}.")
    return redirect("tasks:monitor")


@require_POST
@staff_member_required
def rerun_failed(request: HttpRequest, task_id: str) -> HttpResponse:
    """The Re-run button of a failure on /tasks/ (a form with CSRF): back to the page, which says what happened."""
    done, skipped = rerun([task_id])
    if done:
        messages.success(request, f"Task {task_id} is queued to run again.")
    else:
        messages.error(request, f"Not re-run: {skipped[0]}")
    return redirect("tasks:monitor")
