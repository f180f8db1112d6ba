from django.contrib import admin
from django.urls import include, path

from project.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("", include("accounts.urls")),
    path("tasks/", include("tasks.urls")),
    path("reports/", include("reports.urls")),
    path("notifications/", include("notifications.urls")),
    # Last: /<label>/ catches every other single path segment.
    path("", include("chat.urls")),
]
