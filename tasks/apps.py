from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        from django.tasks.signals import log_task_finished, task_finished

        from .monitor import create_operators_group
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
        # After every migrate (and flush), once this app's permissions exist.
        post_migrate.connect(create_operators_group, sender=self)
