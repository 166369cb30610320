"""Bulk upserts for the sync's hot path.

peewee builds and runs queries everywhere else; here, per-row model objects and
per-query SQL generation would cost more than the database itself, so the upsert
statement is built once per (table, columns) and run with ``executemany`` on SQLite
and as multi-row ``VALUES`` batches on PostgreSQL. Callers hold the transaction
(``with db.atomic():``).
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Iterable, Sequence

from peewee import chunked

from .db import database, is_postgres

UTC = timezone.utc
PG_BATCH = 500


def _identity(value):
    return value


def _sqlite_value(value):
    return _SQLITE_CONVERT.get(type(value), _sqlite_slow)(value)


def _sqlite_slow(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


def _sqlite_datetime(value):
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ")


_SQLITE_CONVERT = {str: _identity, int: _identity, type(None): _identity, float: _identity, Decimal: str,
                   date: date.isoformat, datetime: _sqlite_datetime, bool: int}


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
        data = [tuple(map(_sqlite_value, row)) for row in rows]
        if data:
            db.cursor().executemany(sql, data)
        count = len(data)
    return count


def update_many(model, key_columns: Sequence[str], set_columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """``UPDATE table SET set_columns WHERE key_columns`` for each row (set values first, then keys)."""
    db = database.obj
    table = model._meta.table_name
    ph = "%s" if is_postgres(db) else "?"
    sets = ", ".join(f'"{c}" = {ph}' for c in set_columns)
    where = " AND ".join(f'"{c}" = {ph}' for c in key_columns)
    sql = f'UPDATE "{table}" SET {sets} WHERE {where}'
    convert = _pg_value if is_postgres(db) else _sqlite_value
    data = [tuple(convert(v) for v in row) for row in rows]
    if data:
        db.cursor().executemany(sql, data)
    return len(data)


def placeholders(n: int) -> str:
    ph = "%s" if is_postgres() else "?"
    return ", ".join([ph] * n)


def to_decimal(value) -> Decimal | None:
    """A money value read with raw SQL (SQLite may hand back float or int) as an exact ``Decimal``."""
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))
