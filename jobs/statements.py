"""Statement jobs: one customer's PDF into the var dir; a run that enqueues one job per customer.

Thin, as the other jobs: take ids and a date, ``bootstrap()``, call
:mod:`middleware.statements`, let errors propagate (RQ records them).

* :func:`render_statement` writes ``<var_dir>/statements/<as of>/<customer id>.pdf``
  (atomically: a temporary file renamed over it) and returns the path. Rendering the same
  customer and date again rewrites the same file, so a retried job is harmless.
* :func:`statement_run` enqueues :func:`render_statement` on the ``statements`` queue for each
  customer, with the job id ``statement-<as of>-<customer id>`` and rq's ``unique=True``
  (checked and saved atomically in Redis): a rerun for the same date finds the job queued,
  running or finished (results are kept :data:`RESULT_TTL`) and skips it; a failed one is
  requeued.
"""
from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path

from middleware.settings import Settings

QUEUE = "statements"
#: How long a finished statement job is kept, so a rerun of the same date does not render again.
RESULT_TTL = 3 * 24 * 3600
FAILURE_TTL = 7 * 24 * 3600
JOB_TIMEOUT = 300


def as_of_date(as_of: date | str | None, settings: Settings) -> date:
    """``as_of`` as a date; None is today in the company's time zone (``ARHUB_TIMEZONE``)."""
    if as_of is None:
        return datetime.now(settings.tzinfo).date()
    if isinstance(as_of, datetime):
        return as_of.date()
    if isinstance(as_of, date):
        return as_of
    return date.fromisoformat(str(as_of))


def statement_path(settings: Settings, as_of: date, customer_id: int) -> Path:
    return settings.var_dir / "statements" / as_of.isoformat() / f"{customer_id}.pdf"


def job_id(customer_id: int, as_of: date) -> str:
    return f"statement-{as_of.isoformat()}-{customer_id}"


def find_customer(ref: str) -> int:
    """A customer id from a customer number, or from an id; LookupError naming ``ref`` otherwise."""
    from middleware.models import Customer

    matches = list(Customer.select(Customer.id).where(Customer.number == ref).limit(2))
    if len(matches) == 1:
        return matches[0].id
    if len(matches) > 1:
        raise LookupError(f"several customers have the number {ref!r}: give the id instead")
    if ref.isdigit() and Customer.get_or_none(Customer.id == int(ref)) is not None:
        return int(ref)
    raise LookupError(f"no customer with the number or id {ref!r}")


def statement_customer_ids(as_of: date) -> list[int]:
    """Customers (not deleted) with an open invoice issued on or before ``as_of``."""
    from middleware.models import Customer, Invoice

    query = (Invoice.select(Invoice.customer).distinct()
             .join(Customer, on=(Invoice.customer == Customer.id))
             .where((Invoice.status == "open") & (Invoice.open_amount > 0) & Invoice.deleted_at.is_null()
                    & (Invoice.issue_date <= as_of) & Customer.deleted_at.is_null())
             .order_by(Invoice.customer))
    return [cid for (cid,) in query.tuples()]


def write_statement(customer_id: int, as_of: date, settings: Settings, out: str | os.PathLike | None = None) -> Path:
    """Render and write the PDF (to ``out``, default :func:`statement_path`) atomically."""
    from middleware.statements import render_statement_pdf

    pdf = render_statement_pdf(customer_id, as_of=as_of, reporting_currency=settings.reporting_currency)
    path = Path(out) if out is not None else statement_path(settings, as_of, customer_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(pdf)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------ RQ jobs
def render_statement(customer_id: int, as_of: date | str | None = None) -> str:
    """RQ job: the statement of ``customer_id`` on ``as_of`` (default today) as a PDF in the var dir."""
    from jobs.bootstrap import bootstrap

    ctx = bootstrap()
    return str(write_statement(customer_id, as_of_date(as_of, ctx.settings), ctx.settings))


def statement_run(customer_ids: list[int] | None = None, as_of: date | str | None = None) -> dict:
    """RQ job (and ``arhub statements run``): one :func:`render_statement` job per customer on the
    ``statements`` queue (default: every customer with an open invoice). A rerun for the same date
    enqueues nothing twice."""
    from rq.exceptions import DuplicateJobError, NoSuchJobError
    from rq.job import Job, JobStatus

    from jobs.bootstrap import bootstrap

    ctx = bootstrap()
    day = as_of_date(as_of, ctx.settings)
    ids = sorted(set(customer_ids)) if customer_ids is not None else statement_customer_ids(day)
    queue = ctx.queue(QUEUE)
    counts = {"enqueued": 0, "requeued": 0, "skipped": 0}
    for cid in ids:
        jid = job_id(cid, day)
        for _attempt in range(2):  # the existing job may expire between the refusal and the fetch
            try:
                queue.enqueue(render_statement, cid, day.isoformat(), job_id=jid, unique=True,
                              result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, job_timeout=JOB_TIMEOUT,
                              description=f"statement of customer {cid} on {day.isoformat()}")
                counts["enqueued"] += 1
                break
            except DuplicateJobError:
                try:
                    job = Job.fetch(jid, connection=queue.connection)
                except NoSuchJobError:
                    continue
                if job.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                    job.requeue()
                    counts["requeued"] += 1
                else:
                    counts["skipped"] += 1
                break
    return {"as_of": day.isoformat(), "customers": len(ids), **counts}
