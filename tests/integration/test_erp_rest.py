"""The generic REST connector against the Xero emulator, over real HTTP on loopback.

Besides Xero's own behaviour the emulator offers testing-only extensions (see
``connectors/sandbox/xero/``), used here solely to exercise the connector's generic modes:
``_paging=offset|cursor|next_link`` query flags for the other pagination styles, a
``modifiedAfter`` query parameter for query-style modified-since, and ``credentials`` that
make it accept HTTP Basic, an API-key header and static bearer tokens.

Retries sleep through an injected function that records the delays instead of waiting; every
request still goes through requests, a socket and the werkzeug server.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import yaml

from connectors.erp_rest import Page, RestConnector
from connectors.exceptions import AuthError, ConnectorTimeout, MalformedResponse, RateLimited, RemoteError
from connectors.sandbox.book import Book
from connectors.sandbox.faults import Fault
from connectors.sandbox.server import SandboxServer
from connectors.sandbox.xero import SANDBOX_CREDENTIALS, xero_id

UTC = timezone.utc
PRESET_PATH = Path(__file__).resolve().parents[2] / "connectors/presets/xero.yaml"
BASIC = {"username": "erp-user", "password": "pa55-w0rd-basic"}
API_KEY = "k-4f1d0c9e-api-key"
STATIC_TOKEN = "static-bearer-token-9a8b7c"
EMULATOR_CREDENTIALS = {"basic": BASIC, "api_key": {"header": "X-Api-Key", "key": API_KEY}, "tokens": [STATIC_TOKEN]}
SECRETS = (SANDBOX_CREDENTIALS["client_secret"], BASIC["password"], API_KEY, STATIC_TOKEN)


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(Book(customers=60, invoices=900, seed=5),
                       credentials={"xero": EMULATOR_CREDENTIALS}) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_leftover_faults(sandbox):
    sandbox.faults.clear()
    yield
    sandbox.faults.clear()


@pytest.fixture
def sleeps():
    return []


def xero_preset() -> dict:
    return yaml.safe_load(PRESET_PATH.read_text(encoding="utf-8"))


def xero_connector(server, sleeps=None, preset=None, credentials=None, **kwargs) -> RestConnector:
    return RestConnector(preset or xero_preset(), credentials or SANDBOX_CREDENTIALS,
                         endpoint=f"{server.xero_url}/api.xro/2.0", token_url=f"{server.xero_url}/connect/token",
                         sleep=(sleeps.append if sleeps is not None else None) or (lambda s: None), **kwargs)


def generic_preset(auth: dict, pagination: dict | None = None, params: dict | None = None,
                   modified_since: dict | None = None, retries: dict | None = None, timeout: float = 10) -> dict:
    """A preset that knows nothing of Xero beyond paths and record keys."""
    return {
        "name": "generic", "kind": "rest",
        "connection": {
            "base_url": "http://invalid.example/overridden",
            "timeout": timeout,
            "retries": retries or {"max": 3, "backoff": 0.5, "max_sleep": 5},
            "headers": {"Accept": "application/json"},
            "auth": auth,
            "modified_since": modified_since or {"style": "header", "name": "If-Modified-Since", "format": "http-date"},
            "pagination": pagination or {"style": "page", "param": "page", "size_param": "pageSize", "size": 100},
        },
        "objects": {"invoice": {"request": {"path": "/Invoices", "params": params or {}, "records_path": "Invoices"}},
                    "customer": {"request": {"path": "/Contacts", "params": {"includeArchived": "true"},
                                             "records_path": "Contacts"}}},
    }


def expected_invoice_ids(book: Book, since: datetime | None = None) -> list[str]:
    live = [(inv.modified, i, xero_id("invoice", i)) for i, inv in book.invoices.items()
            if since is None or inv.modified >= since]
    gone = [(d.deleted_at, d.id, xero_id("invoice", d.id)) for d in book.deleted
            if d.kind == "invoice" and (since is None or d.deleted_at >= since)]
    return [x[2] for x in sorted(live + gone)]


def ids(pages: list[Page]) -> list[str]:
    return [r["InvoiceID"] for p in pages for r in p.records]


# ------------------------------------------------------------------------ the preset
def test_xero_preset_pulls_every_object_with_oauth_client_credentials(sandbox):
    """With the shipped preset and SANDBOX_CREDENTIALS the connector fetches a token, sends the
    tenant header and pulls every page of every object; amounts arrive as Decimal, never float;
    each Page has its 1-based number, total_pages and the server's Date as UTC."""
    connector = xero_connector(sandbox, preset=xero_preset())
    pages = list(connector.pull("invoice", None))
    assert ids(pages) == expected_invoice_ids(sandbox.book)
    assert [p.number for p in pages] == list(range(1, len(pages) + 1)) and pages[0].total_pages == len(pages)
    assert abs(pages[0].server_time - datetime.now(UTC)) < timedelta(minutes=1)
    record = next(r for r in pages[0].records if r["Status"] != "DELETED")
    assert isinstance(record["Total"], Decimal) and isinstance(record["LineItems"][0]["Quantity"], Decimal)
    counts = {name: sum(len(p.records) for p in connector.pull(name, None))
              for name in ("customer", "credit_memo", "payment", "currency")}
    book = sandbox.book
    assert counts == {"customer": len(book.customers), "credit_memo": len(book.credit_memos),
                      "payment": sum(len(p.applications) for p in book.payments.values()), "currency": 5}
    assert connector.tokens_fetched == 1
    assert connector.sample("customer")["ContactNumber"].startswith("CUST-")
    assert list(connector.pull_deleted("invoice", None)) == []  # Xero reports deletions as Status DELETED
    connector.close()


