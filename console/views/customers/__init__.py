"""Customers: the list (search, filters, sort, paging, CSV/XLSX export), the customer page and the
invoice page, and the collector's actions on a customer (see docs/console-customers.md).

Reading needs ``view``; every action needs ``work`` (403 otherwise), is a POST with the CSRF
token, and goes through a middleware function that records it (``middleware.activities``,
``middleware.rules.assign_collector``); "statement now" enqueues the statement job on the
``statements`` queue and never renders in the web process.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
from datetime import date
from decimal import Decimal

from flask import Response, abort, after_this_request, flash, redirect, request, send_file, stream_with_context, url_for
from flask_admin import expose
from flask_login import current_user

from console.auth import can
from console.views.base import SecureView

from . import detail as D
from .queries import BUCKETS, PER_PAGE, SORTS, STATUSES, Filters, export_rows, list_page

MENU_ORDER = 20
#: Most rows an XLSX export writes (openpyxl in write-only mode, into a temporary file); a larger
#: list is refused with a message (narrow the filters, or take the CSV, which streams every row).
XLSX_MAX_ROWS = 50_000
EXPORT_COLUMNS = ("id", "name", "erp_source", "erp_number", "erp_id", "billing_currency", "open_reporting",
                  "overdue_reporting", "reporting_currency", "oldest_overdue_days", "open_invoices",
                  "fx_missing", "collector", "effective_collector", "segment", "tags", "campaign",
                  "salesforce_account", "match_state", "paused_until")


def today() -> date:
    from middleware.people import today as company_today

    return company_today()


def _locale() -> str:
    return getattr(current_user, "locale", None) or "en"


def money(amount, currency: str) -> str:
    from middleware.templating import format_money

    if amount is None:
        return "—"
    return format_money(amount, currency, _locale())


def day(value) -> str:
    from middleware.templating import format_day

    return format_day(value, "medium", _locale()) if value else "—"


def _date_arg(name: str) -> date | None:
    text = (request.form.get(name) or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _export_values(row, reporting: str) -> list:
    return [row.id, row.name, row.source, row.number or "", row.external_id, row.billing_currency,
            row.open_reporting, row.overdue_reporting, reporting,
            "" if row.oldest_overdue_days is None else row.oldest_overdue_days, row.open_invoices, row.fx_missing,
            row.collector or "team queue", row.effective_collector or "team queue", row.segment or "",
            " ".join(row.tags), row.campaign or "", row.sf_account_id or "", row.match_state or "",
            row.paused_until.isoformat() if row.paused_until else ""]


class CustomersView(SecureView):
    permission = "view"

    def _context(self, **kw) -> dict:
        kw.setdefault("money", money)
        kw.setdefault("day", day)
        kw.setdefault("today", today())
        return kw

    # -- the list -----------------------------------------------------------------------------
    @expose("/")
    def index(self):
        from middleware.models import Campaign, Tag, User

        f = Filters.from_args(request.args)
        now = today()
        page = list_page(f, now)
        reporting = D.reporting_currency()
        options = {
            "tags": [t.name for t in Tag.select(Tag.name).order_by(Tag.name)],
            "collectors": [(u.email, u.name) for u in User.select(User.email, User.name)
                           .where(User.role.in_(("collector", "admin"))).order_by(User.name)],
            "campaigns": [(c.id, c.name) for c in Campaign.select(Campaign.id, Campaign.name).order_by(Campaign.name)],
            "segments": _distinct("segment"), "currencies": _distinct("billing_currency"),
            "statuses": STATUSES, "buckets": BUCKETS, "sorts": SORTS, "per_page": PER_PAGE,
        }
        return self.render("console/customers/list.html",
                           **self._context(page=page, f=f, reporting=reporting, options=options, today=now,
                                           xlsx_max=XLSX_MAX_ROWS))

    @expose("/export.csv")
    def export_csv(self):
        """Every row of the filtered list, streamed (no cap)."""
        f = Filters.from_args(request.args)
        now, reporting = today(), D.reporting_currency()

        def generate():
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(EXPORT_COLUMNS)
            for row in export_rows(f, now):
                writer.writerow(_export_values(row, reporting))
                if buf.tell() > 64 * 1024:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
            yield buf.getvalue()

        name = f"customers-{now.isoformat()}.csv"
        return Response(stream_with_context(generate()), mimetype="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @expose("/export.xlsx")
    def export_xlsx(self):
        """The filtered list as a workbook (write-only openpyxl into a temporary file), at most
        ``XLSX_MAX_ROWS`` rows: a longer list is refused with a message rather than cut short."""
        from openpyxl import Workbook

        from .queries import count

        f = Filters.from_args(request.args)
        now, reporting = today(), D.reporting_currency()
        total = count(f, now)
        if total > XLSX_MAX_ROWS:
            flash(f"{total:,} customers match: an XLSX export holds at most {XLSX_MAX_ROWS:,}. Narrow the filters, "
                  f"or export CSV (every row).", "warning")
            return redirect(url_for(".index", **f.args()))
        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Customers")
        ws.append(list(EXPORT_COLUMNS))
        for row in export_rows(f, now, limit=XLSX_MAX_ROWS):
            values = _export_values(row, reporting)
            ws.append([float(v) if isinstance(v, Decimal) else v for v in values])
        fd, path = tempfile.mkstemp(prefix="arhub-customers-", suffix=".xlsx")
        os.close(fd)
        wb.save(path)

        @after_this_request
        def _cleanup(response):
            try:
                os.unlink(path)
            except OSError:
                pass
            return response

        with open(path, "rb") as fh:
            data = io.BytesIO(fh.read())
        return send_file(data, as_attachment=True, download_name=f"customers-{now.isoformat()}.xlsx",
                         mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")

    # -- the customer page ----------------------------------------------------------------------
    @expose("/<int:customer_id>")
    def customer(self, customer_id: int):
        from middleware.fx import RateBook
        from middleware.models import Customer, Source, User
        from middleware.people import effective_collector

        customer = Customer.get_or_none(Customer.id == customer_id)
        if customer is None:
            abort(404)
        now = today()
        reporting = D.reporting_currency()
        book = RateBook.load(reporting)
        open_invoices, other_invoices = D.invoices(customer.id)
        balances = D.balances(customer.id, open_invoices, now, book)
        explanation, explain_error = None, None
        try:
            from middleware.dunning import explain

            explanation = explain(customer.id, now)
        except Exception as exc:  # shown on the page: the rest of the page still helps
            explain_error = f"{type(exc).__name__}: {exc}"
        effective = effective_collector(customer.collector, now) if customer.collector else None
        return self.render(
            "console/customers/customer.html",
            **self._context(c=customer, source=Source.get_by_id(customer.source_id), reporting=reporting,
                            balances=balances, open_invoices=open_invoices, other_invoices=other_invoices,
                            payments=D.payments(customer.id), timeline=D.timeline(customer.id),
                            sf=D.salesforce(customer), tags=D.tags(customer.id), explanation=explanation,
                            explain_error=explain_error, effective=effective, holds=D.open_holds(customer.id),
                            book=book, closing=D.closing, rate_label=D.rate_label,
                            collectors=[(u.email, u.name) for u in User.select(User.email, User.name)
                                        .where(User.active == True, User.role.in_(("collector", "admin")))  # noqa: E712
                                        .order_by(User.name)],
                            can_work=can("work"), today=now))

    @expose("/invoice/<int:invoice_id>")
    def invoice(self, invoice_id: int):
        from middleware.fx import RateBook
        from middleware.models import Customer, Invoice

        inv = Invoice.get_or_none(Invoice.id == invoice_id)
        if inv is None:
            abort(404)
        customer = Customer.get_or_none(Customer.id == inv.customer_id) if inv.customer_id else None
        now = today()
        reporting = D.reporting_currency()
        book = RateBook.load(reporting)
        return self.render(
            "console/customers/invoice.html",
            **self._context(inv=inv, c=customer, reporting=reporting, applications=D.applications(inv),
                            timeline=D.timeline(customer.id, invoice_id=inv.id) if customer else [],
                            closing_rate=D.closing(book, inv, now), rate_label=D.rate_label,
                            days_past_due=(now - inv.due_date).days, can_work=can("work"), today=now))

    # -- actions (POST, CSRF, permission "work") ------------------------------------------------
    @expose("/<int:customer_id>/act/<action>", methods=("POST",))
    def act(self, customer_id: int, action: str):
        from middleware import activities
        from middleware.activities import ActivityError
        from middleware.rules import RuleError, assign_collector

        if not can("work"):
            abort(403, description=f"Your role ({current_user.role}) may not change customers: it needs admin "
                                   f"or collector.")
        actor = current_user.email
        form = request.form
        back = form.get("next") or url_for(".customer", customer_id=customer_id)
        if not back.startswith("/") or back.startswith("//"):
            back = url_for(".customer", customer_id=customer_id)
        invoice_id = int(form["invoice_id"]) if (form.get("invoice_id") or "").isdigit() else None
        try:
            if action == "pause":
                activities.pause(customer_id, _date_arg("until"), form.get("reason"), actor, today=today())
                message = "Dunning paused."
            elif action == "resume":
                activities.resume(customer_id, actor, form.get("note"))
                message = "Dunning resumed."
            elif action == "note":
                activities.add_note(customer_id, form.get("body") or "", actor, invoice_id=invoice_id)
                message = "Note added."
            elif action == "promise":
                activities.promise(customer_id, _date_arg("until"), form.get("amount"), actor,
                                   invoice_id=invoice_id, note=form.get("note"))
                message = "Promise to pay recorded."
            elif action == "dispute":
                if invoice_id is None:
                    raise ActivityError("choose the disputed invoice")
                activities.dispute(customer_id, invoice_id, form.get("reason"), actor)
                message = "Dispute recorded: the invoice leaves the cadence until resolved."
            elif action == "resolve":
                ref = form.get("activity_id") or ""
                if not ref.isdigit():
                    raise ActivityError("nothing to resolve")
                activities.resolve(int(ref), actor, customer_id=customer_id)
                message = "Resolved."
            elif action == "collector":
                email = (form.get("collector") or "").strip() or None
                if not assign_collector([customer_id], email, actor):
                    raise ActivityError(f"no customer #{customer_id}")
                message = f"Collector set to {email or 'the team queue'}."
            elif action == "statement":
                message = _enqueue_statement(customer_id, actor)
            else:
                abort(404)
        except (ActivityError, RuleError) as exc:
            flash(str(exc), "danger")
            return redirect(back)
        flash(message, "success")
        return redirect(back)


def _enqueue_statement(customer_id: int, actor: str) -> str:
    """Enqueue ``jobs.statements.render_statement`` on the ``statements`` queue (the job's own
    id and uniqueness: one statement per customer and day) and record it on the timeline."""
    from rq.exceptions import DuplicateJobError

    from jobs.queues import get_queue
    from jobs.statements import FAILURE_TTL, JOB_TIMEOUT, QUEUE, RESULT_TTL, job_id, render_statement
    from middleware.activities import ActivityError
    from middleware.models import Activity, Customer, utcnow

    if Customer.get_or_none(Customer.id == customer_id) is None:
        raise ActivityError(f"no customer #{customer_id}")
    now = today()
    jid = job_id(customer_id, now)
    queue = get_queue(QUEUE)
    try:
        queue.enqueue(render_statement, customer_id, now.isoformat(), job_id=jid, unique=True,
                      result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, job_timeout=JOB_TIMEOUT,
                      description=f"statement of customer {customer_id} on {now.isoformat()} (console, {actor})")
    except DuplicateJobError:
        return f"Today's statement is already queued or done (job {jid})."
    Activity.create(customer=customer_id, kind="statement", body=f"statement as of {now.isoformat()} queued: job {jid}",
                    actor=actor, created_at=utcnow())
    return f"Statement queued (job {jid})."


def _distinct(column: str, limit: int = 200) -> list[str]:
    """The values of ``column`` among live customers, in order (the filter drop-downs): one step of
    the column's index per value (a recursive "loose index scan": the next value above the last),
    not a pass over every customer."""
    from middleware.db import database

    nxt = (f'SELECT "{column}" FROM "customer" WHERE "{column}" {{cond}} AND "deleted_at" IS NULL '
           f'ORDER BY "{column}" LIMIT 1')
    rows = database.execute_sql(
        f'WITH RECURSIVE v(x) AS (SELECT ({nxt.format(cond="IS NOT NULL")}) UNION ALL '
        f'SELECT ({nxt.format(cond="> v.x")}) FROM v WHERE v.x IS NOT NULL) '
        f'SELECT x FROM v WHERE x IS NOT NULL LIMIT {int(limit)}').fetchall()
    return [r[0] for r in rows]


def register(admin) -> None:
    admin.add_view(CustomersView(name="Customers", endpoint="customers", url="/customers"))


__all__ = ["CustomersView", "register", "XLSX_MAX_ROWS"]
