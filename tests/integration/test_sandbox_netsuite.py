"""The NetSuite SuiteTalk emulator over real HTTP: every response it produces is valid per the
2023_2 XSDs, the book's tricky cases show up, auth and fault switches behave like NetSuite.

Requests here are written by hand (not by our connector): the emulator must not be tested
through the code it exists to test.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from lxml import etree

from connectors.sandbox.book import Book
from connectors.sandbox.faults import Fault
from connectors.sandbox.netsuite import CONTRACT_DIR, NS, SANDBOX_CREDENTIALS as CREDS

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
MSGS, CORE, COMMON = NS["platformMsgs"], NS["platformCore"], NS["platformCommon"]
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
SCHEMA_IMPORTS = {
    NS["platformMsgs"]: "platform.messages.xsd",
    NS["platformFaults"]: "platform.faults.xsd",
    NS["listRel"]: "lists.relationships.xsd",
    NS["listAcct"]: "lists.accounting.xsd",
    NS["tranSales"]: "transactions.sales.xsd",
    NS["tranCust"]: "transactions.customers.xsd",
}


# ---------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    xsd_dir = CONTRACT_DIR / "xsd"
    wrapper = ('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
               + "".join(f'<xs:import namespace="{ns}" schemaLocation="{(xsd_dir / f).as_uri()}"/>'
                         for ns, f in SCHEMA_IMPORTS.items())
               + "</xs:schema>")
    return etree.XMLSchema(etree.fromstring(wrapper.encode(), base_url=xsd_dir.as_uri() + "/"))


pytestmark = pytest.mark.usefixtures("clear_faults")


@pytest.fixture(scope="module")
def book() -> Book:
    return Book(customers=300, invoices=4000, seed=11)



def token_passport(creds=CREDS, *, nonce=None, timestamp=None, secret_override=None) -> str:
    nonce = nonce or uuid.uuid4().hex
    stamp = str(timestamp or int(time.time()))
    base = "&".join([creds["account"], creds["consumer_key"], creds["token_id"], nonce, stamp])
    key = secret_override or f"{creds['consumer_secret']}&{creds['token_secret']}"
    sig = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha256).digest()).decode()
    return (f'<m:tokenPassport><c:account>{creds["account"]}</c:account>'
            f'<c:consumerKey>{creds["consumer_key"]}</c:consumerKey><c:token>{creds["token_id"]}</c:token>'
            f"<c:nonce>{nonce}</c:nonce><c:timestamp>{stamp}</c:timestamp>"
            f'<c:signature algorithm="HMAC-SHA256">{sig}</c:signature></m:tokenPassport>')


def envelope(body: str, auth: str | None = None, page_size: int | None = None) -> str:
    auth = token_passport() if auth is None else auth
    prefs = (f"<m:searchPreferences><m:bodyFieldsOnly>false</m:bodyFieldsOnly>"
             f"<m:pageSize>{page_size}</m:pageSize></m:searchPreferences>") if page_size else ""
    return (f'<s:Envelope xmlns:s="{SOAP}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xmlns:m="{MSGS}" xmlns:c="{CORE}" xmlns:cm="{COMMON}"><s:Header>{auth}{prefs}</s:Header>'
            f"<s:Body>{body}</s:Body></s:Envelope>")


def post(base_url: str, body: str, **kwargs) -> requests.Response:
    http_auth = kwargs.pop("http_auth", None)
    return requests.post(f"{base_url}/services/NetSuitePort_2023_2", data=envelope(body, **kwargs).encode(),
                         headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "search"},
                         auth=http_auth, timeout=30)


def search_body(kind: str, date_filter: str = "") -> str:
    if kind == "customer":
        return f'<m:search><m:searchRecord xsi:type="cm:CustomerSearchBasic">{date_filter}</m:searchRecord></m:search>'
    if kind == "fx_rate":
        return f'<m:search><m:searchRecord xsi:type="cm:CurrencyRateSearchBasic">{date_filter}</m:searchRecord></m:search>'
    tran = {"invoice": "_invoice", "credit_memo": "_creditMemo", "payment": "_customerPayment"}[kind]
    return (f'<m:search><m:searchRecord xsi:type="cm:TransactionSearchBasic"><cm:type operator="anyOf">'
            f"<c:searchValue>{tran}</c:searchValue></cm:type>{date_filter}</m:searchRecord></m:search>")


def more_body(search_id: str, page: int) -> str:
    return f"<m:searchMoreWithId><m:searchId>{search_id}</m:searchId><m:pageIndex>{page}</m:pageIndex></m:searchMoreWithId>"


def deleted_body(types=("invoice",), page: int = 1, date_filter: str = "") -> str:
    values = "".join(f"<c:searchValue>{t}</c:searchValue>" for t in types)
    return (f"<m:getDeleted><m:getDeletedFilter>{date_filter}<c:type operator=\"anyOf\">{values}</c:type>"
            f"</m:getDeletedFilter><m:pageIndex>{page}</m:pageIndex></m:getDeleted>")


def body_child(response: requests.Response) -> etree._Element:
    root = etree.fromstring(response.content)
    return root.find(f"{{{SOAP}}}Body")[0]


def assert_valid(schema: etree.XMLSchema, element: etree._Element) -> None:
    if not schema.validate(element):
        errors = "\n".join(str(e) for e in list(schema.error_log)[:5])
        raise AssertionError(f"{etree.QName(element).localname} does not validate:\n{errors}")


def fault_detail(response: requests.Response) -> etree._Element:
    fault = body_child(response)
    assert etree.QName(fault).localname == "Fault"
    return fault.find("detail")[0]


def records_of(result: etree._Element) -> list[etree._Element]:
    return result.findall(f"{{{CORE}}}searchResult/{{{CORE}}}recordList/{{{CORE}}}record")


def field(record: etree._Element, name: str) -> str | None:
    for child in record:
        if etree.QName(child).localname == name:
            return child.text
    return None


def pull_all(base_url, schema, kind, page_size=1000, date_filter=""):
    """All records of one search, every page validated; returns (records, pages)."""
    first = body_child(post(base_url, search_body(kind, date_filter), page_size=page_size))
    assert_valid(schema, first)
    result = first.find(f"{{{CORE}}}searchResult")
    total_pages = int(result.findtext(f"{{{CORE}}}totalPages"))
    search_id = result.findtext(f"{{{CORE}}}searchId")
    records, pages = records_of(first), [first]
    for page in range(2, total_pages + 1):
        more = body_child(post(base_url, more_body(search_id, page), page_size=page_size))
        assert_valid(schema, more)
        assert etree.QName(more).localname == "searchMoreWithIdResponse"
        records += records_of(more)
        pages.append(more)
    return records, pages


# ---------------------------------------------------------------------- WSDL
def test_wsdl_and_xsds_are_served_with_the_address_rewritten(base_url):
    """GET /wsdl/netsuite.wsdl is the real WSDL with soap:address pointing at this emulator, and the
    imported XSDs (including the ``.//`` relative imports between XSDs) are served too."""
    wsdl = requests.get(f"{base_url}/wsdl/netsuite.wsdl", timeout=10)
    assert wsdl.status_code == 200
    assert f'location="{base_url}/services/NetSuitePort_2023_2"' in wsdl.text
    assert "webservices.netsuite.com/services" not in wsdl.text
    xsd = requests.get(f"{base_url}/wsdl/xsd/platform.core.xsd", timeout=10)
    assert xsd.status_code == 200 and "TokenPassport" in xsd.text
    assert requests.get(f"{base_url}/wsdl/xsd//platform.common.xsd", timeout=10).status_code == 200
    assert requests.get(f"{base_url}/wsdl/xsd/nope.xsd", timeout=10).status_code == 404


def test_zeep_loads_the_wsdl_from_the_emulator_url(base_url):
    """zeep can load the whole contract over HTTP from the emulator and finds the port there."""
    import zeep

    client = zeep.Client(f"{base_url}/wsdl/netsuite.wsdl")
    port = next(iter(next(iter(client.wsdl.services.values())).ports.values()))
    assert port.binding_options["address"] == f"{base_url}/services/NetSuitePort_2023_2"
    assert client.get_type(f"{{{COMMON}}}TransactionSearchBasic") is not None


# ---------------------------------------------------------------------- search pages
def test_customer_pages_validate_and_carry_unicode_names_custom_fields_and_country(base_url, schema, book):
    """Customer search pages validate; companyName keeps unicode/apostrophes; ARR, escalation e-mail,
    country and the street address (addr1-3, city, state, zip) are rendered where the XSD puts
    them; parents are RecordRefs."""
    records, pages = pull_all(base_url, schema, "customer", page_size=50)
    assert len(pages) == -(-len(book.customers) // 50)
    assert len(records) == len(book.customers)
    by_id = {r.get("internalId"): r for r in records}
    unicode_customers = [c for c in book.customers.values() if not c.name.isascii()]
    assert unicode_customers
    for cust in unicode_customers:
        assert field(by_id[str(cust.id)], "companyName") == cust.name
    escalated = next(c for c in book.customers.values() if any(x.role == "escalation" for x in c.contacts))
    rec = by_id[str(escalated.id)]
    custom = {cf.get("scriptId"): (cf.get(XSI_TYPE), cf.findtext(f"{{{CORE}}}value"))
              for cf in rec.iter(f"{{{CORE}}}customField")}
    escalation_email = next(x.email for x in escalated.contacts if x.role == "escalation")
    assert custom["custentity_arhub_escalation_email"] == ("platformCore:StringCustomFieldRef", escalation_email)
    assert custom["custentity_arhub_arr"][0] == "platformCore:DoubleCustomFieldRef"
    assert Decimal(custom["custentity_arhub_arr"][1]) == escalated.arr
    assert field(rec, "email") == next(x.email for x in escalated.contacts if x.role == "billing")
    jp = next(c for c in book.customers.values() if c.country == "JP")
    assert next(by_id[str(jp.id)].iter(f"{{{COMMON}}}country")).text == "_japan"
    for cust in book.customers.values():  # the street address of the default billing address
        address = next(by_id[str(cust.id)].iter(f"{{{COMMON}}}addressee")).getparent()
        street = {etree.QName(e).localname: e.text for e in address}
        want = {} if cust.address is None else {
            **{f"addr{n}": line for n, line in enumerate(cust.address.lines, 1)},
            **{k: v for k, v in (("city", cust.address.city), ("state", cust.address.region),
                                 ("zip", cust.address.postal_code)) if v}}
        assert {k: v for k, v in street.items() if k in ("addr1", "addr2", "addr3", "city", "state", "zip")} == want
    assert any(c.address is None for c in book.customers.values())
    assert any(c.address and len(c.address.lines) == 3 for c in book.customers.values())
    child = next(c for c in book.customers.values() if c.parent_id)
    parent_ref = next(e for e in by_id[str(child.id)] if etree.QName(e).localname == "parent")
    assert parent_ref.get("internalId") == str(child.parent_id)


def test_invoice_pages_validate_with_jpy_without_decimals_and_voided_status(base_url, schema, book):
    """Invoice pages (search + searchMoreWithId) validate; JPY amounts have no decimals, other
    currencies two; voided invoices say Voided with nothing remaining; sent date is a custom field;
    records come oldest change first."""
    records, pages = pull_all(base_url, schema, "invoice", page_size=1000)
    assert len(pages) == -(-len(book.invoices) // 1000) and len(records) == len(book.invoices)
    stamps = [field(r, "lastModifiedDate") for r in records]
    assert stamps == sorted(stamps)
    by_id = {r.get("internalId"): r for r in records}
    jpy = next(i for i in book.invoices.values() if i.currency == "JPY")
    assert "." not in field(by_id[str(jpy.id)], "total")
    assert Decimal(field(by_id[str(jpy.id)], "total")) == jpy.total
    usd = next(i for i in book.invoices.values() if i.currency == "USD")
    assert field(by_id[str(usd.id)], "total") == str(usd.total.quantize(Decimal("0.01")))
    voided = [i for i in book.invoices.values() if i.status == "voided"]
    assert voided
    for inv in voided:
        assert field(by_id[str(inv.id)], "status") == "Voided"
        assert Decimal(field(by_id[str(inv.id)], "amountRemaining")) == 0
    sent = next(i for i in book.invoices.values() if i.sent_date)
    sent_field = next(cf for cf in by_id[str(sent.id)].iter(f"{{{CORE}}}customField")
                      if cf.get("scriptId") == "custbody_arhub_sent_date")
    assert sent_field.findtext(f"{{{CORE}}}value") == sent.sent_date.strftime("%Y-%m-%dT00:00:00Z")
    assert field(by_id[str(sent.id)], "tranDate").endswith("T00:00:00Z")


def test_payment_pages_validate_with_several_applications_and_unapplied_overpayments(base_url, schema, book):
    """Payment pages validate; a payment spread over several invoices lists each in applyList with the
    invoice's internalId as doc; overpayments show unapplied > 0."""
    records, _ = pull_all(base_url, schema, "payment", page_size=500)
    assert len(records) == len(book.payments)
    by_id = {r.get("internalId"): r for r in records}
    multi = next(p for p in book.payments.values() if len(p.applications) > 1)
    applies = by_id[str(multi.id)].findall(f".//{{{NS['tranCust']}}}applyList/{{{NS['tranCust']}}}apply")
    assert [a.findtext(f"{{{NS['tranCust']}}}doc") for a in applies] == [str(a.invoice_id) for a in multi.applications]
    assert [a.findtext(f"{{{NS['tranCust']}}}refNum") for a in applies] == \
        [book.invoices[a.invoice_id].number for a in multi.applications]
    over = [p for p in book.payments.values() if p.unapplied > 0]
    assert over, "the generated book has overpayments"
    for pay in over:
        assert Decimal(field(by_id[str(pay.id)], "unapplied")) == pay.unapplied > 0
        assert Decimal(field(by_id[str(pay.id)], "payment")) == pay.amount


def test_credit_memo_and_currency_rate_pages_validate(base_url, schema, book):
    """Credit memo pages (applyList, unapplied) and CurrencyRate pages (base currency USD) validate."""
    memos, _ = pull_all(base_url, schema, "credit_memo")
    assert len(memos) == len(book.credit_memos)
    unapplied = next(m for m in book.credit_memos.values() if m.unapplied > 0)
    rec = next(r for r in memos if r.get("internalId") == str(unapplied.id))
    assert Decimal(field(rec, "unapplied")) == unapplied.unapplied
    rates, _ = pull_all(base_url, schema, "fx_rate", page_size=1000)
    assert len(rates) == len(book.fx_rates)
    base_names = {r.find(f"{{{NS['listAcct']}}}baseCurrency/{{{CORE}}}name").text for r in rates}
    assert base_names == {"USD"}


def test_last_modified_filters_after_on_or_after_and_within(base_url, schema, book):
    """lastModifiedDate onOrAfter includes the boundary, after excludes it, within is inclusive."""
    stamps = sorted(i.modified for i in book.invoices.values())
    pivot = stamps[len(stamps) // 2]
    iso = pivot.strftime("%Y-%m-%dT%H:%M:%SZ")

    def count(op, extra=""):
        flt = f'<cm:lastModifiedDate operator="{op}"><c:searchValue>{iso}</c:searchValue>{extra}</cm:lastModifiedDate>'
        result = body_child(post(base_url, search_body("invoice", flt), page_size=5))
        assert_valid(schema, result)
        return int(result.findtext(f"{{{CORE}}}searchResult/{{{CORE}}}totalRecords"))

    assert count("onOrAfter") == sum(1 for s in stamps if s >= pivot)
    assert count("after") == sum(1 for s in stamps if s > pivot)
    end = pivot + timedelta(days=3)
    assert count("within", f"<c:searchValue2>{end:%Y-%m-%dT%H:%M:%SZ}</c:searchValue2>") == \
        sum(1 for s in stamps if pivot <= s <= end)


def test_page_size_comes_from_search_preferences_and_is_clamped(base_url, book):
    """pageSize from searchPreferences: below 5 becomes 5, above 1000 becomes 1000, absent is 1000."""
    def size(page_size):
        result = body_child(post(base_url, search_body("customer"), page_size=page_size))
        return int(result.findtext(f"{{{CORE}}}searchResult/{{{CORE}}}pageSize"))

    assert size(2) == 5
    assert size(5000) == 1000
    assert size(None) == 1000


def test_search_more_serves_the_snapshot_with_current_content(base_url, schema, book):
    """A record modified after the first search keeps its place in the snapshot (not moved to the
    end, not served twice) but is rendered with its current content; a bad page index fails."""
    first = body_child(post(base_url, search_body("invoice"), page_size=100))
    result = first.find(f"{{{CORE}}}searchResult")
    search_id, total = result.findtext(f"{{{CORE}}}searchId"), int(result.findtext(f"{{{CORE}}}totalRecords"))
    second_page_ids = [int(r.get("internalId")) for r in
                       records_of(body_child(post(base_url, more_body(search_id, 2), page_size=100)))]
    target = book.invoices[second_page_ids[10]]
    if target.status == "voided":
        target = book.invoices[second_page_ids[11]]
    with book.lock:
        target.memo = "changed between pages ü"
        target.modified = max(i.modified for i in book.invoices.values()) + timedelta(seconds=1)
        book._touch("invoice")
    again = body_child(post(base_url, more_body(search_id, 2), page_size=100))
    assert_valid(schema, again)
    recs = records_of(again)
    assert [int(r.get("internalId")) for r in recs] == second_page_ids
    changed = next(r for r in recs if r.get("internalId") == str(target.id))
    assert field(changed, "memo") == "changed between pages ü"
    last_page = -(-total // 100)
    all_ids = []
    for page in range(1, last_page + 1):
        all_ids += [r.get("internalId") for r in records_of(body_child(post(base_url, more_body(search_id, page)))) ]
    assert all_ids.count(str(target.id)) == 1 and len(all_ids) == total
    bad = body_child(post(base_url, more_body(search_id, last_page + 1)))
    assert_valid(schema, bad)
    status = bad.find(f"{{{CORE}}}searchResult/{{{CORE}}}status")
    assert status.get("isSuccess") == "false"
    assert status.findtext(f"{{{CORE}}}statusDetail/{{{CORE}}}code") == "INVALID_PAGE_INDEX"


def test_get_deleted_validates_and_pages(base_url, schema, book):
    """getDeleted returns the book's deleted invoices (RecordRef with type and internalId), paged by
    pageIndex with the searchPreferences page size, filtered by deletedDate."""
    deleted = sorted((d for d in book.deleted if d.kind == "invoice"), key=lambda d: (d.deleted_at, d.id))
    assert len(deleted) >= 5
    seen = []
    page, pages = 1, 1
    while page <= pages:
        answer = body_child(post(base_url, deleted_body(page=page), page_size=5))
        assert_valid(schema, answer)
        result = answer.find(f"{{{CORE}}}getDeletedResult")
        pages = int(result.findtext(f"{{{CORE}}}totalPages"))
        for rec in result.iter(f"{{{CORE}}}deletedRecord"):
            ref = rec.find(f"{{{CORE}}}record")
            assert ref.get("type") == "invoice"
            seen.append(int(ref.get("internalId")))
        page += 1
    assert seen == [d.id for d in deleted]
    cut = deleted[len(deleted) // 2].deleted_at
    flt = f'<c:deletedDate operator="after"><c:searchValue>{cut:%Y-%m-%dT%H:%M:%SZ}</c:searchValue></c:deletedDate>'
    later = body_child(post(base_url, deleted_body(date_filter=flt)))
    assert int(later.findtext(f".//{{{CORE}}}totalRecords")) == sum(1 for d in deleted if d.deleted_at > cut)


# ---------------------------------------------------------------------- auth
@pytest.mark.parametrize("method", ["passport", "ws_security", "basic"])
def test_other_auth_methods_are_accepted(base_url, method):
    """The legacy passport header, a WS-Security UsernameToken and HTTP Basic all authenticate."""
    kwargs = {}
    if method == "passport":
        kwargs["auth"] = (f"<m:passport><c:email>{CREDS['email']}</c:email><c:password>{CREDS['password']}"
                          f"</c:password><c:account>{CREDS['account']}</c:account></m:passport>")
    elif method == "ws_security":
        kwargs["auth"] = (
            '<wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
            f"<wsse:UsernameToken><wsse:Username>{CREDS['username']}</wsse:Username>"
            f"<wsse:Password>{CREDS['password']}</wsse:Password></wsse:UsernameToken></wsse:Security>")
    else:
        kwargs["auth"] = ""
        kwargs["http_auth"] = (CREDS["username"], CREDS["password"])
    answer = post(base_url, search_body("customer"), page_size=5, **kwargs)
    assert answer.status_code == 200
    assert body_child(answer).find(f"{{{CORE}}}searchResult/{{{CORE}}}status").get("isSuccess") == "true"


@pytest.mark.parametrize("case", ["bad_signature", "wrong_account", "no_credentials", "replayed_nonce",
                                  "stale_timestamp", "bad_password"])
def test_bad_credentials_get_a_valid_soap_fault(base_url, schema, case):
    """Wrong or missing credentials answer HTTP 500 with a SOAP Fault whose detail is a NetSuite fault
    element (invalidCredentialsFault / invalidAccountFault / invalidSessionFault) valid per the XSD."""
    kwargs = {}
    if case == "bad_signature":
        kwargs["auth"] = token_passport(secret_override="wrong&secret")
    elif case == "wrong_account":
        kwargs["auth"] = token_passport({**CREDS, "account": "TSTDRV0000000"})
    elif case == "no_credentials":
        kwargs["auth"] = ""
    elif case == "stale_timestamp":
        kwargs["auth"] = token_passport(timestamp=int(time.time()) - 3600)
    elif case == "bad_password":
        kwargs["auth"] = (f"<m:passport><c:email>{CREDS['email']}</c:email><c:password>nope</c:password>"
                          f"<c:account>{CREDS['account']}</c:account></m:passport>")
    else:
        header = token_passport(nonce="fixed-nonce-123", timestamp=int(time.time()))
        assert post(base_url, search_body("customer"), auth=header, page_size=5).status_code == 200
        kwargs["auth"] = header
    answer = post(base_url, search_body("customer"), page_size=5, **kwargs)
    assert answer.status_code == 500
    detail = fault_detail(answer)
    assert_valid(schema, detail)
    expected = {"wrong_account": "invalidAccountFault", "no_credentials": "invalidSessionFault"}
    assert etree.QName(detail).localname == expected.get(case, "invalidCredentialsFault")
    assert body_child(answer).findtext("faultstring")


def test_unknown_operation_is_a_soap_fault(base_url, schema):
    """An operation the emulator does not implement answers a SOAP fault naming it."""
    answer = post(base_url, "<m:getServerTime/>")
    assert answer.status_code == 500
    detail = fault_detail(answer)
    assert_valid(schema, detail)
    assert "getServerTime" in body_child(answer).findtext("faultstring")


# ---------------------------------------------------------------------- faults
def test_status_faults_with_retry_after_then_normal_service(base_url, faults):
    """Queued 503 and 429 faults answer that status (with Retry-After) once each, then service resumes."""
    faults.push(Fault(status=503, retry_after=2), Fault(status=429, retry_after=7))
    first = post(base_url, search_body("customer"), page_size=5)
    second = post(base_url, search_body("customer"), page_size=5)
    third = post(base_url, search_body("customer"), page_size=5)
    assert (first.status_code, first.headers["Retry-After"]) == (503, "2")
    assert (second.status_code, second.headers["Retry-After"]) == (429, "7")
    assert third.status_code == 200


def test_soap_fault_switch_answers_a_valid_unexpected_error_fault(base_url, schema, faults):
    """body="soap_fault" answers HTTP 500 with an unexpectedErrorFault valid per platform.faults.xsd."""
    faults.push(Fault(status=500, body="soap_fault"))
    answer = post(base_url, search_body("customer"), page_size=5)
    assert answer.status_code == 500
    detail = fault_detail(answer)
    assert_valid(schema, detail)
    assert etree.QName(detail).localname == "unexpectedErrorFault"
    assert detail.findtext(f"{{{NS['platformFaults']}}}code") == "UNEXPECTED_ERROR"


def test_malformed_and_external_entity_bodies(base_url, faults):
    """body="malformed" is truncated XML; body="external_entity" declares an external entity on
    file:///etc/passwd in a DOCTYPE (which a safe parser must refuse)."""
    faults.push(Fault(body="malformed"), Fault(body="external_entity"))
    broken = post(base_url, search_body("customer"), page_size=5)
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(broken.content)
    evil = post(base_url, search_body("customer"), page_size=5)
    assert b'<!ENTITY xxe SYSTEM "file:///etc/passwd">' in evil.content
    assert b"&xxe;" in evil.content
    assert b"root:" not in evil.content


def test_duplicate_and_vanish_faults_shape_the_page(base_url, schema, faults):
    """body="duplicate" repeats a record in the page; body="vanish" drops one; both still validate."""
    normal = [r.get("internalId") for r in records_of(body_child(post(base_url, search_body("customer"), page_size=20)))]
    faults.push(Fault(body="duplicate"), Fault(body="vanish"))
    dup = body_child(post(base_url, search_body("customer"), page_size=20))
    gone = body_child(post(base_url, search_body("customer"), page_size=20))
    assert_valid(schema, dup)
    assert_valid(schema, gone)
    dup_ids = [r.get("internalId") for r in records_of(dup)]
    gone_ids = [r.get("internalId") for r in records_of(gone)]
    assert len(dup_ids) == len(normal) + 1 and sorted(set(dup_ids)) == sorted(normal)
    assert len(gone_ids) == len(normal) - 1 and set(gone_ids) < set(normal)


def test_delay_fault_delays_the_answer(base_url, faults):
    """A delay fault holds the answer back for that long."""
    faults.push(Fault(delay=0.6))
    started = time.monotonic()
    assert post(base_url, search_body("customer"), page_size=5).status_code == 200
    assert time.monotonic() - started >= 0.6
