import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from chat.models import Room

from .forms import ExportForm
from .jobs import TooManyJobs, cancel_job, start_export, start_insights
from .models import Job, with_task_results

logger = logging.getLogger(__name__)

JOBS_PER_PAGE = 20


def visible_room_or_404(label: str, user) -> Room:
    """A private room is a 404 to non-members, as on the room page: nothing leaks."""
    try:
        return Room.objects.find(label, user)
    except Room.DoesNotExist:
        raise Http404("No such room.") from None


def visible_job_or_404(pk: int, user) -> Job:
    job = Job.objects.select_related("room", "requested_by").filter(pk=pk).first()
    if job is None or not job.can_view(user):
        raise Http404("No such job.")
    return job


def refused(request: HttpRequest, room: Room, message: str, status: int) -> HttpResponse:
    return render(request, "reports/refused.html", {"room": room, "message": message}, status=status)


def too_many(request: HttpRequest, room: Room, exc: TooManyJobs) -> HttpResponse:
    """The refusal at the limit, with links to the jobs that fill it: the way to wait for or cancel one."""
    running = with_task_results(Job.objects.active().filter(requested_by=request.user).select_related("room"))
    context = {"room": room, "message": str(exc), "running": running}
    return render(request, "reports/refused.html", context, status=429)


@require_GET
def my_jobs(request: HttpRequest) -> HttpResponse:
    """The exports and insights the user asked for, newest first, in rooms they can still see."""
    jobs = Job.objects.filter(requested_by=request.user, room__in=Room.objects.visible_to(request.user))
    page = Paginator(jobs.select_related("room"), JOBS_PER_PAGE).get_page(request.GET.get("page"))
    page.object_list = with_task_results(page.object_list)
    ttl_days = settings.REPORTS_EXPORT_TTL.days
    return render(request, "reports/mine.html", {"page": page, "ttl_days": ttl_days})


@require_POST
def export(request: HttpRequest, label: str) -> HttpResponse:
    """Start an export of the room (or attach to the same one running), then watch it."""
    room = visible_room_or_404(label, request.user)
    form = ExportForm(request.POST)
    if not form.is_valid():
        return render(request, "reports/export_form.html", {"room": room, "form": form}, status=400)
    try:
        job, _ = start_export(request.user, room, form.cleaned_data["format"], *form.date_range())
    except TooManyJobs as exc:
        return too_many(request, room, exc)
    return redirect(job)


@require_GET
def export_form(request: HttpRequest, label: str) -> HttpResponse:
    room = visible_room_or_404(label, request.user)
    return render(request, "reports/export_form.html", {"room": room, "form": ExportForm()})


@require_GET
def job(request: HttpRequest, pk: int) -> HttpResponse:
    """The job's page: a progress bar that the job's socket keeps current."""
    job = visible_job_or_404(pk, request.user)
    return render(request, "reports/job.html", {"job": job, "room": job.room})


@require_POST
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = visible_job_or_404(pk, request.user)
    try:
        cancel_job(job, request.user)
    except PermissionDenied as exc:
        return refused(request, job.room, str(exc), status=403)
    return redirect(job)


@require_GET
def download(request: HttpRequest, pk: int) -> HttpResponse:
    """The export's file, for the user who asked for it, while they can see the room."""
    job = visible_job_or_404(pk, request.user)
    if job.kind != Job.Kind.EXPORT or job.requested_by_id != request.user.pk:
        raise Http404("No such export.")
    if job.status == Job.Status.EXPIRED:
        return refused(request, job.room, job.user_error, status=410)
    if job.status != Job.Status.DONE:
        return redirect(job)
    logger.info("event=export_downloaded job=%s user=%s", job.pk, request.user.pk)
    filename = job.file.name.rsplit("/", 1)[-1]
    return FileResponse(default_storage.open(job.file.name, "rb"), as_attachment=True, filename=filename)


def show_insights(request: HttpRequest, job: Job, room: Room) -> HttpResponse:
    # Imported here: reports.insights pulls in matplotlib and numpy, which every
    # process that loads the URLconf (each runworker, for its system checks) would
    # otherwise carry (README, Slots) to draw nothing.
    from .insights import CHART_DPI, CHART_SIZE

    width, height = (round(inches * CHART_DPI) for inches in CHART_SIZE)
    context = {"job": job, "room": room, "data": job.result, "chart_width": width, "chart_height": height}
    return render(request, "reports/insights.html", context)


@require_GET
def insights(request: HttpRequest, label: str) -> HttpResponse:
    """The room's insights as of its last message: shown if cached, else computed while you watch.

    A GET may start the computation: it fills a cache (at most one per new
    message), like any lazily cached page.
    """
    room = visible_room_or_404(label, request.user)
    shown = request.GET.get("job", "")
    if shown.isdigit():
        # The report a finished job's page leads to: shown even if newer messages
        # came in meanwhile, or a busy room would send its users round and round.
        job = visible_job_or_404(int(shown), request.user)
        if job.room_id != room.pk or job.kind != Job.Kind.INSIGHTS or job.status != Job.Status.DONE:
            raise Http404("No such report.")
        return show_insights(request, job, room)
    try:
        job, _ = start_insights(request.user, room)
    except TooManyJobs as exc:
        return too_many(request, room, exc)
    if job.status != Job.Status.DONE:
        return render(request, "reports/job.html", {"job": job, "room": room})
    return show_insights(request, job, room)


@require_GET
def chart(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    job = visible_job_or_404(pk, request.user)
    stored = (job.result or {}).get("charts", {}).get(name)
    if job.status != Job.Status.DONE or stored is None:
        raise Http404("No such chart.")
    response = FileResponse(default_storage.open(stored, "rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=86400"
    return response
