from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        from . import protocol, signals  # noqa: F401 (signals: its receivers connect on import)
        from .consumers import ChatConsumer

        protocol.register("message", protocol.MESSAGE_SCHEMA, ChatConsumer.on_message)
        protocol.register("sync", protocol.SYNC_SCHEMA, ChatConsumer.on_sync)
        protocol.register("typing", protocol.TYPING_SCHEMA, ChatConsumer.on_typing)
