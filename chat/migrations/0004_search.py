"""Full-text search over messages (chat.search, chat.search_sql): PostgreSQL or SQLite DDL."""

from django.db import migrations

from chat import search_sql


def run(statements: dict[str, list[str]]):
    def apply(apps, schema_editor) -> None:
        for sql in statements.get(schema_editor.connection.vendor, ()):
            schema_editor.execute(sql)

    return apply


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_sidebar_dm_read")]

    operations = [
        migrations.RunPython(
            run({"postgresql": search_sql.POSTGRES, "sqlite": search_sql.SQLITE}),
            run({"postgresql": search_sql.POSTGRES_REVERSE, "sqlite": search_sql.SQLITE_REVERSE}),
        ),
    ]
