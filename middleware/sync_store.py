"""The store-writing half of the ERP sync: :class:`StoreWriter`, the mixin of
:class:`middleware.sync.SyncService` that classifies prepared records against the store, writes
them in bulk (currencies, FX rates, customers and contacts, invoices, credit memos, payments and
their applications), applies deletions and runs the finishing pass after all objects.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal

from . import balances
from .bulk import placeholders, to_decimal, update_many, upsert
from .db import database, is_postgres, sql_timestamp
from .models import Application, Contact, CreditMemo, Currency, Customer, FxRate, Invoice, Payment, utcnow
from .schemas import minor_units
from .sync_pipeline import DELETABLE, content_hash

CLOSED = ("voided", "deleted")
ZERO = Decimal(0)
# PostgreSQL's autovacuum_analyze_threshold and _scale_factor defaults: a run that wrote more
# rows of a table than this analyzes it (_analyze_bulk_writes)
ANALYZE_BASE_ROWS, ANALYZE_SCALE = 50, 0.1


class StoreWriter:
    """The store writes of :class:`middleware.sync.SyncService`, which inherits them.

    Uses these attributes of the service (set in its ``__init__``, ``_digests`` per chunk by
    ``_apply_chunk``): ``source``, ``reporting``, ``rates``, ``today``, ``_customer_ids``,
    ``_touched_invoices``, ``reconciliation_mismatches``, ``_written``, ``_fresh``, ``_unlinked``,
    ``_mismatch``, ``_has_apps`` and ``_digests``.
    """

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
