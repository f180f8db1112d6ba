from django.apps import AppConfig
from django.core import checks


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from django.tasks.signals import log_task_finished, task_finished

        from .runner import log_task_finished as log_unless_cancelled
        from .worker import check_slots

        checks.register(check_slots)
        task_finished.disconnect(log_task_finished)
        task_finished.connect(log_unless_cancelled)
