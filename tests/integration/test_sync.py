"""ERP → store sync against the NetSuite SOAP emulator over real HTTP, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from connectors.sandbox.book import Address
from connectors.sandbox.faults import Fault
from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS
from jobs.sync import load_preset, make_connector, run_sync
from middleware import fx
from middleware.models import (
    Application, Contact, CreditMemo, Customer, FieldMapping, FxRate, Invoice, Payment, RejectedRecord, Source, SyncCursor,
)
from middleware.sources import configure_source



@pytest.fixture
def source(db, sandbox):
    return configure_source("netsuite", load_preset("netsuite-2023_2"),
                            endpoint=sandbox.netsuite_url + "/services/NetSuitePort_2023_2",
                            credentials=SANDBOX_CREDENTIALS)


def sync(source, **kwargs):
    connector = make_connector(Source.get_by_id(source.id), sleep=lambda s: None)
    try:
        return run_sync(source.name, connector=connector, **kwargs)
    finally:
        connector.close()


def store_snapshot():
    """What a user sees of the store: every invoice's open amount and status, payments, applications."""
    return (
        sorted((i.external_id, str(i.open_amount), i.status, str(i.amount_reporting)) for i in Invoice.select()),
        sorted((p.external_id, str(p.amount), str(p.unapplied_amount)) for p in Payment.select()),
        sorted((a.doc_external_id, a.invoice_external_id, str(a.amount)) for a in Application.select()),
        sorted((c.external_id, c.name, c.parent_external_id) for c in Customer.select()),
    )


