"""ERP → store sync against the Xero REST emulator over real HTTP, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from connectors.sandbox import xero
from connectors.sandbox.book import Address, Book
from connectors.sandbox.faults import Fault
from jobs.sync import load_preset, make_connector, run_sync
from middleware.models import Application, Contact, Customer, Invoice, Payment, RejectedRecord, Source, SyncCursor
from middleware.sources import configure_source



def add_xero_source(sandbox, page_size: int | None = None) -> Source:
    preset = load_preset("xero")
    if page_size is not None:
        preset["connection"]["pagination"]["size"] = page_size
    return configure_source("xero", preset, endpoint=sandbox.xero_url + "/api.xro/2.0",
                            credentials=dict(xero.SANDBOX_CREDENTIALS, token_url=sandbox.xero_url + "/connect/token"))


@pytest.fixture
def source(db, sandbox):
    return add_xero_source(sandbox)


def sync(source, sleeps: list | None = None, **kwargs):
    connector = make_connector(Source.get_by_id(source.id), sleep=(sleeps.append if sleeps is not None else lambda s: None))
    if sleeps is not None:  # the connector's waits are seen here only if it pages in this process
        kwargs.setdefault("prepare", "thread")
    try:
        return run_sync(source.name, connector=connector, **kwargs)
    finally:
        connector.close()


def by_number(book: Book) -> dict:
    return {inv.number: inv for inv in book.invoices.values()}


def assert_store_matches_book(book: Book, skip_customers: set[int] = frozenset()) -> None:
    truth = by_number(book)
    expected = {n for n, inv in truth.items() if inv.customer_id not in skip_customers}
    stored = {inv.number: inv for inv in Invoice.select().where(Invoice.deleted_at.is_null())}
    assert set(stored) == expected
    for number, inv in stored.items():
        t = truth[number]
        assert inv.amount == t.total, number
        assert inv.open_amount == t.amount_due, number  # payments and credit notes applied
        assert inv.status == t.status, number
        assert (inv.issue_date, inv.due_date) == (t.issue_date, t.due_date), number  # from /Date(ms+0000)/
        assert inv.currency == t.currency, number


def test_full_sync_matches_the_xero_book(source, sandbox):
    """A first Xero sync lands every contact and invoice with the book's open amounts, dates and currencies
    (JPY whole), contacts with their escalation persons; a re-run says nothing changed."""
    book = sandbox.book
    run = sync(source)
    assert run.status == "succeeded", run.errors
    assert Customer.select().count() == len(book.customers)
    # every Xero contact in the emulator is a customer (IsCustomer=true): the supplier filter drops none
    assert run.objects["customer"].get("skipped", 0) == 0
    assert_store_matches_book(book)
    assert Payment.select().count() == sum(len(p.applications) for p in book.payments.values())
    jpy = [i for i in Invoice.select().where(Invoice.currency == "JPY")]
    assert jpy and all(i.amount == i.amount.to_integral_value() for i in jpy)
    assert any(0 < t.amount_due < t.total for t in book.invoices.values()), "the book has partly paid invoices"
    assert any(t.amount_credited > 0 for t in book.invoices.values()), "the book has credited invoices"
    escalation = {(c.customer.number, c.email) for c in Contact.select().where(Contact.role == "escalation")}
    expected = {(cust.number, p.email.lower()) for cust in book.customers.values()
                for p in cust.contacts if p.role == "escalation"}
    assert expected and escalation == expected
    billing = {c.customer.number: c.email for c in Contact.select().where(Contact.role == "billing")}
    assert billing == {cust.number: cust.email.lower() for cust in book.customers.values() if cust.email}
    again = sync(source)
    assert (again.created, again.updated, again.rejected, again.deleted) == (0, 0, 0, 0)
    assert again.message == "nothing changed"
    assert again.status == "succeeded"


def test_rate_limited_request_is_retried_after_retry_after(source, sandbox):
    """A 429 with Retry-After on the invoices is waited out (for the time Xero asked) and everything still lands."""
    sandbox.faults.push(Fault(status=429, retry_after=1, path="Invoices"))
    sleeps: list[float] = []
    run = sync(source, sleeps=sleeps)
    assert run.status == "succeeded", run.errors
    assert sleeps == [1.0]
    assert not sandbox.faults.queue, "the 429 was served"
    assert_store_matches_book(sandbox.book)


def test_malformed_page_records_the_error_and_keeps_the_invoice_cursor(db, sandbox):
    """Malformed JSON on the second invoice page fails the invoice object with an error naming it, its cursor
    stays where it was, the other objects move on, and the next run lands everything."""
    source = add_xero_source(sandbox, page_size=200)  # 600 invoices: three pages
    first = sync(source)
    assert first.status == "succeeded", first.errors
    cursors = {c.object_name: c.cursor for c in SyncCursor.select()}
    sandbox.book.modify_invoices(450, now=None)  # 450 changed invoices: pages of 200 again
    sandbox.faults.push(Fault(body="malformed", path="Invoices", after=1))
    broken = sync(source)
    assert broken.status == "partial"
    errors = [e for e in broken.errors if "error" in e]
    assert [e["object"] for e in errors] == ["invoice"]
    assert "invoice" in errors[0]["error"] and "not valid JSON" in errors[0]["error"]
    assert broken.objects["invoice"]["fetched"] == 200  # page 1 was processed and committed ...
    assert broken.objects["invoice"]["updated"] == 200
    after = {c.object_name: c.cursor for c in SyncCursor.select()}
    assert after["invoice"] == cursors["invoice"]  # ... but the cursor did not move past page 2
    assert broken.cursor_after["invoice"] == broken.cursor_before["invoice"]
    assert "error" not in broken.objects["payment"] and broken.objects["payment"]["fetched"] > 0
    healed = sync(source)
    assert healed.status == "succeeded", healed.errors
    assert healed.objects["invoice"]["fetched"] >= 450
    assert_store_matches_book(sandbox.book)
    # blank references are stored as no value
    assert {i.po_number for i in Invoice.select()} == {i.po_number or None for i in sandbox.book.invoices.values()}


def test_an_invoice_deleted_in_xero_ends_deleted_with_nothing_open(source, sandbox):
    """After a first sync, an invoice deleted in Xero comes back as DELETED: status deleted, open amount 0."""
    sync(source)
    book = sandbox.book
    victim = next(inv for _, inv in sorted(book.invoices.items()) if inv.status == "open" and inv.amount_paid == 0)
    before = Invoice.get(Invoice.number == victim.number)
    assert before.open_amount == victim.total > 0
    book.delete("invoice", victim.id)
    run = sync(source)
    assert run.deleted == 1, run.objects
    gone = Invoice.get(Invoice.number == victim.number)
    assert (gone.status, gone.open_amount) == ("deleted", 0)
    assert gone.deleted_at is not None
    assert_store_matches_book(book)


def test_an_unknown_currency_is_rejected_by_field_while_other_invoices_land(source, sandbox):
    """A customer and its invoices in 'XYZ' are rejected naming the currency field and ISO 4217; the rest lands."""
    book = sandbox.book
    with book.lock:
        cust = next(c for _, c in sorted(book.customers.items()) if book.customer_invoices(c.id))
        cust.currency = "XYZ"
        bad = book.customer_invoices(cust.id)
        for inv in bad:
            inv.currency = "XYZ"
        book._touch("customer")
        book._touch("invoice")
    bad_ids = {xero.xero_id("invoice", inv.id) for inv in bad}
    run = sync(source)
    assert run.status == "partial"
    rejects = {r.external_id: r for r in RejectedRecord.select().where(RejectedRecord.object_name == "invoice")}
    assert set(rejects) == bad_ids
    for rej in rejects.values():
        reasons = {r["field"]: r["message"] for r in rej.reasons}
        assert "ISO 4217" in reasons["currency"], rej.reasons
        assert rej.raw["CurrencyCode"] == "XYZ"
    customer_reject = RejectedRecord.get(RejectedRecord.object_name == "customer")
    assert customer_reject.external_id == xero.xero_id("customer", cust.id)
    assert any(r["field"] == "billing_currency" and "ISO 4217" in r["message"] for r in customer_reject.reasons)
    assert_store_matches_book(book, skip_customers={cust.id})
    assert Invoice.select().where(Invoice.currency == "XYZ").count() == 0
    assert Application.select().count() > 0


def test_billing_addresses_land_from_the_pobox_address_and_a_move_is_an_update(source, sandbox):
    """Every contact's POBOX address (Addresses[AddressType=POBOX]: AddressLine1-4, City, Region,
    PostalCode, Country) lands as the customer's billing address; a new address in Xero is an
    update of that one customer on the next sync."""
    book = sandbox.book
    assert sync(source).status == "succeeded"
    stored = {c.number: c.billing_address for c in Customer.select()}
    expected = {}
    for cust in book.customers.values():
        a = cust.address
        expected[cust.number] = {"lines": list(a.lines) if a else [], **{k: v for k, v in (
            ("city", a and a.city), ("region", a and a.region), ("postal_code", a and a.postal_code),
            ("country", cust.country)) if v}}
    assert stored == expected
    assert any(not a["lines"] for a in stored.values()) and any(len(a["lines"]) > 1 for a in stored.values())
    cust = next(c for c in book.customers.values() if c.address is not None and c.country in ("AU", "NZ") and not c.inactive)
    book.move_customer(cust.id, Address(("Level 3", "1 Queen Street"), "Auckland", "", "1010"),
                       datetime.now(timezone.utc) + timedelta(seconds=1))
    run = sync(source)
    assert run.status == "succeeded" and run.objects["customer"]["updated"] == 1, run.objects
    assert Customer.get(Customer.number == cust.number).billing_address == {
        "lines": ["Level 3", "1 Queen Street"], "city": "Auckland", "postal_code": "1010", "country": cust.country}


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_first_load_refreshes_postgresql_statistics_and_an_unchanged_rerun_leaves_them(source, sandbox):
    """PostgreSQL plans on the statistics of an empty table until something analyzes it (autovacuum,
    when the server runs it). A first sync analyzes the tables it filled, so its own finishing pass and
    the console's first queries are planned on the real row counts; a re-run that changed nothing does
    not analyze again."""
    from middleware.db import database

    def planner_rows() -> dict[str, float]:
        return dict(database.execute_sql(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('customer', 'invoice', 'payment', "
            "'application') AND relkind = 'r'").fetchall())

    def analyses() -> dict[str, int]:
        return dict(database.execute_sql(
            "SELECT relname, analyze_count FROM pg_stat_user_tables WHERE relname IN ('invoice', 'customer')").fetchall())

    assert planner_rows()["invoice"] <= 0  # a fresh table: never analyzed (-1) or empty
    assert sync(source).status == "succeeded"
    rows = planner_rows()
    assert rows["invoice"] == Invoice.select().count() > 0
    assert rows["customer"] == Customer.select().count() > 0
    assert rows["application"] == Application.select().count() > 0
    before = analyses()
    again = sync(source)
    assert again.message == "nothing changed"
    assert analyses() == before
