"""AR metrics per invoice, customer and portfolio, as of any date (see ../shared/AR-GLOSSARY.md).

Every figure is rebuilt from stored documents and applications **as of a date D**, so a
report for last quarter gives today the answer it gave then (docs/ar-metrics.md).

Public API
----------
``invoice_aging(as_of, customer_ids=None, *, reporting_currency=None, edges=DEFAULT_EDGES)``
    ``[InvoiceAging]``: each invoice open on D with its open amount, days past due, bucket and,
    when a reporting currency is given, its value at D's closing rate (rate, rate date, source).
``customer_snapshots(customer_ids, *, as_of, reporting_currency, edges, period_days)``
    ``{customer id: CustomerAR}`` for many customers at once (the Salesforce write-back):
    open, overdue, buckets, unapplied credits, balance, last payment, ADD, as of D.
``customer_fingerprints(customer_ids=None)``
    ``{customer id: digest}`` of the stored rows a customer's snapshot is computed from (FX rates
    aside): unchanged digest, same date, same rates → same snapshot (the push skips it).
``portfolio(as_of, *, reporting_currency, period_days=90, edges=DEFAULT_EDGES)``
    :class:`ARMetrics` for the whole store: totals and buckets in the reporting currency, a
    breakdown per billing currency, net credit sales, DSO (standard and countback), BPDSO, ADD,
    CEI, average days to pay, share paid on time, and the missing rates (``fx_missing``).
``customer_metrics(customer_id, as_of, *, reporting_currency, period_days=90, edges=DEFAULT_EDGES)``
    The same :class:`ARMetrics` for one customer.
``trend(as_of, points=12, step_days=30, *, reporting_currency, period_days=90, edges=DEFAULT_EDGES)``
    ``[TrendPoint]`` oldest first, one per ``as_of - k * step_days``: total and current AR, net
    sales, DSO, countback DSO, BPDSO, ADD, CEI (dashboard charts).

Conventions (the glossary's, plus the choices it leaves open)
-------------------------------------------------------------
- Open amount on D = amount − Σ applications (payments and credit memos) dated ≤ D, in the
  invoice's currency, never negative. Invoices issued after D do not exist yet. Drafts are not
  receivables. Voided and deleted invoices (``status`` voided/deleted or ``deleted_at`` set) are
  out for every D: the store keeps no void date (``deleted_at`` is our sync clock, not the
  ERP's), so a report re-run after a void no longer shows the voided invoice.
- Application amounts are in the invoice's currency (the ERPs we read apply same-currency).
- Unapplied credits on D: each payment and each credit memo dated ≤ D (not deleted; credit memos
  not voided) less its applications dated ≤ D. They reduce the balance, never a bucket.
- Aging by days past due = D − due date: ``current`` ≤ 0 (due on D is current), then
  ``1–30``, ``31–60``, ``61–90``, ``91+`` for the default edges (30, 60, 90).
- Total AR = Σ open invoice amounts (gross of unapplied credits); balance = total AR − unapplied.
- Balances at D's closing rate (``RateBook.rate``: latest rate dated ≤ D), each invoice converted
  on its own and rounded half up to the reporting minor unit; totals are sums of rounded lines.
  Flows (sales, credit memos) use their stored ``amount_reporting`` (their own date's rate).
  A line without a rate is left out of the reporting figures and listed in ``fx_missing``; it
  still counts in the billing-currency breakdown, in the counts and in the days.
- The period of N days ending on D is ``(D − N, D]``. DSO = E ÷ S × N; BPDSO = C ÷ S × N;
  ADD = DSO − BPDSO; CEI = (B + S − E) ÷ (B + S − C) × 100 with B = total AR on D − N (the day
  before the period) at that day's rate. No positive S: no DSO, BPDSO, ADD (``None``).
- Countback DSO walks calendar months back from D's month (which counts its days 1..D), for at
  most ``COUNTBACK_MONTHS`` months; AR still uncovered after them: ``None``.
- Days to pay, for invoices closed in the period: the closing date is the date of the
  application that brought the applied total to the invoice amount; days to pay = that date −
  issue date, days late = max(that date − due date, 0), on time = days late 0. Averages are per
  invoice (not weighted by amount); ``share_on_time`` is a fraction (0..1).
- Metrics are unrounded ``Decimal``; display rounds to 2 places half up.

Speed: a handful of grouped SQL statements, the same on SQLite and PostgreSQL except where the
per-line rounding runs. One statement finds the invoices open on D and on D − N (the CEI's B), or on
every date of a trend, over one join with the applications. On PostgreSQL (exact numeric) it also
converts, rounds and sums each line, so only (customer, currency, bucket) cells come back; on SQLite
(DECIMAL stored as floats) the open lines come back as exact integer ten-thousandths and are converted
and rounded in Python. Credits unapplied on D, sales per day and days to pay are grouped in SQL.

Where the code lives: the constants, SQL helpers, as-of row statements and open cells are in
:mod:`middleware.ar_sql`; ``CustomerAR``, ``customer_snapshots`` and ``customer_fingerprints`` are in
:mod:`middleware.ar_snapshots`. This module re-exports the names other modules import from it.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Iterable, Iterator, Sequence

# DEFAULT_EDGES, money_from_sql, sql_days and sql_money are also re-exported (other modules import them from here)
from .ar_sql import (DEFAULT_EDGES, NOT_RECEIVABLE, VOID, ZERO, _as_date, _Closing, _norm_ids, _open_cells,
                     _open_invoice_rows, _ph, _quoted, _rows, _unapplied_rows, money_from_sql, sql_days, sql_money)
from .ar_sql import OPEN_STATUSES  # noqa: F401  (re-exported: other modules import it from middleware.ar)
from .ar_snapshots import CustomerAR, customer_fingerprints, customer_snapshots  # noqa: F401  (re-exported)
from .fx import RateBook

COUNTBACK_MONTHS = 24


# ---------------------------------------------------------------------------- results
@dataclass
class Aging:
    """Open receivables in one currency on D, by bucket (``buckets[0]`` is current)."""

    currency: str
    buckets: list[Decimal]
    unapplied: Decimal = ZERO
    open_count: int = 0
    overdue_count: int = 0
    oldest_overdue_days: int = 0

    @property
    def open(self) -> Decimal:
        return sum(self.buckets, ZERO)

    @property
    def current(self) -> Decimal:
        return self.buckets[0]

    @property
    def overdue(self) -> Decimal:
        return sum(self.buckets[1:], ZERO)

    @property
    def balance(self) -> Decimal:
        return self.open - self.unapplied

    def as_dict(self) -> dict:
        return {"currency": self.currency, "open": self.open, "current": self.current, "overdue": self.overdue,
                "buckets": list(self.buckets), "unapplied": self.unapplied, "balance": self.balance,
                "open_count": self.open_count, "overdue_count": self.overdue_count,
                "oldest_overdue_days": self.oldest_overdue_days}


@dataclass(frozen=True)
class FxGap:
    """Documents left out of reporting figures for want of a rate (never guessed, never 1).

    ``kind``: ``open`` (open invoices at D's closing rate), ``unapplied`` (credits at D's rate),
    ``opening`` (open invoices at the rate of the day before the period, for CEI), ``sales``
    (invoices and credit memos of the period without a stored reporting amount)."""

    kind: str
    currency: str
    documents: int
    amount: Decimal  # in ``currency``
    first_date: date  # the rate date asked for (balances) or the documents' own dates (sales)
    last_date: date


@dataclass
class ARMetrics:
    """AR figures for the portfolio (``customer_id`` None) or one customer, as of ``as_of``."""

    as_of: date
    reporting_currency: str
    period_days: int
    edges: tuple[int, ...]
    customer_id: int | None
    totals: Aging  # reporting currency, closing rate of ``as_of``
    by_currency: dict[str, Aging]  # billing currencies, unconverted
    customers: int = 0  # customers with an invoice open on ``as_of``
    net_sales: Decimal = ZERO  # S: invoices − credit memos dated in the period, own dates' rates
    opening_ar: Decimal = ZERO  # B: total AR on the day before the period, at that day's rate
    dso: Decimal | None = None
    dso_countback: Decimal | None = None
    bpdso: Decimal | None = None
    add: Decimal | None = None
    cei: Decimal | None = None
    paid_count: int = 0  # invoices closed in the period
    paid_on_time: int = 0
    avg_days_to_pay: Decimal | None = None
    avg_days_late: Decimal | None = None
    share_on_time: Decimal | None = None  # fraction 0..1
    fx_missing: list[FxGap] = field(default_factory=list)

    @property
    def period_start(self) -> date:
        """The first day of the period."""
        return self.as_of - timedelta(days=self.period_days - 1)

    @property
    def bucket_labels(self) -> list[str]:
        return bucket_labels(self.edges)

    @property
    def fx_missing_count(self) -> int:
        return sum(g.documents for g in self.fx_missing)

    def as_dict(self) -> dict:
        """Plain data for JSON (Decimals and dates left as objects: ``json.dumps(default=str)``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("totals", "by_currency", "fx_missing")}
        out["edges"] = list(self.edges)
        out["bucket_labels"] = self.bucket_labels
        out["totals"] = self.totals.as_dict()
        out["by_currency"] = {c: a.as_dict() for c, a in sorted(self.by_currency.items())}
        out["fx_missing"] = [asdict(g) for g in self.fx_missing]
        return out


