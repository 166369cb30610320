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


def pushed_keys(server, sobject: str) -> set[str]:
    return {r["ARHub_Key__c"] for r in org_records(server, f"SELECT ARHub_Key__c FROM {sobject}")}


def test_the_reserve_stops_the_push_midway_and_the_next_run_resumes(erp, org_server):
    """Summaries fit in the budget above the reserve, invoices do not: the run sends the
    summaries, stops before crossing the reserve and says so; only acknowledged records are
    marked sent, and the next run sends exactly the rest."""
    sf_source = add_salesforce(org_server, budget_reserve=500, bulk_threshold=10_000)
    run_sf(sf_source, push=False)
    org_server.set_budget(max=1000, used=1000 - 502)  # the describes (one composite call) and one collection call
    run, _ = run_sf(sf_source, pull=False)
    assert run.status == "partial", run.errors
    assert any("reserve" in str(e.get("warning", "")) for e in run.errors), run.errors
    assert org_server.stats()["api_used"] == 1000 - 500, "not one call into the reserve"
    assert run.objects["push_summary"]["acknowledged"] == run.objects["push_summary"]["changed"] > 0
    assert run.objects["push_invoice"]["acknowledged"] == 0
    assert run.objects["push_invoice"]["deferred"] == run.objects["push_invoice"]["changed"] > 0
    assert SfPushState.select().where(SfPushState.object_name == "AR_Invoice__c").count() == 0
    org_server.set_budget(max=100_000, used=0)
    resumed, _ = run_sf(sf_source, pull=False)
    assert resumed.status == "succeeded", resumed.errors
    assert resumed.objects["push_summary"]["changed"] == 0, "acknowledged summaries are not sent again"
    assert resumed.objects["push_invoice"]["acknowledged"] == run.objects["push_invoice"]["deferred"]
    assert len(pushed_keys(org_server, "AR_Invoice__c")) == resumed.objects["push_invoice"]["acknowledged"]


def test_a_budget_spent_elsewhere_is_refused_by_salesforce_and_nothing_is_lost(erp, org_server):
    """Another integration spends the org's budget after we last looked: Salesforce answers
    REQUEST_LIMIT_EXCEEDED, the run ends partial naming it, nothing is marked sent, and the
    next run (budget reset) sends everything."""
    from middleware.sf_sync import describe_push_objects

    sf_source = add_salesforce(org_server, budget_reserve=0, bulk_threshold=10_000)
    connector = make_salesforce_connector(Source.get_by_id(sf_source.id), sleep=lambda s: None)
    try:
        run_sf(sf_source, push=False, connector=connector)
        describe_push_objects(Source.get_by_id(sf_source.id), connector)  # cached: the push needs no describe
        org_server.set_budget(max=1000, used=1000)
        run, _ = run_sf(sf_source, pull=False, connector=connector)
    finally:
        connector.close()
    assert run.status == "partial", run.errors
    assert any("budget spent" in str(e.get("warning", "")) for e in run.errors), run.errors
    assert SfPushState.select().count() == 0
    org_server.set_budget(max=100_000, used=0)
    resumed, _ = run_sf(sf_source, pull=False)
    assert resumed.status == "succeeded"
    assert resumed.objects["push_summary"]["acknowledged"] == run.objects["push_summary"]["candidates"]


def test_lock_errors_in_a_collection_call_are_retried_and_failures_kept_for_the_next_run(erp, org_server):
    """Per-record UNABLE_TO_LOCK_ROW results are retried once in the run; what still fails is
    recorded with its error, not acknowledged, and the next run sends exactly those."""
    sf_source = add_salesforce(org_server, bulk_threshold=10_000)
    run_sf(sf_source, push=False)
    org_server.set_faults(lock_row_rate=0.5, seed=3)
    run, _ = run_sf(sf_source, pull=False)
    failed = run.objects["push_summary"]["failed"] + run.objects["push_invoice"]["failed"]
    assert failed > 0 and run.status == "partial"
    errors = [s.error for s in SfPushState.select().where(SfPushState.error.is_null(False))]
    assert len(errors) == failed and all("UNABLE_TO_LOCK_ROW" in e for e in errors)
    org_server.clear_faults()
    again, _ = run_sf(sf_source, pull=False)
    assert again.status == "succeeded", again.errors
    resent = again.objects["push_summary"]["changed"] + again.objects["push_invoice"]["changed"]
    assert resent == failed
    assert SfPushState.select().where(SfPushState.error.is_null(False)).count() == 0


