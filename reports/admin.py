from django.contrib import admin

from .models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Read-only: jobs are made by their tasks; the task's record has the tracebacks."""

    list_display = ("id", "kind", "format", "room", "requested_by", "status", "rows_done", "created_at", "expires_at")
    list_filter = ("kind", "format")
    search_fields = ("room__label", "requested_by__username")
    list_select_related = ("room", "requested_by", "task")
    raw_id_fields = ("room", "requested_by", "task")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
