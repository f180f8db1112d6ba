"""The search index's DDL, shared by migration 0004_search and the post_migrate check.

PostgreSQL keeps its index by itself (a generated column). SQLite's FTS5 table is
kept by triggers on chat_message, and SQLite drops a table's triggers with it:
any later migration that rebuilds chat_message (SQLite alters most columns by
copying the table) would silently stop indexing new messages. So after every
migrate, ensure_sqlite_index() recreates what is missing and re-indexes.
"""

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.recorder import MigrationRecorder

POSTGRES = [
    # btree_gin lets one GIN index hold room_id next to the tsvector, so a search
    # in one room is answered by the index scan itself.
    "CREATE EXTENSION IF NOT EXISTS btree_gin",
    (
        "ALTER TABLE chat_message ADD COLUMN search_vector tsvector"
        " GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED"
    ),
    "CREATE INDEX chat_message_search ON chat_message USING gin (room_id, search_vector)",
]
POSTGRES_REVERSE = [
    "DROP INDEX IF EXISTS chat_message_search",
    "ALTER TABLE chat_message DROP COLUMN IF EXISTS search_vector",
]

SQLITE_TRIGGERS = (
    "chat_message_fts_insert",
    "chat_message_fts_delete",
    "chat_message_fts_update",
)
SQLITE = [
    (
        "CREATE VIRTUAL TABLE IF NOT EXISTS chat_message_fts USING fts5("
        "text, content='chat_message', content_rowid='id', tokenize='porter unicode61')"
    ),
    (
        "CREATE TRIGGER IF NOT EXISTS chat_message_fts_insert AFTER INSERT ON chat_message BEGIN"
        " INSERT INTO chat_message_fts(rowid, text) VALUES (new.id, new.text); END"
    ),
    (
        "CREATE TRIGGER IF NOT EXISTS chat_message_fts_delete AFTER DELETE ON chat_message BEGIN"
        " INSERT INTO chat_message_fts(chat_message_fts, rowid, text) VALUES ('delete', old.id, old.text); END"
    ),
    (
        "CREATE TRIGGER IF NOT EXISTS chat_message_fts_update AFTER UPDATE OF text ON chat_message BEGIN"
        " INSERT INTO chat_message_fts(chat_message_fts, rowid, text) VALUES ('delete', old.id, old.text);"
        " INSERT INTO chat_message_fts(rowid, text) VALUES (new.id, new.text); END"
    ),
    # Index what is already stored (all of it: 'rebuild' reads the content table).
    "INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild')",
]
SQLITE_REVERSE = [
    *(f"DROP TRIGGER IF EXISTS {name}" for name in SQLITE_TRIGGERS),
    "DROP TABLE IF EXISTS chat_message_fts",
]


def sqlite_index_complete(connection: BaseDatabaseWrapper) -> bool:
    """Whether the FTS5 table and all three triggers exist."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM sqlite_master WHERE (type = 'table' AND name = 'chat_message_fts')"
            " OR (type = 'trigger' AND tbl_name = 'chat_message' AND name IN (%s, %s, %s))",
            SQLITE_TRIGGERS,
        )
        return cursor.fetchone()[0] == 1 + len(SQLITE_TRIGGERS)


def ensure_sqlite_index(connection: BaseDatabaseWrapper) -> bool:
    """Recreate the FTS5 table or triggers if any is missing, and re-index; True if it had to.

    Only while migration 0004_search is applied: migrating back before it removes the index for good.
    """
    if connection.vendor != "sqlite" or sqlite_index_complete(connection):
        return False
    if ("chat", "0004_search") not in MigrationRecorder(connection).applied_migrations():
        return False
    with connection.cursor() as cursor:
        for sql in SQLITE:
            cursor.execute(sql)
    return True