@dataclass(frozen=True)
class InvoiceAging:
    invoice_id: int
    customer_id: int | None
    number: str | None
    currency: str
    amount: Decimal
    applied: Decimal  # applications dated on or before as_of
    open_amount: Decimal
    issue_date: date
    due_date: date
    days_past_due: int
    bucket: str
    open_reporting: Decimal | None = None  # at the closing rate of as_of; None: no rate (or none asked)
    rate: Decimal | None = None
    rate_date: date | None = None
    rate_source: str | None = None


@dataclass(frozen=True)
class TrendPoint:
    as_of: date
    total_ar: Decimal
    current_ar: Decimal
    net_sales: Decimal
    dso: Decimal | None
    dso_countback: Decimal | None
    bpdso: Decimal | None
    add: Decimal | None
    cei: Decimal | None
    fx_missing: int  # documents left out of this point for want of a rate


def bucket_labels(edges: Sequence[int] = DEFAULT_EDGES) -> list[str]:
    labels, low = ["current"], 1
    for edge in edges:
        labels.append(f"{low}-{edge}")
        low = edge + 1
    return labels + [f"{low}+"]


def bucket_index(days_past_due: int, edges: Sequence[int] = DEFAULT_EDGES) -> int:
    """0 for current (≤ 0 days), k for ``edges[k-2] < days ≤ edges[k-1]``, len(edges)+1 beyond the last edge."""
    return 0 if days_past_due <= 0 else 1 + bisect.bisect_left(edges, days_past_due)


