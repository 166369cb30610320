"""The NetSuite emulator's WSGI application (:class:`NetSuiteEmulator`) and :func:`make_app`.

Serves the WSDL and XSDs, parses SOAP requests (no DTDs, no entities), plays back faults,
authenticates (tokenPassport, passport, WS-Security, HTTP Basic) and answers ``search``,
``searchMoreWithId`` (paging a snapshot of ids) and ``getDeleted``. Rendering records as SOAP XML
is mixed in from :class:`~connectors.sandbox.netsuite.render.SoapRendering`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape as _esc

from lxml import etree
from werkzeug.wrappers import Request, Response

from connectors.sandbox.book import Book
from connectors.sandbox.faults import Fault, Faults
from connectors.sandbox.netsuite.render import UTC, SoapRendering, _dt

# the package directory is one level deeper than the old module: same contracts directory
CONTRACT_DIR = Path(__file__).resolve().parent.parent.parent / "contracts" / "netsuite-suitetalk-2023_2"
SERVICE_PATH = "/services/NetSuitePort_2023_2"
WSDL_PATH = "/wsdl/netsuite.wsdl"

#: Sandbox credentials (test values, not secrets of any real account).
SANDBOX_CREDENTIALS = {
    "account": "TSTDRV1234567",
    "consumer_key": "sandbox-consumer-key-0f3c9a",
    "consumer_secret": "sandbox-consumer-secret-7b21e4",
    "token_id": "sandbox-token-id-5d8e2f",
    "token_secret": "sandbox-token-secret-91ac03",
    "email": "integration@arhub.example.com",
    "password": "sandbox-password-Passw0rd!",
    "username": "arhub-integration",
    "role": "3",
}

NS = {
    "soapenv": "http://schemas.xmlsoap.org/soap/envelope/",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xsd": "http://www.w3.org/2001/XMLSchema",
    "platformCore": "urn:core_2023_2.platform.webservices.netsuite.com",
    "platformCommon": "urn:common_2023_2.platform.webservices.netsuite.com",
    "platformMsgs": "urn:messages_2023_2.platform.webservices.netsuite.com",
    "platformFaults": "urn:faults_2023_2.platform.webservices.netsuite.com",
    "listRel": "urn:relationships_2023_2.lists.webservices.netsuite.com",
    "listAcct": "urn:accounting_2023_2.lists.webservices.netsuite.com",
    "tranSales": "urn:sales_2023_2.transactions.webservices.netsuite.com",
    "tranCust": "urn:customers_2023_2.transactions.webservices.netsuite.com",
}
_XMLNS = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items())
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"

#: TransactionSearchBasic type value -> book kind; getDeleted type -> book kind
TRAN_TYPES = {"_invoice": "invoice", "_creditMemo": "credit_memo", "_customerPayment": "payment"}
RECORD_TYPES = {"customer": "customer", "invoice": "invoice", "creditMemo": "credit_memo",
                "customerPayment": "payment"}
KIND_RECORD_TYPE = {v: k for k, v in RECORD_TYPES.items()}
END_OF_DAY = datetime.max.time().replace(microsecond=0)

_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


# ---------------------------------------------------------------------- the app
class SoapFault(Exception):
    def __init__(self, element: str, code: str, message: str, faultcode: str = "soapenv:Server.userException",
                 http_status: int = 500):
        super().__init__(message)
        self.element, self.code, self.message = element, code, message
        self.faultcode, self.http_status = faultcode, http_status


@dataclass
class _Snapshot:
    keys: list  # (kind, id)
    page_size: int
    created: float


class NetSuiteEmulator(SoapRendering):
    def __init__(self, book: Book, faults: Faults | None = None, credentials: dict | None = None,
                 cache_size: int = 200_000):
        self.book = book
        self.faults = faults or Faults()
        self.credentials = dict(SANDBOX_CREDENTIALS if credentials is None else credentials)
        self._searches: OrderedDict[str, _Snapshot] = OrderedDict()
        self._lock = threading.Lock()
        self._nonces: OrderedDict[tuple, None] = OrderedDict()
        self._cache: dict = {}
        self._cache_size = cache_size
        self._wsdl = (CONTRACT_DIR / "netsuite.wsdl").read_text(encoding="utf-8")
        self.requests_served = 0

    # ------------------------------------------------------------------ WSGI
    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except SoapFault as fault:
            response = self._fault_response(fault)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = re.sub("/+", "/", request.path)
        if request.method == "GET" and path == WSDL_PATH:
            base = request.root_url.rstrip("/")  # includes a mount prefix (SCRIPT_NAME)
            text = re.sub(r'(<soap:address location=")[^"]*(")', rf"\g<1>{base}{SERVICE_PATH}\g<2>", self._wsdl)
            return Response(text, content_type="text/xml; charset=utf-8")
        match = re.fullmatch(r"/wsdl/xsd/([A-Za-z.]+)\.xsd", path)
        if request.method == "GET" and match:
            file = CONTRACT_DIR / "xsd" / f"{match.group(1)}.xsd"
            if not file.is_file():
                return Response("not found", status=404)
            text = file.read_text(encoding="utf-8").replace('schemaLocation=".//', 'schemaLocation="./')
            return Response(text, content_type="text/xml; charset=utf-8")
        if path == SERVICE_PATH:
            if request.method != "POST":
                return Response("SOAP endpoint: POST only", status=405, headers={"Allow": "POST"})
            return self.soap(request)
        return Response("not found", status=404)

    # ------------------------------------------------------------------ SOAP
    def soap(self, request: Request) -> Response:
        fault = self.faults.take(request.path)
        self.requests_served += 1
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            early = self._early_fault(fault)
            if early is not None:
                return early
        try:
            root = etree.fromstring(request.get_data(), _SAFE_PARSER)
        except etree.XMLSyntaxError as exc:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR", f"Malformed SOAP request: {exc}",
                            faultcode="soapenv:Client")
        if root.getroottree().docinfo.internalDTD is not None or root.getroottree().docinfo.doctype:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR", "DOCTYPE is not allowed",
                            faultcode="soapenv:Client")
        header = root.find(f"{{{NS['soapenv']}}}Header")
        body = root.find(f"{{{NS['soapenv']}}}Body")
        if body is None or len(body) == 0:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR", "No SOAP Body", faultcode="soapenv:Client")
        self._authenticate(request, header)
        op_el = body[0]
        op = etree.QName(op_el).localname
        handler = {"search": self._search, "searchMoreWithId": self._search_more,
                   "getDeleted": self._get_deleted}.get(op)
        if handler is None:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR",
                            f"Operation {op!r} is not supported by this sandbox", faultcode="soapenv:Client")
        body_xml = handler(op_el, header, fault)
        text = self._envelope(body_xml)
        if fault is not None and fault.body == "malformed":
            text = text[: max(len(text) // 2, 40)]
        elif fault is not None and fault.body == "external_entity":
            text = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
                    + text.replace('<platformCore:status isSuccess="true"/>',
                                   '<platformCore:status isSuccess="true"><platformCore:statusDetail>'
                                   '<platformCore:message>&xxe;</platformCore:message>'
                                   '</platformCore:statusDetail></platformCore:status>', 1))
        return Response(text.encode("utf-8"), content_type="text/xml; charset=utf-8")

    def _early_fault(self, fault: Fault) -> Response | None:
        if fault.body == "soap_fault":
            return self._fault_response(SoapFault(
                "unexpectedErrorFault", "UNEXPECTED_ERROR",
                "An unexpected error occurred. Error ID: sandbox-" + uuid.uuid4().hex[:12],
                http_status=fault.status or 500))
        if fault.status is None:
            return None
        if fault.status in (401, 403):
            return self._fault_response(SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                                  "Invalid login attempt.", http_status=fault.status))
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        text = {429: "Too Many Requests", 503: "Service Unavailable"}.get(fault.status, "Error")
        return Response(f"<html><body><h1>{fault.status} {text}</h1></body></html>", status=fault.status,
                        headers=headers, content_type="text/html")

    def _envelope(self, body_xml: str) -> str:
        ns_id = f"WEBSERVICES_{self.credentials.get('account', 'SANDBOX')}_{uuid.uuid4().hex[:20]}"
        return (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope {_XMLNS}><soapenv:Header>'
                f"<platformMsgs:documentInfo><platformMsgs:nsId>{ns_id}</platformMsgs:nsId>"
                f"</platformMsgs:documentInfo></soapenv:Header><soapenv:Body>{body_xml}</soapenv:Body>"
                f"</soapenv:Envelope>")

    def _fault_response(self, fault: SoapFault) -> Response:
        text = (f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope {_XMLNS}><soapenv:Body><soapenv:Fault>'
                f"<faultcode>{fault.faultcode}</faultcode><faultstring>{_esc(fault.message)}</faultstring>"
                f"<detail><platformFaults:{fault.element}><platformFaults:code>{fault.code}</platformFaults:code>"
                f"<platformFaults:message>{_esc(fault.message)}</platformFaults:message>"
                f"</platformFaults:{fault.element}>"
                f'<ns1:hostname xmlns:ns1="http://xml.apache.org/axis/">sandbox</ns1:hostname></detail>'
                f"</soapenv:Fault></soapenv:Body></soapenv:Envelope>")
        return Response(text.encode("utf-8"), status=fault.http_status, content_type="text/xml; charset=utf-8")

    # ------------------------------------------------------------------ auth
    def _authenticate(self, request: Request, header) -> None:
        creds = self.credentials

        def child(el, name):
            if el is None:
                return None
            for c in el:
                if isinstance(c.tag, str) and etree.QName(c).localname == name:
                    return c
            return None

        def text(el, name):
            c = child(el, name)
            return (c.text or "").strip() if c is not None else None

        token = child(header, "tokenPassport")
        if token is not None:
            account, consumer_key, token_id = text(token, "account"), text(token, "consumerKey"), text(token, "token")
            nonce, stamp = text(token, "nonce"), text(token, "timestamp")
            sig_el = child(token, "signature")
            signature = (sig_el.text or "").strip() if sig_el is not None else ""
            algorithm = sig_el.get("algorithm", "") if sig_el is not None else ""
            if account != creds.get("account"):
                raise SoapFault("invalidAccountFault", "INVALID_ACCT", f"Invalid account number: {account!r}.")
            if algorithm.upper() != "HMAC-SHA256":
                raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                f"Invalid login attempt: unsupported signature algorithm {algorithm!r}.")
            if consumer_key != creds.get("consumer_key") or token_id != creds.get("token_id"):
                raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                "Invalid login attempt: unknown consumer key or token.")
            try:
                age = abs(time.time() - int(stamp or ""))
            except ValueError:
                age = None
            if age is None or age > 900:
                raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                "Invalid login attempt: timestamp missing or too far from server time.")
            base = "&".join([account, consumer_key, token_id, nonce or "", stamp])
            key = f"{creds.get('consumer_secret')}&{creds.get('token_secret')}"
            expected = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha256).digest()).decode()
            if not hmac.compare_digest(expected, signature):
                raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                "Invalid login attempt: signature does not match.")
            with self._lock:
                if (consumer_key, nonce, stamp) in self._nonces:
                    raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                    "Invalid login attempt: nonce already used.")
                self._nonces[(consumer_key, nonce, stamp)] = None
                while len(self._nonces) > 100_000:
                    self._nonces.popitem(last=False)
            return
        passport = child(header, "passport")
        if passport is not None:
            if text(passport, "account") != creds.get("account"):
                raise SoapFault("invalidAccountFault", "INVALID_ACCT", "Invalid account number.")
            if text(passport, "email") != creds.get("email") or text(passport, "password") != creds.get("password"):
                raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                "You have entered an invalid email address or password. Please try again.")
            return
        security = child(header, "Security")
        if security is not None:
            username_token = child(security, "UsernameToken")
            if text(username_token, "Username") != creds.get("username") or \
                    text(username_token, "Password") != creds.get("password"):
                raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                "Invalid login attempt: WS-Security username or password is wrong.")
            return
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            if auth.username != creds.get("username") or auth.password != creds.get("password"):
                raise SoapFault("invalidCredentialsFault", "INVALID_LOGIN_CREDENTIALS",
                                "Invalid login attempt: HTTP Basic username or password is wrong.")
            return
        raise SoapFault("invalidSessionFault", "WS_LOG_IN_REQD",
                        "Only tokenPassport, passport, WS-Security or HTTP Basic authentication is supported; "
                        "no credentials were sent.")

    # ------------------------------------------------------------------ operations
    @staticmethod
    def _local(el) -> str:
        return etree.QName(el).localname

    def _find(self, el, name):
        for c in el:
            if isinstance(c.tag, str) and self._local(c) == name:
                return c
        return None

    def _page_size(self, header) -> int:
        prefs = self._find(header, "searchPreferences") if header is not None else None
        size_el = self._find(prefs, "pageSize") if prefs is not None else None
        try:
            size = int(size_el.text) if size_el is not None and size_el.text else 1000
        except ValueError:
            size = 1000
        return max(5, min(size, 1000))

    @staticmethod
    def _parse_dt(text: str | None) -> datetime | None:
        if not text:
            return None
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def _date_filter(self, field_el):
        """A predicate on datetimes from a SearchDateField (None = no filter) and a lower bound."""
        if field_el is None:
            return None, None
        op = field_el.get("operator", "")
        v1 = self._parse_dt((self._find(field_el, "searchValue").text if self._find(field_el, "searchValue") is not None else None))
        v2_el = self._find(field_el, "searchValue2")
        v2 = self._parse_dt(v2_el.text if v2_el is not None else None)
        if v1 is None:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR", f"Date filter {op!r} needs a searchValue",
                            faultcode="soapenv:Client")
        preds = {
            "after": (lambda t: t > v1, v1), "onOrAfter": (lambda t: t >= v1, v1),
            "notBefore": (lambda t: t >= v1, v1), "before": (lambda t: t < v1, None),
            "onOrBefore": (lambda t: t <= v1, None), "notAfter": (lambda t: t <= v1, None),
            "within": (lambda t: v1 <= t <= (v2 or v1), v1), "on": (lambda t: t.date() == v1.date(), v1 - timedelta(days=1)),
        }
        if op not in preds:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR", f"Unsupported date operator {op!r}",
                            faultcode="soapenv:Client")
        return preds[op]

    def _search(self, op_el, header, fault) -> str:
        record = self._find(op_el, "searchRecord")
        if record is None:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR", "search needs a searchRecord",
                            faultcode="soapenv:Client")
        xtype = record.get(f"{{{NS['xsi']}}}type", "")
        type_name = xtype.split(":")[-1]
        if type_name.endswith("Search") and not type_name.endswith("SearchBasic"):
            basic = self._find(record, "basic")
            record = basic if basic is not None else record
            type_name += "Basic"
        if type_name == "CustomerSearchBasic":
            kinds = ["customer"]
        elif type_name == "TransactionSearchBasic":
            type_el = self._find(record, "type")
            values = [(v.text or "").strip() for v in type_el if isinstance(v.tag, str)] if type_el is not None else []
            unknown = [v for v in values if v not in TRAN_TYPES]
            if not values or unknown:
                raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR",
                                f"TransactionSearchBasic type must be anyOf {sorted(TRAN_TYPES)}; got {values!r}",
                                faultcode="soapenv:Client")
            kinds = [TRAN_TYPES[v] for v in values]
        elif type_name == "CurrencyRateSearchBasic":
            kinds = ["fx_rate"]
        else:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR",
                            f"Search type {xtype!r} is not supported by this sandbox", faultcode="soapenv:Client")
        book = self.book
        keys = []
        with book.lock:
            for kind in kinds:
                if kind == "fx_rate":  # no lastModifiedDate on CurrencyRate: effectiveDate, by day
                    pred, _ = self._date_filter(self._find(record, "effectiveDate"))
                    for rid in book.changed_since(kind, None):
                        rate = book.fx_rates[rid]
                        if pred is None or pred(datetime.combine(rate.date, END_OF_DAY, UTC)):
                            keys.append((rate.modified, kind, rid))
                    continue
                pred, since = self._date_filter(self._find(record, "lastModifiedDate"))
                ids = book.changed_since(kind, since)
                recs = book.records(kind)
                for rid in ids:
                    rec = recs[rid]
                    if pred is None or pred(rec.modified):
                        keys.append((rec.modified, kind, rid))
        if len(kinds) > 1:
            keys.sort(key=lambda k: (k[0], k[1], k[2]))
        snapshot = _Snapshot([(k, i) for _, k, i in keys], self._page_size(header), time.time())
        search_id = f"WEBSERVICES_{self.credentials.get('account', 'SANDBOX')}_{uuid.uuid4().hex}"
        with self._lock:
            self._searches[search_id] = snapshot
            while len(self._searches) > 200:
                self._searches.popitem(last=False)
        return self._search_result("searchResponse", search_id, snapshot, 1, fault)

    def _search_more(self, op_el, header, fault) -> str:
        sid_el, page_el = self._find(op_el, "searchId"), self._find(op_el, "pageIndex")
        search_id = (sid_el.text or "").strip() if sid_el is not None else ""
        with self._lock:
            snapshot = self._searches.get(search_id)
        if snapshot is None:
            return self._failed_search("searchMoreWithIdResponse", "INVALID_SEARCH_MORE",
                                       f"Invalid or expired searchId {search_id!r}.")
        try:
            page = int((page_el.text or "").strip())
        except (AttributeError, ValueError):
            page = 0
        pages = max(1, -(-len(snapshot.keys) // snapshot.page_size))
        if page < 1 or page > pages:
            return self._failed_search("searchMoreWithIdResponse", "INVALID_PAGE_INDEX",
                                       f"Invalid page index {page}; the search has {pages} page(s).")
        return self._search_result("searchMoreWithIdResponse", search_id, snapshot, page, fault)

    def _failed_search(self, element: str, code: str, message: str) -> str:
        return (f"<platformMsgs:{element}><platformCore:searchResult><platformCore:status isSuccess=\"false\">"
                f'<platformCore:statusDetail type="ERROR"><platformCore:code>{code}</platformCore:code>'
                f"<platformCore:message>{_esc(message)}</platformCore:message></platformCore:statusDetail>"
                f"</platformCore:status></platformCore:searchResult></platformMsgs:{element}>")

    def _search_result(self, element: str, search_id: str, snapshot: _Snapshot, page: int, fault) -> str:
        size = snapshot.page_size
        total = len(snapshot.keys)
        pages = -(-total // size)
        chunk = snapshot.keys[(page - 1) * size: page * size]
        parts = []
        with self.book.lock:
            tables = {kind: self.book.records(kind) for kind in {k for k, _ in chunk}}
            for kind, rid in chunk:
                rec = tables[kind].get(rid)
                if rec is not None:  # deleted since the snapshot: NetSuite skips it
                    parts.append(self._render(kind, rid, rec))
        if fault is not None and fault.body == "duplicate" and parts:
            parts.insert(1, parts[0])
        if fault is not None and fault.body == "vanish" and parts:
            parts.pop(len(parts) // 2)
        records = "".join(parts)
        return (f"<platformMsgs:{element}><platformCore:searchResult>"
                f'<platformCore:status isSuccess="true"/>'
                f"<platformCore:totalRecords>{total}</platformCore:totalRecords>"
                f"<platformCore:pageSize>{size}</platformCore:pageSize>"
                f"<platformCore:totalPages>{pages}</platformCore:totalPages>"
                f"<platformCore:pageIndex>{page}</platformCore:pageIndex>"
                f"<platformCore:searchId>{search_id}</platformCore:searchId>"
                f"<platformCore:recordList>{records}</platformCore:recordList>"
                f"</platformCore:searchResult></platformMsgs:{element}>")

    def _get_deleted(self, op_el, header, fault) -> str:
        filt = self._find(op_el, "getDeletedFilter")
        if filt is None:
            raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR", "getDeleted needs a getDeletedFilter",
                            faultcode="soapenv:Client")
        pred, _ = self._date_filter(self._find(filt, "deletedDate"))
        type_el = self._find(filt, "type")
        types = [(v.text or "").strip() for v in type_el if isinstance(v.tag, str)] if type_el is not None else []
        kinds = None
        if types:
            unknown = [t for t in types if t not in RECORD_TYPES]
            if unknown:
                raise SoapFault("unexpectedErrorFault", "UNEXPECTED_ERROR",
                                f"getDeleted type {unknown!r} not supported by this sandbox",
                                faultcode="soapenv:Client")
            kinds = {RECORD_TYPES[t] for t in types}
        page_el = self._find(op_el, "pageIndex")
        try:
            page = int((page_el.text or "1").strip()) if page_el is not None else 1
        except ValueError:
            page = 0
        with self.book.lock:
            rows = [d for d in self.book.deleted
                    if (kinds is None or d.kind in kinds) and (pred is None or pred(d.deleted_at))]
        rows.sort(key=lambda d: (d.deleted_at, d.kind, d.id))
        size = self._page_size(header)
        total = len(rows)
        pages = -(-total // size)
        if page < 1 or (total and page > pages):
            return ("<platformMsgs:getDeletedResponse><platformCore:getDeletedResult>"
                    '<platformCore:status isSuccess="false"><platformCore:statusDetail type="ERROR">'
                    "<platformCore:code>INVALID_PAGE_INDEX</platformCore:code>"
                    f"<platformCore:message>Invalid page index {page}.</platformCore:message>"
                    "</platformCore:statusDetail></platformCore:status></platformCore:getDeletedResult>"
                    "</platformMsgs:getDeletedResponse>")
        chunk = rows[(page - 1) * size: page * size]
        items = "".join(
            f"<platformCore:deletedRecord><platformCore:deletedDate>{_dt(d.deleted_at)}</platformCore:deletedDate>"
            f'<platformCore:record internalId="{d.id}" type="{KIND_RECORD_TYPE[d.kind]}" '
            f'xsi:type="platformCore:RecordRef"><platformCore:name>{_esc(d.number)}</platformCore:name>'
            f"</platformCore:record></platformCore:deletedRecord>" for d in chunk)
        if fault is not None and fault.body == "duplicate" and chunk:
            items = items + items.split("</platformCore:deletedRecord>", 1)[0] + "</platformCore:deletedRecord>"
        return ("<platformMsgs:getDeletedResponse><platformCore:getDeletedResult>"
                '<platformCore:status isSuccess="true"/>'
                f"<platformCore:totalRecords>{total}</platformCore:totalRecords>"
                f"<platformCore:pageSize>{size}</platformCore:pageSize>"
                f"<platformCore:totalPages>{pages}</platformCore:totalPages>"
                f"<platformCore:pageIndex>{page}</platformCore:pageIndex>"
                f"<platformCore:deletedRecordList>{items}</platformCore:deletedRecordList>"
                "</platformCore:getDeletedResult></platformMsgs:getDeletedResponse>")


def make_app(book: Book, *, faults: Faults | None = None, credentials: dict | None = None) -> NetSuiteEmulator:
    """The WSGI app of the NetSuite SOAP emulator serving ``book``."""
    return NetSuiteEmulator(book, faults=faults, credentials=credentials)
