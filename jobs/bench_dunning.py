"""``arhub bench dunning``: the daily plan, statement PDFs and dunning emails, each against its target.

One run, in a scratch SQLite database under a temporary var dir (or ``--db postgres``), with the
embedded Redis of that var dir (never a shared one):

1. **the store**: the sandbox's generated book (``connectors.sandbox.book.Book``, seed 1, two years
   of invoices up to Friday 27 Nov 2026, realistic payers) written straight into the canonical
   store (customers, billing and escalation contacts, invoices with their open amounts, unapplied
   credit memos and payments, rates; ``bench ingest`` measures the ERP sync itself), then the
   default rules applied and the seeded ``Default`` campaign (not measured);
2. **plan**: ``middleware.dunning.plan(day)`` with its write, run as the daily cron does, one
   sending day after another: three warm-up days (the first of them also catches up on missed
   days), then the measured week Monday 23 to Friday 27 Nov. The **worst day** is the week's
   slowest (a Monday, which collects the steps that fell on the weekend, usually); the **normal
   day** the week's median. ``plan_seconds`` and ``actions`` are the worst day's;
3. **statements**: ``--statements`` extra customers with 60 open invoices each (two A4 pages, the
   seeding of ``bench statements``), rendered in this process end to end
   (``render_statement_pdf``) and, interleaved, their standalone HTML through a bare
   ``weasyprint.HTML(string=html).write_pdf()`` (the floor) in the same run
   (:func:`jobs.bench_statements.time_in_process`): ``statements_per_s`` is per worker (one
   process), ``statement_floor_ratio`` = statement seconds / floor seconds;
4. **emails**: up to ``--emails`` planned email actions without an attachment, enqueued with
   ``enqueue_dunning_email`` to two real ``rq worker`` processes
   (``jobs.queues.start_worker_process``, started and registered before the clock; class
   ``jobs.queues.MailWorker``, the Procfile's ``mailer``, or with ``--email-worker fork`` the
   forking ``jobs.queues.Worker``) that send them
   through the never-twice protocol to an aiosmtpd server on loopback started by the bench;
   ``emails_per_s`` runs from the first enqueue to the last message the server received.
"""
from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Callable

#: the book's last day (a Friday) and the measured week, Monday to Friday
AS_OF = date(2026, 11, 27)
WEEK = [AS_OF - timedelta(days=4 - n) for n in range(5)]
WARM_UP = [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)]
LOCALES = {"US": "en_US", "CA": "en_CA", "MX": "es_MX", "DE": "de_DE", "FR": "fr_FR", "NL": "nl_NL", "IE": "en_IE",
           "ES": "es_ES", "GB": "en_GB", "JP": "ja_JP", "AU": "en_AU", "NZ": "en_NZ"}


