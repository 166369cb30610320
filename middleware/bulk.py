"""Bulk upserts for the sync's hot path.

peewee builds and runs queries everywhere else; here, per-row model objects and
per-query SQL generation would cost more than the database itself, so the upsert
statement is built once per (table, columns) and run with ``executemany`` on SQLite
and as multi-row ``VALUES`` batches on PostgreSQL. SQLite gets Python values as they are:
``middleware.db.connect`` registers sqlite3 adapters for ``Decimal`` (exact text), ``date``
and ``datetime`` (naive UTC), so no per-value conversion runs in Python. Callers hold the transaction
(``with db.atomic():``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Iterable, Sequence

from peewee import chunked

from .db import database, is_postgres

UTC = timezone.utc
PG_BATCH = 500


def _pg_value(value):
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


@lru_cache(maxsize=256)
def _upsert_sql(table: str, columns: tuple[str, ...], conflict: tuple[str, ...], update: tuple[str, ...],
                placeholder: str, rows: int) -> str:
    cols = ", ".join(f'"{c}"' for c in columns)
    one = "(" + ", ".join([placeholder] * len(columns)) + ")"
    values = ", ".join([one] * rows)
    sql = f'INSERT INTO "{table}" ({cols}) VALUES {values}'
    target = ", ".join(f'"{c}"' for c in conflict)
    if update:
        sets = ", ".join(f'"{c}" = excluded."{c}"' for c in update)
        sql += f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
    else:
        sql += f" ON CONFLICT ({target}) DO NOTHING"
    return sql


def upsert(model, columns: Sequence[str], rows: Iterable[Sequence], conflict: Sequence[str],
           update: Sequence[str]) -> int:
    """Insert ``rows`` (tuples in ``columns`` order); on a ``conflict`` update the ``update`` columns."""
    db = database.obj
    table = model._meta.table_name
    columns, conflict, update = tuple(columns), tuple(conflict), tuple(update)
    count = 0
    if is_postgres(db):
        for batch in chunked(rows, PG_BATCH):
            sql = _upsert_sql(table, columns, conflict, update, "%s", len(batch))
            params = [_pg_value(v) for row in batch for v in row]
            db.execute_sql(sql, params)
            count += len(batch)
    else:
        sql = _upsert_sql(table, columns, conflict, update, "?", 1)
        data = rows if isinstance(rows, list) else list(rows)  # adapters registered by db.connect
        if data:
            db.cursor().executemany(sql, data)
        count = len(data)
    return count


_PG_TYPES = {"AUTO": "integer", "DECIMAL": "numeric", "DATE": "date", "BOOL": "boolean", "INT": "integer", "BIGINT": "bigint",
             "VARCHAR": "varchar", "TEXT": "text", "DATETIME": "timestamp", "FLOAT": "double precision"}


def update_many(model, key_columns: Sequence[str], set_columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """``UPDATE table SET set_columns WHERE key_columns`` for each row (set values first, then keys).

    SQLite: ``executemany`` of one prepared statement. PostgreSQL: one ``UPDATE ... FROM (VALUES ...)``
    per batch, not one round trip per row.
    """
    db = database.obj
    table = model._meta.table_name
    if is_postgres(db):
        data = [tuple(map(_pg_value, row)) for row in rows]
        columns = (*set_columns, *key_columns)
        fields = {f.column_name: f for f in model._meta.sorted_fields}
        casts = [f'v."{c}"::{_PG_TYPES.get(fields[c].field_type, "text")}' for c in columns]
        sets = ", ".join(f'"{c}" = {cast}' for c, cast in zip(set_columns, casts))
        where = " AND ".join(f't."{c}" = {cast}' for c, cast in zip(key_columns, casts[len(set_columns):]))
        names = ", ".join(f'"{c}"' for c in columns)
        for batch in chunked(data, PG_BATCH):
            values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(batch))
            db.execute_sql(f'UPDATE "{table}" AS t SET {sets} FROM (VALUES {values}) AS v({names}) WHERE {where}',
                           [v for row in batch for v in row])
        return len(data)
    ph = "?"
    sets = ", ".join(f'"{c}" = {ph}' for c in set_columns)
    where = " AND ".join(f'"{c}" = {ph}' for c in key_columns)
    data = rows if isinstance(rows, list) else list(rows)  # sqlite3 adapters registered by db.connect
    if data:
        db.cursor().executemany(f'UPDATE "{table}" SET {sets} WHERE {where}', data)
    return len(data)


def placeholders(n: int) -> str:
    ph = "%s" if is_postgres() else "?"
    return ", ".join([ph] * n)


def to_decimal(value) -> Decimal | None:
    """A money value read with raw SQL (SQLite may hand back float or int) as an exact ``Decimal``."""
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))