def test_failed_rows_of_a_bulk_job_are_read_back_and_retried(erp, org_server):
    """A Bulk API 2.0 job where some rows fail: the failed rows (failedResults) are recorded
    with Salesforce's error and sent again next run; the rest is acknowledged."""
    sf_source = add_salesforce(org_server, bulk_threshold=10)
    run_sf(sf_source, push=False)
    org_server.set_faults(lock_row_rate=0.3, seed=5)
    run, _ = run_sf(sf_source, pull=False)
    assert run.objects["push_invoice"]["method"] == "bulk"
    failed = run.objects["push_summary"]["failed"] + run.objects["push_invoice"]["failed"]
    assert failed > 0
    assert all("UNABLE_TO_LOCK_ROW" in s.error for s in SfPushState.select().where(SfPushState.error.is_null(False)))
    org_server.clear_faults()
    again, _ = run_sf(sf_source, pull=False)
    assert again.objects["push_summary"]["changed"] + again.objects["push_invoice"]["changed"] == failed
    assert again.status == "succeeded"


def test_a_field_deleted_in_the_org_is_named_and_nothing_is_pushed(erp, org_server):
    """An admin deletes AR_Summary__c.Tags__c after the mapping was made: the check names the
    field, the push sends nothing, and the run fails with that reason."""
    sf_source = add_salesforce(org_server)
    run_sf(sf_source)
    org_server.drop_field("AR_Summary__c", "Tags__c")
    connector = make_salesforce_connector(Source.get_by_id(sf_source.id))
    try:
        problems = check(Source.get_by_id(sf_source.id), connector)
    finally:
        connector.close()
    assert [(p.object, p.field) for p in problems] == [("AR_Summary__c", "Tags__c")]
    assert "does not exist" in problems[0].message
    org_server.reset_stats()
    run, _ = run_sf(sf_source, pull=False, full=True)
    assert run.status == "failed"
    assert any(e.get("field") == "Tags__c" for e in run.errors), run.errors
    assert "Tags__c" in run.message
    assert not any("composite/sobjects" in k or "ingest" in k for k in org_server.stats()["by_endpoint"]), \
        "nothing was sent (the describes went in one POST composite)"


def test_an_expired_session_is_renewed_without_failing_the_run(erp, org_server):
    """Sessions expire: the connector logs in again once and the run carries on."""
    sf_source = add_salesforce(org_server)
    connector = make_salesforce_connector(Source.get_by_id(sf_source.id), sleep=lambda s: None)
    try:
        run_sf(sf_source, push=False, connector=connector)
        org_server.expire_sessions()
        run, _ = run_sf(sf_source, pull=False, connector=connector)
    finally:
        connector.close()
    assert run.status == "succeeded", run.errors
    assert run.objects["push_summary"]["acknowledged"] > 0


@pytest.mark.parametrize("auth", ["password", "soap", "client_credentials"])
def test_each_login_flow_reaches_the_org(db, org_server, auth):
    """Username-password OAuth, the SOAP login simple-salesforce uses, and client credentials."""
    from middleware.sf_sync import describe_push_objects

    source = add_salesforce(org_server, auth=auth)
    connector = make_salesforce_connector(source)
    try:
        described = describe_push_objects(source, connector, refresh=True)
    finally:
        connector.close()
    assert described["AR_Summary__c"]["name"] == "AR_Summary__c"
    assert connector.instance_url.startswith("https://127.0.0.1:")


def test_a_wrong_password_fails_the_run_with_the_reason_and_no_secret(db, org_server):
    """Bad credentials: the run fails naming the login URL and Salesforce's reason, never the password."""
    source = add_salesforce(org_server)
    configure_salesforce("salesforce", load_preset("salesforce"),
                         credentials=dict(SANDBOX_CREDENTIALS, password="wrong-Pa55"))
    run, _ = run_sf(source)
    assert run.status == "failed"
    assert "login" in run.message and org_server.url in run.message
    assert "wrong-Pa55" not in run.message and SANDBOX_CREDENTIALS["security_token"] not in run.message


