"""``arhub bench statements``: two-page customer statements per second, against WeasyPrint alone.

One run, in a scratch SQLite database under a temporary var dir (or ``--db postgres``):

1. seed ``--count`` customers (locales en_US, de_DE, fr_FR, ja_JP in turn; billing currencies
   USD, EUR, EUR, JPY), each with ``--invoices-per-statement`` open invoices spread over the
   aging buckets, a billing contact, one unapplied credit memo and closing rates into USD;
2. **forked, cold**: each statement rendered in a child process forked from this one, as rq's
   work horse is forked from the worker for every job, with nothing warmed in the parent
   (weasyprint imported, nothing parsed or loaded): ``forked_cold_per_s``;
3. ``warm_up()`` in this process (stylesheet parsed, template compiled, fonts and logo loaded),
   then:

   a. **forked, warm**: the forked pass again: ``forked_warm_per_s``, what a worker gets when
      its parent process calls ``middleware.statements.warm_up()`` before forking (``*_cpu_s_each``:
      the children's own CPU seconds per statement, from ``wait4``);

   and one customer at a time, in a rotating order (so that a change in the shared machine's load,
   or a place in the loop, favours none of them), three in-process paths:

   b. **statements**: ``render_statement_pdf`` in this process, end to end (store reads,
      Jinja2, WeasyPrint): ``statements_per_s``;
   c. **floor**: the standalone HTML that ``render_statement_html`` returns (stylesheet inline,
      logo as a data: URL, built before the clock starts) through a bare
      ``weasyprint.HTML(string=html).write_pdf()``: ``floor_per_s``;
      ``ratio = floor_per_s / statements_per_s`` (≤ 1.2 is the target); ``ratio_cpu`` is the
      same in CPU seconds of this process (less sensitive to other processes on the machine),
      ``statements_per_cpu_s`` the rate per CPU second;
   d. **layout floor** (stricter, for the record): the exact HTML ``render_statement_pdf`` lays
      out, through WeasyPrint with the same parsed stylesheet, font configuration and image
      cache, nothing else: ``layout_floor_per_s``; ``layout_ratio`` is what the store reads and
      the template cost on top of WeasyPrint alone.

Page counts of every PDF are recorded (``pages``, ``floor_pages``), so a layout change that adds
a page shows.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Callable

LOCALES = (("en_US", "USD", "US"), ("de_DE", "EUR", "DE"), ("fr_FR", "EUR", "FR"), ("ja_JP", "JPY", "JP"))
RATES = {"EUR": Decimal("1.0823"), "JPY": Decimal("0.0064"), "GBP": Decimal("1.2650")}


def seed_statement_book(customers: int, invoices_per_customer: int, *, as_of: date,
                        reporting_currency: str = "USD", company: str = "Acme Receivables GmbH") -> list[int]:
    """Seed ``customers`` customers with ``invoices_per_customer`` open invoices each (and a billing
    contact, an unapplied credit memo, closing rates); returns the customer ids. Needs a migrated,
    bound database."""
    from middleware.db import database
    from middleware.models import Company, Contact, CreditMemo, Customer, FxRate, Invoice, Source

    with database.atomic():
        if not Company.select().exists():
            Company.create(name=company, reporting_currency=reporting_currency)
        source, _ = Source.get_or_create(name="bench-statements", defaults={"kind": "rest"})
        FxRate.insert_many(
            [{"base_currency": reporting_currency, "currency": c, "rate_date": as_of - timedelta(days=d),
              "rate": r + Decimal(d) / 10000, "source_name": "bench"} for c, r in RATES.items() for d in (0, 3, 30)]
        ).on_conflict_ignore().execute()
        start = Customer.select().where(Customer.source == source).count()  # the store may hold others
        rows = []
        for i in range(start, start + customers):
            locale, currency, country = LOCALES[i % len(LOCALES)]
            rows.append({"source": source, "external_id": f"C{i:05d}", "number": f"CUST-{i:05d}",
                         "name": f"Customer {i:05d} {country} Trading", "billing_currency": currency,
                         "country": country, "locale": locale, "content_hash": "x"})
        Customer.insert_many(rows).execute()
        ids = [c.id for c in Customer.select(Customer.id, Customer.external_id, Customer.billing_currency)
               .where(Customer.source == source).order_by(Customer.id)][start:]
        by_id = {c.id: c for c in Customer.select().where(Customer.id.in_(ids))}
        contacts, invoices, memos = [], [], []
        for cid in ids:
            cust = by_id[cid]
            contacts.append({"source": source, "external_id": f"{cust.external_id}:billing:0", "customer": cid,
                             "customer_external_id": cust.external_id, "name": "Alex Payable",
                             "email": f"ap-{cid}@example.com", "role": "billing", "content_hash": "x"})
            for n in range(invoices_per_customer):
                due = as_of + timedelta(days=20) - timedelta(days=(n * 137) % 150)
                amount = Decimal(1000 + (n * 7919) % 90000) / (1 if cust.billing_currency == "JPY" else 100)
                open_amount = amount if n % 5 else (amount / 2).quantize(Decimal("0.01"))
                invoices.append({"source": source, "external_id": f"{cust.external_id}-I{n:04d}",
                                 "number": f"INV-{cid:05d}-{n:04d}", "customer": cid,
                                 "customer_external_id": cust.external_id, "currency": cust.billing_currency,
                                 "amount": amount, "open_amount": open_amount, "issue_date": due - timedelta(days=30),
                                 "due_date": due, "po_number": f"PO-{n:05d}" if n % 3 else None,
                                 "content_hash": "x"})
            memos.append({"source": source, "external_id": f"{cust.external_id}-CM", "number": f"CM-{cid:05d}",
                          "customer": cid, "customer_external_id": cust.external_id,
                          "currency": cust.billing_currency, "amount": Decimal("150"),
                          "unapplied_amount": Decimal("150"), "date": as_of - timedelta(days=5), "content_hash": "x"})
        for model, data in ((Contact, contacts), (Invoice, invoices), (CreditMemo, memos)):
            for i in range(0, len(data), 500):
                model.insert_many(data[i:i + 500]).execute()
    return ids


def _pages(pdf: bytes) -> int:
    import io

    from pypdf import PdfReader

    return len(PdfReader(io.BytesIO(pdf)).pages)


def _forked(ids: list[int], kwargs: dict, db_url: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the children) to render each statement in a child forked from
    this process (one after the other, as one rq worker forks one work horse per job); the child
    opens its own database connection."""
    from middleware import statements as st
    from middleware.db import connect

    t0, cpu = time.perf_counter(), 0.0
    for cid in ids:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                connect(db_url)
                st.render_statement_pdf(cid, **kwargs)
                code = 0
            finally:
                os._exit(code)
        _, status, usage = os.wait4(pid, 0)
        if status != 0:
            raise RuntimeError(f"the forked render of customer {cid} failed (status {status})")
        cpu += usage.ru_utime + usage.ru_stime
    return time.perf_counter() - t0, cpu


