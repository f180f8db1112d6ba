"""Model instances from rows read with hand-written SQL, loaded as the ORM would.

The hot paths that send their SQL straight to the cursor (the task runner's
claims, a socket's room lookup) still hand the rest of the code model
instances: the ORM's converters for each column (JSON, SQLite's datetimes,
...) are found once per model and database, then applied by position.
"""

import functools
from typing import Any

from django.db import connection
from django.db.models import Model


def columns(model: type[Model]) -> str:
    """The model's concrete columns, quoted and in the order load() expects them."""
    return ", ".join(connection.ops.quote_name(field.column) for field in model._meta.concrete_fields)


@functools.cache
def _converters(model: type[Model], vendor: str) -> list[tuple[int, list, Any]]:
    found = []
    for i, field in enumerate(model._meta.concrete_fields):
        column = field.get_col(model._meta.db_table)
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if converters:
            found.append((i, converters, column))
    return found


def load(model: type[Model], row: Any) -> Model:
    """An instance of `model` from a row of its columns(), as the ORM would have loaded it."""
    values = list(row)
    for i, converters, column in _converters(model, connection.vendor):
        for convert in converters:
            values[i] = convert(values[i], column, connection)
    return model.from_db(connection.alias, None, values)