# ------------------------------------------------------------------ tallies on a date
class _Gaps:
    """Missing-rate tallies: (kind, currency) → [documents, amount, first date, last date]."""

    def __init__(self):
        self.cells: dict[tuple, list] = {}

    def add(self, kind: str, currency: str, documents: int, amount: Decimal, first: date, last: date) -> None:
        cell = self.cells.get((kind, currency))
        if cell is None:
            self.cells[(kind, currency)] = [documents, amount, first, last]
        else:
            cell[0] += documents
            cell[1] += amount
            cell[2], cell[3] = min(cell[2], first), max(cell[3], last)

    def listed(self) -> list[FxGap]:
        return [FxGap(k, c, n, a, f, t) for (k, c), (n, a, f, t) in sorted(self.cells.items())]


class _Tally:
    """Open and unapplied amounts of one customer (or the portfolio) on a date."""

    def __init__(self, reporting: str, n_buckets: int):
        self.reporting = Aging(reporting, [ZERO] * n_buckets)
        self.by_currency: dict[str, Aging] = {}
        self.n = n_buckets
        self.missing = 0
        self.customers = 0  # customers with an open invoice

    def currency(self, code: str) -> Aging:
        aging = self.by_currency.get(code)
        if aging is None:
            aging = self.by_currency[code] = Aging(code, [ZERO] * self.n)
        return aging