def load_book(book, source_name: str = "bench-dunning") -> dict:
    """Write ``book`` (a ``connectors.sandbox.book.Book``) into the canonical store as a sync
    would leave it (no field mappings, no applications); returns the row counts."""
    from middleware.bulk import upsert
    from middleware.db import database
    from middleware.models import Company, Contact, CreditMemo, Customer, FxRate, Invoice, Payment, Source, utcnow

    counts = {}
    now = utcnow()
    with database.atomic():
        if not Company.select().exists():
            Company.create(name="Acme Receivables GmbH", reporting_currency="USD")
        source, _ = Source.get_or_create(name=source_name, defaults={"kind": "rest"})
        sid = source.id
        FxRate.insert_many([{"base_currency": "USD", "currency": r.currency, "rate_date": r.date, "rate": r.rate,
                             "source_name": f"erp:{source_name}"} for r in book.fx_rates.values()]
                           ).on_conflict_ignore().execute()
        cols = ("source_id", "external_id", "number", "name", "email", "billing_currency", "country",
                "parent_external_id", "arr", "terms_days", "locale", "inactive", "content_hash", "created_at", "updated_at")
        counts["customers"] = upsert(Customer, cols, (
            (sid, str(c.id), c.number, c.name, c.email, c.currency, c.country,
             str(c.parent_id) if c.parent_id else None, c.arr, c.terms_days, LOCALES.get(c.country), c.inactive, "x", now, now)
            for c in book.customers.values()), ("source_id", "external_id"), ())
        ids = dict(Customer.select(Customer.external_id, Customer.id).where(Customer.source == sid).tuples())
        database.execute_sql('UPDATE "customer" SET "parent_id" = (SELECT p."id" FROM "customer" p WHERE '
                             'p."source_id" = "customer"."source_id" AND p."external_id" = "customer"."parent_external_id") '
                             'WHERE "parent_external_id" IS NOT NULL')
        cols = ("source_id", "external_id", "customer_id", "customer_external_id", "name", "email", "phone", "role",
                "content_hash", "updated_at", "origin")
        counts["contacts"] = upsert(Contact, cols, (
            (sid, f"{c.id}:{p.role}:{n}", ids[str(c.id)], str(c.id), p.name, p.email, p.phone or None, p.role, "x", now, "erp")
            for c in book.customers.values() for n, p in enumerate(c.contacts)), ("source_id", "external_id"), ())
        cols = ("source_id", "external_id", "number", "customer_id", "customer_external_id", "currency", "amount",
                "fx_rate", "amount_reporting", "issue_date", "sent_date", "due_date", "status", "open_amount",
                "erp_open_amount", "open_amount_reporting", "po_number", "content_hash", "created_at", "updated_at",
                "fx_missing")

        def invoice(i):
            due = i.amount_due if i.status == "open" else Decimal(0)
            rate = i.exchange_rate
            return (sid, str(i.id), i.number, ids[str(i.customer_id)], str(i.customer_id), i.currency, i.total, rate,
                    (i.total * rate).quantize(Decimal("0.01")), i.issue_date, i.sent_date, i.due_date, i.status, due,
                    due, (due * rate).quantize(Decimal("0.01")), i.po_number or None, "x", now, now, False)

        counts["invoices"] = upsert(Invoice, cols, map(invoice, book.invoices.values()), ("source_id", "external_id"),
                                    ())
        cols = ("source_id", "external_id", "number", "customer_id", "customer_external_id", "currency", "amount",
                "fx_rate", "amount_reporting", "date", "unapplied_amount", "content_hash", "created_at", "updated_at",
                "fx_missing")

        def document(prefix, d, total, *extra):
            return (sid, f"{prefix}{d.id}", d.number, ids[str(d.customer_id)], str(d.customer_id), d.currency, total,
                    d.exchange_rate, (total * d.exchange_rate).quantize(Decimal("0.01")), d.date, d.unapplied, "x",
                    now, now, False, *extra)

        counts["credit_memos"] = upsert(CreditMemo, (*cols, "status"), (
            document("CM", d, d.total, "open") for d in book.credit_memos.values()), ("source_id", "external_id"), ())
        counts["payments"] = upsert(Payment, cols, (document("P", d, d.amount) for d in book.payments.values()),
                                    ("source_id", "external_id"), ())
    counts["open_invoices"] = Invoice.select().where(Invoice.status == "open", Invoice.open_amount > 0).count()
    return counts


