"""The console dashboard's AR figures: computed by a job, cached in Redis, read by the web.

``middleware.ar.portfolio`` and ``trend`` rebuild every figure as of a date from the documents
and their applications: 10–30 s and 30–50 s at 1,000,000 invoices (docs/ar-metrics.md). The
dashboard must answer in under a second, so it never runs them in a request on a large store:

* :func:`compute_figures` gathers what the dashboard shows (portfolio totals and buckets, a
  12-point monthly trend of DSO and ADD, the 10 accounts with the most overdue, cash collected
  this month) as plain JSON-safe data.
* :func:`refresh_dashboard` (RQ job, queue ``default``) computes them and stores them in Redis
  under ``arhub:dashboard:<currency>:<as-of date>`` with the time computed and the *sync mark*.
* :func:`dashboard_figures` (the web) reads the cache. Figures are fresh while the sync mark is
  unchanged (no ERP sync run finished since) and they are under :data:`MAX_AGE_SECONDS` old.
  Otherwise it enqueues one refresh (a Redis lock keeps it to one at a time) and shows the
  older figures, marked with their time, until the new ones land. A small store
  (≤ :data:`INLINE_MAX_INVOICES` invoices) is computed in the request instead.
"""
from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from middleware.ar import bucket_labels, portfolio, trend
from middleware.bulk import placeholders, to_decimal
from middleware.db import database
from middleware.settings import Settings, get_settings

__all__ = ["INLINE_MAX_INVOICES", "MAX_AGE_SECONDS", "cache_key", "compute_figures", "dashboard_figures",
           "refresh_dashboard", "sync_mark", "today"]

MAX_AGE_SECONDS = 10 * 60  # figures older than this are recomputed even without a sync
KEEP_SECONDS = 2 * 24 * 3600  # how long Redis keeps figures (stale ones are shown while refreshing)
LOCK_SECONDS = 15 * 60  # one refresh at a time per key; a crashed one frees the lock after this
INLINE_MAX_INVOICES = 10_000  # up to this many invoices the request computes the figures itself
TOP_ACCOUNTS = 10
TREND_POINTS, TREND_STEP_DAYS = 12, 30


def today(settings: Settings) -> date:
    """The business date in the company's time zone (``ARHUB_TIMEZONE``)."""
    return datetime.now(settings.tzinfo).date()


def cache_key(settings: Settings, as_of: date) -> str:
    return f"arhub:dashboard:{settings.reporting_currency}:{as_of.isoformat()}"


def sync_mark() -> str:
    """When the latest ERP sync run finished ("" when none has): new documents may change every figure."""
    row = database.execute_sql(
        'SELECT MAX(r."finished_at") FROM "sync_run" r JOIN "source" s ON s."id" = r."source_id" '
        "WHERE s.\"kind\" IN ('soap', 'rest') AND r.\"finished_at\" IS NOT NULL").fetchone()
    return str(row[0]) if row and row[0] is not None else ""


def _money(value) -> str | None:
    return None if value is None else str(value)


def top_overdue(as_of: date, limit: int = TOP_ACCOUNTS) -> list[dict]:
    """The customers with the most overdue on ``as_of``, from the stored open amounts revalued at the
    latest rate (``open_amount_reporting``, as the Salesforce push and the workloads read them)."""
    sql = ('SELECT i."customer_id", SUM(i."open_amount_reporting"), COUNT(*), MIN(i."due_date"), '
           'SUM(CASE WHEN i."open_amount_reporting" IS NULL THEN 1 ELSE 0 END) '
           'FROM "invoice" i WHERE i."deleted_at" IS NULL AND i."customer_id" IS NOT NULL AND i."open_amount" > 0 '
           f'AND i."status" = {placeholders(1)} AND i."due_date" < {placeholders(1)} '
           'GROUP BY i."customer_id" ORDER BY COALESCE(SUM(i."open_amount_reporting"), 0) DESC, i."customer_id" '
           f'LIMIT {int(limit)}')
    rows = database.execute_sql(sql, ("open", as_of)).fetchall()
    if not rows:
        return []
    ids = [r[0] for r in rows]
    names = {cid: (name, number, collector, currency) for cid, name, number, collector, currency in database.execute_sql(
        f'SELECT "id", "name", "number", "collector", "billing_currency" FROM "customer" '
        f'WHERE "id" IN ({placeholders(len(ids))})', ids).fetchall()}
    out = []
    for cid, overdue, count, oldest, missing in rows:
        name, number, collector, currency = names.get(cid, ("?", None, None, None))
        oldest = oldest if isinstance(oldest, date) else date.fromisoformat(str(oldest)[:10])
        out.append({"customer_id": cid, "name": name, "number": number, "collector": collector,
                    "billing_currency": currency, "overdue": _money(to_decimal(overdue)), "invoices": count,
                    "oldest_due": oldest.isoformat(), "days_past_due": (as_of - oldest).days,
                    "fx_missing": missing or 0})
    return out