def _tally(dates: Sequence[date], ids: Sequence[int] | None, edges: Sequence[int], book: RateBook,
           gaps: Sequence[_Gaps | None], with_unapplied: bool = True) -> list[_Tally]:
    """The whole of ``ids`` (None: every customer): open invoices on each of ``dates`` at that date's
    closing rate, and the unapplied credits on ``dates[0]``."""
    n = len(edges) + 2
    cells, customers = _open_cells(dates, ids, edges, book, per_customer=False)
    out: list[_Tally] = []
    for k, day in enumerate(dates):
        tally = _Tally(book.reporting, n)
        for (_, currency, b), (billing, rep, count, missing, missing_amount, max_dpd) in cells[k].items():
            for aging in (tally.currency(currency), tally.reporting):
                aging.open_count += count
                if b:
                    aging.overdue_count += count
                    aging.oldest_overdue_days = max(aging.oldest_overdue_days, max_dpd)
            tally.by_currency[currency].buckets[b] += billing
            tally.reporting.buckets[b] += rep
            tally.missing += missing
            if missing and gaps[k] is not None:
                gaps[k].add("open", currency, missing, missing_amount, day, day)
        out.append(tally)
    out[0].customers = customers
    if with_unapplied:
        as_of, closing, tally = dates[0], _Closing(book, dates[0]), out[0]
        for _, currency, raw in _unapplied_rows(as_of, ids):
            amount = money_from_sql(raw)
            tally.currency(currency).unapplied += amount
            rep = closing.convert(amount, currency)
            if rep is None:
                tally.missing += 1
                if gaps[0] is not None:
                    gaps[0].add("unapplied", currency, 1, amount, as_of, as_of)
            else:
                tally.reporting.unapplied += rep
    return out


# -------------------------------------------------------------------------- flows
def _daily_sales(first: date, last: date, ids: Sequence[int] | None
                 ) -> tuple[dict[date, Decimal], list[tuple[date, str, str, int, Decimal]]]:
    """Net credit sales per day in ``[first, last]`` (invoices − credit memos, stored reporting amounts)
    and the documents without one: [(date, "sales" | "credit_memos", currency, documents, amount)]."""
    p = _ph()
    daily: dict[date, Decimal] = defaultdict(lambda: ZERO)
    missing: list[tuple[date, str, str, int, Decimal]] = []
    for table, day_col, out, sign, kind in (("invoice", "issue_date", NOT_RECEIVABLE, 1, "sales"),
                                            ("credit_memo", '"date"', VOID, -1, "credit_memos")):
        sql = (f"SELECT customer_id, {day_col}, currency, SUM({sql_money('amount_reporting')}), "
               f"SUM(CASE WHEN amount_reporting IS NULL THEN 1 ELSE 0 END), "
               f"SUM(CASE WHEN amount_reporting IS NULL THEN {sql_money('amount')} ELSE 0 END) FROM {table} "
               f"WHERE {day_col} >= {p} AND {day_col} <= {p} AND status NOT IN ({_quoted(out)}) "
               f"AND deleted_at IS NULL{{filter}} GROUP BY customer_id, {day_col}, currency")
        if ids is None:  # the portfolio: no need to split by customer
            sql = sql.replace("SELECT customer_id,", "SELECT NULL,").replace("GROUP BY customer_id,", "GROUP BY")
        for _, day, currency, rep, n_missing, missing_amount in _rows(sql, (first, last), (), ids, "customer_id"):
            day = _as_date(day)
            if rep is not None:
                daily[day] += sign * money_from_sql(rep)
            if n_missing:
                missing.append((day, kind, currency, int(n_missing), money_from_sql(missing_amount)))
    return dict(daily), missing


def _months_back(day: date, months: int) -> date:
    """The first day of the month ``months`` calendar months before ``day``'s."""
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def _sales_between(daily: dict[date, Decimal], after: date, upto: date) -> Decimal:
    return sum((v for d, v in daily.items() if after < d <= upto), ZERO)


def countback(total_ar: Decimal, as_of: date, daily: dict[date, Decimal],
              months: int = COUNTBACK_MONTHS) -> Decimal | None:
    """Countback DSO: walk calendar months back from ``as_of``'s month (days 1..as_of) through net
    monthly sales, adding each month's calendar days while AR covers its sales, then the fraction
    remaining AR ÷ that month's sales of its days. ``None`` when ``months`` months do not cover AR."""
    remaining, days = total_ar, ZERO
    end = as_of
    for _ in range(months):
        if remaining <= 0:
            return days
        start = end.replace(day=1)
        length = (end - start).days + 1
        sales = sum((v for d, v in daily.items() if start <= d <= end), ZERO)
        if remaining >= sales:
            remaining -= sales
            days += length
        else:
            return days + remaining * length / sales
        end = start - timedelta(days=1)
    return days if remaining <= 0 else None


