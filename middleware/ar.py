"""AR figures per customer, computed in bulk from the store (see ../shared/AR-GLOSSARY.md).

:func:`customer_snapshots` answers, for many customers at once and in a handful of
grouped SQL queries, what the Salesforce write-back and the console show on an account:
open and overdue amounts, aging buckets by days past due, the oldest overdue invoice,
unapplied credits, the last payment, and average days delinquent over a period.

Conventions (the glossary's):
- aging is by due date: ``current`` is "days past due ≤ 0"; bucket edges default to 30/60/90;
- balances use the closing rate: an invoice's open amount in reporting currency is its
  stored revaluation (``open_amount_reporting``, refreshed by every sync); unapplied credit
  memos and payments are converted at the closing rate here; a missing rate is counted in
  ``fx_missing`` and never guessed;
- total AR is the sum of open invoice amounts; the customer balance subtracts unapplied
  credits and payments;
- ADD = DSO − best possible DSO = (total AR − current AR) ÷ net credit sales × D, with net
  credit sales = invoices issued in the D days ending on the as-of date − credit memos dated in
  them, each at its own date's rate (their stored reporting amounts). No sales: no ADD.

These are the figures as the store holds them now (open amounts reflect every payment
synced so far), aged as of ``as_of``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Iterable, Sequence

from .bulk import placeholders, to_decimal
from .db import database
from .fx import RateBook

ZERO = Decimal(0)
DEFAULT_EDGES = (30, 60, 90)
OPEN_STATUSES = ("open",)  # drafts are not receivables; paid, voided and deleted are closed


@dataclass
class CustomerAR:
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

    @property
    def balance_reporting(self) -> Decimal:
        return self.open_reporting - self.unapplied_reporting

    def balance_in(self, currency: str) -> Decimal:
        return self.open_by_currency.get(currency, ZERO) - self.unapplied_by_currency.get(currency, ZERO)


def bucket_labels(edges: Sequence[int] = DEFAULT_EDGES) -> list[str]:
    labels, low = ["current"], 1
    for edge in edges:
        labels.append(f"{low}-{edge}")
        low = edge + 1
    return labels + [f"{low}+"]


def _in(column: str, ids: Sequence[int]) -> tuple[str, tuple]:
    return f' AND "{column}" IN ({placeholders(len(ids))})', tuple(ids)


def customer_snapshots(customer_ids: Iterable[int] | None, *, as_of: date, reporting_currency: str,
                       edges: Sequence[int] = DEFAULT_EDGES, period_days: int = 90,
                       book: RateBook | None = None, chunk: int = 900) -> dict[int, CustomerAR]:
    """``{customer id: CustomerAR}`` for ``customer_ids`` (None: every customer with AR activity)."""
    out: dict[int, CustomerAR] = {}
    ids = None if customer_ids is None else sorted(set(customer_ids))
    parts = [None] if ids is None else [ids[i:i + chunk] for i in range(0, len(ids), chunk)]
    book = book or RateBook.load(reporting_currency)
    for part in parts:
        _open_invoices(out, part, as_of, reporting_currency, edges)
        _unapplied(out, part, as_of, reporting_currency, book)
        _last_payments(out, part, reporting_currency)
        _net_sales(out, part, as_of, reporting_currency, period_days)
    for snap in out.values():
        if not snap.buckets:
            snap.buckets = [ZERO] * (len(edges) + 2)
        if snap.net_sales_reporting > 0:
            snap.add_days = (snap.open_reporting - snap.buckets[0]) / snap.net_sales_reporting * period_days
    return out


def _get(out: dict, customer_id: int, reporting_currency: str, n_buckets: int) -> CustomerAR:
    snap = out.get(customer_id)
    if snap is None:
        snap = out[customer_id] = CustomerAR(customer_id, reporting_currency, buckets=[ZERO] * n_buckets)
    elif not snap.buckets:
        snap.buckets = [ZERO] * n_buckets
    return snap


def _open_invoices(out, ids, as_of: date, reporting_currency: str, edges: Sequence[int]) -> None:
    # due_date thresholds: days past due d = as_of - due_date; bucket k holds edges[k-1] < d <= edges[k]
    cuts = [as_of - timedelta(days=e) for e in edges]
    cases = ['SUM(CASE WHEN "due_date" >= {ph} THEN "open_amount_reporting" ELSE 0 END)']
    params: list = [as_of]
    lower = as_of
    for cut in cuts:
        cases.append('SUM(CASE WHEN "due_date" < {ph} AND "due_date" >= {ph} THEN "open_amount_reporting" ELSE 0 END)')
        params += [lower, cut]
        lower = cut
    cases.append('SUM(CASE WHEN "due_date" < {ph} THEN "open_amount_reporting" ELSE 0 END)')
    params.append(lower)
    ph = placeholders(1)
    select = ", ".join(c.replace("{ph}", ph) for c in cases)
    sql = (f'SELECT "customer_id", "currency", SUM("open_amount"), SUM("open_amount_reporting"), COUNT(*), '
           f'SUM(CASE WHEN "due_date" < {ph} THEN 1 ELSE 0 END), MIN(CASE WHEN "due_date" < {ph} THEN "due_date" END), '
           f'SUM(CASE WHEN "open_amount_reporting" IS NULL THEN 1 ELSE 0 END), {select} '
           f'FROM "invoice" WHERE "open_amount" > 0 AND "deleted_at" IS NULL AND "customer_id" IS NOT NULL '
           f'AND "status" IN ({placeholders(len(OPEN_STATUSES))})')
    args: tuple = (as_of, as_of, *params, *OPEN_STATUSES)
    if ids is not None:
        extra, extra_args = _in("customer_id", ids)
        sql, args = sql + extra, args + extra_args
    sql += ' GROUP BY "customer_id", "currency"'
    n = len(edges) + 2
    for row in database.execute_sql(sql, args).fetchall():
        cid, currency, open_amt, open_rep, count, overdue_count, oldest, missing = row[:8]
        snap = _get(out, cid, reporting_currency, n)
        snap.open_by_currency[currency] = snap.open_by_currency.get(currency, ZERO) + to_decimal(open_amt)
        snap.open_reporting += to_decimal(open_rep) or ZERO
        snap.open_count += count
        snap.overdue_count += overdue_count or 0
        snap.fx_missing += missing or 0
        if oldest is not None:
            oldest = oldest if isinstance(oldest, date) else date.fromisoformat(str(oldest)[:10])
            if snap.oldest_due is None or oldest < snap.oldest_due:
                snap.oldest_due = oldest
                snap.oldest_overdue_days = (as_of - oldest).days
        for k, value in enumerate(row[8:]):
            snap.buckets[k] += to_decimal(value) or ZERO
        snap.overdue_reporting = sum(snap.buckets[1:], ZERO)


def _unapplied(out, ids, as_of: date, reporting_currency: str, book: RateBook) -> None:
    for table in ("credit_memo", "payment"):
        sql = (f'SELECT "customer_id", "currency", SUM("unapplied_amount") FROM "{table}" WHERE "unapplied_amount" > 0 '
               f'AND "deleted_at" IS NULL AND "customer_id" IS NOT NULL')
        args: tuple = ()
        if table == "credit_memo":
            sql += " AND \"status\" NOT IN ('voided', 'deleted')"
        if ids is not None:
            extra, args = _in("customer_id", ids)
            sql += extra
        for cid, currency, amount in database.execute_sql(sql + ' GROUP BY "customer_id", "currency"', args).fetchall():
            amount = to_decimal(amount)
            snap = out.get(cid) or _get(out, cid, reporting_currency, 0)
            snap.unapplied_by_currency[currency] = snap.unapplied_by_currency.get(currency, ZERO) + amount
            conv = book.convert(amount, currency, as_of)
            if conv is None:
                snap.fx_missing += 1
            else:
                snap.unapplied_reporting += conv.amount


def _last_payments(out, ids, reporting_currency: str) -> None:
    where, args = "", ()
    if ids is not None:
        where, args = _in("customer_id", ids)
    sql = (f'SELECT p."customer_id", p."date", SUM(p."amount_reporting") FROM "payment" p JOIN '
           f'(SELECT "customer_id", MAX("date") AS d FROM "payment" WHERE "deleted_at" IS NULL '
           f'AND "customer_id" IS NOT NULL{where} GROUP BY "customer_id") m '
           f'ON p."customer_id" = m."customer_id" AND p."date" = m.d WHERE p."deleted_at" IS NULL '
           f'GROUP BY p."customer_id", p."date"')
    for cid, day, amount in database.execute_sql(sql, args).fetchall():
        snap = out.get(cid) or _get(out, cid, reporting_currency, 0)
        snap.last_payment_date = day if isinstance(day, date) else date.fromisoformat(str(day)[:10])
        snap.last_payment_reporting = to_decimal(amount)


def _net_sales(out, ids, as_of: date, reporting_currency: str, period_days: int) -> None:
    start = as_of - timedelta(days=period_days)  # the period is (start, as_of]
    sales: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for table, day_col, sign in (("invoice", "issue_date", 1), ("credit_memo", "date", -1)):
        ph = placeholders(1)
        sql = (f'SELECT "customer_id", SUM("amount_reporting") FROM "{table}" WHERE "{day_col}" > {ph} '
               f'AND "{day_col}" <= {ph} AND "deleted_at" IS NULL AND "customer_id" IS NOT NULL '
               f"AND \"status\" NOT IN ('voided', 'deleted')")
        args: tuple = (start, as_of)
        if ids is not None:
            extra, extra_args = _in("customer_id", ids)
            sql, args = sql + extra, args + extra_args
        for cid, amount in database.execute_sql(sql + ' GROUP BY "customer_id"', args).fetchall():
            sales[cid] += sign * (to_decimal(amount) or ZERO)
    for cid, amount in sales.items():
        snap = out.get(cid) or _get(out, cid, reporting_currency, 0)
        snap.net_sales_reporting = amount