def test_jwt_bearer_login(db, book):
    """The JWT bearer flow signs an assertion with the connected app's key; the org checks it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with SalesforceServer(Org.from_book(book, seed=5), jwt_public_key=public) as server:
        source = configure_salesforce("salesforce", load_preset("salesforce"),
                                      connection={"login_url": server.url, "ca_bundle": server.ca_file, "auth": "jwt"},
                                      credentials={"client_id": SANDBOX_CREDENTIALS["client_id"],
                                                   "username": SANDBOX_CREDENTIALS["username"], "private_key": private})
        connector = make_salesforce_connector(source)
        try:
            assert connector.limits()["DailyApiRequests"]["Max"] > 0
        finally:
            connector.close()


def test_salesforce_errors_are_translated_at_the_connector(db, org_server):
    """MALFORMED_QUERY and INVALID_FIELD come back as SalesforceRequestError with the codes;
    REQUEST_LIMIT_EXCEEDED as ApiLimitExceeded."""
    from connectors.exceptions import ApiLimitExceeded, SalesforceRequestError

    source = add_salesforce(org_server)
    connector = make_salesforce_connector(source)
    try:
        with pytest.raises(SalesforceRequestError) as bad_field:
            list(connector.pull("Account", ["No_Such_Field__c"], None))
        assert bad_field.value.codes == ["INVALID_FIELD"]
        with pytest.raises(SalesforceRequestError) as malformed:
            list(connector.query_pages("SELEKT Id FROM Account"))
        assert malformed.value.codes == ["MALFORMED_QUERY"]
        org_server.set_budget(max=10, used=10)
        with pytest.raises(ApiLimitExceeded):
            connector.describe("Account")
    finally:
        connector.close()


def test_account_fields_become_tags_and_a_changed_account_retags(erp, org_server):
    """Tag rules on account fields: Type = 'Strategic' tags the linked customer 'strategic'; when
    the account's Type changes in Salesforce the next pull removes the tag; manual tags stay."""
    from middleware.models import CustomerTag, Tag

    sf_source = add_salesforce(org_server)
    run_sf(sf_source, push=False)
    strategic = {a.sf_id for a in SfAccount.select().where(SfAccount.account_type == "Strategic")}
    tagged = {c.sf_account_id for c in Customer.select().join(CustomerTag, on=(CustomerTag.customer == Customer.id))
              .join(Tag).where(Tag.name == "strategic")}
    linked_strategic = {c.sf_account_id for c in Customer.select().where(Customer.sf_account_id.in_(list(strategic)))}
    assert linked_strategic, "the seed has strategic accounts linked to customers"
    assert tagged == linked_strategic
    customer = Customer.get(Customer.sf_account_id == sorted(linked_strategic)[0])
    vip, _ = Tag.get_or_create(name="vip")
    CustomerTag.create(customer=customer, tag=vip, origin="manual")
    org_server.org.update("Account", customer.sf_account_id, {"Type": "Customer"})
    run_sf(sf_source, push=False)
    names = {t.name for t in Tag.select().join(CustomerTag).where(CustomerTag.customer == customer.id)}
    assert "strategic" not in names and "vip" in names


