from django.contrib import admin
from django.contrib.admin.views.main import ChangeList

from .models import Job, with_task_results


class JobChangeList(ChangeList):
    def get_results(self, request) -> None:
        super().get_results(request)
        self.result_list = with_task_results(self.result_list)  # each row shows its job's status


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Read-only: jobs are made by their tasks; the task's record has the tracebacks."""

    list_display = ("id", "kind", "format", "room", "requested_by", "status", "rows_done", "created_at", "expires_at")
    list_filter = ("kind", "format")
    search_fields = ("room__label", "requested_by__username")
    list_select_related = ("room", "requested_by")
    raw_id_fields = ("room", "requested_by")

    def get_changelist(self, request, **kwargs) -> type[ChangeList]:
        return JobChangeList

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
