"""Per-customer AR on a date for the Salesforce write-back (:mod:`middleware.sf_push`): the
:class:`CustomerAR` figures of many customers at once (:func:`customer_snapshots`) and the digest of
the stored rows they are computed from (:func:`customer_fingerprints`). A move out of
``middleware/ar.py``; ``middleware.ar`` re-exports these names.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Iterable, Sequence

from .ar_sql import (DEFAULT_EDGES, NOT_RECEIVABLE, VOID, ZERO, _as_date, _Closing, _norm_ids, _open_cells, _ph,
                     _quoted, _rows, _unapplied_rows, money_from_sql, sql_days, sql_money)
from .db import is_postgres
from .fx import RateBook


@dataclass
class CustomerAR:
    """One customer's AR on ``as_of`` (the Salesforce write-back's figures)."""

    customer_id: int
    reporting_currency: str
    open_reporting: Decimal = ZERO
    overdue_reporting: Decimal = ZERO
    buckets: list[Decimal] = field(default_factory=list)  # current, 1–30, 31–60, 61–90, 91+ (reporting)
    open_by_currency: dict[str, Decimal] = field(default_factory=dict)  # billing currency → open amount
    unapplied_reporting: Decimal = ZERO
    unapplied_by_currency: dict[str, Decimal] = field(default_factory=dict)
    open_count: int = 0
    overdue_count: int = 0
    oldest_due: date | None = None
    oldest_overdue_days: int = 0
    fx_missing: int = 0
    last_payment_date: date | None = None
    last_payment_reporting: Decimal | None = None
    net_sales_reporting: Decimal = ZERO
    add_days: Decimal | None = None
    overdue_by_currency: dict[str, Decimal] = field(default_factory=dict)
    dso_days: Decimal | None = None
    bpdso_days: Decimal | None = None

    @property
    def balance_reporting(self) -> Decimal:
        return self.open_reporting - self.unapplied_reporting

    def balance_in(self, currency: str) -> Decimal:
        return self.open_by_currency.get(currency, ZERO) - self.unapplied_by_currency.get(currency, ZERO)


def customer_snapshots(customer_ids: Iterable[int] | None, *, as_of: date, reporting_currency: str,
                       edges: Sequence[int] = DEFAULT_EDGES, period_days: int = 90,
                       book: RateBook | None = None) -> dict[int, CustomerAR]:
    """``{customer id: CustomerAR}`` on ``as_of`` for ``customer_ids`` (None: every customer with AR activity).

    Open amounts, buckets and unapplied credits are as of ``as_of`` at its closing rate; the last
    payment is the latest dated on or before it; ADD (= DSO − BPDSO) covers the ``period_days`` ending on it."""
    ids = _norm_ids(customer_ids)
    book = book or RateBook.load(reporting_currency)
    n = len(edges) + 2
    out: dict[int, CustomerAR] = {}

    def get(cid: int) -> CustomerAR:
        snap = out.get(cid)
        if snap is None:
            snap = out[cid] = CustomerAR(cid, reporting_currency, buckets=[ZERO] * n)
        return snap

    cells, _ = _open_cells([as_of], ids, edges, book, per_customer=True)
    for (cid, currency, b), (billing, rep, count, missing, _, max_dpd) in cells[0].items():
        if cid is None:
            continue
        snap = get(cid)
        snap.buckets[b] += rep
        snap.open_by_currency[currency] = snap.open_by_currency.get(currency, ZERO) + billing
        snap.open_count += count
        snap.fx_missing += missing
        if b:
            snap.overdue_reporting += rep
            snap.overdue_by_currency[currency] = snap.overdue_by_currency.get(currency, ZERO) + billing
            snap.overdue_count += count
            snap.oldest_overdue_days = max(snap.oldest_overdue_days, max_dpd)
    closing = _Closing(book, as_of)
    for cid, currency, raw in _unapplied_rows(as_of, ids):
        if cid is None:
            continue
        snap, amount = get(cid), money_from_sql(raw)
        snap.unapplied_by_currency[currency] = snap.unapplied_by_currency.get(currency, ZERO) + amount
        rep = closing.convert(amount, currency)
        if rep is None:
            snap.fx_missing += 1
        else:
            snap.unapplied_reporting += rep
    for snap in out.values():
        snap.open_reporting = sum(snap.buckets, ZERO)
        if snap.overdue_count:
            snap.oldest_due = as_of - timedelta(days=snap.oldest_overdue_days)
    _last_payments(out, get, ids, as_of)
    _net_sales(get, ids, as_of, period_days)
    for snap in out.values():
        if snap.net_sales_reporting > 0:
            snap.dso_days = snap.open_reporting * period_days / snap.net_sales_reporting
            snap.bpdso_days = snap.buckets[0] * period_days / snap.net_sales_reporting
            snap.add_days = snap.dso_days - snap.bpdso_days
    return out


def _last_payments(out: dict, get, ids: Sequence[int] | None, as_of: date) -> None:
    p = _ph()
    sql = (f"SELECT p.customer_id, p.\"date\", SUM({sql_money('p.amount_reporting')}), COUNT(p.amount_reporting) "
           f"FROM payment p "
           f"JOIN (SELECT customer_id, MAX(\"date\") AS d FROM payment WHERE deleted_at IS NULL AND \"date\" <= {p} "
           f"AND customer_id IS NOT NULL{{filter}} GROUP BY customer_id) m "
           f"ON p.customer_id = m.customer_id AND p.\"date\" = m.d WHERE p.deleted_at IS NULL "
           f"GROUP BY p.customer_id, p.\"date\"")
    for cid, day, amount, converted in _rows(sql, (as_of,), (), ids, "customer_id"):
        snap = get(cid)
        snap.last_payment_date = _as_date(day)
        snap.last_payment_reporting = money_from_sql(amount) if converted else None


def _net_sales(get, ids: Sequence[int] | None, as_of: date, period_days: int) -> None:
    p = _ph()
    start = as_of - timedelta(days=period_days)  # the period is (start, as_of]
    sales: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for table, day_col, out, sign in (("invoice", "issue_date", NOT_RECEIVABLE, 1),
                                      ("credit_memo", '"date"', VOID, -1)):
        sql = (f"SELECT customer_id, SUM({sql_money('amount_reporting')}) FROM {table} WHERE {day_col} > {p} "
               f"AND {day_col} <= {p} AND deleted_at IS NULL AND customer_id IS NOT NULL "
               f"AND status NOT IN ({_quoted(out)}){{filter}} GROUP BY customer_id")
        for cid, amount in _rows(sql, (start, as_of), (), ids, "customer_id"):
            sales[cid] += sign * money_from_sql(amount)
    for cid, amount in sales.items():
        get(cid).net_sales_reporting = amount


def customer_fingerprints(customer_ids: Iterable[int] | None = None) -> dict[int, str]:
    """``{customer id: digest}`` of the stored rows :func:`customer_snapshots` computes a customer's
    figures from, other than FX rates: its invoices, payments and credit memos (how many, which,
    when each was last written or deleted) and the applications to its invoices (which, how much,
    dated when). A digest that did not change means none of those rows did, so the customer's
    snapshot on the same date, with the same rates, is the same (the Salesforce push skips it).

    Every write of the sync stamps ``updated_at`` (a deletion ``deleted_at``); the amounts it derives
    without a stamp (open amounts, revaluations) follow from applications, which are summed here,
    or from rates, which the caller fingerprints (:meth:`RateBook.fingerprint`). A document moving
    to another customer changes both customers' digests. One grouped statement per table; only
    customers with at least one such row are in the result."""
    ids = _norm_ids(customer_ids)
    parts: dict[int, list[str]] = defaultdict(list)
    stamp = ("SUM(EXTRACT(EPOCH FROM {0}))" if is_postgres()
             else "SUM(CAST(ROUND((julianday({0}) - 2460000) * 86400000) AS INTEGER))")  # exact sums

    def text(tag: str, *figures: str) -> str:  # one string per group, built by the database
        return f"'{tag}'" + "".join(f" || ',' || COALESCE(CAST({f} AS TEXT), '')" for f in figures)

    for table in ("invoice", "payment", "credit_memo"):
        figures = text(table, "COUNT(*)", "SUM(id)", "MAX(updated_at)", stamp.format("updated_at"),
                       "COUNT(deleted_at)", "MAX(deleted_at)", stamp.format("deleted_at"))
        sql = f"SELECT customer_id, {figures} FROM {table} WHERE customer_id IS NOT NULL{{filter}} GROUP BY customer_id"
        for cid, figures_text in _rows(sql, (), (), ids, "customer_id"):
            parts[cid].append(figures_text)
    day = sql_days('a."date"', "'2000-01-01'")
    figures = text("applied", "COUNT(*)", "SUM(a.id)", f"SUM({sql_money('a.amount')})", f"SUM({day})", 'MAX(a."date")')
    sql = (f"SELECT i.customer_id, {figures} FROM application a JOIN invoice i ON i.id = a.invoice_id "
           f"WHERE i.customer_id IS NOT NULL{{filter}} GROUP BY i.customer_id")
    for cid, figures_text in _rows(sql, (), (), ids, "i.customer_id"):
        parts[cid].append(figures_text)
    md5 = hashlib.md5
    return {cid: md5("|".join(items).encode()).hexdigest() for cid, items in parts.items()}