def _ratios(total: Decimal, current: Decimal, opening: Decimal, sales: Decimal, period_days: int
            ) -> tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None]:
    """(DSO, BPDSO, ADD, CEI) from E, C, B and S as the glossary defines them."""
    dso = bpdso = add = cei = None
    if sales > 0:  # multiply before dividing: 12000 × 90 ÷ 18000 is 60 exactly
        dso = total * period_days / sales
        bpdso = current * period_days / sales
        add = dso - bpdso
    denominator = opening + sales - current
    if denominator > 0:
        cei = (opening + sales - total) * 100 / denominator
    return dso, bpdso, add, cei


def _paid_rows(as_of: date, period_days: int, ids: Sequence[int] | None) -> Iterator[tuple]:
    """Invoices closed in the period, per customer: (customer id, count, Σ days to pay, on time, Σ days late)."""
    p = _ph()
    after = as_of - timedelta(days=period_days)
    closed = (f"SELECT i.customer_id, i.issue_date, i.due_date, MIN(c.\"date\") AS closed_on FROM ("
              f"SELECT a.invoice_id, a.\"date\", SUM({sql_money('a.amount')}) "
              f"OVER (PARTITION BY a.invoice_id ORDER BY a.\"date\") AS cum FROM application a "
              f"WHERE a.\"date\" <= {p} AND a.invoice_id IN (SELECT invoice_id FROM application "
              f"WHERE \"date\" > {p} AND \"date\" <= {p} AND invoice_id IS NOT NULL)) c "
              f"JOIN invoice i ON i.id = c.invoice_id "
              f"WHERE c.cum >= {sql_money('i.amount')} AND i.amount > 0 AND i.issue_date <= {p} "
              f"AND i.status NOT IN ({_quoted(NOT_RECEIVABLE)}) AND i.deleted_at IS NULL{{filter}} "
              f"GROUP BY i.id, i.customer_id, i.issue_date, i.due_date HAVING MIN(c.\"date\") > {p}")
    late = sql_days("t.closed_on", "t.due_date")
    sql = (f"SELECT t.customer_id, COUNT(*), SUM({sql_days('t.closed_on', 't.issue_date')}), "
           f"SUM(CASE WHEN t.closed_on <= t.due_date THEN 1 ELSE 0 END), "
           f"SUM(CASE WHEN t.closed_on > t.due_date THEN {late} ELSE 0 END) FROM ({closed}) t GROUP BY t.customer_id")
    return _rows(sql, (as_of, after, as_of, as_of), (after,), ids, "i.customer_id")


# ------------------------------------------------------------------------ public API
def invoice_aging(as_of: date, customer_ids: Iterable[int] | None = None, *, reporting_currency: str | None = None,
                  edges: Sequence[int] = DEFAULT_EDGES, book: RateBook | None = None) -> list[InvoiceAging]:
    """Each invoice open on ``as_of`` (ordered by customer, due date), with its bucket and, when
    ``reporting_currency`` is given, its open amount at ``as_of``'s closing rate."""
    ids = _norm_ids(customer_ids)
    labels = bucket_labels(edges)
    if reporting_currency is not None:
        book = book or RateBook.load(reporting_currency)
    closing = _Closing(book, as_of) if book is not None else None
    out = []
    for cid, currency, dpd, raw, inv_id, number, amount, applied, issue, due in _open_invoice_rows([as_of], ids, True):
        open_amount = money_from_sql(raw)
        found = closing.found(currency) if closing else None
        out.append(InvoiceAging(
            inv_id, cid, number, currency, money_from_sql(amount), money_from_sql(applied), open_amount, _as_date(issue),
            _as_date(due), dpd, labels[bucket_index(dpd, edges)],
            closing.convert(open_amount, currency) if found else None,
            found[0] if found else None, found[1] if found else None, found[2] if found else None))
    out.sort(key=lambda r: (r.customer_id is None, r.customer_id or 0, r.due_date, r.invoice_id))
    return out


