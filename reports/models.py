from collections.abc import Iterable

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import models
from django.db.models import Q
from django.tasks import TaskResult, TaskResultStatus, default_task_backend
from django.tasks.exceptions import TaskResultDoesNotExist
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property

from tasks.exceptions import CANCELLED, WORKER_LOST
from tasks.progress import get_results, unfinished_task_ids


class JobQuerySet(models.QuerySet):
    def active(self) -> "JobQuerySet":
        """Jobs whose task is queued or running: what the per-user limit counts."""
        return self.filter(task_id__in=unfinished_task_ids(), finished_at__isnull=True)


class Job(models.Model):
    """One export or insights computation of a room, run by a task on the `compute` queue.

    The task's result (django.tasks) says whether it is queued, running or
    failed; this row holds what the task needs to resume (the checkpoint) and
    what it produced.
    """

    class Kind(models.TextChoices):
        EXPORT = "export", "Export"
        INSIGHTS = "insights", "Insights"

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSON Lines"
        CSV = "csv", "CSV"
        HTML = "html", "HTML page"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    room = models.ForeignKey("chat.Room", on_delete=models.CASCADE, related_name="report_jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="report_jobs")
    format = models.CharField(max_length=5, choices=Format.choices, blank=True)
    # Messages from `since` (inclusive) to `until` (exclusive); either may be open.
    since = models.DateTimeField(null=True, blank=True)
    until = models.DateTimeField(null=True, blank=True)
    # The room's last message when the job was asked for: an export is a snapshot
    # up to it (so a resumed run writes the same rows), and insights are cached by it.
    last_message_id = models.BigIntegerField(default=0)
    # The task's result id (django.tasks); no foreign key: the runner's tables are its own.
    task_id = models.UUIDField(null=True, blank=True, db_column="task_id")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # What the user is told when the job fails; never a traceback.
    error = models.CharField(max_length=300, blank=True)

    # Export checkpoint: parts 1..parts are saved and hold every message up to last_id.
    last_id = models.BigIntegerField(default=0)
    rows_done = models.BigIntegerField(default=0)
    parts = models.PositiveIntegerField(default=0)
    parts_complete = models.BooleanField(default=False)
    bytes_written = models.BigIntegerField(default=0)
    file = models.FileField(max_length=255, blank=True)
    # The room's change number (Room.change_seq) when the parts' pass began: a message
    # deleted since has a higher one, and may be in the parts (reports.signals).
    changes_from = models.BigIntegerField(default=0)

    # Insights: the numbers behind the charts, and the charts' storage names.
    result = models.JSONField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index("room", "kind", "last_message_id", name="reports_job_cache_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="insights", format="") | Q(kind="export", format__in=["jsonl", "csv", "html"]),
                name="reports_job_format_matches_kind",
            )
        ]

    def __str__(self) -> str:
        what = self.format or self.kind
        return f"{what} of {self.room} for {self.requested_by} ({self.pk})"

    def get_absolute_url(self) -> str:
        return reverse("reports:job", args=[self.pk])

    @property
    def storage_dir(self) -> str:
        return f"reports/{self.pk}"

    def part_name(self, number: int) -> str:
        return f"{self.storage_dir}/part-{number:06d}"

    @cached_property
    def task_result(self) -> TaskResult | None:
        """The job's task as django.tasks has it; None without one (never enqueued, or pruned).

        Read once per job object; with_task_results() reads a list's in one query.
        """
        if self.task_id is None:
            return None
        try:
            return default_task_backend.get_result(str(self.task_id))
        except TaskResultDoesNotExist:
            return None

    def refresh_from_db(self, *args, **kwargs) -> None:
        super().refresh_from_db(*args, **kwargs)
        self.__dict__.pop("task_result", None)  # read again when next asked, as a relation would be

    @property
    def status(self) -> str:
        """Where the job stands, from its own outcome and its task's result."""
        result = self.task_result
        if result is None:
            return self.status_for(None, None)
        return self.status_for(result.status, result.errors[-1].exception_class_path if result.errors else None)

    def status_for(self, task_status: str | None, last_error: str | None) -> str:
        """Where the job stands given its task's status and last error (None: no task).

        The one mapping from a task's state to a job's, for the job's own task
        result and for the snapshots its task broadcasts alike.
        """
        if self.finished_at is not None:
            if self.expires_at is not None and self.expires_at <= timezone.now():
                return self.Status.EXPIRED
            return self.Status.DONE
        if task_status == TaskResultStatus.READY:
            return self.Status.QUEUED
        if task_status == TaskResultStatus.RUNNING:
            return self.Status.RUNNING
        if task_status == TaskResultStatus.FAILED and last_error == CANCELLED:
            return self.Status.CANCELLED
        return self.Status.FAILED

    @property
    def user_error(self) -> str:
        """Why the job stopped, in words for the user who asked."""
        status = self.status
        if status == self.Status.CANCELLED:
            return "Cancelled."
        if status == self.Status.EXPIRED:
            return "This export has expired and its file was removed."
        if status != self.Status.FAILED:
            return ""
        if self.error:
            return self.error
        errors = self.task_result.errors if self.task_result else []
        if errors and errors[-1].exception_class_path == WORKER_LOST:
            return "The job was interrupted too many times (its worker kept stopping). Please try again."
        return "The job failed unexpectedly. Please try again; if it fails again, tell an administrator."

    def can_view(self, user) -> bool:
        """Exports belong to whoever asked; a room's insights to all who can see the room.

        Either way only while the user can still see the room.
        """
        if not self.room.can_view(user):
            return False
        return self.kind == self.Kind.INSIGHTS or self.requested_by_id == user.pk

    def delete_files(self) -> None:
        """Remove the job's file, parts and charts from storage."""
        names = [self.part_name(n) for n in range(1, self.parts + 2)]
        if self.file:
            names.append(self.file.name)
        names += (self.result or {}).get("charts", {}).values()
        for name in names:
            default_storage.delete(name)


def with_task_results(jobs: Iterable[Job]) -> list[Job]:
    """`jobs` with their task results read in one query, for a page that shows many jobs' status."""
    jobs = list(jobs)
    results = get_results(job.task_id for job in jobs if job.task_id is not None)
    for job in jobs:
        job.task_result = results.get(str(job.task_id))
    return jobs
