"""ERP → store → Salesforce and back, against the Salesforce emulator over HTTPS (trustme CA),
through simple-salesforce and our connector, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
import requests
from simple_salesforce import Salesforce

from connectors.sandbox import xero
from connectors.sandbox.book import Book
from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS, Org, SalesforceServer
from connectors.sandbox.server import SandboxServer
from jobs.salesforce import make_salesforce_connector
from jobs.sync import load_preset, make_connector, run_sync
from middleware.ar import customer_snapshots
from middleware.models import Customer, Invoice, SfAccount, SfOpportunity, SfPushState, SfUser, Source
from middleware.sf_sync import SalesforceSync, check
from middleware.sources import configure_salesforce, configure_source

AS_OF = date(2026, 11, 1)


@pytest.fixture(scope="module")
def book():
    return Book(80, 800, seed=11, as_of=AS_OF)


@pytest.fixture
def erp(db, book):
    """The ERP book synced into the store through the Xero emulator."""
    with SandboxServer(book) as sandbox:
        source = configure_source("xero", load_preset("xero"), endpoint=sandbox.xero_url + "/api.xro/2.0",
                                  credentials=dict(xero.SANDBOX_CREDENTIALS,
                                                   token_url=sandbox.xero_url + "/connect/token"))
        connector = make_connector(Source.get_by_id(source.id), sleep=lambda s: None)
        try:
            run = run_sync("xero", connector=connector)
        finally:
            connector.close()
        assert run.status in ("succeeded", "partial"), run.errors
    return source


@pytest.fixture
def org_server(book):
    with SalesforceServer(Org.from_book(book, seed=5)) as server:
        yield server


def add_salesforce(server, *, auth="password", **push) -> Source:
    preset = load_preset("salesforce")
    preset["push"].update(push)
    return configure_salesforce("salesforce", preset, connection={"login_url": server.url, "ca_bundle": server.ca_file,
                                                                  "auth": auth},
                                credentials=dict(SANDBOX_CREDENTIALS))


def run_sf(source, *, pull=True, push=True, full=False, connector=None):
    source = Source.get_by_id(source.id)
    own = connector is None
    connector = connector or make_salesforce_connector(source, sleep=lambda s: None)
    try:
        return SalesforceSync(source, connector, reporting_currency="USD", public_url="https://arhub.example.com",
                              now=None).run(pull=pull, push=push, full=full), connector
    finally:
        if own:
            connector.close()


def org_records(server, soql: str) -> list[dict]:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override session.verify
    session.verify = server.ca_file
    sf = Salesforce(instance_url=server.url, session_id=server.token(), session=session)
    return sf.query_all(soql)["records"]


def test_pull_reads_users_accounts_contacts_opportunities_and_links_customers(erp, org_server):
    """A first run reads every user, account and opportunity, links ERP customers to accounts
    (external id first, then names), and tags strategic accounts."""
    sf_source = add_salesforce(org_server)
    run, _ = run_sf(sf_source, push=False)
    assert run.status == "succeeded", run.errors
    org = org_server.org
    assert SfAccount.select().count() == len(org.tables["Account"])
    assert SfUser.select().count() == len(org.tables["User"])
    assert SfOpportunity.select().count() == len(org.tables["Opportunity"])
    truth = org.seed_truth["accounts"]  # customer number → expected account id (None: no account)
    linked = {c.number: c.sf_account_id for c in Customer.select() if c.sf_account_id}
    right = sum(1 for number, sf_id in linked.items() if truth.get(number) == sf_id)
    wrong = [(n, sf_id, truth.get(n)) for n, sf_id in linked.items() if truth.get(n) not in (None, sf_id)]
    assert not wrong, f"customers linked to the wrong account: {wrong[:5]}"
    expected = sum(1 for sf_id in truth.values() if sf_id)
    assert right >= 0.9 * expected, f"only {right} of {expected} customers linked"
    assert run.api_calls >= 4  # one query per sObject at least, counted from Sforce-Limit-Info
    assert "accounts" in run.objects and run.objects["accounts"]["fetched"] == len(org.tables["Account"])


def test_push_writes_one_summary_per_linked_customer_and_one_record_per_open_invoice(erp, org_server):
    """After pull and match, each linked customer has an AR_Summary__c on its account with the
    store's figures, and each open invoice an AR_Invoice__c; a second run sends nothing."""
    sf_source = add_salesforce(org_server)
    run, _ = run_sf(sf_source)
    assert run.status == "succeeded", (run.message, run.errors)
    linked = list(Customer.select().where(Customer.sf_account_id.is_null(False)))
    summaries = {r["ARHub_Key__c"]: r for r in org_records(
        org_server, "SELECT ARHub_Key__c, Account__c, Open_Balance__c, Overdue_Balance__c, Open_Invoice_Count__c, "
                    "Billing_Currency__c, Aging_91_Plus__c, Console_URL__c FROM AR_Summary__c")}
    assert len(summaries) == len(linked)
    snaps = customer_snapshots([c.id for c in linked], as_of=date.today(), reporting_currency="USD")
    for customer in linked[:20]:
        row = summaries[f"xero:{customer.external_id}"]
        assert row["Account__c"] == customer.sf_account_id
        snap = snaps.get(customer.id)
        expected_open = snap.open_reporting if snap else Decimal(0)
        assert Decimal(str(row["Open_Balance__c"])) == expected_open.quantize(Decimal("0.01"))
        assert row["Open_Invoice_Count__c"] == (snap.open_count if snap else 0)
        assert row["Console_URL__c"] == f"https://arhub.example.com/customers/{customer.id}"
    open_invoices = (Invoice.select().join(Customer, on=(Invoice.customer == Customer.id))
                     .where(Invoice.status == "open", Invoice.open_amount > 0, Customer.sf_account_id.is_null(False))
                     .count())
    invoices = org_records(org_server, "SELECT ARHub_Key__c, Status__c FROM AR_Invoice__c")
    assert len(invoices) == open_invoices
    assert {r["Status__c"] for r in invoices} <= {"Open", "Overdue"}

    again, connector = run_sf(sf_source, pull=False)
    assert again.status == "succeeded"
    assert again.objects["push_summary"]["changed"] == 0 and again.objects["push_invoice"]["changed"] == 0
    assert again.api_calls == 0, "nothing changed: no API call at all (describe is cached)"


def test_bulk_above_the_threshold_and_collections_below(erp, org_server):
    """More changed records than bulk_threshold go in one Bulk API 2.0 job; fewer in
    collections of at most 200 per call."""
    sf_source = add_salesforce(org_server, bulk_threshold=50)
    run, _ = run_sf(sf_source)
    assert run.status == "succeeded", run.errors
    assert run.objects["push_summary"]["method"] == "bulk"
    assert run.objects["push_invoice"]["method"] == "bulk"
    jobs = org_server.stats()["ingest_jobs"]
    assert len(jobs) == 2 and set(jobs.values()) == {"JobComplete"}, jobs