def _metrics(as_of: date, ids: list[int] | None, customer_id: int | None, *, reporting_currency: str,
             period_days: int, edges: Sequence[int], book: RateBook | None) -> ARMetrics:
    if period_days < 1:
        raise ValueError("period_days must be at least 1")
    edges = tuple(edges)
    book = book or RateBook.load(reporting_currency)
    gaps, opening_gaps = _Gaps(), _Gaps()
    after = as_of - timedelta(days=period_days)  # B is taken on the day before the period
    tally, before = _tally([as_of, after], ids, edges, book, [gaps, opening_gaps])
    opening = before.reporting.open
    for (_, currency), (count, amount, first_day, last_day) in opening_gaps.cells.items():
        gaps.add("opening", currency, count, amount, first_day, last_day)
    totals, by_currency, customers = tally.reporting, dict(sorted(tally.by_currency.items())), tally.customers
    first = min(after + timedelta(days=1), _months_back(as_of, COUNTBACK_MONTHS - 1))
    daily, missing = _daily_sales(first, as_of, ids)
    for day, kind, currency, count, amount in missing:
        if after < day <= as_of:
            gaps.add(kind, currency, count, amount, day, day)
    sales = _sales_between(daily, after, as_of)
    dso, bpdso, add, cei = _ratios(totals.open, totals.current, opening, sales, period_days)
    metrics = ARMetrics(as_of, reporting_currency, period_days, edges, customer_id, totals, by_currency,
                        customers=customers, net_sales=sales, opening_ar=opening, dso=dso,
                        dso_countback=countback(totals.open, as_of, daily), bpdso=bpdso, add=add, cei=cei,
                        fx_missing=gaps.listed())
    paid = on_time = 0
    days_to_pay = days_late = 0
    for _, count, dtp, ontime, late in _paid_rows(as_of, period_days, ids):
        paid += count
        on_time += int(ontime or 0)
        days_to_pay += int(dtp or 0)
        days_late += int(late or 0)
    if paid:
        metrics.paid_count, metrics.paid_on_time = paid, on_time
        metrics.avg_days_to_pay = Decimal(days_to_pay) / paid
        metrics.avg_days_late = Decimal(days_late) / paid
        metrics.share_on_time = Decimal(on_time) / paid
    return metrics


def portfolio(as_of: date, *, reporting_currency: str, period_days: int = 90,
              edges: Sequence[int] = DEFAULT_EDGES, book: RateBook | None = None) -> ARMetrics:
    """Every customer's receivables on ``as_of`` and the period metrics of the ``period_days`` ending on it.

    Invoices and credits not yet linked to a customer count in the portfolio too."""
    return _metrics(as_of, None, None, reporting_currency=reporting_currency, period_days=period_days,
                    edges=edges, book=book)


def customer_metrics(customer_id: int, as_of: date, *, reporting_currency: str, period_days: int = 90,
                     edges: Sequence[int] = DEFAULT_EDGES, book: RateBook | None = None) -> ARMetrics:
    """:func:`portfolio`'s figures for one customer."""
    return _metrics(as_of, [customer_id], customer_id, reporting_currency=reporting_currency,
                    period_days=period_days, edges=edges, book=book)


def trend(as_of: date, points: int = 12, step_days: int = 30, *, reporting_currency: str, period_days: int = 90,
          edges: Sequence[int] = DEFAULT_EDGES, customer_ids: Iterable[int] | None = None,
          book: RateBook | None = None) -> list[TrendPoint]:
    """DSO, BPDSO, ADD and CEI at ``as_of - k * step_days`` for k = points-1 .. 0 (oldest first)."""
    if points < 1 or step_days < 1 or period_days < 1:
        raise ValueError("points, step_days and period_days must be at least 1")
    ids = _norm_ids(customer_ids)
    book = book or RateBook.load(reporting_currency)
    days = [as_of - timedelta(days=k * step_days) for k in range(points - 1, -1, -1)]
    first = min(days[0] - timedelta(days=period_days - 1), _months_back(days[0], COUNTBACK_MONTHS - 1))
    daily, missing = _daily_sales(first, as_of, ids)
    wanted = sorted({d for day in days for d in (day, day - timedelta(days=period_days))})
    ar: dict[date, tuple[Decimal, Decimal, int]] = {}
    for day, t in zip(wanted, _tally(wanted, ids, edges, book, [None] * len(wanted), with_unapplied=False)):
        ar[day] = (t.reporting.open, t.reporting.current, t.missing)
    out = []
    for day in days:
        after = day - timedelta(days=period_days)
        total, current, gaps = ar[day]
        opening, _, opening_gaps = ar[after]
        sales = _sales_between(daily, after, day)
        flow_gaps = sum(count for d, _, _, count, _ in missing if after < d <= day)
        dso, bpdso, add, cei = _ratios(total, current, opening, sales, period_days)
        out.append(TrendPoint(day, total, current, sales, dso, countback(total, day, daily), bpdso, add, cei,
                              gaps + opening_gaps + flow_gaps))
    return out
