"""Page preparation for the ERP sync (:mod:`middleware.sync`), none of it touching the database.

What runs ahead of the writer, in a forked prepare process (:func:`prepare_in_process`) or a
prefetch thread (:func:`prefetch`): raw records mapped, validated (:func:`validate_record`) and
content-hashed (:func:`content_hash`) into :class:`_Prepared` chunks, with :class:`_PageMeta`
for their page. Both classes are pickled from the prepare process to the writer. ``SyncError``
lives here because the prepare process raises it; :mod:`middleware.sync` re-exports it.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

from marshmallow import ValidationError

from .mapping import CompiledMapping, FieldError
from .models import CreditMemo, Customer, Invoice, Payment
from .schemas import FAST_LOADERS, flatten_messages

DELETABLE = {"customer": Customer, "invoice": Invoice, "credit_memo": CreditMemo, "payment": Payment}
HASHED_OBJECTS = frozenset(DELETABLE)  # the objects _classify compares by content hash (keyed by external_id)


class SyncError(RuntimeError):
    """A sync that could not run at all (no such source, a broken mapping definition)."""


def content_hash(record: dict) -> str:
    """Stable hash of a canonical record's content (the ERP's modified stamp excluded); a nested
    object (``billing_address``) counts by its sorted items, whatever order the mapping built it in."""
    payload = repr(sorted((k, sorted(v.items()) if v.__class__ is dict else v)
                          for k, v in record.items() if k != "erp_modified_at"))
    return hashlib.md5(payload.encode("utf-8"), usedforsecurity=False).hexdigest()


def validate_record(object_name: str, record: dict) -> tuple[dict | None, list[FieldError]]:
    try:
        return FAST_LOADERS[object_name].load(record), []
    except ValidationError as exc:
        return None, [FieldError(name, msg, None, _dig(record, name)) for name, msg in flatten_messages(exc.messages)]


def _dig(record: dict, name: str):
    value: Any = record
    for part in name.replace("]", "").replace("[", ".").split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value if not isinstance(value, (dict, list)) else None


@dataclass(slots=True)
class _PageMeta:
    """What the writer needs of a page once its records are prepared."""
    number: int
    total_pages: int | None
    server_time: datetime | None


@dataclass(slots=True)
class _Prepared:
    """One chunk of raw records after mapping, validation and content hashing (no database)."""
    fetched: int = 0
    skipped: int = 0
    good: list[tuple[str, dict, str | None]] = field(default_factory=list)  # (key, record, content hash)
    deletions: list[dict] = field(default_factory=list)
    rejects: list[tuple[str | None, dict, list[FieldError]]] = field(default_factory=list)


def _prepare_chunk(name: str, mapping: CompiledMapping, raws: list) -> _Prepared:
    """Map, validate and hash ``raws``: pure, so it can run on the prefetch thread."""
    out = _Prepared(fetched=len(raws))
    hashed = name in HASHED_OBJECTS
    for raw in raws:
        if not isinstance(raw, dict):
            out.rejects.append((None, {"value": repr(raw)[:1000]}, [FieldError("record", "not an object")]))
            continue
        if not mapping.wants(raw):
            out.skipped += 1
            continue
        record, errors = mapping.apply(raw)
        ext_id = _ext_id(name, record)
        if record.get("status") == "deleted" and ext_id and name in DELETABLE:
            out.deletions.append({"id": ext_id})  # a deleted record may come without its other fields
            continue
        if not errors:
            record, errors = validate_record(name, record)
        if errors:
            out.rejects.append((ext_id, raw, errors))
            continue
        out.good.append((_ext_id(name, record), record, content_hash(record) if hashed else None))
    return out


def _ext_id(name: str, record: dict) -> str | None:
    if name == "currency":
        return record.get("code")
    if name == "fx_rate":
        day = record.get("rate_date")
        return f"{record.get('currency')}@{day}" if day else None
    value = record.get("external_id")
    return None if value is None else str(value)


class _Done:
    pass


def prepare_in_process(make: Callable[[], Iterable], depth: int = 2, *, on_fork: Callable[[], None] | None = None):
    """Iterate ``make()`` in a forked child process, ``depth`` items ahead of the consumer.

    The thread of :func:`prefetch` overlaps the ERP's network time with our writes, but
    parsing, mapping, validation and hashing are Python and share one core with the writer
    (the GIL). Here they run in a child forked from this process (it inherits the compiled
    mapping and the connector; ``on_fork`` runs first in the child, to drop pooled connections
    it shares with us); each item comes back pickled through a pipe, read by a thread (bytes
    only, no GIL while it waits) and unpickled on the consumer's thread. The child never
    touches the database: this process's connection is inherited but unused, and the child
    leaves with ``os._exit``, so nothing of it is closed or finalized there.

    Errors in the child are raised here with their own type (the child's traceback as a note);
    a child that dies without a word raises :class:`SyncError`; stopping early kills the child.
    """
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_prepare_child, args=(make, writer, on_fork, os.getpid()), name="arhub-prepare",
                        daemon=True)
    child.start()
    writer.close()
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump():
        data: bytes | None = b""
        while data is not None and not stop.is_set():
            try:
                data = reader.recv_bytes()
            except (EOFError, OSError):
                data = None  # the child closed its end: done, failed or killed
            while not stop.is_set():
                try:
                    items.put(data, timeout=0.1)
                    break
                except queue.Full:
                    continue

    pumper = threading.Thread(target=pump, name="arhub-prepare-pipe", daemon=True)
    pumper.start()
    try:
        while True:
            data = items.get()
            if data is None:
                child.join(timeout=5)
                raise SyncError(f"the prepare process ended without finishing (exit code {child.exitcode})")
            kind, payload, trace = pickle.loads(data)
            if kind == "item":
                yield payload
            elif kind == "error":
                if trace:
                    payload.add_note(f"in the prepare process:\n{trace}")
                raise payload
            else:
                return
    finally:
        stop.set()
        if child.is_alive():
            child.join(timeout=0.5)
        if child.is_alive():
            child.kill()
            child.join()
        pumper.join(timeout=5)
        reader.close()


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL the moment its parent dies.

    The child shares its parent's lock on the source (an ``flock``, a PostgreSQL session
    holding an advisory lock) through the descriptors it inherited; a parent killed mid-sync
    must not leave the source locked until the child next tries to write into the pipe.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the child ends at its next send into the closed pipe
    if os.getppid() != parent:  # the parent died before the call
        os._exit(0)


def _prepare_child(make: Callable[[], Iterable], conn, on_fork: Callable[[], None] | None, parent: int) -> None:
    """The child of :func:`prepare_in_process`: every item pickled into ``conn``, then a last word."""
    dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL
    _die_with_parent(parent)
    try:
        if on_fork is not None:
            on_fork()
        for item in make():
            conn.send_bytes(dumps(("item", item, None), protocol))
        conn.send_bytes(dumps(("done", None, None), protocol))
    except BrokenPipeError:
        pass  # the consumer stopped listening (it stopped early or died): nothing to tell
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        trace = traceback.format_exc()
        try:
            message = dumps(("error", exc, trace), protocol)
            pickle.loads(message)  # an exception that pickles but cannot be rebuilt would be lost
        except Exception:  # noqa: BLE001
            message = dumps(("error", SyncError(f"{type(exc).__name__}: {exc}"), trace), protocol)
        try:
            conn.send_bytes(message)
        except OSError:
            pass
    finally:
        conn.close()


def prefetch(iterable, depth: int = 2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead of the consumer.

    The ERP answers the next page while we map and write the current one. Only the
    connector runs in the thread (network and parsing); the database stays on the
    consumer's thread. Errors are re-raised in the consumer; stopping early stops the thread.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        iterator = iter(iterable)
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, which re-raises it
            items.put((_Done, exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        items.put((_Done, None))

    worker = threading.Thread(target=produce, name="arhub-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = items.get()
            if item is _Done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
