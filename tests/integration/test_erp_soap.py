"""The generic SOAP connector with the NetSuite 2023_2 preset against the NetSuite emulator over
real HTTP: paging, every auth type, incremental pulls, deletions, retries and error translation."""
from __future__ import annotations

import copy
import logging
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from connectors.erp_soap import SoapConnector
from connectors.exceptions import (AuthError, ConnectorTimeout, MalformedResponse, RateLimited, RemoteError,
                                   UnsafeXml)
from connectors.sandbox.book import Book
from connectors.sandbox.faults import Fault
from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS, make_app

PRESET_PATH = Path(__file__).resolve().parents[2] / "connectors" / "presets" / "netsuite-2023_2.yaml"
MSGS = "urn:messages_2023_2.platform.webservices.netsuite.com"
CORE = "urn:core_2023_2.platform.webservices.netsuite.com"
PREFS = f"{{{MSGS}}}searchPreferences"
UTC = timezone.utc
BAD = "Xq9-bad-secret"


def load_preset(page_size: int = 500, timeout: float = 10, auth: dict | None = None, retries: int = 3) -> dict:
    preset = yaml.safe_load(PRESET_PATH.read_text(encoding="utf-8"))
    preset = copy.deepcopy(preset)
    conn = preset["connection"]
    conn["soap_headers"][PREFS]["pageSize"] = page_size
    conn["timeout"] = timeout
    conn["retries"] = {"max": retries, "backoff": 0.01, "max_sleep": 0.05}
    if auth is not None:
        conn["auth"] = auth
    return preset


AUTHS = {
    "token_passport": None,  # the preset's own
    "passport": {"type": "passport", "header": f"{{{MSGS}}}passport", "fields_namespace": CORE},
    "ws_security_username": {"type": "ws_security_username"},
    "basic": {"type": "basic"},
}


pytestmark = pytest.mark.usefixtures("clear_faults")


@pytest.fixture(scope="module")
def book() -> Book:
    return Book(customers=250, invoices=3000, seed=5)



def connector(base_url: str, **kwargs) -> SoapConnector:
    credentials = kwargs.pop("credentials", SANDBOX_CREDENTIALS)
    return SoapConnector(load_preset(**kwargs), credentials, endpoint=f"{base_url}/services/NetSuitePort_2023_2")


def ids(pages) -> list[str]:
    return [r["internalId"] for page in pages for r in page.records]


