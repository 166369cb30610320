"""The Xero emulator answers as the Xero Accounting OpenAPI file says, over real HTTP.

Responses are validated against the spec's component schemas (``#/components/schemas/...``)
with openapi-schema-validator's OAS 3.0 read validator. The spec is loaded as published
except for two test-side adjustments: the known defect (boolean properties whose ``default``
is the string ``"false"``) is normalised, and the object schemas the emulator serves are
made strict (``additionalProperties: false``, allowing only the few keys the spec's own
examples show but its schemas omit), so the emulator cannot invent fields unnoticed.
"""
from __future__ import annotations

import copy
import json
import re
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
import yaml
from openapi_schema_validator import OAS30ReadValidator

from connectors.sandbox.book import Book
from connectors.sandbox.server import SandboxServer
from connectors.sandbox.xero import SANDBOX_CREDENTIALS, xero_id

UTC = timezone.utc
SPEC_PATH = Path(__file__).resolve().parents[2] / "connectors/contracts/xero-accounting/xero_accounting.yaml"
ENDPOINTS = ("Contacts", "Invoices", "CreditNotes", "Payments", "Overpayments", "Currencies")
MS_DATE = re.compile(r'^/Date\((\d+)\+0000\)/$')
ENVELOPE_KEYS = {"Id": {"type": "string"}, "Status": {"type": "string"}, "ProviderName": {"type": "string"},
                 "DateTimeUTC": {"type": "string"}}
EXAMPLE_ONLY_KEYS = {  # keys present in the spec's response examples but not in its schemas
    "Invoice": ("DateString", "DueDateString"),
    "CreditNote": ("DateString", "ID"),
    "Overpayment": ("DateString", "ID"),
}
STRICT = ("Contact", "Invoice", "CreditNote", "Payment", "Overpayment", "Currency", "Allocation", "Address",
          "ContactPerson", "LineItem", "Phone", "Pagination", "PaymentTerm", "Bill", "Account")


# ----------------------------------------------------------------------------- fixtures
def _fix_string_booleans(node):
    if isinstance(node, dict):
        if node.get("type") == "boolean" and isinstance(node.get("default"), str):
            node["default"] = node["default"].lower() == "true"
        if node.get("type") == "boolean" and isinstance(node.get("example"), str):
            node["example"] = node["example"].lower() == "true"
        for value in node.values():
            _fix_string_booleans(value)
    elif isinstance(node, list):
        for value in node:
            _fix_string_booleans(value)


