from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        from . import edit_frames, protocol, signals  # noqa: F401 (signals: its receivers connect on import)
        from .consumers import ChatConsumer

        protocol.register("message", protocol.MESSAGE_SCHEMA, ChatConsumer.on_message)
        protocol.register("sync", protocol.SYNC_SCHEMA, ChatConsumer.on_sync)
        protocol.register("typing", protocol.TYPING_SCHEMA, ChatConsumer.on_typing)
        protocol.register("edit", protocol.EDIT_SCHEMA, edit_frames.on_edit)
        protocol.register("delete", protocol.DELETE_SCHEMA, edit_frames.on_delete)
        protocol.register("react", protocol.REACT_SCHEMA, edit_frames.on_react)
        protocol.register("thread", protocol.THREAD_SCHEMA, edit_frames.on_thread)
        protocol.register("versions", protocol.VERSIONS_SCHEMA, edit_frames.on_versions)
        post_migrate.connect(ensure_search_index, sender=self)


def ensure_search_index(using: str, **kwargs: Any) -> None:
    """SQLite's search triggers go with any rebuild of chat_message: put them back (chat.search_sql)."""
    from .search_sql import ensure_sqlite_index

    ensure_sqlite_index(connections[using])