# ------------------------------------------------------------------ auth and paging modes
@pytest.mark.parametrize("auth,credentials", [
    ({"type": "bearer"}, {"token": STATIC_TOKEN}),
    ({"type": "basic"}, BASIC),
    ({"type": "api_key", "header": "X-Api-Key"}, {"api_key": API_KEY}),
    ({"type": "oauth2_client_credentials", "token_url": "../../connect/token", "client_auth": "body"},
     {"client_id": SANDBOX_CREDENTIALS["client_id"], "client_secret": SANDBOX_CREDENTIALS["client_secret"]}),
], ids=["bearer", "basic", "api_key", "oauth2_body_relative_token_url"])
def test_each_auth_type_pulls_all_pages(sandbox, auth, credentials):
    """Bearer, HTTP Basic, API-key header and OAuth2 client credentials (secret in the form body,
    token URL relative to the base URL) each authenticate every page of a full pull."""
    preset = generic_preset(auth)
    if auth["type"] == "oauth2_client_credentials":
        preset["connection"]["headers"]["xero-tenant-id"] = "{credentials.tenant_id}"
        credentials = {**credentials, "tenant_id": SANDBOX_CREDENTIALS["tenant_id"]}
    connector = RestConnector(preset, credentials, endpoint=f"{sandbox.xero_url}/api.xro/2.0")
    pages = list(connector.pull("invoice", None))
    assert ids(pages) == expected_invoice_ids(sandbox.book) and len(pages) == 10  # the 10th is empty


@pytest.mark.parametrize("pagination,params", [
    ({"style": "page", "param": "page", "size_param": "pageSize", "size": 100}, {}),
    ({"style": "offset", "offset_param": "offset", "limit_param": "limit", "size": 100}, {"_paging": "offset"}),
    ({"style": "cursor", "param": "cursor", "cursor_path": "meta.next_cursor", "size_param": "limit", "size": 100},
     {"_paging": "cursor"}),
    ({"style": "next_link", "next_path": "links.next", "size_param": "pageSize", "size": 100}, {"_paging": "next_link"}),
    ({"style": "next_link", "size_param": "pageSize", "size": 100}, {"_paging": "next_link"}),
], ids=["page", "offset", "cursor", "next_link_body", "next_link_header"])
def test_each_pagination_style_pulls_every_record_once(sandbox, pagination, params):
    """page, offset, cursor and next_link (body path or Link header) pagination each yield every
    record exactly once, in the server's order, and stop at the end."""
    connector = RestConnector(generic_preset({"type": "basic"}, pagination, params), BASIC,
                              endpoint=f"{sandbox.xero_url}/api.xro/2.0")
    pages = list(connector.pull("invoice", None))
    assert ids(pages) == expected_invoice_ids(sandbox.book)
    assert all(len(p.records) == 100 for p in pages[:-1])