def cash_collected(first: date, last: date) -> dict:
    """Payments dated ``first``..``last`` (not deleted): their sum in the reporting currency (each at its own
    date's rate, as the sync stored it), how many, and how many lack a rate (left out of the sum)."""
    sql = ('SELECT SUM("amount_reporting"), COUNT(*), SUM(CASE WHEN "amount_reporting" IS NULL THEN 1 ELSE 0 END) '
           f'FROM "payment" WHERE "deleted_at" IS NULL AND "date" >= {placeholders(1)} AND "date" <= {placeholders(1)}')
    total, count, missing = database.execute_sql(sql, (first, last)).fetchone()
    return {"from": first.isoformat(), "to": last.isoformat(), "amount": _money(to_decimal(total) or Decimal(0)),
            "payments": count or 0, "fx_missing": missing or 0}


def compute_figures(as_of: date, settings: Settings | None = None) -> dict:
    """Everything the dashboard shows about AR on ``as_of``, as JSON-safe data (money as strings)."""
    s = settings or get_settings()
    currency = s.reporting_currency
    started = time.monotonic()
    m = portfolio(as_of, reporting_currency=currency)
    points = trend(as_of, TREND_POINTS, TREND_STEP_DAYS, reporting_currency=currency)
    t = m.totals
    return {
        "as_of": as_of.isoformat(),
        "currency": currency,
        "totals": {"open": _money(t.open), "overdue": _money(t.overdue), "current": _money(t.current),
                   "unapplied": _money(t.unapplied), "balance": _money(t.balance), "open_count": t.open_count,
                   "overdue_count": t.overdue_count, "customers": m.customers},
        "buckets": [{"label": label, "amount": _money(amount)}
                    for label, amount in zip(bucket_labels(m.edges), t.buckets)],
        "dso": _money(m.dso), "add": _money(m.add), "bpdso": _money(m.bpdso), "cei": _money(m.cei),
        "period_days": m.period_days,
        "fx_missing": m.fx_missing_count,
        "trend": [{"as_of": p.as_of.isoformat(), "dso": _money(p.dso), "add": _money(p.add),
                   "total_ar": _money(p.total_ar)} for p in points],
        "top_overdue": top_overdue(as_of),
        "cash": cash_collected(as_of.replace(day=1), as_of),
        "cash_target": _money(s.cash_target),
        "compute_seconds": round(time.monotonic() - started, 3),
    }


def _store(client, settings: Settings, as_of: date, figures: dict, mark: str) -> dict:
    entry = {"computed_at": datetime.now(timezone.utc).isoformat(), "sync_mark": mark, "figures": figures}
    client.set(cache_key(settings, as_of), json.dumps(entry), ex=KEEP_SECONDS)
    return entry


def refresh_dashboard(as_of: str | None = None) -> dict:
    """RQ job: compute the dashboard figures for ``as_of`` (ISO date; default today) and cache them."""
    from jobs.bootstrap import bootstrap
    from jobs.queues import get_redis

    ctx = bootstrap()
    day = date.fromisoformat(as_of) if as_of else today(ctx.settings)
    client = get_redis(ctx.settings)
    try:
        mark = sync_mark()  # read before computing: a sync finishing meanwhile leaves the entry stale
        entry = _store(client, ctx.settings, day, compute_figures(day, ctx.settings), mark)
    finally:
        client.delete(cache_key(ctx.settings, day) + ":refreshing")
    return {"as_of": day.isoformat(), "computed_at": entry["computed_at"],
            "seconds": entry["figures"]["compute_seconds"]}


def _small_store() -> bool:
    row = database.execute_sql(
        f'SELECT COUNT(*) FROM (SELECT 1 FROM "invoice" LIMIT {INLINE_MAX_INVOICES + 1}) AS t').fetchone()
    return row[0] <= INLINE_MAX_INVOICES


def dashboard_figures(settings: Settings | None = None, as_of: date | None = None, *, client=None) -> dict:
    """What the web shows: ``{"figures": dict | None, "computed_at": datetime | None, "fresh": bool,
    "refreshing": bool}``. Never runs the portfolio on a large store in the caller."""
    from jobs.queues import get_queue, get_redis

    s = settings or get_settings()
    day = as_of or today(s)
    client = client or get_redis(s)
    key = cache_key(s, day)
    raw = client.get(key)
    entry = json.loads(raw) if raw else None
    mark = sync_mark()
    fresh = bool(entry) and entry["sync_mark"] == mark and \
        datetime.now(timezone.utc) - datetime.fromisoformat(entry["computed_at"]) < timedelta(seconds=MAX_AGE_SECONDS)
    refreshing = False
    if not fresh:
        if _small_store():
            entry, fresh = _store(client, s, day, compute_figures(day, s), mark), True
        elif client.set(key + ":refreshing", "1", nx=True, ex=LOCK_SECONDS):
            get_queue("default", s).enqueue("jobs.dashboard.refresh_dashboard", day.isoformat(),
                                            job_timeout=LOCK_SECONDS, description=f"dashboard figures as of {day}")
            refreshing = True
        else:
            refreshing = True
    return {"figures": entry["figures"] if entry else None,
            "computed_at": datetime.fromisoformat(entry["computed_at"]) if entry else None,
            "fresh": fresh, "refreshing": refreshing}