def time_in_process(ids: list[int], kwargs: dict, standalone: list[str], laid_out: list[str] | None = None
                    ) -> tuple[dict[str, list[float]], list[bytes], list[bytes]]:
    """One customer at a time, ``render_statement_pdf`` (``statements``), the bare
    ``weasyprint.HTML(string=standalone).write_pdf()`` (``floor``) and, with ``laid_out``,
    ``html_to_pdf`` of the exact HTML (``layout``), in a rotating order so that a change in the
    shared machine's load, or a position in the loop, favours none of them. Returns
    ``{path: [wall seconds, CPU seconds]}``, the statement PDFs and the floor PDFs."""
    import weasyprint

    from middleware import statements as st

    timed = {"statements": [0.0, 0.0], "floor": [0.0, 0.0]}
    if laid_out is not None:
        timed["layout"] = [0.0, 0.0]
    pdfs: list[bytes] = []
    floor_pdfs: list[bytes] = []
    for n, cid in enumerate(ids):
        bare, html = standalone[n], laid_out[n] if laid_out is not None else None
        paths = [("statements", lambda: pdfs.append(st.render_statement_pdf(cid, **kwargs))),
                 ("floor", lambda: floor_pdfs.append(weasyprint.HTML(string=bare).write_pdf())),
                 ("layout", lambda: st.html_to_pdf(html))][:len(timed)]
        k = n % len(paths)
        for name, run in paths[k:] + paths[:k]:
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            timed[name][0] += time.perf_counter() - t0
            timed[name][1] += time.process_time() - c0
    return timed, pdfs, floor_pdfs