@pytest.mark.parametrize("modified_since", [
    {"style": "header", "name": "If-Modified-Since", "format": "http-date"},
    {"style": "query", "name": "modifiedAfter", "format": "iso"},
    {"style": "query", "name": "modifiedAfter", "format": "iso-z"},
], ids=["header_http_date", "query_iso", "query_iso_z"])
def test_incremental_since_returns_only_changed_records(modified_since):
    """A pull with ``since`` returns exactly the records changed at or after it, whether the
    modified-since goes as an HTTP-date header or an ISO query parameter."""
    book = Book(customers=30, invoices=400, seed=9)
    with SandboxServer(book, credentials={"xero": EMULATOR_CREDENTIALS}) as sb:
        since = max(inv.modified for inv in book.invoices.values()).replace(microsecond=0) + timedelta(seconds=1)
        changed_at = since + timedelta(minutes=5)
        result = requests.post(f"{sb.url}/_sandbox/mutate", timeout=10, json={
            "action": "modify_invoices", "count": 25, "now": changed_at.isoformat()}).json()
        connector = RestConnector(generic_preset({"type": "basic"}, modified_since=modified_since), BASIC,
                                  endpoint=f"{sb.xero_url}/api.xro/2.0")
        got = ids(list(connector.pull("invoice", since)))
        assert sorted(got) == sorted(xero_id("invoice", i) for i in result["ids"]) and len(got) == 25
        assert len(ids(list(connector.pull("invoice", None)))) > 25


# ------------------------------------------------------------------------ token refresh
def test_token_is_refreshed_after_expiry():
    """With a short expires_in the connector fetches a new token before the old one expires
    and never sends an expired one (no 401 round trip)."""
    import time
    with SandboxServer(Book(customers=10, invoices=150, seed=2), credentials={"xero": {"expires_in": 1}}) as sb:
        connector = xero_connector(sb)
        first = list(connector.pull("invoice", None))
        time.sleep(1.0)
        sent_before = connector.requests_sent
        second = list(connector.pull("invoice", None))
        assert ids(first) == ids(second)
        assert connector.tokens_fetched == 2 and sb.app.mounts["/xero"].tokens_issued == 2
        # one token request plus one per page: no request was refused and retried
        assert connector.requests_sent - sent_before == 1 + len(second)


def test_a_401_fetches_a_new_token_once_then_succeeds(sandbox):
    """An API 401 with a cached token makes the connector fetch a fresh token and retry once."""
    connector = xero_connector(sandbox)
    assert connector.sample("currency")["Code"] == "USD"
    sandbox.faults.push(Fault(status=401, path="/Invoices"))
    pages = list(connector.pull("invoice", None))
    assert ids(pages) == expected_invoice_ids(sandbox.book)
    assert connector.tokens_fetched == 2


def test_repeated_401_raises_auth_error(sandbox):
    """A 401 that persists after one token refresh is an AuthError (status 401)."""
    connector = xero_connector(sandbox)
    sandbox.faults.push(Fault(status=401, path="/Invoices"), Fault(status=401, path="/Invoices"))
    with pytest.raises(AuthError) as info:
        list(connector.pull("invoice", None))
    assert info.value.status == 401


@pytest.mark.parametrize("auth,credentials", [
    ({"type": "bearer"}, {"token": "wrong-token"}),
    ({"type": "basic"}, {"username": "erp-user", "password": "wrong"}),
    ({"type": "api_key", "header": "X-Api-Key"}, {"api_key": "wrong"}),
    ({"type": "none"}, {}),
], ids=["bearer", "basic", "api_key", "none"])
def test_refused_credentials_raise_auth_error(sandbox, auth, credentials):
    """Credentials the server refuses (401) surface as AuthError, with no retries."""
    sleeps: list[float] = []
    connector = RestConnector(generic_preset(auth), credentials, endpoint=f"{sandbox.xero_url}/api.xro/2.0",
                              sleep=sleeps.append)
    with pytest.raises(AuthError) as info:
        list(connector.pull("invoice", None))
    assert info.value.status == 401 and sleeps == []