def test_contacts_owner_and_open_renewals_from_salesforce(erp, org_server):
    """The rep who owns the account, the AR contacts Salesforce adds (escalation, billing) merged
    with the ERP's by email, and the open renewals closing soon are available per customer."""
    from middleware.sf_pull import account_owner, merged_contacts, open_opportunities

    sf_source = add_salesforce(org_server)
    run_sf(sf_source, push=False)
    org = org_server.org
    linked = list(Customer.select().where(Customer.sf_account_id.is_null(False)))
    customer = linked[0]
    owner_id = org.tables["Account"][customer.sf_account_id]["OwnerId"]
    owner = account_owner(customer)
    assert owner["id"] == owner_id and owner["name"] == org.tables["User"][owner_id]["Name"]

    with_escalation = next(c for c in linked if any(
        r.get("AccountId") == c.sf_account_id and r.get("AR_Role__c") == "Escalation" and not r.get("IsDeleted")
        for r in org.tables["Contact"].values()))
    contacts = merged_contacts(with_escalation)
    assert any(c["role"] == "escalation" and "salesforce" in c["origins"] for c in contacts)
    emails = [c["email"].lower() for c in contacts if c.get("email")]
    assert len(emails) == len(set(emails)), "one entry per person"

    renewals = open_opportunities(as_of=AS_OF, within_days=90, types=["Renewal", "Expansion"])
    expected = {c.id for c in linked if any(
        o.get("AccountId") == c.sf_account_id and not o.get("IsClosed") and o.get("Type") in ("Renewal", "Expansion")
        and date.fromisoformat(o["CloseDate"]) <= date.fromordinal(AS_OF.toordinal() + 90)
        for o in org.tables["Opportunity"].values())}
    assert expected and set(renewals) == expected


def test_manual_links_and_unlinks_survive_later_syncs(erp, org_server):
    """A person links a customer to another account and unlinks a second one: full pulls and
    matching runs later keep both decisions."""
    from middleware import matching

    sf_source = add_salesforce(org_server)
    run_sf(sf_source, push=False)
    linked = list(Customer.select().where(Customer.sf_account_id.is_null(False)).order_by(Customer.id))
    first, second = linked[0], linked[1]
    other = next(a.sf_id for a in SfAccount.select() if a.sf_id not in (first.sf_account_id, second.sf_account_id))
    matching.link(first.id, other, actor="ana@example.com")
    matching.unlink(second.id, actor="ana@example.com")
    run_sf(sf_source, push=False, full=True)
    first, second = Customer.get_by_id(first.id), Customer.get_by_id(second.id)
    assert (first.sf_account_id, first.match_state) == (other, "manual")
    assert (second.sf_account_id, second.match_state) == (None, "manual_unlinked")


def test_incremental_pull_reads_only_what_changed_and_sees_deletions(erp, org_server):
    """After a full pull, the next one asks for records modified since (SystemModstamp) and
    through queryAll sees an account deleted in Salesforce."""
    sf_source = add_salesforce(org_server)
    first, _ = run_sf(sf_source, push=False)
    victim = next(iter(org_server.org.tables["Account"]))
    org_server.org.delete("Account", victim)
    second, _ = run_sf(sf_source, push=False)
    assert second.objects["accounts"]["fetched"] < first.objects["accounts"]["fetched"] / 10
    assert SfAccount.get(SfAccount.sf_id == victim).is_deleted


def _sent_at(server, sobject: str, when) -> set[str]:
    """Keys of the records whose Last_Synced_At__c is ``when``: what the run at ``when`` sent."""
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S")
    return {r["ARHub_Key__c"] for r in server.org.tables[sobject].values()
            if not r["IsDeleted"] and str(r.get("Last_Synced_At__c") or "").startswith(stamp)}


def _differing(source, when) -> dict[str, set[str]]:
    """What a full rebuild as of ``when`` finds different from what Salesforce acknowledged: the
    records a push at ``when`` must send (computed without the input-digest shortcut)."""
    from middleware.sf_push import Pusher, payload_hash

    pusher = Pusher(source, None, reporting_currency="USD", public_url="https://arhub.example.com", describes={},
                    now=when)
    built = pusher.build(full=True)
    out = {}
    for role, sobject in (("summary", "AR_Summary__c"), ("invoice", "AR_Invoice__c")):
        acked = pusher._acked(sobject)
        out[role] = {key for key, _, payload in built[role]
                     if (acked.get(key, (None,))[0] or "")[:16] != payload_hash(payload)[:16]}
    out["overdue"] = {key for key, _, payload in built["summary"] if payload["oldest_overdue_days"] > 0}
    out["linked"] = {key for key, _, _ in built["summary"]}
    return out