# ---------------------------------------------------------------------- paging and auth
@pytest.mark.parametrize("auth", list(AUTHS))
def test_pulls_every_page_of_customers_invoices_and_payments_with_each_auth_type(base_url, book, auth):
    """With token_passport, passport, WS-Security UsernameToken and HTTP Basic, the connector pulls every
    page (search, then searchMoreWithId up to totalPages) and returns every record exactly once."""
    conn = connector(base_url, auth=AUTHS[auth])
    try:
        for obj, records in (("customer", book.customers), ("invoice", book.invoices), ("payment", book.payments)):
            pages = list(conn.pull(obj, None))
            assert [p.number for p in pages] == list(range(1, len(pages) + 1))
            assert pages[0].total_pages == len(pages) == -(-len(records) // 500)
            got = ids(pages)
            assert sorted(map(int, got)) == sorted(records) and len(got) == len(set(got))
            assert pages[-1].server_time is not None and pages[-1].server_time.tzinfo is not None
    finally:
        conn.close()


def test_records_are_plain_dicts_with_exact_amounts(base_url, book):
    """Records are plain dicts/lists/str: amounts stay exact strings (JPY without decimals), xsi:type is
    `_type`, attributes are keys, applyList.apply and customFieldList.customField are always lists."""
    conn = connector(base_url, page_size=1000)
    invoices = {r["internalId"]: r for p in conn.pull("invoice", None) for r in p.records}
    jpy = next(i for i in book.invoices.values() if i.currency == "JPY")
    rec = invoices[str(jpy.id)]
    assert rec["_type"] == "Invoice" and rec["total"] == str(jpy.total) and "." not in rec["total"]
    assert rec["currency"] == {"internalId": "5", "name": "JPY"}
    assert isinstance(rec["itemList"]["item"], list)
    payments = {r["internalId"]: r for p in conn.pull("payment", None) for r in p.records}
    single = next(p for p in book.payments.values() if len(p.applications) == 1)
    applies = payments[str(single.id)]["applyList"]["apply"]
    assert isinstance(applies, list) and applies[0]["doc"] == str(single.applications[0].invoice_id)
    multi = next(p for p in book.payments.values() if len(p.applications) > 2)
    assert len(payments[str(multi.id)]["applyList"]["apply"]) == len(multi.applications)
    customer = conn.sample("customer")
    assert isinstance(customer["customFieldList"]["customField"], list)
    assert conn.sample("fx_rate")["_type"] == "CurrencyRate"


def test_wsdl_loaded_from_the_emulator_url(base_url, book):
    """The WSDL (and its XSDs) can be loaded from a URL; the preset's endpoint is still overridable."""
    preset = load_preset()
    preset["connection"]["wsdl"] = f"{base_url}/wsdl/netsuite.wsdl"
    conn = SoapConnector(preset, SANDBOX_CREDENTIALS, endpoint=f"{base_url}/services/NetSuitePort_2023_2")
    assert sorted(map(int, ids(conn.pull("customer", None)))) == sorted(book.customers)


@pytest.mark.parametrize("auth,bad,expected", [
    ("token_passport", {"token_secret": BAD}, "signature does not match"),
    ("token_passport", {"account": "TSTDRV0000000"}, "Invalid account"),
    ("passport", {"password": BAD}, "invalid email address or password"),
    ("ws_security_username", {"password": BAD}, "WS-Security username or password"),
    ("basic", {"password": BAD}, "HTTP Basic username or password"),
])
def test_wrong_credentials_raise_auth_error_naming_the_problem(base_url, auth, bad, expected):
    """A credentials fault becomes AuthError carrying the server's explanation (and no secret)."""
    conn = connector(base_url, auth=AUTHS[auth], credentials={**SANDBOX_CREDENTIALS, **bad})
    with pytest.raises(AuthError) as caught:
        next(conn.pull("customer", None))
    assert expected in str(caught.value)
    assert BAD not in str(caught.value) and BAD not in repr(caught.value)
    assert pickle.loads(pickle.dumps(caught.value)).message == caught.value.message


def test_missing_credential_raises_auth_error_naming_the_key(base_url):
    """A credentials dict without a key the auth type needs is an AuthError naming that key."""
    creds = {k: v for k, v in SANDBOX_CREDENTIALS.items() if k != "token_secret"}
    with pytest.raises(AuthError, match="token_secret"):
        next(connector(base_url, credentials=creds).pull("customer", None))


def test_repr_and_logs_carry_no_secrets(base_url, caplog):
    """Neither repr() nor DEBUG logs (zeep logs whole envelopes) show passwords or token secrets."""
    conn = connector(base_url, auth=AUTHS["passport"])
    with caplog.at_level(logging.DEBUG):
        list(conn.pull("customer", None))
    secrets = [SANDBOX_CREDENTIALS[k] for k in ("password", "consumer_secret", "token_secret")]
    for secret in secrets:
        assert secret not in repr(conn)
        assert secret not in caplog.text


# ---------------------------------------------------------------------- incremental and deletions
def test_incremental_pull_returns_only_records_modified_since(base_url, book):
    """`since` becomes lastModifiedDate onOrAfter: only invoices modified at or after it come back."""
    stamps = sorted(i.modified for i in book.invoices.values())
    since = stamps[len(stamps) * 3 // 4]
    got = ids(connector(base_url).pull("invoice", since))
    expected = {i.id for i in book.invoices.values() if i.modified >= since}
    assert sorted(map(int, got)) == sorted(expected)
    assert len(got) < len(book.invoices)


def test_pull_deleted_returns_the_deleted_invoices(base_url, book):
    """getDeleted (paged by pageIndex) yields every deleted invoice as {id, deleted_at, type}."""
    rows = [row for batch in connector(base_url, page_size=5).pull_deleted("invoice", None) for row in batch]
    deleted = [d for d in book.deleted if d.kind == "invoice"]
    assert sorted(int(r["id"]) for r in rows) == sorted(d.id for d in deleted)
    assert all(r["type"] == "invoice" and r["deleted_at"].tzinfo is not None for r in rows)
    cut = sorted(d.deleted_at for d in deleted)[len(deleted) // 2]
    later = [row for batch in connector(base_url).pull_deleted("invoice", cut) for row in batch]
    assert sorted(int(r["id"]) for r in later) == sorted(d.id for d in deleted if d.deleted_at >= cut)


def test_record_modified_between_pages_arrives_once_with_current_content(serve_wsgi):
    """Records changed while the connector pages through a search keep their place in NetSuite's
    snapshot: each arrives exactly once, and those on later pages carry their new content."""
    book = Book(customers=100, invoices=1500, seed=9)
    base_url = serve_wsgi(make_app(book))
    pages = connector(base_url, page_size=200).pull("invoice", None)
    first = next(pages)
    served_first = {r["internalId"] for r in first.records}
    changed = book.modify_invoices(60, now=datetime.now(UTC) + timedelta(seconds=5), seed=3)
    rest = list(pages)
    everything = [r for p in [first, *rest] for r in p.records]
    got = [r["internalId"] for r in everything]
    assert len(got) == len(set(got)) == len(book.invoices)
    later = {r["internalId"]: r for p in rest for r in p.records}
    checked = 0
    for inv_id in changed:
        if str(inv_id) in served_first:
            continue
        assert later[str(inv_id)]["memo"] == book.invoices[inv_id].memo
        assert later[str(inv_id)]["otherRefNum"] == book.invoices[inv_id].po_number
        checked += 1
    assert checked > 0


# ---------------------------------------------------------------------- retries and errors
def test_503_then_success_is_retried(base_url, book, faults):
    """A 503 (and a 429 with Retry-After) is retried with backoff and the pull completes."""
    faults.push(Fault(status=503, retry_after=0), Fault(status=429, retry_after=0))
    before = faults.served
    got = ids(connector(base_url, page_size=1000).pull("customer", None))
    assert sorted(map(int, got)) == sorted(book.customers)
    assert faults.served - before == 3


def test_persistent_503_and_429_give_up_with_remote_error_and_rate_limited(base_url, faults):
    """When retries run out, 5xx becomes RemoteError and 429 becomes RateLimited (with the status)."""
    faults.push(*[Fault(status=503) for _ in range(3)])
    with pytest.raises(RemoteError) as caught:
        next(connector(base_url, retries=2).pull("customer", None))
    assert caught.value.status == 503 and caught.value.retryable
    faults.clear()
    faults.push(*[Fault(status=429, retry_after=0) for _ in range(3)])
    with pytest.raises(RateLimited):
        next(connector(base_url, retries=2).pull("customer", None))


def test_soap_fault_becomes_remote_error_with_the_fault_message(base_url, faults):
    """A SOAP Fault (HTTP 500) is not retried and becomes RemoteError carrying faultstring and code."""
    faults.push(Fault(status=500, body="soap_fault"))
    with pytest.raises(RemoteError) as caught:
        next(connector(base_url).pull("customer", None))
    assert "An unexpected error occurred" in str(caught.value)
    assert "UNEXPECTED_ERROR" in str(caught.value)


def test_fault_on_a_later_page_surfaces_mid_pull(base_url, faults):
    """A fault on searchMoreWithId surfaces after the earlier pages were yielded."""
    faults.push(Fault(status=500, body="soap_fault", after=1))
    pages = connector(base_url, page_size=50).pull("customer", None)
    assert next(pages).number == 1
    with pytest.raises(RemoteError):
        next(pages)


def test_malformed_xml_raises_malformed_response(base_url, faults):
    """Truncated XML becomes MalformedResponse."""
    faults.push(Fault(body="malformed"))
    with pytest.raises(MalformedResponse) as caught:
        next(connector(base_url).pull("customer", None))
    assert not isinstance(caught.value, UnsafeXml)


def test_external_entity_raises_unsafe_xml_and_never_reads_the_file(base_url, faults):
    """A response with a DOCTYPE declaring file:///etc/passwd is refused with UnsafeXml; the file's
    content appears nowhere."""
    faults.push(Fault(body="external_entity"))
    with pytest.raises(UnsafeXml) as caught:
        list(connector(base_url).pull("customer", None))
    text = f"{caught.value} {caught.value.detail} {caught.value!r}"
    assert "root:" not in text and "/bin/" not in text


def test_timeout_raises_connector_timeout(base_url, faults):
    """An answer slower than the connector's timeout becomes ConnectorTimeout (retryable)."""
    faults.push(Fault(delay=2.0))
    with pytest.raises(ConnectorTimeout) as caught:
        next(connector(base_url, timeout=0.5).pull("customer", None))
    assert caught.value.retryable


def test_failed_search_status_becomes_remote_error(base_url, book):
    """A search whose status isSuccess is false (an invalid searchMoreWithId) raises RemoteError."""
    preset = load_preset(page_size=50)
    preset["objects"]["customer"]["request"]["next"]["args"]["searchId"] = "no-such-search"
    conn = SoapConnector(preset, SANDBOX_CREDENTIALS, endpoint=f"{base_url}/services/NetSuitePort_2023_2")
    pages = conn.pull("customer", None)
    next(pages)
    with pytest.raises(RemoteError, match="INVALID_SEARCH_MORE"):
        next(pages)


def test_http_401_becomes_auth_error(base_url, faults):
    """An HTTP 401/403 answer is AuthError (not retried), whatever fault body comes with it."""
    faults.push(Fault(status=401))
    before = faults.served
    with pytest.raises(AuthError) as caught:
        next(connector(base_url).pull("customer", None))
    assert caught.value.status == 401 and faults.served - before == 1


def test_unknown_operation_in_the_preset_is_a_connector_error(base_url):
    """A preset naming an operation the WSDL lacks fails clearly before any request is sent."""
    from connectors.exceptions import ConnectorError

    preset = load_preset()
    preset["objects"]["customer"]["request"]["operation"] = "searchEverything"
    conn = SoapConnector(preset, SANDBOX_CREDENTIALS, endpoint=f"{base_url}/services/NetSuitePort_2023_2")
    with pytest.raises(ConnectorError, match="searchEverything"):
        next(conn.pull("customer", None))
