from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import monitor, progress, schedules
from .backends import task_queues
from .models import PausedQueue, Schedule, TaskRecord


@admin.register(TaskRecord)
class TaskRecordAdmin(admin.ModelAdmin):
    """Task results, read-only: the runner alone writes them. Staff may cancel and re-run."""

    list_display = ["id", "task_path", "queue_name", "status", "attempts", "enqueued_at", "finished_at", "worker_id"]
    list_filter = ["status", "queue_name"]
    search_fields = ["task_path", "id"]
    date_hierarchy = "enqueued_at"
    actions = ["cancel_tasks", "rerun_tasks"]
    fieldsets = [
        (None, {"fields": ["id", "task_path", "backend", "queue_name", "priority", "status", "args", "kwargs",
                           "unique_key"]}),  # fmt: skip
        ("Timing", {"fields": ["enqueued_at", "run_after", "available_at", "started_at", "last_attempted_at",
                               "finished_at"]}),  # fmt: skip
        ("Attempts", {"fields": ["max_attempts", "retry_backoff", "retry_backoff_max", "worker_ids", "errors",
                                 "return_value"]}),  # fmt: skip
        ("Now", {"fields": ["worker_id", "heartbeat_at", "cancel_requested", "progress_done", "progress_total",
                            "progress_note", "progress_at"]}),  # fmt: skip
    ]
    readonly_fields = [field for _, options in fieldsets for field in options["fields"]]

    @admin.display(description="attempts")
    def attempts(self, record: TaskRecord) -> int:
        return record.attempts

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks come from .enqueue(), with a backend's checks

    @admin.action(description="Cancel selected tasks", permissions=["change"])
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        unfinished = list(queryset.filter(status__in=[progress.READY, progress.RUNNING]).values_list("pk", flat=True))
        for pk in unfinished:
            progress.cancel(pk)
        skipped = queryset.count() - len(unfinished)
        self.message_user(
            request,
            f"Cancelled {len(unfinished)} task(s): ready ones will not start, running ones stop at their next "
            f"progress report." + (f" {skipped} had already finished." if skipped else ""),
            messages.SUCCESS,
        )

    @admin.action(description="Re-run selected failed or cancelled tasks", permissions=["change"])
    def rerun_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        done, skipped = monitor.rerun(queryset.values_list("pk", flat=True))
        self.message_user(request, f"Re-queued {len(done)} task(s), their history kept.", messages.SUCCESS)
        if skipped:
            self.message_user(request, "Not re-run: " + "; ".join(skipped), messages.WARNING)


class PauseForm(forms.ModelForm):
    queue_name = forms.ChoiceField(choices=[])

    class Meta:
        model = PausedQueue
        fields = ["queue_name"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["queue_name"].choices = [(name, name) for name in sorted(task_queues())]


@admin.register(PausedQueue)
class PausedQueueAdmin(admin.ModelAdmin):
    """Paused queues: add one to pause it, delete it to resume (workers follow within TASKS_POLL_INTERVAL)."""

    list_display = ["queue_name", "paused_at", "paused_by"]
    form = PauseForm
    actions = ["resume_queues"]

    def has_change_permission(self, request: HttpRequest, obj: PausedQueue | None = None) -> bool:
        return False  # a pause is added or removed, not edited

    def save_model(self, request: HttpRequest, obj: PausedQueue, form: forms.Form, change: bool) -> None:
        monitor.pause(obj.queue_name, by=request.user.get_username())
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: PausedQueue) -> None:
        monitor.resume(obj.queue_name)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PausedQueue]) -> None:
        for name in list(queryset.values_list("queue_name", flat=True)):
            monitor.resume(name)

    @admin.action(description="Resume selected queues", permissions=["delete"])
    def resume_queues(self, request: HttpRequest, queryset: QuerySet[PausedQueue]) -> None:
        self.delete_queryset(request, queryset)
        self.message_user(request, "Resumed: workers claim from these queues again.", messages.SUCCESS)


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Schedules come from code; staff see where they stand and may pause and resume them."""

    list_display = ["name", "spec", "paused", "next_tick", "last_tick", "last_task_id"]
    list_filter = ["paused"]
    search_fields = ["name"]
    readonly_fields = ["name", "spec", "paused", "next_tick", "last_tick", "last_task_id"]
    actions = ["pause", "resume"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # declared in code with @schedule

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self.set_paused(request, queryset, True)

    @admin.action(description="Resume selected schedules (from their next tick)", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self.set_paused(request, queryset, False)

    def set_paused(self, request: HttpRequest, queryset: QuerySet[Schedule], paused: bool) -> None:
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            schedules.set_paused(name, paused)
        self.message_user(request, f"{'Paused' if paused else 'Resumed'} {len(names)} schedule(s).", messages.SUCCESS)