def test_full_sync_matches_the_erp_book(source, sandbox):
    """A first sync lands every customer, invoice, payment and rate with the ERP's amounts; a re-run changes nothing."""
    book = sandbox.book
    run = sync(source)
    assert run.status == "succeeded", run.errors
    assert Customer.select().count() == len(book.customers)
    assert Invoice.select().count() == len(book.invoices)
    assert Payment.select().count() == len(book.payments)
    for inv in Invoice.select():
        truth = book.invoices[int(inv.external_id)]
        assert inv.amount == truth.total, inv.number
        assert inv.open_amount == truth.amount_due, inv.number  # payments and credits applied
        assert inv.status == truth.status
        assert inv.due_date == truth.due_date
    jpy = Invoice.select().where(Invoice.currency == "JPY").first()
    assert jpy.amount == jpy.amount.to_integral_value()
    # reporting amount at the invoice-date rate, rounded half up to cents
    truth = book.invoices[int(jpy.external_id)]
    assert jpy.amount_reporting == (truth.total * book.rate("JPY", truth.issue_date)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    overpaid = [p for p in book.payments.values() if p.unapplied > 0]
    assert overpaid, "the book has overpayments"
    for p in overpaid:
        assert Payment.get(Payment.external_id == str(p.id)).unapplied_amount == p.unapplied
    names = {c.name for c in Customer.select()}
    assert any("'" in n for n in names) and any(not n.isascii() for n in names)
    children = [c for c in book.customers.values() if c.parent_id]
    for child in children:
        assert Customer.get(Customer.external_id == str(child.id)).parent.external_id == str(child.parent_id)
    assert Contact.select().where(Contact.role == "escalation").count() > 0
    again = sync(source)
    assert (again.created, again.updated, again.rejected) == (0, 0, 0)
    assert again.message == "nothing changed"


def test_incremental_sync_takes_only_changes_and_moves_the_cursor(source, sandbox):
    """After a change in the ERP, the next sync fetches only changed records and advances each cursor past its commit."""
    sync(source)
    before = SyncCursor.get(SyncCursor.object_name == "invoice").cursor
    changed = sandbox.book.modify_invoices(25, now=datetime.now(timezone.utc))
    run = sync(source)
    assert run.objects["invoice"]["fetched"] == 25
    assert run.objects["invoice"]["updated"] == 25
    assert SyncCursor.get(SyncCursor.object_name == "invoice").cursor >= before
    for inv_id in changed:
        truth = sandbox.book.invoices[inv_id]
        inv = Invoice.get(Invoice.external_id == str(inv_id))
        assert inv.po_number == truth.po_number
        assert inv.open_amount == truth.amount_due


def test_voids_and_deletions_close_invoices(source, sandbox):
    """A voided invoice and one deleted in the ERP (getDeleted) no longer count as open."""
    sync(source)
    open_ids = [i for i, inv in sandbox.book.invoices.items() if inv.status == "open" and inv.amount_paid == 0]
    voided, deleted = open_ids[0], open_ids[1]
    sandbox.book.void_invoice(voided)
    sandbox.book.delete("invoice", deleted)
    run = sync(source)
    assert run.deleted == 1
    v = Invoice.get(Invoice.external_id == str(voided))
    d = Invoice.get(Invoice.external_id == str(deleted))
    assert (v.status, v.open_amount) == ("voided", 0)
    assert (d.status, d.open_amount) == ("deleted", 0) and d.deleted_at is not None


def test_bad_records_are_rejected_by_name_and_field_while_good_ones_land(source, sandbox):
    """A negative amount and a due date before the issue date are kept with their raw payload; the rest lands."""
    book = sandbox.book
    bad_amount, bad_dates = sorted(book.invoices)[3], sorted(book.invoices)[4]
    book.invoices[bad_amount].total = Decimal("-120.00")
    inv = book.invoices[bad_dates]
    inv.due_date = inv.issue_date - timedelta(days=3)
    book._touch("invoice")
    run = sync(source)
    assert run.status == "partial"
    assert run.rejected == 2
    assert Invoice.select().count() == len(book.invoices) - 2
    rejects = {r.external_id: r for r in RejectedRecord.select()}
    assert rejects[str(bad_amount)].reasons[0]["field"] == "amount"
    assert "negative" in rejects[str(bad_amount)].reasons[0]["message"]
    assert rejects[str(bad_dates)].reasons[0]["field"] == "due_date"
    assert rejects[str(bad_dates)].raw["tranId"] == inv.number  # the raw payload is kept


def test_failure_midway_keeps_the_cursor_and_a_restart_converges(source, sandbox, db):
    """A pull that dies on page 2 records the error, leaves the cursor, and the re-run ends with the full store."""
    sandbox.faults.push(Fault(status=503, path="NetSuitePort", after=4), *[Fault(status=503, path="NetSuitePort")] * 6)
    failed = sync(source)
    assert failed.status in ("failed", "partial")
    failed_objects = [e["object"] for e in failed.errors if "error" in e]
    assert failed_objects, failed.errors
    for name in failed_objects:
        cursor = SyncCursor.get_or_none(SyncCursor.object_name == name)
        assert cursor is None or cursor.cursor is None
    sandbox.faults.clear()
    ok = sync(source)
    assert ok.status == "succeeded", ok.errors
    interrupted = store_snapshot()
    for model in (Application, Payment, CreditMemo, Invoice, Contact, Customer):
        model.delete().execute()
    SyncCursor.delete().execute()
    clean = sync(source)
    assert clean.status == "succeeded"
    assert store_snapshot() == interrupted


def test_duplicates_in_a_page_are_stored_once(source, sandbox):
    """The same record twice in one page lands once, and the run says it saw a duplicate."""
    sandbox.faults.push(Fault(body="duplicate", path="NetSuitePort", after=2))
    run = sync(source)
    assert sum(o.get("duplicates", 0) for o in run.objects.values()) == 1
    assert any("came twice" in e.get("warning", "") for e in run.errors)
    assert Invoice.select().count() == len(sandbox.book.invoices)


def test_a_mapping_that_matches_nothing_or_cannot_work_is_reported(source, sandbox):
    """A path that matches nothing is a warning naming it; an unknown transform fails that object, not the run."""
    FieldMapping.update(source_path="otherRefNumTypo").where(FieldMapping.canonical_field == "po_number").execute()
    FieldMapping.update(transform="no_such_transform").where(
        (FieldMapping.object_name == "credit_memo") & (FieldMapping.canonical_field == "reason")).execute()
    run = sync(source)
    assert any("otherRefNumTypo" in e.get("warning", "") for e in run.errors)
    errors = [e for e in run.errors if e.get("object") == "credit_memo" and "error" in e]
    assert errors and "reason" in errors[0]["error"] and "no_such_transform" in errors[0]["error"]
    assert Invoice.select().count() == len(sandbox.book.invoices)
    assert run.status == "partial"


def test_missing_fx_rate_flags_documents_until_a_rate_arrives(source, sandbox, tmp_path):
    """Without an AUD rate, AUD invoices are flagged, never converted at 1; importing a rate file converts them."""
    FieldMapping.update(enabled=False).where(FieldMapping.object_name == "fx_rate").execute()
    sync(source, objects=["customer", "invoice"])
    aud = Invoice.select().where(Invoice.currency == "AUD")
    assert aud.count() > 0
    assert all(i.fx_missing and i.amount_reporting is None for i in aud)
    assert Invoice.select().where((Invoice.currency == "USD") & Invoice.fx_missing).count() == 0
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate\n2020-01-01,AUD,0.65\n2020-01-01,EUR,1.1\n2020-01-01,GBP,1.3\n"
                     "2020-01-01,JPY,0.0068\n")
    count, currencies = fx.import_file(str(rates), "USD")
    assert count == 4 and "AUD" in currencies
    for inv in Invoice.select().where(Invoice.currency == "AUD"):
        assert not inv.fx_missing
        assert inv.amount_reporting == (inv.amount * Decimal("0.65")).quantize(Decimal("0.01"), ROUND_HALF_UP)
        assert inv.fx_rate_source == "file:rates.csv"
    assert FxRate.select().count() == 4


