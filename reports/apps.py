from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "reports"
    verbose_name = "Room exports and insights"

    def ready(self) -> None:
        from chat import protocol

        from . import consumers, signals  # noqa: F401 (signals: its receivers connect on import)

        protocol.register("export", consumers.EXPORT_SCHEMA, consumers.on_export)
        protocol.register_event("task.update", consumers.on_task_update)
