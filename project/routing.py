"""Where WebSocket paths and worker channels lead."""

from django.conf import settings
from django.urls import path

from chat.consumers import ChatConsumer
from notifications.consumers import NotificationConsumer
from reports.consumers import JobConsumer
from tasks.consumers import TaskConsumer, TaskMonitorConsumer

websocket_urlpatterns = [
    path("chat/<str:label>/", ChatConsumer.as_asgi()),
    path("tasks/live/", TaskMonitorConsumer.as_asgi()),
    path("reports/<int:job_id>/live/", JobConsumer.as_asgi()),
    path("notifications/live/", NotificationConsumer.as_asgi()),
]

# Each task queue is a channel served by `manage.py runworker <queue> ...`.
channel_routes = {queue: TaskConsumer.as_asgi() for queue in settings.TASK_QUEUES}