def test_unsafe_xml_and_bad_credentials_end_as_errors_on_the_run(source, sandbox):
    """A response with an external entity and a 401 each fail their object with a clear error; nothing leaks."""
    sandbox.faults.push(Fault(body="external_entity", path="NetSuitePort", after=2))
    run = sync(source, objects=["fx_rate", "customer"])
    errors = [e for e in run.errors if "error" in e]
    assert [e["object"] for e in errors] == ["customer"]
    assert "UnsafeXml" in errors[0]["error"]
    assert "root:" not in str(run.errors)  # /etc/passwd was never read
    assert SyncCursor.get_or_none(SyncCursor.object_name == "customer") is None
    src = Source.get_by_id(source.id)
    bad = configure_source("netsuite", load_preset("netsuite-2023_2"), endpoint=src.endpoint,
                           credentials=dict(SANDBOX_CREDENTIALS, token_secret="wrong"))
    run = sync(bad, objects=["customer"])
    assert run.status == "failed"
    assert "AuthError" in run.errors[0]["error"]
    assert "wrong" not in str(run.errors)  # the secret is not echoed


def test_the_sync_job_runs_in_a_real_rq_worker(source, sandbox, settings, redis_url, start_rq_worker, wait_until):
    """``jobs.sync.sync_erp`` enqueued on the sync queue is run by a real worker process into the same store."""
    from jobs.queues import get_queue

    start_rq_worker(queues=["sync"])
    job = get_queue("sync", settings).enqueue("jobs.sync.sync_erp", "netsuite", job_timeout=300)
    wait_until(lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout=120, message="sync job")
    assert job.get_status() == "finished", job.latest_result().exc_string if job.latest_result() else job
    assert job.return_value()["status"] == "succeeded"
    assert Invoice.select().count() == len(sandbox.book.invoices)


def test_a_source_syncs_in_one_process_at_a_time(source, sandbox, tmp_path):
    """While one process syncs a source, a second sync of it is refused with a clear error and changes nothing."""
    import subprocess
    import sys
    import textwrap

    from middleware.locks import exclusive
    from middleware.sync import SyncAlreadyRunning

    holder = tmp_path / "hold.py"
    holder.write_text(textwrap.dedent(f"""
        import sys, time
        from middleware.db import connect
        from middleware.locks import exclusive
        connect({settings_url()!r})
        with exclusive("sync-{source.id}"):
            print("locked", flush=True)
            time.sleep(30)
    """))
    proc = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(SyncAlreadyRunning, match="already syncing"):
            sync(source)
        assert Invoice.select().count() == 0
    finally:
        proc.kill()
        proc.wait()
    with exclusive(f"sync-{source.id}"):  # released when its holder died
        pass
    assert sync(source).status == "succeeded"


def settings_url() -> str:
    from middleware.settings import get_settings

    return get_settings().database_url


