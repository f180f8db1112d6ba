from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import autodiscover_modules


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from django.tasks.signals import log_task_finished, task_finished

        from .runner import log_task_finished as log_unless_cancelled
        from .schedules import check_schedules
        from .worker import check_slots

        # Schedules are declared next to their tasks: import every app's tasks
        # module, so every process (and the system check) knows them all.
        autodiscover_modules("tasks")
        checks.register(check_slots)
        task_finished.disconnect(log_task_finished)
        task_finished.connect(log_unless_cancelled)
        checks.register(check_schedules)