def test_bad_client_secret_raises_auth_error(sandbox):
    """The token endpoint refusing the client (400 invalid_client) is an AuthError."""
    creds = {**SANDBOX_CREDENTIALS, "client_secret": "not-the-secret"}
    with pytest.raises(AuthError):
        list(xero_connector(sandbox, credentials=creds).pull("invoice", None))


# ----------------------------------------------------------------------- retries
def test_429_honours_retry_after_then_succeeds(sandbox, sleeps):
    """A 429 with Retry-After: 3 makes the connector sleep 3 s and retry; the pull completes."""
    sandbox.faults.push(Fault(status=429, retry_after=3, path="/Invoices", after=2))
    preset = xero_preset()
    preset["connection"]["pagination"]["size"] = 100
    pages = list(xero_connector(sandbox, sleeps, preset=preset).pull("invoice", None))
    assert ids(pages) == expected_invoice_ids(sandbox.book)
    assert sleeps == [3.0]


def test_429_forever_raises_rate_limited(sandbox, sleeps):
    """429 on every attempt becomes RateLimited after the configured retries."""
    preset = generic_preset({"type": "basic"}, retries={"max": 2, "backoff": 0.5, "max_sleep": 5})
    sandbox.faults.push(*[Fault(status=429, retry_after=1, path="/Invoices") for _ in range(3)])
    connector = RestConnector(preset, BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0", sleep=sleeps.append)
    with pytest.raises(RateLimited):
        list(connector.pull("invoice", None))
    assert sleeps == [1.0, 1.0]


def test_503_twice_then_success_backs_off_exponentially(sandbox, sleeps):
    """Two 503s are retried after 0.5 s and 1 s (exponential backoff); then the pull completes."""
    preset = generic_preset({"type": "basic"})
    sandbox.faults.push(Fault(status=503, path="/Invoices"), Fault(status=503, path="/Invoices"))
    connector = RestConnector(preset, BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0", sleep=sleeps.append)
    assert ids(list(connector.pull("invoice", None))) == expected_invoice_ids(sandbox.book)
    assert sleeps == [0.5, 1.0]


def test_5xx_forever_raises_remote_error_after_max_retries(sandbox, sleeps):
    """A server answering 500 every time yields RemoteError (status 500, retryable) after
    max retries, with the backoff capped at max_sleep."""
    preset = generic_preset({"type": "basic"}, retries={"max": 4, "backoff": 1, "max_sleep": 3})
    sandbox.faults.push(*[Fault(status=500, path="/Invoices") for _ in range(5)])
    connector = RestConnector(preset, BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0", sleep=sleeps.append)
    with pytest.raises(RemoteError) as info:
        list(connector.pull("invoice", None))
    assert info.value.status == 500 and info.value.retryable
    assert sleeps == [1.0, 2.0, 3.0, 3.0]
    assert sandbox.faults.queue == []


def test_connection_refused_is_retried_then_remote_error(sleeps):
    """Nothing listening on the port: connection errors are retried with backoff, then RemoteError."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    preset = generic_preset({"type": "none"}, retries={"max": 2, "backoff": 0.25, "max_sleep": 5})
    connector = RestConnector(preset, {}, endpoint=f"http://127.0.0.1:{port}/api", sleep=sleeps.append)
    with pytest.raises(RemoteError) as info:
        list(connector.pull("invoice", None))
    assert info.value.retryable and sleeps == [0.25, 0.5]


def test_timeout_raises_connector_timeout(sandbox, sleeps):
    """A server slower than the timeout on every attempt yields ConnectorTimeout."""
    preset = generic_preset({"type": "basic"}, retries={"max": 1, "backoff": 0.1, "max_sleep": 1}, timeout=0.3)
    sandbox.faults.push(Fault(delay=1.0, path="/Invoices"), Fault(delay=1.0, path="/Invoices"))
    connector = RestConnector(preset, BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0", sleep=sleeps.append)
    with pytest.raises(ConnectorTimeout):
        list(connector.pull("invoice", None))
    assert sleeps == [0.1]


# -------------------------------------------------------------------- bad payloads
def test_malformed_json_raises_malformed_response_naming_url_and_page(sandbox):
    """A truncated JSON body on page 3 raises MalformedResponse naming the URL and page 3."""
    sandbox.faults.push(Fault(body="malformed", path="/Invoices", after=2))
    connector = RestConnector(generic_preset({"type": "basic"}), BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0")
    pages = connector.pull("invoice", None)
    assert len(next(pages).records) == 100 and len(next(pages).records) == 100
    with pytest.raises(MalformedResponse) as info:
        next(pages)
    assert "page 3" in str(info.value) and f"{sandbox.xero_url}/api.xro/2.0/Invoices" in str(info.value)


def test_missing_records_path_raises_malformed_response(sandbox):
    """A response without the preset's records_path raises MalformedResponse."""
    preset = generic_preset({"type": "basic"})
    preset["objects"]["invoice"]["request"]["records_path"] = "Data.Invoices"
    connector = RestConnector(preset, BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0")
    with pytest.raises(MalformedResponse) as info:
        list(connector.pull("invoice", None))
    assert "Data.Invoices" in str(info.value) and "page 1" in str(info.value)


def test_duplicate_and_vanished_records_come_through_as_served(sandbox):
    """A page with a record twice and a page with a record missing are passed on unchanged:
    deduplication and gap detection are the sync's job, not the connector's. With a
    total_pages_path the pull continues past the short (vanished) page to the last page."""
    sandbox.faults.push(Fault(body="duplicate", path="/Invoices"), Fault(body="vanish", path="/Invoices"))
    preset = generic_preset({"type": "basic"}, {"style": "page", "param": "page", "size_param": "pageSize",
                                                "size": 100, "total_pages_path": "pagination.pageCount"})
    connector = RestConnector(preset, BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0")
    pages = list(connector.pull("invoice", None))
    expected = expected_invoice_ids(sandbox.book)
    got = ids(pages)
    assert len(pages[0].records) == 101 and pages[0].records[0] == pages[0].records[1]
    assert len(pages[1].records) == 99
    assert len(pages) == pages[-1].total_pages == -(-len(expected) // 100)
    assert len(got) == len(expected) and set(got) == set(expected) - {expected[150]}


def test_a_short_page_ends_the_pull_when_the_total_is_unknown(sandbox):
    """Without a total_pages_path a short page is taken as the last one (the contract's rule), so a
    record vanishing from a page ends the pull early: the sync must reconcile on the next run."""
    sandbox.faults.push(Fault(body="vanish", path="/Invoices"))
    connector = RestConnector(generic_preset({"type": "basic"}), BASIC, endpoint=f"{sandbox.xero_url}/api.xro/2.0")
    pages = list(connector.pull("invoice", None))
    assert len(pages) == 1 and len(pages[0].records) == 99 and pages[0].total_pages is None

# ----------------------------------------------------------------------- secrets
def test_secrets_never_appear_in_repr_errors_or_logs(sandbox, caplog):
    """Neither repr(), exception messages nor log records (at DEBUG, through retries and a
    token refresh) contain the client secret, password, API key or tokens."""
    caplog.set_level(logging.DEBUG)
    texts = []
    connector = xero_connector(sandbox)
    texts.append(repr(connector))
    sandbox.faults.push(Fault(status=503, path="/Invoices"), Fault(status=401, path="/Invoices"))
    list(connector.pull("invoice", None))
    token = connector._token.value  # noqa: SLF001 (the test needs the live token to look for it)
    for auth, creds in (({"type": "basic"}, {"username": "u", "password": BASIC["password"] + "x"}),
                        ({"type": "api_key", "header": "X-Api-Key"}, {"api_key": API_KEY + "x"}),
                        ({"type": "bearer"}, {"token": STATIC_TOKEN + "x"})):
        bad = RestConnector(generic_preset(auth), creds, endpoint=f"{sandbox.xero_url}/api.xro/2.0")
        texts.append(repr(bad))
        with pytest.raises(AuthError) as info:
            list(bad.pull("invoice", None))
        texts.extend([str(info.value), repr(info.value), str(info.value.detail)])
    blob = "\n".join(texts) + caplog.text
    for secret in (*SECRETS, token):
        assert secret not in blob
