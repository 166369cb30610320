"""The home page: AR at a glance, every figure a link to the list behind it.

* AR totals in the reporting currency (open, overdue, current), the aging chart (inline SVG),
  DSO and ADD now and over 12 months, the 10 accounts with the most overdue, cash collected this
  month against ``ARHUB_CASH_TARGET``: computed by :mod:`jobs.dashboard` and cached in Redis
  (fresh until an ERP sync run finishes or 10 minutes pass; shown "as of HH:MM").
* Sync health (the last run of each source) and queue health (RQ queues, failed jobs, workers):
  read live, a few indexed queries and Redis calls.
* ``/collected/``: this month's payments, the list behind "cash collected".
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from flask import current_app, request
from flask_admin import expose
from flask_login import current_user

from console.views.base import SecureIndexView

MENU_ORDER = 0
PAGE_SIZE = 50

__all__ = ["DashboardView", "index_view", "register"]


# -- formatting ---------------------------------------------------------------------------


def _locale() -> str:
    return getattr(current_user, "locale", None) or "en"


def _tz():
    try:
        return ZoneInfo(getattr(current_user, "timezone", None) or "UTC")
    except (KeyError, ValueError):
        return timezone.utc


def money(amount, currency: str) -> str:
    from middleware.templating import format_money

    if amount is None or amount == "":
        return "–"
    return format_money(Decimal(str(amount)), currency, _locale())


def days(value) -> str:
    if value is None:
        return "–"
    return f"{Decimal(str(value)).quantize(Decimal('0.1'))} d"


def customers_url(**params) -> str:
    """A link to the customers list with its query-parameter filters (q, status, bucket, sort…)."""
    return f"{request.script_root}/customers/?{urlencode(params)}"


def local_time(value: datetime | None, fmt: str = "%H:%M") -> str:
    return value.astimezone(_tz()).strftime(fmt) if value else ""


# -- charts (server-side SVG) ------------------------------------------------------------


def aging_bars(buckets: list[dict], width: int = 560, height: int = 220) -> dict:
    """Bar geometry for the aging chart: one bar per bucket, scaled to the largest."""
    top, bottom, gap = 24, 36, 14
    amounts = [Decimal(b["amount"]) for b in buckets]
    peak = max(amounts + [Decimal(0)]) or Decimal(1)
    slot = width / max(len(buckets), 1)
    bars = []
    for i, (bucket, amount) in enumerate(zip(buckets, amounts)):
        h = float(amount / peak) * (height - top - bottom) if amount > 0 else 0.0
        bars.append({"label": bucket["label"], "amount": bucket["amount"], "x": i * slot + gap / 2,
                     "w": slot - gap, "y": height - bottom - h, "h": max(h, 1.0),
                     "cx": i * slot + slot / 2, "href": customers_url(bucket=bucket["label"]),
                     "overdue": i > 0})
    return {"width": width, "height": height, "base": height - bottom, "bars": bars}


def trend_lines(points: list[dict], keys=("dso", "add"), width: int = 560, height: int = 200) -> dict:
    """Polyline geometry for DSO and ADD over the trend points (a missing value breaks the line)."""
    left, right, top, bottom = 36, 10, 12, 28
    values = [Decimal(p[k]) for p in points for k in keys if p.get(k) is not None]
    lo, hi = min(values + [Decimal(0)]), max(values + [Decimal(1)])
    span = (hi - lo) or Decimal(1)
    step = (width - left - right) / max(len(points) - 1, 1)

    def y(v) -> float:
        return top + float((hi - Decimal(v)) / span) * (height - top - bottom)

    lines = {}
    for key in keys:
        segments, current, dots = [], [], []
        for i, p in enumerate(points):
            if p.get(key) is None:
                if current:
                    segments.append(current)
                current = []
                continue
            xy = (left + i * step, y(p[key]))
            current.append(f"{xy[0]:.1f},{xy[1]:.1f}")
            dots.append({"x": xy[0], "y": xy[1], "value": p[key], "as_of": p["as_of"]})
        if current:
            segments.append(current)
        lines[key] = {"segments": [" ".join(s) for s in segments], "dots": dots}
    ticks = [{"y": y(v), "label": f"{v:.0f}"} for v in (hi, (hi + lo) / 2, lo)]
    labels = [{"x": left + i * step, "label": date.fromisoformat(p["as_of"]).strftime("%b")}
              for i, p in enumerate(points)]
    return {"width": width, "height": height, "lines": lines, "ticks": ticks, "labels": labels,
            "left": left, "base": height - bottom}


# -- live health --------------------------------------------------------------------------


def sync_health() -> list[dict]:
    """The last run of every source (one indexed query per source: a deployment has a handful)."""
    from middleware.models import Source, SyncRun

    out = []
    for source in Source.select().order_by(Source.name):
        run = (SyncRun.select().where(SyncRun.source == source)
               .order_by(SyncRun.started_at.desc()).limit(1).first())
        out.append({"source": source, "run": run})
    return out


def queue_health() -> dict:
    """Length and registries of every RQ queue, and the workers (a few Redis calls)."""
    from rq import Worker

    from jobs.queues import QUEUE_NAMES, get_queue, get_redis

    connection = get_redis()
    queues = []
    for name in QUEUE_NAMES:
        q = get_queue(name)
        queues.append({"name": name, "queued": q.count, "started": q.started_job_registry.count,
                       "scheduled": q.scheduled_job_registry.count, "failed": q.failed_job_registry.count,
                       "deferred": q.deferred_job_registry.count})
    workers = Worker.all(connection=connection)
    return {"queues": queues, "workers": len(workers),
            "busy": sum(1 for w in workers if w.get_state() == "busy"),
            "failed": sum(q["failed"] for q in queues)}


# -- the view -----------------------------------------------------------------------------


class DashboardView(SecureIndexView):
    permission = "view"

    @expose("/")
    def index(self):
        import redis

        from jobs.dashboard import dashboard_figures

        settings = current_app.config["ARHUB_SETTINGS"]
        error = None
        try:
            state = dashboard_figures(settings)
        except redis.RedisError as exc:
            state, error = {"figures": None, "computed_at": None, "fresh": False, "refreshing": False}, str(exc)
        figures = state["figures"]
        try:
            queues = queue_health()
        except redis.RedisError as exc:
            queues, error = None, error or str(exc)
        cash = None
        if figures:
            collected = Decimal(figures["cash"]["amount"])
            target = Decimal(figures["cash_target"]) if figures.get("cash_target") else None
            share = (collected / target) if target else None
            cash = {**figures["cash"], "target": target, "collected": collected,
                    "percent": None if share is None else int((share * 100).to_integral_value()),
                    "bar": None if share is None else min(float(share) * 100, 100.0)}
        return self.render(
            "console/dashboard/index.html", state=state, f=figures, error=error, cash=cash,
            aging=aging_bars(figures["buckets"]) if figures else None,
            trend=trend_lines(figures["trend"]) if figures else None,
            syncs=sync_health(), queues=queues, money=money, days=days, customers_url=customers_url,
            local_time=local_time, currency=settings.reporting_currency)

    @expose("/collected/")
    def collected(self):
        """This month's payments (the list behind "cash collected"), newest first, paged."""
        from peewee import JOIN

        from jobs.dashboard import today
        from middleware.models import Customer, Payment

        settings = current_app.config["ARHUB_SETTINGS"]
        last = today(settings)
        first = last.replace(day=1)
        page = max(request.args.get("page", 1, type=int) or 1, 1)
        query = (Payment.select(Payment, Customer.name.alias("customer_name"), Customer.number.alias("customer_number"))
                 .join(Customer, JOIN.LEFT_OUTER, on=(Payment.customer == Customer.id))
                 .where(Payment.deleted_at.is_null() & (Payment.date >= first) & (Payment.date <= last))
                 .order_by(Payment.date.desc(), Payment.id.desc()))
        rows = list(query.limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE).objects())
        return self.render("console/dashboard/collected.html", rows=rows[:PAGE_SIZE],
                           more=len(rows) > PAGE_SIZE, page=page, first=first, last=last,
                           money=money, currency=settings.reporting_currency, customers_url=customers_url)


def index_view() -> DashboardView:
    return DashboardView(url="/", name="Dashboard")


def register(admin) -> None:
    """The dashboard is the home page (``index_view``); nothing else to add to the menu."""
