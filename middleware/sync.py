"""ERP → canonical store: paged pull → map → validate → chunked bulk upsert → cursor.

Guarantees (each has a test):
- a rejected record is kept with its raw payload and the reasons (record and field named);
  good records in the same page still land;
- a cursor advances only after the data it covers is committed, and never past data that
  was not processed: it moves to the start of the pull (by the ERP's clock when known) minus
  an overlap, so records modified while we paged are fetched again next time;
- re-running changes nothing and says so (content hashes: created / updated / unchanged);
- a run killed midway and restarted ends with the same store as an uninterrupted one
  (upserts are idempotent, the cursor had not moved);
- deletions and voids zero the open amount; payment and credit applications update it.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Protocol

from marshmallow import ValidationError

from . import balances
from .bulk import placeholders, to_decimal, update_many, upsert
from .db import database, is_postgres, sql_timestamp
from .fx import RateBook
from .locks import LockBusy, exclusive
from .mapping import CompiledMapping, FieldError, FieldSpec
from .mapping import preview as preview_mapping
from .models import (
    Application, Contact, CreditMemo, Currency, Customer, FieldMapping, FxRate, Invoice, Payment,
    RejectedRecord, RunStatus, Source, SyncCursor, SyncRun, utcnow,
)
from .schemas import FAST_LOADERS, flatten_messages, minor_units

log = logging.getLogger(__name__)

#: canonical objects in dependency order (rates before documents, customers before invoices)
OBJECT_ORDER = ("currency", "fx_rate", "customer", "invoice", "credit_memo", "payment")
CLOSED = ("voided", "deleted")
ZERO = Decimal(0)
# PostgreSQL's autovacuum_analyze_threshold and _scale_factor defaults: a run that wrote more
# rows of a table than this analyzes it (_analyze_bulk_writes)
ANALYZE_BASE_ROWS, ANALYZE_SCALE = 50, 0.1
DELETABLE = {"customer": Customer, "invoice": Invoice, "credit_memo": CreditMemo, "payment": Payment}
HASHED_OBJECTS = frozenset(DELETABLE)  # the objects _classify compares by content hash (keyed by external_id)


class SyncError(RuntimeError):
    """A sync that could not run at all (no such source, a broken mapping definition)."""


class SyncAlreadyRunning(SyncError):
    """The source is being synced by another process: nothing was done."""


class ErpPort(Protocol):
    def pull(self, object_name: str, since: datetime | None) -> Iterator[Any]: ...
    def pull_deleted(self, object_name: str, since: datetime | None) -> Iterator[list[dict]]: ...


@dataclass
class ObjectStats:
    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    deleted: int = 0
    skipped: int = 0  # filtered out by the preset (e.g. supplier bills)
    duplicates: int = 0
    pages: int = 0
    seconds: float = 0.0  # wall time of the object's pull and writes
    waited_seconds: float = 0.0  # of which the writer waited for the next prepared page (ERP, parse, mapping)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    hold_cursor: bool = False  # something may have been missed: keep the cursor where it was

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if v not in (None, [], 0, False) or k in ("fetched",)}
        if "waited_seconds" in out:
            out["waited_seconds"] = round(out["waited_seconds"], 2)
        return out


def content_hash(record: dict) -> str:
    """Stable hash of a canonical record's content (the ERP's modified stamp excluded); a nested
    object (``billing_address``) counts by its sorted items, whatever order the mapping built it in."""
    payload = repr(sorted((k, sorted(v.items()) if v.__class__ is dict else v)
                          for k, v in record.items() if k != "erp_modified_at"))
    return hashlib.md5(payload.encode("utf-8"), usedforsecurity=False).hexdigest()


def _mapping_for(source: Source, object_name: str) -> CompiledMapping:
    rows = (FieldMapping.select()
            .where((FieldMapping.source == source) & (FieldMapping.object_name == object_name)
                   & FieldMapping.enabled)
            .order_by(FieldMapping.position, FieldMapping.id))
    specs = [FieldSpec.from_row(r) for r in rows]
    obj_cfg = (source.config.get("objects") or {}).get(object_name) or {}
    return CompiledMapping(object_name, specs, source.config.get("lookups") or {}, obj_cfg.get("filter"))


def preview(source: Source, object_name: str, sample: dict) -> dict:
    """What ``source``'s current mappings make of one raw ``sample``: record, per-field errors, unmatched paths."""
    specs = [FieldSpec.from_row(r) for r in FieldMapping.select().where(
        (FieldMapping.source == source) & (FieldMapping.object_name == object_name) & FieldMapping.enabled)
        .order_by(FieldMapping.position, FieldMapping.id)]
    return preview_mapping(specs, sample, object_name, source.config.get("lookups") or {},
                           validate=lambda record: validate_record(object_name, record)[1])


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