def _plan_days(log: Callable[[str], None]) -> tuple[list[dict], dict, dict]:
    """Plan the warm-up days then the measured week, each with its write; returns every day's
    figures, the worst and the normal day of the week."""
    from middleware.dunning import plan

    days = []
    for day in WARM_UP + WEEK:
        result = plan(day)
        by_status = result.by_status
        entry = {"date": day.isoformat(), "weekday": day.strftime("%a"), "measured": day in WEEK,
                 "actions": result.inserted, "emails": by_status.get("planned", 0) + by_status.get("approved", 0),
                 "pending_approval": by_status.get("pending_approval", 0), "tasks": by_status.get("task", 0),
                 "skipped": by_status.get("skipped", 0), "seconds": round(result.seconds, 3),
                 "write_seconds": round(result.timings.get("write", 0.0), 3)}
        days.append(entry)
        log(f"plan {entry['weekday']} {entry['date']}{'' if entry['measured'] else ' (warm-up)'}: "
            f"{entry['actions']} actions in {entry['seconds']:.2f} s")
    week = [d for d in days if d["measured"]]
    worst = max(week, key=lambda d: (d["actions"], d["seconds"]))
    normal = sorted(week, key=lambda d: (d["actions"], d["seconds"]))[len(week) // 2]
    return days, worst, normal


class _Counter:
    """aiosmtpd handler: counts what it receives and when the last message came."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = 0
        self.last = 0.0
        self.recipients: set[str] = set()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received += 1
            self.last = time.perf_counter()
            self.recipients.update(envelope.rcpt_tos)
        return "250 OK"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _emails(limit: int, workers: int, log: Callable[[str], None], worker_class: str = "mail") -> dict:
    """Send up to ``limit`` planned email actions without attachment through ``workers`` real rq
    workers to an aiosmtpd server on loopback; the rate from the first enqueue to the last message."""
    from aiosmtpd.controller import Controller
    from peewee import fn

    from jobs.dunning import enqueue_dunning_email
    from jobs.queues import (MAIL_WORKER_CLASS, WORKER_CLASS, close_embedded, get_queue, redis_url_for_workers,
                             start_worker_process, wait_for_worker)
    from middleware.models import ActionStatus, CampaignStep, DunningAction
    from middleware.settings import get_settings

    settings = get_settings()
    actions = list(DunningAction.select(DunningAction.id, DunningAction.key).join(
        CampaignStep, on=(DunningAction.step == CampaignStep.id)).where(
        DunningAction.channel == "email", CampaignStep.attach_statement == False,  # noqa: E712
        DunningAction.status.in_([ActionStatus.PLANNED.value, ActionStatus.APPROVED.value]))
        .order_by(DunningAction.id).limit(limit))
    handler = _Counter()
    smtp = Controller(handler, hostname="127.0.0.1", port=_free_port())
    smtp.start()
    procs, logs = [], []
    try:
        redis_url_for_workers(settings)
        env = {"ARHUB_SMTP_HOST": "127.0.0.1", "ARHUB_SMTP_PORT": str(smtp.port), "ARHUB_SMTP_SECURITY": "none",
               "ARHUB_LOG_LEVEL": "WARNING"}
        t0 = time.perf_counter()
        logs = [open(settings.var_dir / f"worker-{n}.log", "wb") for n in range(workers)]
        cls = MAIL_WORKER_CLASS if worker_class == "mail" else WORKER_CLASS
        procs = [start_worker_process(["dunning"], settings=settings, env=env, with_scheduler=False,
                                      worker_class=cls, stdout=f, stderr=subprocess.STDOUT) for f in logs]
        queue = get_queue("dunning", settings)
        for proc in procs:
            wait_for_worker(proc, queue.connection, timeout=120)
        log(f"{workers} rq workers up in {time.perf_counter() - t0:.1f} s; SMTP on 127.0.0.1:{smtp.port}")
        started = time.perf_counter()
        enqueued = sum(enqueue_dunning_email(a, queue=queue) is not None for a in actions)
        enqueue_seconds = time.perf_counter() - started
        deadline = started + 120 + enqueued / 5
        final = {ActionStatus.SENT.value, ActionStatus.FAILED.value, ActionStatus.SKIPPED.value}
        seen, progress = 0, time.perf_counter()
        while handler.received < enqueued and time.perf_counter() < deadline:
            time.sleep(0.05)
            if handler.received != seen:
                seen, progress = handler.received, time.perf_counter()
            elif time.perf_counter() - progress > 30:
                log("no email for 30 s: giving up the wait (see the reasons below)")
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("an rq worker exited during the email run")
            if handler.received and int(time.perf_counter() * 4) % 8 == 0:  # now and then: all settled?
                ids = [a.id for a in actions]
                if DunningAction.select().where(DunningAction.id.in_(ids), DunningAction.status.in_(list(final))
                                                ).count() == len(ids):
                    break
        seconds = (handler.last or time.perf_counter()) - started
        time.sleep(0.3)  # let the last job record its outcome
        ids = [a.id for a in actions] or [0]
        statuses = {s: n for s, n in DunningAction.select(DunningAction.status, fn.COUNT(DunningAction.id))
                    .where(DunningAction.id.in_(ids)).group_by(DunningAction.status).tuples()}
        errors = sorted({a.error or a.reason or "" for a in DunningAction.select(DunningAction.error, DunningAction.reason)
                         .where(DunningAction.id.in_(ids), DunningAction.status != ActionStatus.SENT.value)})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        smtp.stop()
        close_embedded(settings)
        for f in logs:
            f.close()
            if handler.received < len(actions):  # say why
                lines = open(f.name, encoding="utf-8", errors="replace").read().splitlines()
                hits = [n for n, line in enumerate(lines) if any(w in line for w in ("rror", "raceback", "not sent"))]
                log("\n".join(line for n in hits[:5] for line in lines[n:n + 25]))
    log(f"emails: {handler.received} received of {enqueued} enqueued in {seconds:.2f} s")
    return {"emails_enqueued": enqueued, "emails_received": handler.received,
            "emails_sent": statuses.get(ActionStatus.SENT.value, 0), "emails_by_status": statuses,
            "emails_not_sent_because": errors[:5],
            "emails_enqueue_seconds": round(enqueue_seconds, 3), "emails_seconds": round(seconds, 3),
            "emails_per_s": round(handler.received / seconds, 1) if seconds > 0 and handler.received else 0.0,
            "email_workers": workers, "email_worker_class": cls}


def _statements(count: int, lines: int, log: Callable[[str], None]) -> dict:
    from jobs.bench_statements import _pages, seed_statement_book, time_in_process
    from middleware import statements as st

    ids = seed_statement_book(count, lines, as_of=AS_OF)
    kwargs = {"as_of": AS_OF, "reporting_currency": "USD"}
    st.warm_up()
    st.render_statement_pdf(ids[0], **kwargs)  # untimed: the first render's caches
    standalone = [st.render_statement_html(cid, **kwargs) for cid in ids]
    timed, pdfs, floor_pdfs = time_in_process(ids, kwargs, standalone)
    (seconds, cpu), (floor_seconds, floor_cpu) = timed["statements"], timed["floor"]
    pages = sorted({_pages(pdf) for pdf in pdfs})
    log(f"statements: {count} in {seconds:.2f} s, floor {floor_seconds:.2f} s")
    return {"statements": count, "statement_lines": lines, "statement_pages": pages,
            "statements_seconds": round(seconds, 3), "statements_per_s": round(count / seconds, 2),
            "statement_floor_per_s": round(count / floor_seconds, 2),
            "statement_floor_ratio": round(seconds / floor_seconds, 3),
            "statement_floor_ratio_cpu": round(cpu / floor_cpu, 3)}


def dunning(*, customers: int, invoices: int, db_kind: str = "sqlite",
            pg_url: str = "postgresql://postgres@127.0.0.1:5432/test", statements: int = 12, emails: int = 2000,
            workers: int = 2, email_worker: str = "mail", log: Callable[[str], None] | None = None) -> dict:
    """Run the bench (see the module docstring) and return its figures."""
    import weasyprint

    from connectors.sandbox.book import Book
    from jobs.bench_salesforce import _scratch_database
    from jobs.bootstrap import bootstrap
    from middleware.dunning import seed_default_campaign
    from middleware.rules import apply_rules, seed_default_rules

    say = log or (lambda message: None)
    load_start = os.getloadavg()[0]
    saved_redis = os.environ.pop("ARHUB_REDIS_URL", None)  # the var dir's embedded Redis: nobody else's queues
    try:
        with tempfile.TemporaryDirectory(prefix="arhub-bench-dunning-") as workdir, \
                _scratch_database(db_kind, pg_url, workdir):
            bootstrap(migrate=True, logging_=False)
            t0 = time.perf_counter()
            book = Book(customers=customers, invoices=invoices, seed=1, as_of=AS_OF, history_days=730)
            say(f"book of {len(book.customers)} customers, {len(book.invoices)} invoices generated in "
                f"{time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            counts = load_book(book)
            del book
            seed_default_rules(actor="bench")
            apply_rules(actor="bench")
            seed_default_campaign()
            load_seconds = time.perf_counter() - t0
            say(f"store loaded in {load_seconds:.1f} s: {counts}")
            days, worst, normal = _plan_days(say)
            figures = {
                "date": date.today().isoformat(),
                "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}, "
                           f"WeasyPrint {weasyprint.__version__}",
                "db": db_kind, "customers": counts["customers"], "invoices": counts["invoices"],
                "open_invoices": counts["open_invoices"], "load_seconds": round(load_seconds, 1),
                "plan_seconds": worst["seconds"], "actions": worst["actions"],
                "plan_day": f"worst day of the week (most actions): {worst['weekday']} {worst['date']}",
                "plan_normal_seconds": normal["seconds"], "normal_actions": normal["actions"],
                "plan_normal_day": f"normal day (median actions): {normal['weekday']} {normal['date']}",
                "plan_days": days,
            }
            if statements:
                figures.update(_statements(statements, 60, say))
            if emails:
                figures.update(_emails(emails, workers, say, email_worker))
    finally:
        if saved_redis is not None:
            os.environ["ARHUB_REDIS_URL"] = saved_redis
    figures["load_avg_1m"] = f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    return figures
