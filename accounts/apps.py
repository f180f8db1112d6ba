from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        from chat import protocol

        from . import consumers, signals  # noqa: F401 (signals: its receivers connect on import)

        protocol.register("avatar.refresh", consumers.REFRESH_SCHEMA, consumers.on_avatar_refresh)
        protocol.register_event("avatar.changed", consumers.on_avatar_changed)