class SyncService:
    """Runs one source's pull. Connector in, counts and a ``SyncRun`` out."""

    def __init__(self, source: Source, connector: ErpPort, *, reporting_currency: str = "USD",
                 chunk_size: int = 2000, overlap_seconds: int = 300, clock: Callable[[], datetime] = utcnow,
                 commit_rows: int = 20000, prepare: str = "process",
                 progress: Callable[[str, ObjectStats], None] | None = None):
        self.source = source
        self.connector = connector
        #: where pages are parsed, mapped, validated and hashed while we write: "process" (a
        #: forked child, another core) or "thread" (shares our GIL); ARHUB_SYNC_PREPARE
        self.prepare = prepare
        if self.prepare == "process" and "fork" not in multiprocessing.get_all_start_methods():
            self.prepare = "thread"
        self.reporting = reporting_currency
        self.chunk_size = chunk_size
        self.commit_rows = commit_rows
        self.overlap = timedelta(seconds=overlap_seconds)
        self.clock = clock
        self.progress = progress or (lambda name, stats: None)
        self.rates: RateBook | None = None
        self._customer_ids: dict[str, int] | None = None
        self._touched_invoices: set[str] = set()
        self.reconciliation_mismatches = 0
        self._written: dict[str, set[str]] = defaultdict(set)  # table → external ids written by this run
        self._fresh: dict[str, bool] = {}  # table → had no rows of this source when the run began
        self._unlinked: dict[str, set[str]] = defaultdict(set)  # rows written before what they link to
        self._mismatch: dict[str, bool] = {}  # invoice → open amount differs from the ERP's own figure
        self._has_rejects: dict[str, bool] = {}  # object → unresolved rejections exist for this source
        self.today = clock().date()
        self._has_apps = Application.select().where(Application.source == source.id).exists()

    # ------------------------------------------------------------------ run
    def objects(self) -> list[str]:
        configured = self.source.config.get("objects") or {}
        return [name for name in OBJECT_ORDER if name in configured]

    def run(self, full: bool = False, objects: Iterable[str] | None = None) -> SyncRun:
        """Pull ``objects`` (default: all the preset has). ``SyncAlreadyRunning`` if this source is syncing."""
        try:
            with exclusive(f"sync-{self.source.id}"):
                return self._run(full, objects)
        except LockBusy as exc:
            raise SyncAlreadyRunning(f"source {self.source.name!r} is already syncing in another process") from exc

    def _run(self, full: bool, objects: Iterable[str] | None) -> SyncRun:
        wanted = list(objects) if objects else self.objects()
        cursors = {c.object_name: c for c in SyncCursor.select().where(SyncCursor.source == self.source)}
        first = not any(c.cursor for c in cursors.values())
        run = SyncRun.create(source=self.source, mode="full" if full or first else "incremental",
                             cursor_before={k: c.cursor.isoformat() if c.cursor else None for k, c in cursors.items()})
        totals = ObjectStats()
        per_object: dict[str, dict] = {}
        errors: list[dict] = []
        cursor_after = dict(run.cursor_before)
        try:
            self.rates = RateBook.load(self.reporting)
            def record(name: str, stats: ObjectStats) -> None:
                for warning in stats.warnings:
                    errors.append({"object": name, "warning": warning})
                per_object[name] = stats.as_dict()
                for key in ("fetched", "created", "updated", "unchanged", "rejected", "deleted"):
                    setattr(totals, key, getattr(totals, key) + getattr(stats, key))

            for name in wanted:
                stats = ObjectStats()
                cursor = cursors.get(name)
                started = time.perf_counter()
                try:
                    new_cursor = self._sync_object(run, name, None if full or cursor is None else cursor.cursor,
                                                   None if cursor is None else cursor.deleted_cursor, stats, full)
                except Exception as exc:  # recorded on the run; the cursor stays where it was
                    stats.seconds = round(time.perf_counter() - started, 2)
                    stats.error = f"{type(exc).__name__}: {exc}"
                    errors.append({"object": name, "error": stats.error})
                    log.warning("sync %s/%s failed: %s", self.source.name, name, stats.error)
                    if not _is_expected(exc):
                        record(name, stats)  # what the object did before it failed stays on the run
                        raise
                else:
                    cursor_after[name] = new_cursor.isoformat() if new_cursor else None
                    stats.seconds = round(time.perf_counter() - started, 2)
                record(name, stats)
                if name == "fx_rate":
                    self.rates = RateBook.load(self.reporting)
            self._finish_documents()
            if self.reconciliation_mismatches:
                errors.append({"object": "invoice", "warning": (
                    f"{self.reconciliation_mismatches} invoice(s) have an open amount that differs from the ERP's "
                    "own figure (erp_open_amount): a payment or credit applied in the ERP is not in the synced data")})
            status = RunStatus.SUCCEEDED
            if any("error" in e for e in errors):
                status = RunStatus.FAILED if all(per_object.get(n, {}).get("error") for n in wanted) else RunStatus.PARTIAL
            elif totals.rejected:
                status = RunStatus.PARTIAL
        except Exception as exc:
            if not any(e.get("error") == f"{type(exc).__name__}: {exc}" for e in errors):
                errors.append({"object": None, "error": f"{type(exc).__name__}: {exc}"})
            status = RunStatus.FAILED
            self._close(run, totals, per_object, errors, cursor_after, status)
            raise
        self._close(run, totals, per_object, errors, cursor_after, status)
        return run

    def _close(self, run, totals, per_object, errors, cursor_after, status) -> None:
        run.fetched, run.created, run.updated = totals.fetched, totals.created, totals.updated
        run.unchanged, run.rejected, run.deleted = totals.unchanged, totals.rejected, totals.deleted
        run.objects, run.errors, run.cursor_after = per_object, errors, cursor_after
        run.status = status.value
        run.finished_at = utcnow()
        changed = totals.created + totals.updated + totals.deleted
        run.message = ("nothing changed" if not changed and not totals.rejected else
                       f"{totals.created} created, {totals.updated} updated, {totals.deleted} deleted, "
                       f"{totals.unchanged} unchanged, {totals.rejected} rejected")
        run.save()

    # --------------------------------------------------------------- object
    def _sync_object(self, run: SyncRun, name: str, since: datetime | None, deleted_since: datetime | None,
                     stats: ObjectStats, full: bool) -> datetime | None:
        mapping = _mapping_for(self.source, name)
        if mapping.errors:
            raise SyncError("; ".join(f"mapping {name}.{e.field}: {e.message}" for e in mapping.errors))
        started = self.clock()
        seen: dict[str, Any] = {}  # external id → the ERP's modified stamp, for this pull
        with _GroupCommit(self.commit_rows, stats, name) as group:
            server_start, unmatched = self._pull_pages(run, name, since, mapping, seen, stats, group)
        if stats.fetched and unmatched:
            for path in sorted(unmatched):
                stats.warnings.append(f"mapping {name}: source path {path!r} matched nothing in "
                                      f"{stats.fetched} records")
        deleted_started = self.clock()
        for batch in self.connector.pull_deleted(name, deleted_since):
            stats.deleted += self._apply_deletions(name, batch)
        # the data is committed: now (and only now) the cursor moves
        begin = min(started, server_start) if server_start else started
        new_cursor = since if stats.hold_cursor else begin - self.overlap
        with database.atomic():
            cursor, _ = SyncCursor.get_or_create(source=self.source, object_name=name)
            if cursor.cursor and not full and (new_cursor is None or cursor.cursor > new_cursor):
                new_cursor = cursor.cursor
            cursor.cursor = new_cursor
            cursor.deleted_cursor = deleted_started - self.overlap
            cursor.updated_at = utcnow()
            cursor.save()
        return new_cursor

    def _pull_pages(self, run: SyncRun, name: str, since: datetime | None, mapping: CompiledMapping,
                    seen: dict[str, Any], stats: ObjectStats,
                    group: "_GroupCommit") -> tuple[datetime | None, set[str]]:
        """Every page through the chunks, committed in groups of ``commit_rows`` records.
        Returns the ERP's clock at the first page (when it tells) and the mapping paths that
        matched nothing."""
        server_start: datetime | None = None
        state: dict[str, Any] = {"unmatched": None}

        def prepared() -> Iterator[tuple[_PageMeta, int, bool, int, list[_Prepared], set[str]]]:
            # runs in the prepare process (or the prefetch thread): fetching, parsing, mapping,
            # validation and content hashes need no database, so they overlap the consumer's writes
            for page, number, keyset in self._pages(name, since, mapping):
                records = list(page.records)
                unmatched = state["unmatched"]
                if unmatched is None or unmatched:
                    state["unmatched"] = set(mapping.unmatched([r for r in records if isinstance(r, dict)],
                                                               among=unmatched))
                chunks = [_prepare_chunk(name, mapping, records[start:start + self.chunk_size])
                          for start in range(0, len(records), self.chunk_size)]
                # the page without its raw records: rejects keep theirs, nothing else needs them
                meta = _PageMeta(page.number, getattr(page, "total_pages", None), getattr(page, "server_time", None))
                yield meta, number, keyset, len(records), chunks, state["unmatched"]

        if self.prepare == "process":
            # 8 pages ahead: the child keeps preparing while the writer commits or checkpoints
            pages = prepare_in_process(prepared, depth=8, on_fork=getattr(self.connector, "after_fork", None))
        else:
            pages = prefetch(prepared())
        first_size = None
        try:
            pages = iter(pages)
            while True:
                waiting = time.perf_counter()
                item = next(pages, None)
                stats.waited_seconds += time.perf_counter() - waiting  # the ERP, or its parse and mapping
                if item is None:
                    break
                page, number, keyset, size, chunks, unmatched = item
                state["unmatched"] = unmatched
                stats.pages += 1
                if server_start is None and page.server_time:
                    server_start = page.server_time
                total = page.total_pages
                if first_size is None:
                    first_size = size
                elif total and number < total and size < first_size and not keyset:
                    stats.hold_cursor = True
                    stats.warnings.append(
                        f"{name}: page {number} of {total} had {size} records, not {first_size}: a record "
                        "vanished between pages (deleted or moved); the cursor stays so the next sync looks again")
                for chunk in chunks:
                    self._apply_chunk(run, name, chunk, seen, stats, group)
                group.add(size)
                self.progress(name, stats)
        finally:
            pages.close()  # a write that failed stops the prepare process now, not when the traceback goes
        return server_start, state["unmatched"] or set()

    def _pages(self, name: str, since: datetime | None, mapping: CompiledMapping) -> Iterator[tuple[Any, int, bool]]:
        """The connector's pages; with ``paging: keyset`` each request starts at the newest stamp seen.

        Offset or page-number paging over a list sorted by modification time skips a
        record whenever another one, modified mid-pull, moves from an earlier page to the
        end. Keyset paging asks again "modified since the newest stamp I have", so what
        moves is fetched again and nothing shifts out of view.
        """
        obj_cfg = (self.source.config.get("objects") or {}).get(name) or {}
        if obj_cfg.get("paging") != "keyset":
            for page in self.connector.pull(name, since):
                yield page, page.number, False
            return
        stamp = next((f for f in mapping.fields if f.name == "erp_modified_at"), None)
        if stamp is None:
            raise SyncError(f"{name}: keyset paging needs a mapping for erp_modified_at")
        number = 0
        while True:
            pages = iter(self.connector.pull(name, since))
            try:
                page = next(pages, None)
                if page is None:
                    return
                newest = since
                for raw in page.records:
                    try:
                        value = stamp.convert(stamp.getter(raw)) if isinstance(raw, dict) else None
                    except (ValueError, TypeError, ArithmeticError):
                        value = None
                    if isinstance(value, datetime) and (newest is None or value > newest):
                        newest = value
                number += 1
                yield page, number, True
                total = getattr(page, "total_pages", None)
                if not page.records or (total is not None and total <= 1):
                    return
                if newest is None or (since is not None and newest <= since):
                    # a whole page shares one stamp: page on from here the ordinary way
                    for rest in pages:
                        number += 1
                        yield rest, number, True
                    return
                since = newest
            finally:
                close = getattr(pages, "close", None)
                if close is not None:
                    close()

    def _process_chunk(self, run: SyncRun, name: str, mapping: CompiledMapping, raws: list[dict],
                       seen: dict[str, Any], stats: ObjectStats) -> None:
        self._apply_chunk(run, name, _prepare_chunk(name, mapping, raws), seen, stats)

    def _apply_chunk(self, run: SyncRun, name: str, chunk: "_Prepared", seen: dict[str, Any],
                     stats: ObjectStats, group: "_GroupCommit | None" = None) -> None:
        """Write one prepared chunk (on the database's thread): new and changed records, deletions, rejects.

        Inside a commit ``group`` the chunk is written straight into the group's transaction
        (see :class:`_GroupCommit`); alone, in a transaction of its own."""
        stats.fetched += chunk.fetched
        stats.skipped += chunk.skipped
        deletions, rejects = chunk.deletions, chunk.rejects
        good: dict[str, dict] = {}
        digests: dict[str, str] = {}
        for key, record, digest in chunk.good:
            stamp = record.get("erp_modified_at")
            if key in seen and seen[key] == stamp and stamp is not None:
                continue  # fetched again by an overlapping request, unchanged: nothing to do
            if key in good:
                stats.duplicates += 1
                stats.warnings.append(f"{name} {key} came twice in one page; kept the latest")
                if _newer(good[key], record):
                    continue
            good[key] = record
            if digest is not None:
                digests[key] = digest
        self._digests = digests  # read by _classify: the hashes were computed on the prefetch thread
        for key, record in good.items():
            seen[key] = record.get("erp_modified_at")
        with group.chunk() if group is not None else database.atomic():
            if deletions:
                stats.deleted += self._apply_deletions(name, deletions)
            if good:
                created, updated, unchanged = WRITERS[name](self, list(good.values()))
                stats.created += created
                stats.updated += updated
                stats.unchanged += unchanged
                if self._open_rejects(name):
                    self._resolve_rejects(name, list(good))
            if rejects:
                stats.rejected += len(rejects)
                RejectedRecord.insert_many([
                    {"run": run.id, "source": self.source.id, "object_name": name, "external_id": ext,
                     "raw": raw, "reasons": [e.as_dict() for e in errs], "created_at": utcnow()}
                    for ext, raw, errs in rejects]).execute()

    # ------------------------------------------------------------ rejects
    def _open_rejects(self, name: str) -> bool:
        if name not in self._has_rejects:
            self._has_rejects[name] = RejectedRecord.select().where(
                (RejectedRecord.source == self.source.id) & (RejectedRecord.object_name == name)
                & RejectedRecord.resolved_at.is_null()).exists()
        return self._has_rejects[name]

    def _resolve_rejects(self, name: str, ext_ids: list[str]) -> None:
        """Earlier rejections of records that have now landed are resolved."""
        now = utcnow()
        for start in range(0, len(ext_ids), 900):
            part = ext_ids[start:start + 900]
            (RejectedRecord.update(resolved_at=now)
             .where((RejectedRecord.source == self.source.id) & (RejectedRecord.object_name == name)
                    & RejectedRecord.external_id.in_(part) & RejectedRecord.resolved_at.is_null()).execute())

    def reprocess(self) -> SyncRun:
        """Run every unresolved rejected record through the current mappings again (after an admin fixed them).

        The old rejections are resolved; a record that still fails is rejected anew, with today's reasons.
        No ERP call is made and no cursor moves.
        """
        with exclusive(f"sync-{self.source.id}"):
            run = SyncRun.create(source=self.source, mode="reprocess")
            self.rates = RateBook.load(self.reporting)
            totals, per_object, errors = ObjectStats(), {}, []
            for name in OBJECT_ORDER:
                query = (RejectedRecord.select().where(
                    (RejectedRecord.source == self.source.id) & (RejectedRecord.object_name == name)
                    & RejectedRecord.resolved_at.is_null()).order_by(RejectedRecord.id))
                rejects = list(query)
                if not rejects:
                    continue
                stats = ObjectStats()
                mapping = _mapping_for(self.source, name)
                if mapping.errors:
                    stats.error = "; ".join(f"mapping {name}.{e.field}: {e.message}" for e in mapping.errors)
                    errors.append({"object": name, "error": stats.error})
                else:
                    with database.atomic():
                        RejectedRecord.update(resolved_at=utcnow()).where(
                            RejectedRecord.id.in_([r.id for r in rejects])).execute()
                    self._has_rejects[name] = False
                    raws = [r.raw for r in rejects]
                    for start in range(0, len(raws), self.chunk_size):
                        self._process_chunk(run, name, mapping, raws[start:start + self.chunk_size], {}, stats)
                per_object[name] = stats.as_dict()
                for key in ("fetched", "created", "updated", "unchanged", "rejected", "deleted"):
                    setattr(totals, key, getattr(totals, key) + getattr(stats, key))
            self._finish_documents()
            status = RunStatus.FAILED if errors else (RunStatus.PARTIAL if totals.rejected else RunStatus.SUCCEEDED)
            self._close(run, totals, per_object, errors, {}, status)
            return run

    # ------------------------------------------------------------ helpers
    def _existing(self, model, ext_ids: list[str], *extra) -> dict[str, tuple]:
        """external_id → (id, content_hash, *extra) for the rows that exist."""
        out: dict[str, tuple] = {}
        table = model._meta.table_name
        cols = ", ".join(f'"{c}"' for c in ("external_id", "id", "content_hash", *extra))
        for start in range(0, len(ext_ids), 900):
            part = ext_ids[start:start + 900]
            sql = (f'SELECT {cols} FROM "{table}" WHERE "source_id" = {placeholders(1)} '
                   f'AND "external_id" IN ({placeholders(len(part))})')
            for row in database.execute_sql(sql, (self.source.id, *part)).fetchall():
                out[row[0]] = row[1:]
        return out

    def customer_ids(self) -> dict[str, int]:
        if self._customer_ids is None:  # raw rows: through peewee's row wrappers, 150,000 took 0.8 s
            self._customer_ids = dict(database.execute_sql(
                f'SELECT "external_id", "id" FROM "customer" WHERE "source_id" = {placeholders(1)}',
                (self.source.id,)).fetchall())
        return self._customer_ids

    def _convert(self, amount: Decimal, currency: str, day: date) -> tuple:
        conv = self.rates.convert(amount, currency, day) if self.rates else None
        if conv is None:
            return None, None, None, None, True
        return conv.amount, conv.rate, conv.rate_date, conv.source, False

    def _classify(self, model, records: list[dict]) -> tuple[list[tuple[dict, str, tuple | None]], int]:
        table = model._meta.table_name
        if table not in self._fresh:  # nothing stored for this source yet: a first sync skips the lookups
            self._fresh[table] = not model.select().where(model.source == self.source.id).exists()
        ids = [r["external_id"] for r in records]
        if self._fresh[table]:
            ids = [ext for ext in ids if ext in self._written[table]]
        existing = self._existing(model, ids) if ids else {}
        out, unchanged = [], 0
        digests = self._digests
        for rec in records:
            digest = digests.get(rec["external_id"]) or content_hash(rec)
            row = existing.get(rec["external_id"])
            if row is not None and row[1] == digest:
                unchanged += 1
                continue
            out.append((rec, digest, row))
        return out, unchanged

    # ------------------------------------------------------------ writers
    def _write_currencies(self, records: list[dict]) -> tuple[int, int, int]:
        known = dict(Currency.select(Currency.code, Currency.name).tuples())
        rows = [(r["code"], r.get("name"), minor_units(r["code"])) for r in records]
        created = sum(1 for r in records if r["code"] not in known)
        updated = sum(1 for r in records if r["code"] in known and known[r["code"]] != r.get("name"))
        upsert(Currency, ("code", "name", "minor_units"), rows, ("code",), ("name", "minor_units"))
        return created, updated, len(records) - created - updated

    def _write_fx_rates(self, records: list[dict]) -> tuple[int, int, int]:
        base_default = self.reporting
        data, created, updated = [], 0, 0
        keys = {(r.get("base_currency") or base_default, r["currency"], r["rate_date"]) for r in records}
        existing = {(b, c, d): to_decimal(rate) for b, c, d, rate in
                    FxRate.select(FxRate.base_currency, FxRate.currency, FxRate.rate_date, FxRate.rate)
                    .where(FxRate.currency.in_(list({k[1] for k in keys}))
                           & FxRate.rate_date.in_(list({k[2] for k in keys}))).tuples()}
        now = utcnow()
        for r in records:
            base = r.get("base_currency") or base_default
            rate = r["rate"].quantize(Decimal("1e-12"))
            old = existing.get((base, r["currency"], r["rate_date"]))
            if old is None:
                created += 1
            elif old != rate:
                updated += 1
            else:
                continue
            data.append((base, r["currency"], r["rate_date"], rate, f"erp:{self.source.name}", now))
        upsert(FxRate, ("base_currency", "currency", "rate_date", "rate", "source_name", "created_at"), data,
               ("base_currency", "currency", "rate_date"), ("rate", "source_name"))
        return created, updated, len(records) - created - updated

    def _write_customers(self, records: list[dict]) -> tuple[int, int, int]:
        todo, unchanged = self._classify(Customer, records)
        if not todo:
            return 0, 0, unchanged
        now = utcnow()
        cols = ("source_id", "external_id", "number", "name", "email", "billing_currency", "country",
                "billing_address", "parent_external_id", "arr", "terms_days", "locale", "inactive", "erp_modified_at",
                "content_hash", "deleted_at", "created_at", "updated_at")
        address = Customer.billing_address.db_value  # JSON text, as the model writes it
        rows = [(self.source.id, r["external_id"], r.get("number"), r["name"], r.get("email"), r["billing_currency"],
                 r.get("country"), address(r.get("billing_address")), r.get("parent_external_id"), r.get("arr"),
                 r.get("terms_days"), r.get("locale"), r.get("inactive", False), r.get("erp_modified_at"), digest,
                 None, now, now)
                for r, digest, _ in todo]
        upsert(Customer, cols, rows, ("source_id", "external_id"), cols[2:-2] + ("updated_at",))
        self._written["customer"].update(r["external_id"] for r, _, _ in todo)
        ids = self._existing(Customer, [r["external_id"] for r, _, _ in todo])
        cache = self.customer_ids()
        for ext, (cid, *_rest) in ids.items():
            cache[ext] = cid
        self._write_contacts([(r, ids[r["external_id"]][0]) for r, _, _ in todo])
        # parents may arrive before or after their children: resolve every time
        parents = [(cache.get(r["parent_external_id"]), ids[r["external_id"]][0]) for r, _, _ in todo
                   if r.get("parent_external_id")]
        self._unlinked["customer"].update(r["external_id"] for r, _, _ in todo
                                          if r.get("parent_external_id") and r["parent_external_id"] not in cache)
        update_many(Customer, ("id",), ("parent_id",), parents)
        created = sum(1 for _, _, row in todo if row is None)
        return created, len(todo) - created, unchanged

    def _write_contacts(self, customers: list[tuple[dict, int]]) -> None:
        rows, keep = [], defaultdict(set)
        now = utcnow()
        for rec, cust_id in customers:
            ext = rec["external_id"]
            contacts = []
            if rec.get("email"):
                contacts.append({"external_id": f"{ext}:billing", "name": rec.get("name"), "email": rec["email"],
                                 "role": "billing"})
            for n, c in enumerate(rec.get("contacts") or []):
                if c.get("email") or c.get("name"):
                    contacts.append({**c, "external_id": c.get("external_id") or f"{ext}:{c.get('role', 'other')}:{n}"})
            for c in contacts:
                keep[cust_id].add(c["external_id"])
                rows.append((self.source.id, c["external_id"], cust_id, ext, c.get("name"), c.get("email"),
                             c.get("phone"), c.get("role") or "billing", "erp", content_hash(c), now))
        cols = ("source_id", "external_id", "customer_id", "customer_external_id", "name", "email", "phone", "role",
                "origin", "content_hash", "updated_at")
        upsert(Contact, cols, rows, ("source_id", "external_id"), cols[2:])
        ids = list(keep)
        if ids:
            stale = (Contact.select(Contact.id, Contact.customer, Contact.external_id)
                     .where(Contact.customer.in_(ids) & (Contact.origin == "erp")).tuples())
            gone = [cid for cid, cust, ext in stale if ext not in keep[cust]]
            if gone:
                Contact.delete().where(Contact.id.in_(gone)).execute()

    def _write_invoices(self, records: list[dict]) -> tuple[int, int, int]:
        todo, unchanged = self._classify(Invoice, records)
        if not todo:
            return 0, 0, unchanged
        now = sql_timestamp(utcnow())  # adapted once for the chunk's rows
        customers = self.customer_ids()
        applied = self._applied([r["external_id"] for r, _, row in todo if row is not None or self._has_apps])
        cols = ("source_id", "external_id", "number", "customer_id", "customer_external_id", "currency", "amount",
                "issue_date", "sent_date", "due_date", "status", "open_amount", "open_amount_reporting", "revalued_at",
                "erp_open_amount", "po_number", "memo", "amount_reporting", "fx_rate", "fx_rate_date",
                "fx_rate_source", "fx_missing", "erp_modified_at", "content_hash", "deleted_at", "created_at",
                "updated_at")
        rows = []
        for r, digest, _ in todo:
            amount, currency = r["amount"], r["currency"]
            status, open_amount, open_reporting = self._open_state(
                amount, r.get("status") or "open", applied.get(r["external_id"], ZERO), currency)
            erp_open = r.get("erp_open_amount")
            self._mismatch[r["external_id"]] = erp_open is not None and erp_open != open_amount
            rows.append((self.source.id, r["external_id"], r.get("number"), customers.get(r["customer_external_id"]),
                         r["customer_external_id"], currency, amount, r["issue_date"], r.get("sent_date"),
                         r["due_date"], status, open_amount, open_reporting, self.today, r.get("erp_open_amount"),
                         r.get("po_number"), r.get("memo"), *self._convert(amount, currency, r["issue_date"]),
                         r.get("erp_modified_at"), digest, now if status == "deleted" else None, now, now))
        upsert(Invoice, cols, rows, ("source_id", "external_id"), cols[2:-1] + ("updated_at",))
        self._written["invoice"].update(r["external_id"] for r, _, _ in todo)
        self._unlinked["invoice"].update(r["external_id"] for r, _, _ in todo if r["customer_external_id"] not in customers)
        if self._has_apps:  # applications may already point at these invoices
            self._unlinked["application_invoice"].update(r["external_id"] for r, _, _ in todo)
        created = sum(1 for _, _, row in todo if row is None)
        return created, len(todo) - created, unchanged

    def _open_state(self, amount: Decimal, status: str, applied: Decimal, currency: str):
        """(status, open amount, open amount at today's rate) from the amount and what was applied to it."""
        open_amount = ZERO if status in CLOSED else max(amount - applied, ZERO)
        if status not in CLOSED and status != "draft":
            status = "paid" if open_amount == 0 and amount > 0 else "open"
        conv = self.rates.convert(open_amount, currency, self.today) if self.rates else None
        return status, open_amount, conv.amount if conv else None

    def _applied(self, invoice_ext_ids: list[str]) -> dict[str, Decimal]:
        """Σ applications per invoice (payments and credit memos), exact."""
        applied: dict[str, Decimal] = defaultdict(Decimal)
        for start in range(0, len(invoice_ext_ids), 900):
            part = invoice_ext_ids[start:start + 900]
            sql = (f'SELECT "invoice_external_id", "amount" FROM "application" WHERE "source_id" = {placeholders(1)} '
                   f'AND "invoice_external_id" IN ({placeholders(len(part))})')
            for ext, amount in database.execute_sql(sql, (self.source.id, *part)).fetchall():
                applied[ext] += to_decimal(amount)
        return applied

    def _write_settlements(self, model, kind: str, records: list[dict]) -> tuple[int, int, int]:
        todo, unchanged = self._classify(model, records)
        if not todo:
            return 0, 0, unchanged
        now = utcnow()
        customers = self.customer_ids()
        extra = "reason" if model is CreditMemo else "reference"
        cols = ("source_id", "external_id", "number", "customer_id", "customer_external_id", "currency", "amount",
                "date", "unapplied_amount", extra, "amount_reporting", "fx_rate", "fx_rate_date", "fx_rate_source",
                "fx_missing", "erp_modified_at", "content_hash", "deleted_at", "created_at", "updated_at")
        if model is CreditMemo:
            cols = cols[:-3] + ("status",) + cols[-3:]
        rows, apps, doc_ids = [], [], []
        for r, digest, existing in todo:
            closed = r.get("status") in CLOSED
            applied = sum((a["amount"] for a in r.get("applications") or []), Decimal(0))
            row = [self.source.id, r["external_id"], r.get("number"), customers.get(r["customer_external_id"]),
                   r["customer_external_id"], r["currency"], r["amount"], r["date"],
                   Decimal(0) if closed else max(r["amount"] - applied, Decimal(0)), r.get(extra),
                   *self._convert(r["amount"], r["currency"], r["date"]), r.get("erp_modified_at"), digest,
                   now if closed else None, now, now]
            if model is CreditMemo:
                row.insert(-3, r.get("status") or "open")
            rows.append(tuple(row))
            if existing is not None:
                doc_ids.append(r["external_id"])
            if not closed:
                for a in r.get("applications") or []:
                    if a["amount"]:
                        apps.append((self.source.id, kind, r["external_id"], a["invoice_external_id"], a["amount"],
                                     a.get("date") or r["date"]))
        upsert(model, cols, rows, ("source_id", "external_id"), cols[2:-1] + ("updated_at",))
        self._written[kind].update(r["external_id"] for r, _, _ in todo)
        self._unlinked[kind].update(r["external_id"] for r, _, _ in todo if r["customer_external_id"] not in customers)
        self._replace_applications(kind, doc_ids, apps)
        created = sum(1 for _, _, row in todo if row is None)
        return created, len(todo) - created, unchanged

    def _replace_applications(self, kind: str, doc_ids: list[str], apps: list[tuple]) -> None:
        """Applications of ``doc_ids`` become ``apps``; the invoices they touched, before and after, are noted.

        ``doc_ids`` are the documents that may have applications stored (new ones cannot).
        """
        for start in range(0, len(doc_ids), 900):
            part = doc_ids[start:start + 900]
            where = (f'"source_id" = {placeholders(1)} AND "doc_kind" = {placeholders(1)} '
                     f'AND "doc_external_id" IN ({placeholders(len(part))})')
            params = (self.source.id, kind, *part)
            old = database.execute_sql(f'SELECT "invoice_external_id" FROM "application" WHERE {where}', params)
            self._touched_invoices.update(ext for (ext,) in old.fetchall())
            database.execute_sql(f'DELETE FROM "application" WHERE {where}', params)
        self._has_apps = self._has_apps or bool(apps)
        merged: dict[tuple, list] = {}
        for row in apps:  # one application per (document, invoice): amounts of repeated lines add up
            key = row[:4]
            if key in merged:
                merged[key][4] += row[4]
            else:
                merged[key] = list(row)
        upsert(Application, ("source_id", "doc_kind", "doc_external_id", "invoice_external_id", "amount", "date"),
               [tuple(v) for v in merged.values()],
               ("source_id", "doc_kind", "doc_external_id", "invoice_external_id"), ("amount", "date"))
        self._touched_invoices.update(row[3] for row in apps)

    def _apply_deletions(self, name: str, batch: list[dict]) -> int:
        model = DELETABLE.get(name)
        if model is None or not batch:
            return 0
        ids = [str(d["id"]) for d in batch if d.get("id") is not None]
        now = utcnow()
        count = 0
        with database.atomic():
            for start in range(0, len(ids), 900):
                part = ids[start:start + 900]
                query = model.update(deleted_at=now).where(
                    (model.source == self.source.id) & model.external_id.in_(part) & model.deleted_at.is_null())
                if model is Invoice:
                    query = model.update(deleted_at=now, status="deleted", open_amount=0).where(
                        (model.source == self.source.id) & model.external_id.in_(part) & model.deleted_at.is_null())
                    self._touched_invoices.update(part)
                count += query.execute()
                if model in (CreditMemo, Payment):
                    kind = "credit_memo" if model is CreditMemo else "payment"
                    self._replace_applications(kind, part, [])
        return count

    # ------------------------------------------------------- after all objects
    def _analyze_bulk_writes(self) -> None:
        """On PostgreSQL, refresh the planner's statistics of the tables this run wrote in bulk.

        After a first load the planner holds an empty table's statistics until autovacuum comes
        by (never, on a server that runs without it), and plans the finishing pass's lookups on
        them: at 1,000,000 invoices each lookup of 900 external ids took ~0.2 s instead of
        milliseconds. A table is analyzed when this run wrote more rows than PostgreSQL's own
        autovacuum rule tolerates (50 + 10 % of the rows the statistics know), so a first load
        is analyzed and an ordinary incremental sync is not. ANALYZE samples a fixed number of
        rows (about a second at 1M). SQLite plans these lookups by the unique index without
        statistics."""
        if not is_postgres():
            return
        written = {t: len(self._written[t]) for t in ("customer", "invoice", "credit_memo", "payment")}
        written["application"] = written["payment"] + written["credit_memo"]
        written = {t: n for t, n in written.items() if n > ANALYZE_BASE_ROWS}
        if not written:
            return
        known = dict(database.execute_sql(
            "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r' AND relname IN "
            f"({placeholders(len(written))}) AND relnamespace = current_schema()::regnamespace",
            tuple(written)).fetchall())
        for table, count in written.items():
            if count > ANALYZE_BASE_ROWS + ANALYZE_SCALE * max(float(known.get(table, 0)), 0.0):
                database.execute_sql(f'ANALYZE "{table}"')

    def _finish_documents(self) -> None:
        """Resolve late links of what this run wrote, recompute open amounts of touched invoices, revalue them.

        Everything here is restricted to the rows this run wrote or touched, so an
        incremental sync costs what it changed, not the size of the store.
        """
        written, unlinked = self._written, self._unlinked
        self._analyze_bulk_writes()
        # (table, link, target table, reference column, key column, rows written without their link, kind)
        resolve = [
            ("invoice", "customer_id", "customer", "customer_external_id", "external_id", unlinked["invoice"], None),
            ("credit_memo", "customer_id", "customer", "customer_external_id", "external_id",
             unlinked["credit_memo"], None),
            ("payment", "customer_id", "customer", "customer_external_id", "external_id", unlinked["payment"], None),
            ("customer", "parent_id", "customer", "parent_external_id", "external_id", unlinked["customer"], None),
            ("application", "invoice_id", "invoice", "invoice_external_id", "invoice_external_id",
             unlinked["application_invoice"], None),
            ("application", "invoice_id", "invoice", "invoice_external_id", "doc_external_id",
             written["payment"], "payment"),
            ("application", "invoice_id", "invoice", "invoice_external_id", "doc_external_id",
             written["credit_memo"], "credit_memo"),
        ]
        def link_sql(table: str, fk: str, target: str, ref: str) -> str:
            return (f'UPDATE "{table}" SET "{fk}" = (SELECT t."id" FROM "{target}" t WHERE t."source_id" = '
                    f'"{table}"."source_id" AND t."external_id" = "{table}"."{ref}") WHERE "{fk}" IS NULL '
                    f'AND "{ref}" IS NOT NULL AND "source_id" = {placeholders(1)} ')

        with database.atomic():
            for table, fk, target, ref, key, ext_ids, kind in resolve:
                link = link_sql(table, fk, target, ref)
                extra = (f'AND "doc_kind" = {placeholders(1)} ', (kind,)) if kind else ("", ())
                ids = sorted(ext_ids)
                for start in range(0, len(ids), 900):  # what this run wrote unlinked: by index
                    part = ids[start:start + 900]
                    database.execute_sql(link + extra[0] + f'AND "{key}" IN ({placeholders(len(part))})',
                                         (self.source.id, *extra[1], *part))
            for table, fk, target, ref in {(t, f, g, r) for t, f, g, r, *_ in resolve}:
                # rows from earlier runs still waiting for a target this run wrote: one pass, only if any wait
                if written[target] and database.execute_sql(
                        f'SELECT 1 FROM "{table}" WHERE "source_id" = {placeholders(1)} AND "{fk}" IS NULL '
                        f'AND "{ref}" IS NOT NULL LIMIT 1', (self.source.id,)).fetchone():
                    database.execute_sql(link_sql(table, fk, target, ref), (self.source.id,))
        touched = sorted(self._touched_invoices)
        self._touched_invoices = set()
        for start in range(0, len(touched), 900):
            part = touched[start:start + 900]
            applied = self._applied(part)
            sql = (f'SELECT "id", "external_id", "amount", "status", "currency", "erp_open_amount" FROM "invoice" '
                   f'WHERE "source_id" = {placeholders(1)} AND "external_id" IN ({placeholders(len(part))})')
            rows = []
            for inv_id, ext, amount, status, currency, erp_open in database.execute_sql(
                    sql, (self.source.id, *part)).fetchall():
                new_status, open_amount, open_reporting = self._open_state(
                    to_decimal(amount), status, applied.get(ext, ZERO), currency)
                self._mismatch[ext] = erp_open is not None and to_decimal(erp_open) != open_amount
                rows.append((open_amount, new_status, open_reporting, self.today, inv_id))
            with database.atomic():
                update_many(Invoice, ("id",), ("open_amount", "status", "open_amount_reporting", "revalued_at"), rows)
        self.reconciliation_mismatches = sum(self._mismatch.values())
        # the console's per-customer balances (customer_balance) of what this run wrote or touched
        balances.after_sync(self.source.id, set(written["invoice"]) | set(touched), written["customer"])
        self._written = defaultdict(set)
        self._digests: dict[str, str] = {}
        self._unlinked = defaultdict(set)

