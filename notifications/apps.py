from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"

    def ready(self) -> None:
        # Mentions are found when a chat message is saved, whoever saves it:
        # chat needs no knowledge of notifications.
        from . import checks, signals  # noqa: F401
