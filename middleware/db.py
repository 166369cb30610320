"""The database handle: created unconfigured, initialised by a composition root.

``connect(url)`` accepts ``sqlite:///path`` and ``postgresql://user@host:port/db`` URLs
(peewee's ``playhouse.db_url``). SQLite runs in WAL mode with foreign keys on, so
the web process, the workers and the CLI can share one file.
"""
from __future__ import annotations

import os
import sqlite3
from datetime import date, datetime, timezone
from decimal import Decimal
from urllib.parse import urlparse

from peewee import DatabaseProxy, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import connect as _connect_url

database = DatabaseProxy()

SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("foreign_keys", 1),
    ("synchronous", "normal"),
    ("busy_timeout", 30000),
    ("cache_size", -64000),
    ("temp_store", "memory"),
    # checkpoint the WAL every ~80 MB instead of 4 MB: a bulk sync rewrites the same index
    # pages over and over, and each checkpoint would copy them into the database again
    ("wal_autocheckpoint", 20000),
    ("mmap_size", 268435456),
)


def _adapt_datetime(value: datetime) -> str:
    tz = value.tzinfo
    if tz is timezone.utc:  # the common case, a third faster: "... 03:04:05.123456+00:00" less its offset
        return value.isoformat(" ")[:-6]
    if tz is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(" ")


def sql_timestamp(value: datetime) -> datetime | str:
    """``value`` as SQLite stores it (the adapter's text), to put one timestamp into many rows
    without adapting it per row; PostgreSQL takes the datetime."""
    return value if is_postgres() else _adapt_datetime(value)


def _unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def unicode_lower_sql(expression: str) -> str:
    """SQL lower-casing ``expression`` in every script: PostgreSQL's LOWER() (Unicode under a UTF-8
    ctype), on SQLite the ``arhub_lower`` function registered on each connection."""
    return f"LOWER({expression})" if is_postgres() else f"arhub_lower({expression})"


def register_sqlite_adapters() -> None:
    """Decimal as exact text, dates ISO, datetimes as naive UTC: what peewee's fields read back."""
    sqlite3.register_adapter(Decimal, str)
    sqlite3.register_adapter(date, date.isoformat)
    sqlite3.register_adapter(datetime, _adapt_datetime)


def connect(url: str):
    """Create the peewee database for ``url`` and bind the module-level proxy to it."""
    scheme = urlparse(url).scheme
    if scheme.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ":memory:"
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        register_sqlite_adapters()
        db = SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=30)
        # SQLite's LOWER() folds ASCII only ("ÉCOLE" stays "École"); Python's folds every script
        db.register_function(_unicode_lower, "arhub_lower", 1, deterministic=True)
    elif scheme in ("postgres", "postgresql"):
        db = _connect_url(url.replace("postgres://", "postgresql://", 1))
    else:
        raise ValueError(f"ARHUB_DATABASE_URL: unsupported scheme {scheme!r} (use sqlite:/// or postgresql://)")
    database.initialize(db)
    return db


def is_postgres(db=None) -> bool:
    db = db or database.obj
    return isinstance(db, PostgresqlDatabase)


def is_sqlite(db=None) -> bool:
    db = db or database.obj
    return isinstance(db, SqliteDatabase)