def test_rejected_records_are_reprocessed_after_the_mapping_is_fixed(source, sandbox):
    """Invoices rejected by a broken mapping land from their kept payloads once the mapping is fixed; rejects resolve."""
    from click.testing import CliRunner

    from jobs.cli import main

    FieldMapping.update(source_path="dueDateTypo").where(FieldMapping.canonical_field == "due_date").execute()
    broken = sync(source)
    assert broken.rejected == len(sandbox.book.invoices)
    assert Invoice.select().count() == 0
    listed = CliRunner().invoke(main, ["sync", "rejects", "--limit", "5"])
    assert "due_date" in listed.output and "Missing data for required field" in listed.output
    FieldMapping.update(source_path="dueDate").where(FieldMapping.canonical_field == "due_date").execute()
    result = CliRunner().invoke(main, ["sync", "reprocess", "--source", "netsuite"])
    assert result.exit_code == 0, result.output
    assert Invoice.select().count() == len(sandbox.book.invoices)
    for inv in Invoice.select():
        assert inv.open_amount == sandbox.book.invoices[int(inv.external_id)].amount_due
    assert RejectedRecord.select().where(RejectedRecord.resolved_at.is_null()).count() == 0
    assert "due_date" not in CliRunner().invoke(main, ["sync", "rejects"]).output  # nothing left to show


def test_a_rejection_resolves_when_the_record_later_lands(source, sandbox):
    """A record rejected once and corrected in the ERP lands on the next sync and its rejection is resolved."""
    book = sandbox.book
    bad = sorted(book.invoices)[5]
    good_total = book.invoices[bad].total
    book.invoices[bad].total = Decimal("-1.00")
    book._touch("invoice")
    sync(source)
    assert RejectedRecord.get(RejectedRecord.external_id == str(bad)).resolved_at is None
    book.invoices[bad].total = good_total
    book.invoices[bad].modified = datetime.now(timezone.utc)
    book._touch("invoice")
    sync(source)
    assert Invoice.get(Invoice.external_id == str(bad)).amount == good_total
    assert RejectedRecord.get(RejectedRecord.external_id == str(bad)).resolved_at is not None


def test_documents_link_to_a_customer_that_arrives_in_a_later_run(source, sandbox):
    """Invoices synced before their customer (the customer failed first) link to it once it lands."""
    book = sandbox.book
    cust_id = book.invoices[sorted(book.invoices)[0]].customer_id
    name = book.customers[cust_id].name
    book.customers[cust_id].currency = "XYZ"  # rejected: not an ISO 4217 code
    book._touch("customer")
    sync(source)
    orphans = Invoice.select().where(Invoice.customer_external_id == str(cust_id))
    assert orphans.count() > 0 and all(i.customer is None for i in orphans)
    book.customers[cust_id].currency = book.invoices[sorted(book.invoices)[0]].currency
    book.customers[cust_id].modified = datetime.now(timezone.utc)
    book._touch("customer")
    sync(source)
    linked = Invoice.select().where(Invoice.customer_external_id == str(cust_id))
    assert all(i.customer is not None and i.customer.name == name for i in linked)


def expected_address(cust) -> dict | None:
    """The canonical billing address of a book customer (NetSuite: addr1-3, city, state, zip, country)."""
    a = cust.address
    if a is None:
        return {"lines": [], "country": cust.country}  # the default billing address still has its country
    return {"lines": list(a.lines), **{k: v for k, v in (("city", a.city), ("region", a.region),
                                                        ("postal_code", a.postal_code), ("country", cust.country)) if v}}


def test_billing_addresses_land_and_a_move_is_an_update(source, sandbox):
    """Every customer's default billing address (addressbookList.addressbook[defaultBilling=true])
    lands as {lines, city, region, postal_code, country}, unicode kept; a new address in the ERP is
    an update on the next sync (it is part of the change hash), and only that customer changes."""
    book = sandbox.book
    assert sync(source).status == "succeeded"
    stored = {c.external_id: c.billing_address for c in Customer.select()}
    assert stored == {str(c.id): expected_address(c) for c in book.customers.values()}
    assert any(len((a or {}).get("lines", [])) == 3 for a in stored.values())
    assert any(a and not "".join(a.get("lines", [])).isascii() for a in stored.values())
    cust = next(c for c in book.customers.values() if c.address is not None and c.country == "DE")
    moved = Address(("Kaiserstraße 7", "Hinterhaus"), "Frankfurt am Main", "Hessen", "60311")
    book.move_customer(cust.id, moved, datetime.now(timezone.utc) + timedelta(seconds=1))
    run = sync(source)
    assert run.status == "succeeded" and run.objects["customer"]["updated"] == 1, run.objects
    assert Customer.get(Customer.external_id == str(cust.id)).billing_address == {
        "lines": ["Kaiserstraße 7", "Hinterhaus"], "city": "Frankfurt am Main", "region": "Hessen",
        "postal_code": "60311", "country": "DE"}
