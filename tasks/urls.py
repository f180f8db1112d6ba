from django.urls import path

from . import views

app_name = "tasks"
urlpatterns = [
    path("", views.monitor, name="monitor"),
    path("queues/<str:queue>/pause/", views.pause_or_resume, {"action": "pause"}, name="pause"),
    path("failures/<str:task_id>/rerun/", views.rerun_failed, name="rerun"),
    path("queues/<str:queue>/resume/", views.pause_or_resume, {"action": "resume"}, name="resume"),
]
