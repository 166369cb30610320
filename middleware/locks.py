"""Cross-process locks that die with their holder.

A sync of one source must not run twice at once (cron and a manual "run now", two
workers): PostgreSQL gives session advisory locks, released if the process dies;
SQLite (one machine by nature) gets an ``flock`` on a file beside the database.
"""
from __future__ import annotations

import fcntl
import os
import zlib
from contextlib import contextmanager
from typing import Iterator

from .db import database, is_postgres


class LockBusy(RuntimeError):
    """Another process holds the lock."""


@contextmanager
def exclusive(name: str) -> Iterator[None]:
    db = database.obj
    if is_postgres(db):
        key = zlib.crc32(f"arhub:{name}".encode())
        got = db.execute_sql("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if not got:
            raise LockBusy(f"{name} is held by another process")
        try:
            yield
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))
        return
    path = f"{os.path.abspath(db.database)}.{name}.lock" if db.database != ":memory:" else None
    if path is None:
        yield
        return
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"{name} is held by another process") from None
        yield
    finally:
        handle.close()  # closing releases the flock