def test_an_incremental_push_sends_exactly_what_changed_and_a_new_day_resends_overdue_accounts(db):
    """Invoices change in the ERP: the next push rebuilds only the summaries of customers whose
    documents changed and sends exactly the summaries and invoices a full rebuild finds different;
    nothing changed: nothing rebuilt, no API call; the next day every summary is rebuilt and the
    overdue accounts, whose days delinquent moved, are sent again, the others are not."""
    from datetime import datetime, timedelta, timezone

    book = Book(80, 800, seed=17, as_of=AS_OF)
    with SandboxServer(book) as sandbox, SalesforceServer(Org.from_book(book, seed=5)) as server:
        configure_source("xero", load_preset("xero"), endpoint=sandbox.xero_url + "/api.xro/2.0",
                         credentials=dict(xero.SANDBOX_CREDENTIALS, token_url=sandbox.xero_url + "/connect/token"))
        erp_connector = make_connector(Source.get(Source.name == "xero"), sleep=lambda s: None)
        sf_source = add_salesforce(server)
        day1 = datetime.now(timezone.utc).replace(microsecond=0)

        def push(when, *, pull=False):
            source = Source.get_by_id(sf_source.id)
            connector = make_salesforce_connector(source, sleep=lambda s: None)
            try:
                run = SalesforceSync(source, connector, reporting_currency="USD",
                                     public_url="https://arhub.example.com", now=when).run(pull=pull, push=True)
            finally:
                connector.close()
            assert run.status == "succeeded", (run.message, run.errors)
            return run

        try:
            assert run_sync("xero", connector=erp_connector).status in ("succeeded", "partial")
            first = push(day1, pull=True)
            linked = Customer.select().where(Customer.sf_account_id.is_null(False)).count()
            assert first.objects["push_summary"]["rebuilt"] == first.objects["push_summary"]["sent"] == linked

            changed_ids = book.modify_invoices(40, now=datetime.now(timezone.utc))
            assert run_sync("xero", connector=erp_connector).status in ("succeeded", "partial")
        finally:
            erp_connector.close()
        touched = {f"xero:{c}" for (c,) in Customer.select(Customer.external_id).join(
            Invoice, on=(Invoice.customer == Customer.id)).where(
            Invoice.number.in_([book.invoices[i].number for i in changed_ids])).tuples()}
        # a collector reassigned in arhub (no document, no timestamp involved) changes a summary too
        reassigned = (Customer.select().where(Customer.sf_account_id.is_null(False))
                      .where(Customer.external_id.not_in([k.split(":", 1)[1] for k in touched])).first())
        Customer.update(collector="new.collector@example.com").where(Customer.id == reassigned.id).execute()
        touched.add(f"xero:{reassigned.external_id}")
        later = day1 + timedelta(minutes=5)
        expected = _differing(Source.get_by_id(sf_source.id), later)
        assert f"xero:{reassigned.external_id}" in expected["summary"]
        assert len(expected["summary"]) > 2 and expected["summary"] <= touched
        assert expected["invoice"]
        incremental = push(later)
        summary = incremental.objects["push_summary"]
        assert summary["candidates"] == linked
        assert summary["rebuilt"] <= len(touched) < linked, "only customers whose documents changed are rebuilt"
        invoices = incremental.objects["push_invoice"]
        assert invoices["rebuilt"] < invoices["candidates"] / 2, "only invoices whose rows changed are rebuilt"
        assert _sent_at(server, "AR_Summary__c", later) == expected["summary"]
        assert _sent_at(server, "AR_Invoice__c", later) == expected["invoice"]
        assert summary["sent"] == len(expected["summary"])
        assert incremental.objects["push_invoice"]["sent"] == len(expected["invoice"])

        quiet = push(later + timedelta(minutes=5))
        assert quiet.objects["push_summary"]["rebuilt"] == quiet.objects["push_invoice"]["rebuilt"] == 0
        assert quiet.api_calls == 0

        day2 = day1 + timedelta(days=1)
        expected = _differing(Source.get_by_id(sf_source.id), day2)
        assert expected["overdue"] and expected["overdue"] <= expected["summary"]
        assert expected["summary"] != expected["linked"], "accounts whose figures did not move are not sent again"
        next_day = push(day2)
        assert next_day.objects["push_summary"]["rebuilt"] == linked
        assert _sent_at(server, "AR_Summary__c", day2) == expected["summary"]
        assert next_day.objects["push_summary"]["sent"] == len(expected["summary"])