@pytest.fixture(scope="module")
def components():
    spec = yaml.load(SPEC_PATH.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    comps = copy.deepcopy(spec["components"])
    _fix_string_booleans(comps)
    schemas = comps["schemas"]
    for name in STRICT:
        schemas[name]["additionalProperties"] = False
        for key in EXAMPLE_ONLY_KEYS.get(name, ()):
            schemas[name]["properties"][key] = {"type": "string"}
    for name in ENDPOINTS:
        schemas[name]["properties"].update(ENVELOPE_KEYS)
        schemas[name]["additionalProperties"] = False
    return comps


def validate(components, name: str, body: dict) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    validator = OAS30ReadValidator(schema, format_checker=OAS30ReadValidator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(Book(customers=150, invoices=1500, seed=11)) as server:
        yield server


@pytest.fixture(scope="module")
def token(sandbox):
    resp = requests.post(f"{sandbox.xero_url}/connect/token", data={"grant_type": "client_credentials"},
                         auth=(SANDBOX_CREDENTIALS["client_id"], SANDBOX_CREDENTIALS["client_secret"]), timeout=10)
    assert resp.status_code == 200
    return resp.json()["access_token"]


@pytest.fixture
def api(sandbox, token):
    headers = {"Authorization": f"Bearer {token}", "xero-tenant-id": SANDBOX_CREDENTIALS["tenant_id"],
               "Accept": "application/json"}

    def get(endpoint: str, params=None, extra_headers=None, raw=False):
        resp = requests.get(f"{sandbox.xero_url}/api.xro/2.0/{endpoint}", params=params,
                            headers={**headers, **(extra_headers or {})}, timeout=30)
        if raw:
            return resp
        assert resp.status_code == 200, resp.text[:500]
        return resp.json(parse_float=Decimal)
    return get


def all_records(api, endpoint, params=None, extra_headers=None, size=200):
    out, page = [], 1
    while True:
        body = api(endpoint, {**(params or {}), "page": page, "pageSize": size}, extra_headers)
        out.extend(body[endpoint])
        if len(body[endpoint]) < size:
            return out
        page += 1


def ms(value: str) -> datetime:
    m = MS_DATE.match(value)
    assert m, value
    return datetime.fromtimestamp(int(m.group(1)) / 1000, UTC)


# -------------------------------------------------------------------------------- auth
def test_token_endpoint_accepts_basic_or_form_client_credentials(sandbox):
    """POST /connect/token issues a Bearer token (expires_in 1800) for the sandbox client by HTTP
    Basic or form fields, and answers 400 invalid_client / unsupported_grant_type otherwise."""
    url = f"{sandbox.xero_url}/connect/token"
    cid, secret = SANDBOX_CREDENTIALS["client_id"], SANDBOX_CREDENTIALS["client_secret"]
    by_basic = requests.post(url, data={"grant_type": "client_credentials"}, auth=(cid, secret), timeout=10)
    by_form = requests.post(url, data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret},
                            timeout=10)
    for resp in (by_basic, by_form):
        assert resp.status_code == 200
        body = resp.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 1800 and len(body["access_token"]) > 20
    wrong = requests.post(url, data={"grant_type": "client_credentials"}, auth=(cid, "nope"), timeout=10)
    assert wrong.status_code == 400 and wrong.json() == {"error": "invalid_client"}
    grant = requests.post(url, data={"grant_type": "password"}, auth=(cid, secret), timeout=10)
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"


def test_api_needs_bearer_token_and_tenant_header(sandbox, token, api):
    """Without a token (or with an unknown one) the API answers 401, without the right
    xero-tenant-id 403, both as Xero's problem JSON (Title, Status, Detail)."""
    url = f"{sandbox.xero_url}/api.xro/2.0/Invoices"
    tenant = {"xero-tenant-id": SANDBOX_CREDENTIALS["tenant_id"]}
    for headers in (tenant, {**tenant, "Authorization": "Bearer not-a-token"}, {**tenant, "Authorization": "Basic eDp5"}):
        resp = requests.get(url, headers=headers, timeout=10)
        assert resp.status_code == 401
        assert resp.json()["Title"] == "Unauthorized" and resp.json()["Status"] == 401
    for tenant_id in (None, "00000000-0000-0000-0000-000000000000"):
        headers = {"Authorization": f"Bearer {token}"}
        if tenant_id:
            headers["xero-tenant-id"] = tenant_id
        resp = requests.get(url, headers=headers, timeout=10)
        assert resp.status_code == 403
        assert resp.json()["Title"] == "Forbidden" and resp.json()["Status"] == 403
    assert api("Invoices", {"page": 1})["Status"] == "OK"


def test_expired_token_is_refused_with_401():
    """A token past its expires_in is refused with 401 TokenExpired; a fresh token works."""
    with SandboxServer(Book(customers=5, invoices=20, seed=3), credentials={"xero": {"expires_in": 1}}) as sb:
        auth = (SANDBOX_CREDENTIALS["client_id"], SANDBOX_CREDENTIALS["client_secret"])
        body = requests.post(f"{sb.xero_url}/connect/token", data={"grant_type": "client_credentials"},
                             auth=auth, timeout=10).json()
        assert body["expires_in"] == 1
        headers = {"Authorization": f"Bearer {body['access_token']}", "xero-tenant-id": SANDBOX_CREDENTIALS["tenant_id"]}
        assert requests.get(f"{sb.xero_url}/api.xro/2.0/Contacts", headers=headers, timeout=10).status_code == 200
        time.sleep(1.1)
        resp = requests.get(f"{sb.xero_url}/api.xro/2.0/Contacts", headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json()["Detail"].startswith("TokenExpired")


# ------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_page_of_every_endpoint_validates_against_the_openapi_schema(components, api, endpoint):
    """Each page of each endpoint is a valid <Endpoint> response per the OpenAPI components, with a
    consistent pagination object (page, pageSize, pageCount, itemCount) where the spec has one."""
    page, seen = 1, 0
    while True:
        body = api(endpoint, {"page": page, "pageSize": 250})
        validate(components, endpoint, json.loads(json.dumps(body, default=float)))
        records = body[endpoint]
        seen += len(records)
        if endpoint == "Currencies":
            assert "pagination" not in body and {r["Code"] for r in records} == {"USD", "EUR", "GBP", "JPY", "AUD"}
            return
        pag = body["pagination"]
        assert pag["page"] == page and pag["pageSize"] == 250
        assert pag["pageCount"] == -(-pag["itemCount"] // 250)
        if page >= pag["pageCount"]:
            assert seen == pag["itemCount"]
            return
        assert len(records) == 250
        page += 1


def test_validation_catches_a_bad_record(components, api):
    """The strict schema check is not vacuous: an invented field or a wrong type fails it."""
    body = api("Invoices", {"page": 1, "pageSize": 1})
    body = json.loads(json.dumps(body, default=float))
    body["Invoices"][0]["Invented"] = 1
    with pytest.raises(AssertionError):
        validate(components, "Invoices", body)
    body["Invoices"][0].pop("Invented")
    body["Invoices"][0]["Status"] = "OPEN"
    with pytest.raises(AssertionError):
        validate(components, "Invoices", body)


# -------------------------------------------------------------------- paging & since
def test_pages_partition_the_listing_in_updated_order(sandbox, api):
    """Pages of 7 concatenate to the unpaged listing, without gaps or repeats, ordered by
    UpdatedDateUTC; pageSize is capped at 1000; a page past the end is empty."""
    unpaged = api("Invoices")["Invoices"]
    paged = all_records(api, "Invoices", size=7)
    assert [r["InvoiceID"] for r in paged] == [r["InvoiceID"] for r in unpaged]
    assert len({r["InvoiceID"] for r in paged}) == len(paged) == len(sandbox.book.invoices) + len(
        [d for d in sandbox.book.deleted if d.kind == "invoice"])
    stamps = [ms(r["UpdatedDateUTC"]) for r in paged]
    assert stamps == sorted(stamps)
    assert api("Invoices", {"page": 1, "pageSize": 5000})["pagination"]["pageSize"] == 1000
    assert api("Invoices", {"page": 999, "pageSize": 100})["Invoices"] == []


@pytest.mark.parametrize("style", ["http-date", "iso"])
def test_if_modified_since_returns_records_updated_at_or_after_it(sandbox, api, style):
    """If-Modified-Since (HTTP-date or ISO 8601) keeps exactly the records whose UpdatedDateUTC is
    at or after it, for every endpoint that supports it."""
    book = sandbox.book
    stamps = sorted(inv.modified for inv in book.invoices.values())
    since = stamps[len(stamps) // 2].replace(microsecond=0)
    header = format_datetime(since, usegmt=True) if style == "http-date" else since.isoformat()
    got = all_records(api, "Invoices", extra_headers={"If-Modified-Since": header})
    expected = {xero_id("invoice", i) for i, inv in book.invoices.items() if inv.modified >= since}
    expected |= {xero_id("invoice", d.id) for d in book.deleted if d.kind == "invoice" and d.deleted_at >= since}
    assert {r["InvoiceID"] for r in got} == expected
    assert all(ms(r["UpdatedDateUTC"]) >= since for r in got)
    for endpoint in ("Contacts", "CreditNotes", "Payments", "Overpayments"):
        every = all_records(api, endpoint, {"includeArchived": "true"})
        recent = all_records(api, endpoint, {"includeArchived": "true"}, {"If-Modified-Since": header})
        assert [r for r in every if ms(r["UpdatedDateUTC"]) >= since] == recent


def test_mutations_show_up_in_the_next_incremental_listing(sandbox, api):
    """After POST /_sandbox/mutate changes invoices, an If-Modified-Since listing from before the
    change returns exactly those invoices (the snapshot cache is invalidated)."""
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(days=400)
    before = all_records(api, "Invoices", extra_headers={"If-Modified-Since": now.isoformat()})
    assert before == []
    result = requests.post(f"{sandbox.url}/_sandbox/mutate", json={"action": "modify_invoices", "count": 6,
                                                                   "now": now.isoformat()}, timeout=10).json()
    after = all_records(api, "Invoices", extra_headers={"If-Modified-Since": now.isoformat()})
    assert {r["InvoiceID"] for r in after} == {xero_id("invoice", i) for i in result["ids"]}
    assert all(ms(r["UpdatedDateUTC"]) == now for r in after)


# ----------------------------------------------------------------------- the book's cases
def test_dates_are_microsoft_json_dates(sandbox, api):
    """Date, DueDate and UpdatedDateUTC are "/Date(<ms>+0000)/" holding the book's values."""
    book = sandbox.book
    for record in api("Invoices", {"page": 1, "pageSize": 100, "Statuses": "AUTHORISED,PAID"})["Invoices"]:
        inv = book.invoices[int(record["InvoiceNumber"].split("-")[1])]
        assert ms(record["Date"]).date() == inv.issue_date and ms(record["Date"]).hour == 0
        assert ms(record["DueDate"]).date() == inv.due_date
        assert ms(record["UpdatedDateUTC"]) == inv.modified.replace(microsecond=inv.modified.microsecond // 1000 * 1000)


def test_amounts_have_the_currency_minor_units(sandbox, api):
    """JPY amounts are whole JSON numbers, other currencies carry two decimals, and they equal the book."""
    book = sandbox.book
    body = api("Invoices", {"page": 1, "pageSize": 1000})["Invoices"]
    currencies = set()
    for record in body:
        if record["Status"] == "DELETED":
            continue
        inv = book.invoices[int(record["InvoiceNumber"].split("-")[1])]
        currencies.add(inv.currency)
        digits = 0 if inv.currency == "JPY" else 2
        for key in ("Total", "SubTotal", "AmountDue", "AmountPaid", "AmountCredited"):
            value = record[key] if isinstance(record[key], Decimal) else Decimal(record[key])
            assert -value.as_tuple().exponent == digits, (key, record[key], inv.currency)
        assert record["Total"] == inv.total and record["AmountDue"] == inv.amount_due
    assert {"JPY", "USD"} <= currencies
    raw = api("Invoices", {"page": 1, "pageSize": 1000}, raw=True).text
    assert re.search(r'"CurrencyCode":"JPY"', raw) and not re.search(r'"Total":-?\d+\.\d+,[^{}]*"CurrencyCode":"JPY"', raw)


def test_currency_rate_is_invoice_currency_per_base_unit(sandbox, api):
    """CurrencyRate follows Xero: units of the invoice currency per 1 USD (the inverse of the book's rate)."""
    book = sandbox.book
    seen = set()
    for record in api("Invoices")["Invoices"]:
        if record["Status"] == "DELETED":
            continue
        inv = book.invoices[int(record["InvoiceNumber"].split("-")[1])]
        assert abs(record["CurrencyRate"] * inv.exchange_rate - 1) < Decimal("0.00001")
        if inv.currency == "USD":
            assert record["CurrencyRate"] == 1
        seen.add(inv.currency)
    assert "EUR" in seen and "JPY" in seen


def test_contacts_carry_unicode_names_parents_and_escalation_contacts(sandbox, api):
    """Unicode and apostrophes survive; a subsidiary's AccountNumber is its parent's ContactNumber;
    the escalation contact is a ContactPerson; the POBOX address carries the street address;
    archived customers appear only with includeArchived."""
    book = sandbox.book
    contacts = {c["ContactNumber"]: c for c in api("Contacts", {"includeArchived": "true"})["Contacts"]}
    assert len(contacts) == len(book.customers)
    for cust in book.customers.values():
        record = contacts[cust.number]
        assert record["Name"] == cust.name and record["ContactID"] == xero_id("customer", cust.id)
        assert record["DefaultCurrency"] == cust.currency and record["Addresses"][0]["Country"] == cust.country
        assert record["ContactStatus"] == ("ARCHIVED" if cust.inactive else "ACTIVE")
        pobox = record["Addresses"][0]
        assert pobox["AddressType"] == "POBOX"
        if cust.address is None:
            assert set(pobox) == {"AddressType", "Country"}
        else:
            assert [pobox.get(f"AddressLine{n}") for n in range(1, len(cust.address.lines) + 1)] == list(
                cust.address.lines)
            assert (pobox["City"], pobox.get("Region", ""), pobox["PostalCode"]) == (
                cust.address.city, cust.address.region, cust.address.postal_code)
        parent = book.customers.get(cust.parent_id)
        assert record.get("AccountNumber") == (parent.number if parent else None)
        escalation = [p.email for p in cust.contacts if p.role == "escalation"]
        assert [p["EmailAddress"] for p in record["ContactPersons"]] == escalation
    assert any(not c["Name"].isascii() for c in contacts.values()) and any("'" in c["Name"] for c in contacts.values())
    assert any("AccountNumber" in c for c in contacts.values())
    active = api("Contacts")["Contacts"]
    assert len(active) == sum(not c.inactive for c in book.customers.values())


def test_voided_and_deleted_invoices(sandbox, api):
    """Voided invoices are VOIDED with nothing due; book-deleted invoices are DELETED with their
    deletion time as UpdatedDateUTC; Statuses and where filter on them."""
    book = sandbox.book
    deleted = api("Invoices", {"Statuses": "DELETED"})["Invoices"]
    expected = {xero_id("invoice", d.id): d for d in book.deleted if d.kind == "invoice"}
    assert deleted and {r["InvoiceID"] for r in deleted} == set(expected)
    for record in deleted:
        assert ms(record["UpdatedDateUTC"]) == expected[record["InvoiceID"]].deleted_at
        assert record["InvoiceNumber"] == expected[record["InvoiceID"]].number
    voided = api("Invoices", {"where": 'Type=="ACCREC" AND Status=="VOIDED"'})["Invoices"]
    assert voided and len(voided) == sum(inv.status == "voided" for inv in book.invoices.values())
    assert all(r["AmountDue"] == 0 for r in voided)
    paid = api("Invoices", {"Statuses": "PAID"})["Invoices"]
    assert paid and all("FullyPaidOnDate" in r and r["AmountDue"] == 0 for r in paid)
    bad = api("Invoices", {"where": "Type = ACCREC"}, raw=True)
    assert bad.status_code == 400 and bad.json()["Type"] == "QueryParseException"


def test_credit_notes_allocate_to_invoices(sandbox, api):
    """CreditNotes are ACCRECCREDIT with Allocations (amount, date, invoice) matching the book, and
    RemainingCredit equal to the unapplied part; invoices show the credit as AmountCredited."""
    book = sandbox.book
    notes = api("CreditNotes")["CreditNotes"]
    assert len(notes) == len(book.credit_memos)
    invoices = {r["InvoiceID"]: r for r in api("Invoices")["Invoices"]}
    allocated = unapplied = 0
    for record in notes:
        memo = book.credit_memos[int(record["CreditNoteNumber"].split("-")[1])]
        assert record["Type"] == "ACCRECCREDIT" and record["Total"] == memo.total
        assert record["RemainingCredit"] == memo.unapplied
        assert [(a["Invoice"]["InvoiceID"], a["Amount"]) for a in record["Allocations"]] == \
            [(xero_id("invoice", a.invoice_id), a.amount) for a in memo.applications]
        for alloc in record["Allocations"]:
            allocated += 1
            assert invoices[alloc["Invoice"]["InvoiceID"]]["AmountCredited"] >= alloc["Amount"]
        unapplied += memo.unapplied > 0
    assert allocated and unapplied


def test_payments_are_one_per_application_and_overpayments_are_separate(sandbox, api):
    """Each book payment application is one ACCRECPAYMENT with its Invoice; multi-invoice payments
    share a BatchPaymentID; the unapplied part of a payment is a RECEIVE-OVERPAYMENT."""
    book = sandbox.book
    payments = api("Payments")["Payments"]
    assert len(payments) == sum(len(p.applications) for p in book.payments.values())
    by_id = {r["PaymentID"]: r for r in payments}
    batches = 0
    for pay in book.payments.values():
        for n, app in enumerate(pay.applications):
            record = by_id[xero_id("payment", pay.id, n)]
            assert record["PaymentType"] == "ACCRECPAYMENT" and record["Amount"] == app.amount
            assert record["Invoice"]["InvoiceID"] == xero_id("invoice", app.invoice_id)
            assert ms(record["Date"]).date() == app.date
            assert ("BatchPaymentID" in record) == (len(pay.applications) > 1)
        batches += len(pay.applications) > 1
    assert batches
    overpayments = api("Overpayments")["Overpayments"]
    expected = {xero_id("overpayment", p.id): p.unapplied for p in book.payments.values() if p.unapplied > 0}
    assert expected and {r["OverpaymentID"]: r["RemainingCredit"] for r in overpayments} == expected
    assert all(r["Type"] == "RECEIVE-OVERPAYMENT" for r in overpayments)


# ---------------------------------------------------------------------------- faults
def test_faults_are_played_back(sandbox, api):
    """Queued faults answer once each: 429 with Retry-After, 503, a truncated JSON body, a page with
    a record twice, a page with a record missing; then the API behaves again."""
    faults = [{"status": 429, "retry_after": 7, "path": "Invoices"}, {"status": 503, "path": "Invoices"},
              {"body": "malformed", "path": "Invoices"}, {"body": "duplicate", "path": "Invoices"},
              {"body": "vanish", "path": "Invoices"}]
    assert requests.post(f"{sandbox.url}/_sandbox/faults", json=faults, timeout=10).json()["queued"] == 5
    params = {"page": 1, "pageSize": 10}
    limited = api("Invoices", params, raw=True)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert api("Invoices", params, raw=True).status_code == 503
    with pytest.raises(ValueError):
        json.loads(api("Invoices", params, raw=True).text)
    normal_ids = None
    duplicate = [r["InvoiceID"] for r in api("Invoices", params)["Invoices"]]
    vanished = [r["InvoiceID"] for r in api("Invoices", params)["Invoices"]]
    normal_ids = [r["InvoiceID"] for r in api("Invoices", params)["Invoices"]]
    assert len(duplicate) == 11 and duplicate[0] == duplicate[1] and duplicate[1:] == normal_ids
    assert len(vanished) == 9 and set(vanished) < set(normal_ids)
    requests.delete(f"{sandbox.url}/_sandbox/faults", timeout=10)


def test_control_api_describes_the_book(sandbox):
    """GET /_sandbox/book reports seed, as_of and counts per kind."""
    body = requests.get(f"{sandbox.url}/_sandbox/book", timeout=10).json()
    assert body["seed"] == 11 and body["counts"]["customer"] == 150
    assert body["counts"]["invoice"] == len(sandbox.book.invoices)
    bad = requests.post(f"{sandbox.url}/_sandbox/mutate", json={"action": "explode"}, timeout=10)
    assert bad.status_code == 400


def test_fast_invoice_serializer_matches_the_reference_renderer():
    """The emulator's hand-written invoice JSON (its hot path) is byte-for-byte what
    json.dumps of the readable reference record gives, for every invoice of a book."""
    from connectors.sandbox.xero import _dumps, make_app
    book = Book(customers=80, invoices=1200, seed=13)
    app = make_app(book)
    app._sync_versions()  # noqa: SLF001 (the two renderers are private on purpose)
    for key in book.invoices:
        assert app._invoice_text(key) == _dumps(app._invoice(key))  # noqa: SLF001


def test_where_on_the_endpoint_type_keeps_all_or_nothing(api):
    """where=Type=="ACCREC" on Invoices keeps every invoice; Type=="ACCPAY" (bills) keeps none;
    clauses combine with AND."""
    every = api("Invoices")["Invoices"]
    assert api("Invoices", {"where": 'Type=="ACCREC"'})["Invoices"] == every
    assert api("Invoices", {"where": 'Type=="ACCPAY"'})["Invoices"] == []
    assert api("Invoices", {"where": 'Type!="ACCREC"'})["Invoices"] == []
    usd = api("Invoices", {"where": 'Type=="ACCREC" && CurrencyCode=="USD"'})["Invoices"]
    assert usd and len(usd) == sum(r.get("CurrencyCode") == "USD" for r in every)


def test_ids_are_uuid5_of_the_book_ids():
    """Xero ids are uuid5 of "kind:book id" in the emulator's namespace: stable across runs and books."""
    import uuid

    from connectors.sandbox.xero import _NS
    for key in (("invoice", 5), ("payment", 3, 0), ("customer", 123456), ("line", 7, 2), ("account",)):
        assert xero_id(*key) == str(uuid.uuid5(_NS, ":".join(map(str, key))))
