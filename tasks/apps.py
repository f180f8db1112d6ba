from django.apps import AppConfig
from django.core import checks


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from .worker import check_slots

        checks.register(check_slots)
