"""Store → Salesforce: AR status of every linked customer, with the fewest API calls.

For each linked customer an ``AR_Summary__c`` payload and, for each of its open invoices, an
``AR_Invoice__c`` payload are built from the store (:mod:`middleware.ar`) through the push
mapping. A payload is sent only when its hash differs from the last one Salesforce
acknowledged (``SfPushState.acked_hash``). A summary's costly figures are computed only for
customers whose inputs changed since (``build``): its acknowledged hash carries a digest of them.
Above ``bulk_threshold`` changed records of an object go in one Bulk API 2.0 job, below it in
sObject Collections of 200; the jobs of both objects are started before either is waited for.
An invoice that closes is sent once more (status Paid or Void, nothing open) and then forgotten.

Budget: before every call the remaining daily API budget (from ``Sforce-Limit-Info``) is
compared with the configured reserve; the push stops before crossing it and the rest goes
on the next run (nothing is marked acknowledged that was not). Per-record failures are kept on
the push state with the error and retried next run; ``UNABLE_TO_LOCK_ROW`` is retried once in
the same run.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Protocol

from .ar import customer_fingerprints, customer_snapshots
from .bulk import placeholders, to_decimal, update_many, upsert
from .db import database
from .fx import RateBook
from .models import Customer, CustomerTag, Invoice, SfPushState, Source, Tag, utcnow
from .sf_schema import push_objects, sf_value

log = logging.getLogger(__name__)
UTC = timezone.utc
ZERO = Decimal(0)
SKIP_IN_HASH = {"synced_at"}
BULK_CALLS = 5  # create, upload, close, one poll, failed results
PENDING_BULK_CALLS = 2  # a started job's poll and failed results, not yet spent
#: Part of every summary's input digest: bump it when the way a summary is computed from its inputs
#: changes (new fields, other figures), so every summary is rebuilt and compared once.
SUMMARY_VERSION = 1
INVOICE_VERSION = 1  # the same for an open invoice's digest (its raw row, owner and the date)


#: The customer columns a summary is built from, read without conversions (dates converted when rebuilt).
_Customer = namedtuple("_Customer", "id external_id name sf_account_id billing_currency collector paused_until "
                                    "paused_reason source_id")


class BudgetExhausted(RuntimeError):
    """The push stopped to keep the configured API reserve (or Salesforce said the budget is spent)."""


class PushPort(Protocol):
    calls: int
    api_used: int | None
    api_max: int | None

    @property
    def api_remaining(self) -> int | None: ...
    def upsert_collection(self, sobject: str, external_id: str, records: list[dict], *,
                          all_or_none: bool = False) -> list[dict]: ...
    def bulk_start(self, sobject: str, external_id: str, columns: list[str], rows: list[dict]) -> Any: ...
    def bulk_wait(self, job: Any) -> Any: ...


@dataclass
class PushStats:
    candidates: int = 0  # records that could be sent (summaries: every linked customer)
    rebuilt: int = 0  # payloads built (summaries: customers whose inputs changed; all on --full)
    changed: int = 0  # differing from what Salesforce acknowledged
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    deferred: int = 0  # not sent: budget reserve reached
    method: str = "none"  # collections | bulk | none
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {"errors": self.errors[:20]}


def customer_key(source_name: str, external_id: str) -> str:
    key = f"{source_name}:{external_id}"
    return key if len(key) <= 64 else f"{source_name[:20]}:{hashlib.sha1(key.encode()).hexdigest()}"


def payload_hash(payload: dict) -> str:
    data = {k: v for k, v in payload.items() if k not in SKIP_IN_HASH}
    return hashlib.md5(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class Pusher:
    def __init__(self, source: Source, connector: PushPort, *, reporting_currency: str, public_url: str,
                 describes: dict[str, dict], as_of: date | None = None, now: datetime | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.source = source
        self.connector = connector
        self.reporting = reporting_currency
        self.public_url = public_url.rstrip("/")
        self.config = source.config.get("push") or {}
        self.objects = push_objects(source.config)
        self.describes = describes
        self.now = now or utcnow()
        self.as_of = as_of or self.now.date()
        self.bulk_threshold = int(self.config.get("bulk_threshold", 2000))
        self.reserve = int(self.config.get("budget_reserve", 5000))
        self.progress = progress or (lambda name, done, total: None)
        self.stopped: str | None = None
        self.inputs: dict[str, dict[str, str]] = {}  # role → record key → input digest (build)
        self.candidates: dict[str, int] = {}  # role → records that could be sent (build)
        self._acked_cache: dict[str, dict] = {}
        known_rate = source.config.get("bulk_rows_per_s")
        if known_rate and getattr(connector, "bulk_rate", 0) is None:
            connector.bulk_rate = float(known_rate)  # the first poll of this run's first job waits for it

    # ----------------------------------------------------------------- budget
    def _affordable(self, calls: int) -> bool:
        remaining = self.connector.api_remaining
        if remaining is None:  # unknown until the first response: one call reveals it
            return True
        if remaining - calls < self.reserve:
            self.stopped = (f"stopped to keep the API reserve: {remaining} calls left today, reserve {self.reserve}; "
                            "the rest goes on the next run")
            return False
        return True

    # ----------------------------------------------------------------- payloads
    def _acked(self, sobject: str) -> dict[str, tuple[str | None, str | None]]:
        """record key → (acknowledged hash, Salesforce id) for one object (read once per push)."""
        if sobject not in self._acked_cache:
            ph = placeholders(1)
            cursor = database.execute_sql(
                f'SELECT "record_key", "acked_hash", "sf_id" FROM "sf_push_state" WHERE "source_id" = {ph} '
                f'AND "object_name" = {ph}', (self.source.id, sobject))
            self._acked_cache[sobject] = {k: (h, sid) for k, h, sid in cursor.fetchall()}
        return self._acked_cache[sobject]

    def _summary_object(self) -> str:
        return (self.objects.get("summary") or {}).get("object", "AR_Summary__c")

    def build(self, full: bool = False) -> dict[str, list[tuple[str, int | None, dict]]]:
        """``{"summary": [(key, customer id, canonical payload)], "invoice": [...]}``.

        Summaries: with ``full`` every linked customer's; otherwise only those of customers whose
        inputs changed since Salesforce acknowledged their summary. A customer's input digest
        (``self.inputs``) covers the date, the settings, every FX rate, the customer's own fields and
        tags, and :func:`~middleware.ar.customer_fingerprints` (its documents and applications); it is
        stored beside the payload hash when Salesforce acknowledges the summary. An unchanged digest
        gives the same payload, so the costly figures (:func:`~middleware.ar.customer_snapshots`)
        are computed only for the others, and their payload hash still decides what is sent.
        Invoices: the same, from each open invoice's raw row, owner and the date (``_invoices``)."""
        customers = [_Customer._make(row) for row in database.execute_sql(
            f'SELECT {", ".join(_Customer._fields)} FROM "customer" '
            'WHERE "sf_account_id" IS NOT NULL AND "deleted_at" IS NULL').fetchall()]  # raw: converted when rebuilt
        names = {s.id: s.name for s in Source.select(Source.id, Source.name)}
        tags: dict[int, list[str]] = {}
        for cid, name in (CustomerTag.select(CustomerTag.customer, Tag.name).join(Tag).tuples().iterator()):
            tags.setdefault(cid, []).append(name)
        book = RateBook.load(self.reporting)
        edges = tuple(self.config.get("aging_edges", (30, 60, 90)))
        period_days = int(self.config.get("add_period_days", 90))
        settings = hashlib.md5(json.dumps(
            [SUMMARY_VERSION, self.as_of, self.reporting, self.public_url, edges, period_days, book.fingerprint()],
            default=str).encode()).hexdigest()
        documents = customer_fingerprints()
        acked = self._acked(self._summary_object())
        self.inputs = {"summary": {}, "invoice": {}}
        inputs = self.inputs["summary"]
        todo, keys_by_customer = [], {}
        for c in customers:
            key = customer_key(names[c.source_id], c.external_id)
            keys_by_customer[c.id] = (key, c.sf_account_id)
            own = (settings, key, c.id, c.name, c.sf_account_id, c.billing_currency, c.collector, c.paused_until,
                   c.paused_reason, sorted(tags.get(c.id, [])), documents.get(c.id))
            digest = hashlib.md5("\x1f".join(map(repr, own)).encode()).hexdigest()[:16]
            inputs[key] = digest
            if full or (acked.get(key, (None,))[0] or "")[16:] != digest:
                todo.append((key, c._replace(paused_until=Customer.paused_until.python_value(c.paused_until))))
        self.candidates["summary"] = len(customers)
        snaps = customer_snapshots([c.id for _, c in todo], as_of=self.as_of, reporting_currency=self.reporting,
                                   edges=edges, period_days=period_days, book=book) if todo else {}
        summaries = []
        for key, c in todo:
            snap = snaps.get(c.id)
            paused = bool(c.paused_until and c.paused_until >= self.as_of)
            buckets = snap.buckets if snap else [ZERO] * 5
            balance = snap.balance_reporting if snap else ZERO
            status = ("Credit" if balance < 0 else "Paused" if paused else
                      "Overdue" if snap and snap.overdue_reporting > 0 else "Current")
            summaries.append((key, c.id, {
                "key": key, "name": (c.name or key)[:80], "sf_account_id": c.sf_account_id,
                "open_reporting": snap.open_reporting if snap else ZERO,
                "overdue_reporting": snap.overdue_reporting if snap else ZERO,
                "reporting_currency": self.reporting,
                "billing_balance": snap.balance_in(c.billing_currency) if snap else ZERO,
                "billing_currency": c.billing_currency,
                "aging_current": buckets[0], "aging_1_30": buckets[1], "aging_31_60": buckets[2],
                "aging_61_90": buckets[3], "aging_91_plus": sum(buckets[4:], ZERO),
                "oldest_overdue_days": snap.oldest_overdue_days if snap else 0,
                "add_days": snap.add_days if snap else None,
                "last_payment_date": snap.last_payment_date if snap else None,
                "last_payment_amount": snap.last_payment_reporting if snap else None,
                "open_invoice_count": snap.open_count if snap else 0,
                "collection_status": status, "dunning_stage": None, "paused": paused,
                "paused_reason": c.paused_reason if paused else None, "promise_date": None, "disputed": False,
                "collector": c.collector, "tags": ", ".join(sorted(tags.get(c.id, [])))[:255] or None,
                "console_url": f"{self.public_url}/customers/{c.id}", "synced_at": self.now}))
        return {"summary": summaries, "invoice": self._invoices(keys_by_customer, names, full)}

    def _invoice_payload(self, key: str, row: tuple, owner: tuple[str, str], status: str) -> dict:
        (_, _, number, issue, due, currency, amount, open_amount, open_rep, po) = row
        days = (self.as_of - due).days if due and status in ("Open", "Overdue") else 0
        return {"key": key, "number": (number or key)[:80], "sf_account_id": owner[1], "customer_key": owner[0],
                "issue_date": issue, "due_date": due, "currency": currency, "amount": to_decimal(amount),
                "open_amount": to_decimal(open_amount) if status in ("Open", "Overdue") else ZERO,
                "open_reporting": (to_decimal(open_rep) if status in ("Open", "Overdue") else ZERO),
                "days_overdue": max(days, 0), "status": status, "po_number": po, "synced_at": self.now}

    def _invoices(self, keys_by_customer: dict, names: dict, full: bool) -> list[tuple[str, int | None, dict]]:
        """Open invoices of linked customers (only those whose row, owner or date changed since
        Salesforce acknowledged them, unless ``full``), and the closing state of invoices Salesforce
        may still show open. An open invoice's input digest is taken from its raw row, so an
        unchanged one costs neither conversions nor a payload."""
        cols = (Invoice.customer, Invoice.source, Invoice.number, Invoice.issue_date, Invoice.due_date,
                Invoice.currency, Invoice.amount, Invoice.open_amount, Invoice.open_amount_reporting,
                Invoice.po_number)
        convert = [c.python_value for c in cols]
        sobject = self.objects.get("invoice", {}).get("object", "AR_Invoice__c")
        acked = self._acked(sobject)
        inputs = self.inputs.setdefault("invoice", {})
        settings = f"{INVOICE_VERSION}|{self.as_of}"
        md5 = hashlib.md5
        out, open_keys = [], set()
        sql = ('SELECT "external_id", ' + ", ".join(f'"{c.column_name}"' for c in cols) + ' FROM "invoice" '
               f'WHERE "status" = {placeholders(1)} AND "open_amount" > 0 AND "deleted_at" IS NULL '
               'AND "customer_id" IS NOT NULL')
        cursor = database.execute_sql(sql, ("open",))
        while True:
            rows = cursor.fetchmany(5000)
            if not rows:
                break
            for ext, *row in rows:
                owner = keys_by_customer.get(row[0])
                if owner is None:
                    continue
                key = customer_key(names[row[1]], ext)
                open_keys.add(key)
                digest = md5(f"{settings}|{key}|{owner}|{row}".encode()).hexdigest()[:16]
                inputs[key] = digest
                if not full and (acked.get(key, (None,))[0] or "")[16:] == digest:
                    continue
                row = [fn(value) for fn, value in zip(convert, row)]
                due = row[4] if isinstance(row[4], date) else date.fromisoformat(str(row[4])[:10])
                row[4] = due
                out.append((key, row[0], self._invoice_payload(key, tuple(row), owner,
                                                               "Overdue" if due < self.as_of else "Open")))
        # invoices Salesforce still shows as open: send their closing state once
        pending = [k for k in acked if k not in open_keys]
        self.candidates["invoice"] = len(open_keys) + len(pending)
        by_ext: dict[str, str] = {}
        for key in pending:
            src, _, ext = key.partition(":")
            by_ext[ext] = key
        exts = sorted(by_ext)
        for start in range(0, len(exts), 900):
            part = exts[start:start + 900]
            for ext, *row in (Invoice.select(Invoice.external_id, *cols, Invoice.status, Invoice.deleted_at)
                              .where(Invoice.external_id.in_(part)).tuples().iterator()):
                status_raw, deleted = row[-2], row[-1]
                row = row[:-2]
                owner = keys_by_customer.get(row[0])
                if owner is None:
                    continue
                status = "Void" if deleted or status_raw in ("voided", "deleted") else "Paid"
                out.append((by_ext[ext], row[0], self._invoice_payload(by_ext[ext], tuple(row), owner, status)))
        return out

    # ----------------------------------------------------------------- push
    def push(self, full: bool = False) -> dict[str, PushStats]:
        """Send what changed. Summaries and invoices are compared with what Salesforce acknowledged
        first; a Bulk job is started (created, uploaded, closed) and left to process while the
        other object is sent, and only then waited for: two jobs process together, and the
        first poll of each usually finds it done."""
        self._acked_cache = {}
        built = self.build(full)
        result: dict[str, PushStats] = {}
        plans = []
        for role in ("summary", "invoice"):
            spec = self.objects.get(role)
            if not spec:
                continue
            items = built.get(role, [])
            stats = result[role] = PushStats(candidates=self.candidates.get(role, len(items)), rebuilt=len(items))
            plans.append((spec, self._changed(role, spec, items, stats, full), stats))
        started: list = []
        try:
            for spec, changed, stats in plans:
                if not changed:
                    continue
                if self.stopped:
                    stats.deferred += len(changed)
                    continue
                if len(changed) > self.bulk_threshold:
                    stats.method = "bulk"
                    job = self._bulk_start(spec, changed, stats, pending=len(started))
                    if job is not None:
                        started.append((job, spec, changed, stats))
                else:
                    stats.method = "collections"
                    self._collections(spec["object"], spec["external_id"], changed, stats)
        finally:
            for job, spec, changed, stats in started:  # also when a later step failed: record what was done
                self._bulk_finish(job, spec, changed, stats)
        self._keep_bulk_rate()
        return result

    def _to_sf(self, spec: dict, payload: dict) -> dict:
        described = {f["name"]: f for f in (self.describes.get(spec["object"]) or {}).get("fields", [])}
        return {sf: sf_value(payload.get(canonical), described.get(sf))
                for sf, canonical in (spec.get("fields") or {}).items()}

    def _changed(self, role: str, spec: dict, items: list, stats: PushStats, full: bool) -> list:
        """The records whose payload differs from the acknowledged one, as (key, customer id, hash to
        store, status, Salesforce record). Payloads compare by the first half of their hash (64 bits);
        the stored hash is ``payload hash[:16] + input digest`` (records built from inputs, see
        ``build``) or the whole payload hash. A record whose inputs changed but payload did not only
        gets its stored digest renewed (no API call)."""
        sobject = spec["object"]
        acked = self._acked(sobject)
        inputs = self.inputs.get(role, {})
        changed, renewed = [], []
        for key, customer_id, payload in items:
            digest = payload_hash(payload)
            stored = acked.get(key, (None,))[0] or ""
            inputs_digest = inputs.get(key)
            same = stored[:16] == digest[:16]
            store = digest if inputs_digest is None else digest[:16] + inputs_digest
            if full or not same:
                changed.append((key, customer_id, store, payload.get("status"), self._to_sf(spec, payload)))
            elif store != stored:
                renewed.append((store, self.source.id, sobject, key))
        stats.changed = len(changed)
        for start in range(0, len(renewed), 500):
            with database.atomic():
                update_many(SfPushState, ("source_id", "object_name", "record_key"), ("acked_hash",),
                            renewed[start:start + 500])
        return changed
    def _collections(self, sobject: str, ext_field: str, changed: list, stats: PushStats) -> None:
        retry: list = []
        for attempt in (0, 1):
            batch_list = changed if attempt == 0 else retry
            retry = []
            for start in range(0, len(batch_list), 200):
                part = batch_list[start:start + 200]
                if not self._affordable(1):
                    stats.deferred += len(batch_list) - start
                    return
                try:
                    results = self.connector.upsert_collection(sobject, ext_field, [p[4] for p in part])
                except Exception as exc:
                    if _is_limit(exc):
                        self.stopped = f"Salesforce refused: daily API budget spent ({exc}); resumes next run"
                        stats.deferred += len(batch_list) - start
                        return
                    raise
                stats.sent += len(part)
                acks, fails = [], []
                for item, res in zip(part, results):
                    if res.get("success"):
                        acks.append((item, res.get("id")))
                    else:
                        errors = res.get("errors") or []
                        codes = {e.get("statusCode") for e in errors}
                        if attempt == 0 and "UNABLE_TO_LOCK_ROW" in codes:
                            retry.append(item)
                            continue
                        fails.append((item, "; ".join(f"{e.get('statusCode')}: {e.get('message')}"
                                                      + (f" ({', '.join(e.get('fields') or [])})" if e.get("fields") else "")
                                                      for e in errors) or "failed without an error"))
                self._record(sobject, acks, fails, stats)
                self.progress(sobject, stats.acknowledged + stats.failed, stats.changed)
            if not retry:
                return

    def _bulk_start(self, spec: dict, changed: list, stats: PushStats, pending: int = 0) -> Any:
        """Create, upload and close one Bulk job (None: not started, the budget said no)."""
        if not self._affordable(BULK_CALLS + PENDING_BULK_CALLS * pending):
            stats.deferred += len(changed)
            return None
        columns = list((spec.get("fields") or {}).keys())
        try:
            return self.connector.bulk_start(spec["object"], spec["external_id"], columns, [p[4] for p in changed])
        except Exception as exc:
            if _is_limit(exc):
                self.stopped = f"Salesforce refused: daily API budget spent ({exc}); resumes next run"
                stats.deferred += len(changed)
                return None
            raise

    def _bulk_finish(self, job: Any, spec: dict, changed: list, stats: PushStats) -> None:
        """Wait for a started job and record what Salesforce acknowledged and what failed."""
        sobject, ext_field = spec["object"], spec["external_id"]
        try:
            outcome = self.connector.bulk_wait(job)
        except Exception as exc:
            if _is_limit(exc):
                self.stopped = f"Salesforce refused: daily API budget spent ({exc}); resumes next run"
                stats.deferred += len(changed)
                return
            raise
        stats.sent += len(changed)
        failed = {row.get(ext_field): row.get("sf__Error") or "failed" for row in outcome.failed}
        unprocessed = {row.get(ext_field) for row in outcome.unprocessed}
        if outcome.state != "JobComplete" and not outcome.unprocessed:
            # a job that failed as a whole (bad header, aborted) processed nothing we can trust
            reason = outcome.error or f"Bulk API job {outcome.job_id} ended {outcome.state}"
            self._record(sobject, [], [(item, reason) for item in changed], stats)
            stats.errors.append(reason)
            return
        acks, fails = [], []
        for item in changed:
            key = item[4].get(ext_field)
            if key in failed:
                fails.append((item, failed[key]))
            elif key in unprocessed:
                fails.append((item, f"not processed: Bulk API job {outcome.job_id} ended {outcome.state}"))
            else:
                acks.append((item, None))
        self._record(sobject, acks, fails, stats)
        self.progress(sobject, stats.acknowledged + stats.failed, stats.changed)

    def _keep_bulk_rate(self) -> None:
        """The processing rate the last Bulk job showed, kept on the source so the next run's first
        poll waits for about the right time (``bulk_rows_per_s``)."""
        rate = getattr(self.connector, "bulk_rate", None)
        if not rate or rate == self.source.config.get("bulk_rows_per_s"):
            return
        fresh = Source.get_by_id(self.source.id)  # merge into the stored config, not a copy read earlier
        config = dict(fresh.config or {})
        config["bulk_rows_per_s"] = round(float(rate), 1)
        Source.update(config=config).where(Source.id == self.source.id).execute()
        self.source.config = config

    def _record(self, sobject: str, acks: list, fails: list, stats: PushStats) -> None:
        now = utcnow()
        closed = [item[0] for item, _ in acks if item[3] in ("Paid", "Void")]
        rows = [(self.source.id, sobject, item[0], item[1], item[2], sf_id, None, 0, now, now)
                for item, sf_id in acks if item[3] not in ("Paid", "Void")]
        fail_rows = [(self.source.id, sobject, item[0], item[1], error[:2000], 0, now) for item, error in fails]
        with database.atomic():
            upsert(SfPushState, ("source_id", "object_name", "record_key", "customer_id", "acked_hash", "sf_id",
                                 "error", "attempts", "acked_at", "updated_at"), rows,
                   ("source_id", "object_name", "record_key"),
                   ("customer_id", "acked_hash", "error", "attempts", "acked_at", "updated_at"))
            if fail_rows:
                ph = placeholders(1)
                # keep acked_hash: the record is sent again next run; count the attempts
                upsert(SfPushState, ("source_id", "object_name", "record_key", "customer_id", "error", "attempts",
                                     "updated_at"),
                       fail_rows, ("source_id", "object_name", "record_key"), ("error", "updated_at"))
                for start in range(0, len(fails), 500):
                    keys = [item[0] for item, _ in fails[start:start + 500]]
                    database.execute_sql(
                        f'UPDATE "sf_push_state" SET "attempts" = "attempts" + 1 WHERE "source_id" = {ph} AND '
                        f'"object_name" = {ph} AND "record_key" IN ({placeholders(len(keys))})',
                        (self.source.id, sobject, *keys))
            for start in range(0, len(closed), 500):  # closed invoices, acknowledged: forget them
                keys = closed[start:start + 500]
                database.execute_sql(
                    f'DELETE FROM "sf_push_state" WHERE "source_id" = {placeholders(1)} AND "object_name" = '
                    f'{placeholders(1)} AND "record_key" IN ({placeholders(len(keys))})', (self.source.id, sobject, *keys))
        stats.acknowledged += len(acks)
        stats.failed += len(fails)
        for item, error in fails[:5]:
            stats.errors.append(f"{sobject} {item[0]}: {error}")


def _is_limit(exc: Exception) -> bool:
    """The port says the org's API budget is spent (connectors mark such errors; middleware
    does not import them)."""
    return bool(getattr(exc, "budget_exhausted", False))