def statements(*, invoices_per_statement: int = 60, count: int = 30, db_kind: str = "sqlite",
               pg_url: str = "postgresql://postgres@127.0.0.1:5432/test",
               log: Callable[[str], None] | None = None) -> dict:
    """Run the bench (see the module docstring) and return its figures."""
    import weasyprint

    from jobs.bench_salesforce import _scratch_database
    from jobs.bootstrap import bootstrap
    from middleware import statements as st

    log = log or (lambda message: None)
    as_of = date(2026, 11, 30)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="arhub-bench-statements-") as workdir, \
            _scratch_database(db_kind, pg_url, workdir) as db_url:
        bootstrap(migrate=True, logging_=False)
        ids = seed_statement_book(count, invoices_per_statement, as_of=as_of)
        log(f"seeded {count} customers x {invoices_per_statement} invoices ({db_kind})")
        kwargs = {"as_of": as_of, "reporting_currency": "USD"}

        forked_cold, forked_cold_cpu = _forked(ids, kwargs, db_url)
        log(f"forked, nothing warmed in the parent: {count} in {forked_cold:.2f} s")
        t0 = time.perf_counter()
        st.warm_up()
        warmup_seconds = time.perf_counter() - t0
        warm = st.render_statement_pdf(ids[0], **kwargs)

        # the HTML each measured path starts from, built before any clock runs
        standalone = [st.render_statement_html(cid, **kwargs) for cid in ids]
        laid_out = [st._html(st.statement_context(cid, **kwargs), standalone=False) for cid in ids]
        # forked after the warm-up: a pass of its own (a fork makes the parent fault its pages
        # back in afterwards, which would be charged to whatever this process timed next)
        forked_warm, forked_warm_cpu = _forked(ids, kwargs, db_url)
        st.html_to_pdf(laid_out[0])  # untimed: takes the page faults that follow the last fork
        # then one customer at a time, the three in-process paths in a rotating order
        timed, pdfs, floor_pdfs = time_in_process(ids, kwargs, standalone, laid_out)
        (seconds, cpu), (floor_seconds, floor_cpu), (layout_seconds, _) = timed.values()
        log(f"forked after warm_up() in the parent ({warmup_seconds:.2f} s): {count} in {forked_warm:.2f} s")
        log(f"statements: {count} in {seconds:.2f} s")
        log(f"floor (bare weasyprint.HTML(string=html).write_pdf()): {count} in {floor_seconds:.2f} s")
        log(f"layout floor (same HTML, parsed stylesheet, shared caches): {count} in {layout_seconds:.2f} s")
        pages: dict[int, int] = {}
        for pdf in pdfs:
            pages[_pages(pdf)] = pages.get(_pages(pdf), 0) + 1
        floor_pages: dict[int, int] = {}
        for pdf in floor_pdfs:
            floor_pages[_pages(pdf)] = floor_pages.get(_pages(pdf), 0) + 1

    per_s = count / seconds
    floor_per_s = count / floor_seconds
    layout_per_s = count / layout_seconds
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}, "
                   f"WeasyPrint {weasyprint.__version__}",
        "load_avg_1m": f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "db": db_kind,
        "count": count,
        "invoices_per_statement": invoices_per_statement,
        "pages": {str(k): v for k, v in sorted(pages.items())},
        "floor_pages": {str(k): v for k, v in sorted(floor_pages.items())},
        "pdf_kib": round(sum(map(len, pdfs)) / len(pdfs) / 1024, 1),
        "floor_pdf_kib": round(sum(map(len, floor_pdfs)) / len(floor_pdfs) / 1024, 1),
        "warm_pdf_pages": _pages(warm),
        "forked_cold_per_s": round(count / forked_cold, 2),
        "forked_cold_cpu_s_each": round(forked_cold_cpu / count, 3),
        "warm_up_seconds": round(warmup_seconds, 3),
        "forked_warm_per_s": round(count / forked_warm, 2),
        "forked_warm_cpu_s_each": round(forked_warm_cpu / count, 3),
        "statements_cpu_s_each": round(cpu / count, 3),
        "statements_seconds": round(seconds, 3),
        "statements_per_s": round(per_s, 2),
        "statements_per_cpu_s": round(count / cpu, 2),
        "floor_seconds": round(floor_seconds, 3),
        "floor_per_s": round(floor_per_s, 2),
        "ratio": round(floor_per_s / per_s, 3),
        "ratio_cpu": round(cpu / floor_cpu, 3),
        "layout_floor_seconds": round(layout_seconds, 3),
        "layout_floor_per_s": round(layout_per_s, 2),
        "layout_ratio": round(layout_per_s / per_s, 3),
    }