WRITERS: dict[str, Callable[[SyncService, list[dict]], tuple[int, int, int]]] = {
    "currency": SyncService._write_currencies,
    "fx_rate": SyncService._write_fx_rates,
    "customer": SyncService._write_customers,
    "invoice": SyncService._write_invoices,
    "credit_memo": lambda self, recs: self._write_settlements(CreditMemo, "credit_memo", recs),
    "payment": lambda self, recs: self._write_settlements(Payment, "payment", recs),
}


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


class _GroupCommit:
    """One transaction over several pages, committed every ``rows`` records.

    At a million invoices a commit per 1,000-record page costs more than the rows: each
    commit writes every index page it touched to the WAL again, and random external ids
    touch a different leaf per row. Committing every 20,000 records writes each hot page
    once per group instead.

    Chunks are written straight into the group's transaction, not in a savepoint each: a
    SQLite savepoint journals the original of every page it touches, which made a pull's
    writes about 13 times slower (100,000 fresh invoices in 2,000-row savepoints: 24.5 s;
    the same executemany without them: 1.8 s), and on PostgreSQL hundreds of subtransactions
    per transaction are a known cliff. So a chunk is not undone alone: when a chunk's write
    fails (:meth:`chunk` sees it), the whole group is rolled back, its counts are taken back
    and the run says so; the cursor, which moves only after the whole object, has not moved,
    and the next sync takes those records again. When the pull fails between chunks (the
    ERP failing on page k), every chunk in the group is whole and the group is committed, as
    is every earlier group.
    """

    COUNTS = ("created", "updated", "unchanged", "rejected", "deleted", "duplicates")

    def __init__(self, rows: int, stats: ObjectStats | None = None, name: str = ""):
        self.rows = max(1, rows)
        self.pending = 0
        self.stats, self.name = stats, name
        self.broken = False
        self._txn = None
        self._mark: dict[str, int] = {}

    def __enter__(self) -> "_GroupCommit":
        self._begin()
        return self

    def _begin(self) -> None:
        self._txn = database.atomic()
        self._txn.__enter__()
        if self.stats is not None:
            self._mark = {k: getattr(self.stats, k) for k in self.COUNTS}
            self._mark["fetched"] = self.stats.fetched

    @contextmanager
    def chunk(self):
        """Around one chunk's writes: a failure inside leaves the group broken (rolled back at exit)."""
        try:
            yield
        except BaseException:
            self.broken = True
            raise

    def add(self, count: int) -> None:
        self.pending += count
        if self.pending >= self.rows:
            self._txn.__exit__(None, None, None)
            self.pending = 0
            self._begin()

    def __exit__(self, *exc) -> None:
        txn, self._txn = self._txn, None
        if not self.broken:
            txn.__exit__(None, None, None)  # commit the whole chunks, also when the pull failed after them
            return
        txn.__exit__(*exc)  # the exception rolls the group back
        if self.stats is not None:
            for key in self.COUNTS:
                setattr(self.stats, key, self._mark[key])
            self.stats.warnings.append(
                f"{self.name}: the {self.stats.fetched - self._mark['fetched']} records read since the last "
                "commit were rolled back with the failed write; the cursor did not move, so the next sync "
                "takes them again")


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


def _newer(a: dict, b: dict) -> bool:
    """Is record ``a`` strictly newer than ``b`` by the ERP's modified stamp?"""
    ma, mb = a.get("erp_modified_at"), b.get("erp_modified_at")
    return ma is not None and mb is not None and ma > mb


def _is_expected(exc: Exception) -> bool:
    """Errors a sync records and survives: connector failures and broken mappings (not our bugs)."""
    module = type(exc).__module__ or ""
    return isinstance(exc, SyncError) or module.startswith("connectors")
