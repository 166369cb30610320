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

import logging
import multiprocessing
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, Protocol

from .db import database
from .fx import RateBook
from .locks import LockBusy, exclusive
from .mapping import CompiledMapping, FieldSpec
from .mapping import preview as preview_mapping
from .models import (
    Application, CreditMemo, FieldMapping, Payment, RejectedRecord, RunStatus, Source, SyncCursor, SyncRun, utcnow,
)
from .sync_pipeline import (
    SyncError, _PageMeta, _Prepared, _prepare_chunk, prefetch, prepare_in_process, validate_record,
)
from .sync_store import StoreWriter

# re-exported: these lived here before the page preparation and the store writes moved out
from .sync_pipeline import DELETABLE, HASHED_OBJECTS, content_hash  # noqa: F401
from .sync_store import ANALYZE_BASE_ROWS, ANALYZE_SCALE, CLOSED, ZERO  # noqa: F401

log = logging.getLogger(__name__)

#: canonical objects in dependency order (rates before documents, customers before invoices)
OBJECT_ORDER = ("currency", "fx_rate", "customer", "invoice", "credit_memo", "payment")


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


class SyncService(StoreWriter):
    """Runs one source's pull. Connector in, counts and a ``SyncRun`` out.

    The store writes are inherited from :class:`middleware.sync_store.StoreWriter`; pages are
    prepared by :mod:`middleware.sync_pipeline`."""

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


WRITERS: dict[str, Callable[[SyncService, list[dict]], tuple[int, int, int]]] = {
    "currency": SyncService._write_currencies,
    "fx_rate": SyncService._write_fx_rates,
    "customer": SyncService._write_customers,
    "invoice": SyncService._write_invoices,
    "credit_memo": lambda self, recs: self._write_settlements(CreditMemo, "credit_memo", recs),
    "payment": lambda self, recs: self._write_settlements(Payment, "payment", recs),
}


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


def _newer(a: dict, b: dict) -> bool:
    """Is record ``a`` strictly newer than ``b`` by the ERP's modified stamp?"""
    ma, mb = a.get("erp_modified_at"), b.get("erp_modified_at")
    return ma is not None and mb is not None and ma > mb


def _is_expected(exc: Exception) -> bool:
    """Errors a sync records and survives: connector failures and broken mappings (not our bugs)."""
    module = type(exc).__module__ or ""
    return isinstance(exc, SyncError) or module.startswith("connectors")
