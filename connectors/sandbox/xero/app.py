"""The Xero emulator's WSGI application (:class:`XeroApp`) and :func:`make_app`.

Routing, the OAuth client-credentials token endpoint and request auth, fault playback, ``where``
filters, the paging modes, and If-Modified-Since answered by bisection over a cached snapshot of
ordered record keys. Rendering records as Xero JSON is mixed in from
:class:`~connectors.sandbox.xero.render.XeroRendering`.
"""
from __future__ import annotations

import base64
import bisect
import itertools
import json
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import urlencode

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from connectors.sandbox.book import CURRENCIES, Book
from connectors.sandbox.faults import Faults
from connectors.sandbox.xero.render import (_CURRENCY_NAMES, _EPOCH, _MS, _NS, _NUM, UTC, XeroRendering, _dumps,
                                            xero_id)

SANDBOX_CREDENTIALS = {
    "client_id": "ARHUBSANDBOXCLIENT0000000000000",
    "client_secret": "sandbox-secret-7f3b2c9d1e0a4b6c8d2e",
    "tenant_id": str(uuid.uuid5(_NS, "tenant:arhub-sandbox")),
}
DEFAULT_EXPIRES_IN = 1800
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
PROVIDER = "arhub sandbox"
TENANT_NAME = "arhub Sandbox Org"
class _Tail:
    """``items[start:]`` without copying it: the part of a snapshot a request pages through."""

    __slots__ = ("items", "start")

    def __init__(self, items: list, start: int):
        self.items, self.start = items, start

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __iter__(self):
        return itertools.islice(self.items, self.start, None)

    def __getitem__(self, part: slice) -> list:
        lo, hi, _ = part.indices(len(self))
        return self.items[self.start + lo:self.start + hi]


_SNAPSHOT_LIMIT = 32  # filtered id lists kept (oldest dropped first)

def parse_since(value: str | None) -> datetime | None:
    """An If-Modified-Since value (HTTP-date or ISO 8601) as an aware UTC datetime."""
    if not value:
        return None
    value = value.strip()
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            stamp = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            raise _Problem(400, _error(16, "QueryParseException", f"Cannot parse date: {value}")) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII text."""
    return secrets.compare_digest(str(given).encode(), str(expected).encode())


def _error(number: int, kind: str, message: str) -> dict:
    return {"ErrorNumber": number, "Type": kind, "Message": message}


def _problem(status: int, title: str, detail: str) -> dict:
    return {"Type": None, "Title": title, "Status": status, "Detail": detail,
            "Instance": str(uuid.uuid4()), "Extensions": {}}


class _Problem(Exception):
    def __init__(self, status: int, body: dict, headers: dict | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


# ------------------------------------------------------------------------------- filters
_CLAUSE = re.compile(r'^\s*([A-Za-z][A-Za-z0-9.]*)\s*(==|!=)\s*(?:"([^"]*)"|(true|false)|(-?[0-9.]+)'
                     r'|Guid\("([^"]*)"\))\s*$', re.IGNORECASE)
_AND = re.compile(r"\s+AND\s+|\s*&&\s*", re.IGNORECASE)


def parse_where(where: str | None) -> tuple[tuple[str, str, str], ...]:
    """``Type=="ACCREC" AND Status!="VOIDED"`` → ((field, op, value), ...)."""
    if not where or not where.strip():
        return ()
    clauses = []
    for part in _AND.split(where.strip()):
        m = _CLAUSE.match(part)
        if not m:
            raise _Problem(400, _error(16, "QueryParseException", f"Unsupported where clause: {part}"))
        field, op = m.group(1), m.group(2)
        value = next(g for g in m.groups()[2:] if g is not None)
        clauses.append((field, op, value))
    return tuple(clauses)


def _lookup(record: dict, dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_NUM):
        return value[1:]
    return "" if value is None else str(value)


# ------------------------------------------------------------------------------ endpoints
@dataclass(frozen=True)
class _Endpoint:
    name: str              # collection name: URL segment and response key
    kinds: tuple[str, ...]  # book kinds whose changes invalidate its snapshots
    paged: bool = True
    archived_param: bool = False


_CONSTANT_FIELDS = {"Invoices": {"Type": "ACCREC"}, "CreditNotes": {"Type": "ACCRECCREDIT"},
                    "Payments": {"PaymentType": "ACCRECPAYMENT"}, "Overpayments": {"Type": "RECEIVE-OVERPAYMENT"},
                    "Contacts": {"IsCustomer": "true"}}
_ENDPOINTS = {e.name: e for e in (
    _Endpoint("Contacts", ("customer",), archived_param=True),
    _Endpoint("Invoices", ("invoice", "customer", "payment", "credit_memo")),
    _Endpoint("CreditNotes", ("credit_memo", "customer", "invoice")),
    _Endpoint("Payments", ("payment", "customer", "invoice")),
    _Endpoint("Overpayments", ("payment", "customer")),
    _Endpoint("Currencies", (), paged=False),
)}


class XeroApp(XeroRendering):
    """The WSGI application. One instance serves one book (one Xero organisation)."""

    def __init__(self, book: Book, *, faults: Faults | None = None, credentials: dict | None = None):
        self.book = book
        self.faults = faults if faults is not None else Faults()
        creds = dict(SANDBOX_CREDENTIALS)
        creds.update(credentials or {})
        self.client_id = creds["client_id"]
        self.client_secret = creds["client_secret"]
        self.tenant_id = creds["tenant_id"]
        self.expires_in = int(creds.get("expires_in", DEFAULT_EXPIRES_IN))
        self.basic = creds.get("basic")          # {"username": ..., "password": ...}
        self.api_key = creds.get("api_key")      # {"header": "X-Api-Key", "key": ...}
        self.static_tokens = frozenset(creds.get("tokens", ()))
        self._tokens: dict[str, float] = {}      # access token -> expiry (time.time())
        self._lock = threading.Lock()
        self._versions: dict[str, object] = {}
        self._deleted_count = -1
        self._snapshots: dict[tuple, list] = {}
        self._cache: dict[tuple, str] = {}
        self._rev: dict[int, list[tuple[str, int, int]]] | None = None
        self._deleted_numbers: dict[tuple[str, int], str] = {}
        self._deleted_stamps: dict[tuple[str, int], datetime] = {}
        self._contact_ids: dict[int, str] = {}
        self.tokens_issued = 0

    # ----------------------------------------------------------------------- WSGI
    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except _Problem as problem:
            response = self._json(problem.body, problem.status, problem.headers)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        fault = self.faults.take(request.script_root + request.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status:
            raise self._fault_problem(fault)
        path = request.path.rstrip("/")
        if path == "/connect/token":
            if request.method != "POST":
                raise _Problem(405, {"error": "invalid_request"})
            return self._token(request)
        if path == "/connections" and request.method == "GET":
            self._authorize(request, tenant=False)
            return self._json([{"id": xero_id("connection", self.tenant_id), "tenantId": self.tenant_id,
                                "tenantType": "ORGANISATION", "tenantName": TENANT_NAME,
                                "createdDateUtc": "2024-01-01T00:00:00.0000000",
                                "updatedDateUtc": "2024-01-01T00:00:00.0000000"}])
        prefix = "/api.xro/2.0/"
        if path.startswith(prefix):
            endpoint = _ENDPOINTS.get(path[len(prefix):])
            if endpoint is None:
                raise _Problem(404, _error(404, "NotFoundException", "The resource you're looking for cannot be found"))
            if request.method != "GET":
                raise _Problem(405, _error(405, "MethodNotAllowedException", "Only GET is emulated"))
            self._authorize(request, tenant=True)
            return self._collection(request, endpoint, fault.body if fault is not None else None)
        raise _Problem(404, _error(404, "NotFoundException", "The resource you're looking for cannot be found"))

    @staticmethod
    def _json(body: Any, status: int = 200, headers: dict | None = None) -> Response:
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        return Response(text, status=status, headers=headers, content_type="application/json; charset=utf-8")

    @staticmethod
    def _fault_problem(fault) -> _Problem:
        status = fault.status
        headers = {}
        if fault.retry_after is not None or status == 429:
            headers["Retry-After"] = str(fault.retry_after if fault.retry_after is not None else 1)
        if status == 429:
            headers["X-Rate-Limit-Problem"] = "minute"
            return _Problem(429, _problem(429, "Too Many Requests", "Rate limit exceeded"), headers)
        if status == 401:
            return _Problem(401, _problem(401, "Unauthorized", "AuthenticationUnsuccessful"), headers)
        if status == 403:
            return _Problem(403, _problem(403, "Forbidden", "AuthenticationUnsuccessful"), headers)
        if status == 503:
            return _Problem(503, _error(503, "ServiceUnavailableException",
                                        "The Xero API is temporarily unavailable"), headers)
        return _Problem(status, _error(status, "InternalServerErrorException", "An error occurred in Xero"), headers)

    # ----------------------------------------------------------------------- auth
    def _token(self, request: Request) -> Response:
        form = request.form
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if request.authorization is not None and request.authorization.type == "basic":
            client_id = request.authorization.username
            client_secret = request.authorization.password
        if form.get("grant_type") != "client_credentials":
            raise _Problem(400, {"error": "unsupported_grant_type"})
        if not (client_id and client_secret
                and _same(client_id, self.client_id)
                and _same(client_secret, self.client_secret)):
            raise _Problem(400, {"error": "invalid_client"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now - 3600}
            self._tokens[token] = now + self.expires_in
            self.tokens_issued += 1
        return self._json({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer",
                           "scope": form.get("scope") or "accounting.transactions.read accounting.contacts.read"})

    def _authorize(self, request: Request, *, tenant: bool) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if self.api_key and request.headers.get(self.api_key["header"]) is not None:
            if _same(request.headers[self.api_key["header"]], self.api_key["key"]):
                return
            raise _Problem(401, _problem(401, "Unauthorized", "AuthenticationUnsuccessful"))
        if scheme.lower() == "basic" and self.basic and request.authorization is not None:
            if (_same(request.authorization.username or "", self.basic["username"])
                    and _same(request.authorization.password or "", self.basic["password"])):
                return
            raise _Problem(401, _problem(401, "Unauthorized", "AuthenticationUnsuccessful"))
        if scheme.lower() != "bearer" or not value:
            raise _Problem(401, _problem(401, "Unauthorized", "AuthenticationUnsuccessful"),
                           {"WWW-Authenticate": 'Bearer realm="xero"'})
        if value in self.static_tokens:  # testing extension: static tokens need no tenant
            return
        with self._lock:
            expiry = self._tokens.get(value)
        if expiry is None:
            raise _Problem(401, _problem(401, "Unauthorized", "AuthenticationUnsuccessful"),
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if expiry <= time.time():
            at = datetime.fromtimestamp(expiry, UTC).strftime("%m/%d/%Y %H:%M:%S")
            raise _Problem(401, _problem(401, "Unauthorized", f"TokenExpired: token expired at {at}"),
                           {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="The token expired"'})
        if tenant and request.headers.get("xero-tenant-id", "").strip().lower() != self.tenant_id:
            raise _Problem(403, _problem(403, "Forbidden", "AuthenticationUnsuccessful"))

    # ------------------------------------------------------------------ versions
    def _sync_versions(self) -> None:
        """Drop snapshots and reverse indexes when the book has changed since last time.

        ``Book`` marks a kind as changed by dropping its modified-index; we keep a
        reference to each index object we saw, so a rebuilt one tells us the kind changed.
        """
        book = self.book
        far = datetime.max.replace(tzinfo=UTC)
        with book.lock:
            changed = set()
            for kind in ("customer", "invoice", "credit_memo", "payment"):
                book.changed_since(kind, far)
                index = book._modified_index[kind]  # noqa: SLF001 (read-only change detection)
                if self._versions.get(kind) is not index:
                    self._versions[kind] = index
                    changed.add(kind)
            deleted = len(book.deleted)
            if deleted != self._deleted_count:
                self._deleted_count = deleted
                changed.update({d.kind for d in book.deleted} or {"invoice"})
                self._deleted_numbers = {(d.kind, d.id): d.number for d in book.deleted}
                self._deleted_stamps = {(d.kind, d.id): d.deleted_at for d in book.deleted}
        if changed:
            with self._lock:
                self._snapshots = {k: v for k, v in self._snapshots.items()
                                   if not changed.intersection(_ENDPOINTS[k[0]].kinds)}
                if changed & {"payment", "credit_memo"}:
                    self._rev = None

    def _applications(self) -> dict[int, list[tuple[str, int, int]]]:
        """invoice id -> [("p"|"c", payment/credit memo id, application index)]."""
        rev = self._rev
        if rev is None:
            rev = {}
            with self.book.lock:
                for pid, pay in self.book.payments.items():
                    for n, app in enumerate(pay.applications):
                        rev.setdefault(app.invoice_id, []).append(("p", pid, n))
                for mid, memo in self.book.credit_memos.items():
                    for n, app in enumerate(memo.applications):
                        rev.setdefault(app.invoice_id, []).append(("c", mid, n))
            self._rev = rev
        return rev

    # ------------------------------------------------------------------ listing
    def _collection(self, request: Request, endpoint: _Endpoint, body_fault: str | None) -> Response:
        args = request.args
        if endpoint.name == "Currencies":
            records = [{"Code": code, "Description": _CURRENCY_NAMES.get(code, code)} for code in CURRENCIES]
            clauses = parse_where(args.get("where"))
            records = [r for r in records if self._match(r, clauses)]
            return self._page_response(request, endpoint, [_dumps(r) for r in records], None, {}, body_fault)

        since = parse_since(request.headers.get("If-Modified-Since") or args.get("modifiedAfter"))
        clauses = parse_where(args.get("where"))
        statuses = frozenset(s.strip().upper() for s in args.get("Statuses", "").split(",") if s.strip())
        ids = frozenset(s.strip().lower() for s in args.get("IDs", "").split(",") if s.strip())
        archived = args.get("includeArchived", "").lower() == "true"
        self._sync_versions()
        # one snapshot per filter, whatever the If-Modified-Since: every listing is ordered by
        # modification time, so "modified since T" is the snapshot's tail from T on, found by
        # bisection (as a real ERP answers it from an index). A pull that pages by keyset sends
        # a new T with every request; building a snapshot per T cost O(records) each time.
        key = (endpoint.name, None, clauses, statuses, ids, archived)
        with self._lock:
            entries = self._snapshots.get(key)
        if entries is None:
            entries = self._build_snapshot(endpoint, None, clauses, statuses, ids, archived)
            with self._lock:
                while len(self._snapshots) >= _SNAPSHOT_LIMIT:
                    self._snapshots.pop(next(iter(self._snapshots)))
                self._snapshots[key] = entries
        if since is not None:
            with self.book.lock:
                entries = _Tail(entries, bisect.bisect_left(entries, since, key=self._stamp_of(endpoint.name)))

        paging = args.get("_paging", "page")
        size = self._int(args.get("pageSize") or args.get("limit"), DEFAULT_PAGE_SIZE)
        size = max(1, min(size, MAX_PAGE_SIZE))
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        pagination = None
        if paging == "offset":
            start = max(self._int(args.get("offset"), 0), 0)
            chunk = entries[start:start + size]
        elif paging == "cursor":
            cursor = args.get("cursor")
            start = self._decode_cursor(cursor) if cursor else 0
            chunk = entries[start:start + size]
            nxt = start + size
            extra["meta"] = {"next_cursor": self._encode_cursor(nxt) if nxt < len(entries) else None}
        elif paging in ("page", "next_link"):
            if "page" not in args and paging == "page":
                chunk = entries
            else:
                page = max(self._int(args.get("page"), 1), 1)
                chunk = entries[(page - 1) * size: page * size]
                pagination = {"page": page, "pageSize": size, "pageCount": math.ceil(len(entries) / size),
                              "itemCount": len(entries)}
                if paging == "next_link":
                    following = None
                    if page * size < len(entries):
                        query = MultiDict(args)
                        query["page"] = str(page + 1)
                        following = f"{request.host_url.rstrip('/')}{request.script_root}{request.path}?{urlencode(list(query.items(multi=True)))}"
                        headers["Link"] = f'<{following}>; rel="next"'
                    extra["links"] = {"next": following}
        else:
            raise _Problem(400, _error(16, "QueryParseException", f"Unknown _paging: {paging}"))
        fragments = self._render(endpoint, chunk)
        if not endpoint.paged:
            pagination = None
        return self._page_response(request, endpoint, fragments, pagination, extra, body_fault, headers)

    @staticmethod
    def _int(value: str | None, default: int) -> int:
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise _Problem(400, _error(16, "QueryParseException", f"Not an integer: {value}")) from None

    @staticmethod
    def _encode_cursor(position: int) -> str:
        return base64.urlsafe_b64encode(f"pos:{position}".encode()).decode().rstrip("=")

    @staticmethod
    def _decode_cursor(cursor: str) -> int:
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            return int(text.removeprefix("pos:"))
        except (ValueError, UnicodeDecodeError):
            raise _Problem(400, _error(16, "QueryParseException", "Bad cursor")) from None

    def _page_response(self, request: Request, endpoint: _Endpoint, fragments: list[str], pagination: dict | None,
                       extra: dict, body_fault: str | None, headers: dict | None = None) -> Response:
        if body_fault == "duplicate" and fragments:
            fragments = [fragments[0], *fragments]
        elif body_fault == "vanish" and fragments:
            fragments = fragments[:len(fragments) // 2] + fragments[len(fragments) // 2 + 1:]
        envelope: dict[str, Any] = {"Id": str(uuid.uuid4()), "Status": "OK", "ProviderName": PROVIDER,
                                    "DateTimeUTC": f"/Date({(datetime.now(UTC) - _EPOCH) // _MS})/"}
        if pagination is not None:
            envelope["pagination"] = pagination
        envelope.update(extra)
        head = json.dumps(envelope, separators=(",", ":"))[:-1]
        text = f'{head},"{endpoint.name}":[{",".join(fragments)}]}}'
        if body_fault == "malformed":
            text = text[: max(len(text) // 2, 1)]
        return self._json(text, 200, headers)

    # --------------------------------------------------------------- snapshots
    def _stamp_of(self, name: str) -> Callable[[Any], datetime]:
        """The modification (or deletion) time of a snapshot entry of endpoint ``name``."""
        book, deleted = self.book, self._deleted_stamps
        if name == "Payments":
            return lambda k: book.payments[k[0]].modified if k[0] > 0 else deleted[("payment", -k[0])]
        if name == "Overpayments":
            return lambda k: book.payments[k].modified
        kind = {"Contacts": "customer", "Invoices": "invoice", "CreditNotes": "credit_memo"}[name]
        records = book.records(kind)
        return lambda k: records[k].modified if k > 0 else deleted[(kind, -k)]

    def _build_snapshot(self, endpoint: _Endpoint, since, clauses, statuses, ids, archived) -> list:
        """The ordered keys of the records an endpoint lists for these filters.

        Keys: ``int`` book id for live records, ``-id`` for deleted ones (rendered as
        DELETED/ARCHIVED), ``(payment id, application index)`` for Payments.
        """
        book = self.book
        name = endpoint.name
        kind = {"Contacts": "customer", "Invoices": "invoice", "CreditNotes": "credit_memo",
                "Payments": "payment", "Overpayments": "payment"}[name]
        with book.lock:
            live = book.changed_since(kind, since)
            records = book.records(kind)
            deleted = [d for d in book.deleted_since(kind, since) if name != "Overpayments"]
            if name == "Contacts" and not archived:
                live = [i for i in live if not records[i].inactive]
                deleted = []
            elif name == "Overpayments":
                live = [i for i in live if records[i].unapplied > 0]
            if deleted:
                deleted.sort(key=lambda d: (d.deleted_at, d.id))
                merged, prev = [], 0
                keyf = lambda i: (records[i].modified, i)  # noqa: E731
                for d in deleted:
                    pos = bisect.bisect_left(live, (d.deleted_at, d.id), lo=prev, key=keyf)
                    merged.extend(live[prev:pos])
                    merged.append(-d.id)
                    prev = pos
                merged.extend(live[prev:])
                live = merged
            if name == "Payments":
                expanded: list = []
                for i in live:
                    if i < 0:
                        expanded.append((i, 0))
                    else:
                        expanded.extend((i, n) for n in range(len(records[i].applications)))
                live = expanded
        # a clause on a field that is the same for the whole endpoint (Type=="ACCREC" on
        # Invoices) keeps everything or nothing: decide it once
        constant = _CONSTANT_FIELDS.get(name, {})
        kept = []
        for field, op, value in clauses:
            if field in constant:
                if (constant[field] == value) != (op == "=="):
                    return []
            else:
                kept.append((field, op, value))
        clauses = tuple(kept)
        if not (clauses or statuses or ids):
            return live
        fast = self._fast_fields(name)
        checks: list[Callable[[Any], bool]] = []
        slow: list[tuple[str, str, str]] = []
        for field, op, value in clauses:
            getter = fast.get(field)
            if getter is None:
                slow.append((field, op, value))
                continue
            if op == "==":
                checks.append(lambda k, g=getter, v=value: g(k) == v)
            else:
                checks.append(lambda k, g=getter, v=value: g(k) != v)
        if statuses:
            status_of = fast["Status"] if "Status" in fast else fast.get("ContactStatus")
            checks.append(lambda k: status_of(k) in statuses)
        if ids:
            id_of = fast["_id"]
            checks.append(lambda k: id_of(k) in ids)
        result = []
        with book.lock:
            for k in live:
                if all(check(k) for check in checks) and (not slow or self._match(self._record(name, k), slow)):
                    result.append(k)
        return result

    def _fast_fields(self, name: str) -> dict[str, Callable[[Any], str]]:
        book = self.book
        if name == "Invoices":
            return {"Type": lambda k: "ACCREC", "Status": lambda k: self._invoice_status(k),
                    "InvoiceNumber": lambda k: book.invoices[k].number if k > 0 else self._deleted_numbers.get(("invoice", -k), ""),
                    "CurrencyCode": lambda k: book.invoices[k].currency if k > 0 else "",
                    "Contact.ContactID": lambda k: xero_id("customer", book.invoices[k].customer_id) if k > 0 else "",
                    "_id": lambda k: xero_id("invoice", abs(k))}
        if name == "CreditNotes":
            return {"Type": lambda k: "ACCRECCREDIT", "Status": lambda k: self._memo_status(k),
                    "_id": lambda k: xero_id("credit_memo", abs(k))}
        if name == "Contacts":
            return {"ContactStatus": lambda k: "ARCHIVED" if k < 0 or book.customers[k].inactive else "ACTIVE",
                    "ContactNumber": lambda k: book.customers[k].number if k > 0 else self._deleted_numbers.get(("customer", -k), ""),
                    "IsCustomer": lambda k: "true",
                    "_id": lambda k: xero_id("customer", abs(k))}
        if name == "Payments":
            return {"PaymentType": lambda k: "ACCRECPAYMENT",
                    "Status": lambda k: "DELETED" if k[0] < 0 else "AUTHORISED",
                    "_id": lambda k: xero_id("payment", abs(k[0]), k[1])}
        if name == "Overpayments":
            return {"Type": lambda k: "RECEIVE-OVERPAYMENT", "Status": lambda k: "AUTHORISED",
                    "_id": lambda k: xero_id("overpayment", k)}
        return {}

    def _invoice_status(self, key: int) -> str:
        if key < 0:
            return "DELETED"
        return {"open": "AUTHORISED", "paid": "PAID", "voided": "VOIDED"}[self.book.invoices[key].status]

    def _memo_status(self, key: int) -> str:
        if key < 0:
            return "DELETED"
        return "PAID" if self.book.credit_memos[key].unapplied <= 0 else "AUTHORISED"

    @staticmethod
    def _match(record: dict, clauses) -> bool:
        for field, op, value in clauses:
            actual = _as_text(_lookup(record, field))
            if (actual.lower() == value.lower() if value.lower() in ("true", "false") else actual == value) != (op == "=="):
                return False
        return True


def make_app(book: Book, *, faults: Faults | None = None, credentials: dict | None = None) -> XeroApp:
    """The Xero emulator as a WSGI app.

    ``credentials`` overrides :data:`SANDBOX_CREDENTIALS` keys (``client_id``,
    ``client_secret``, ``tenant_id``) and may add ``expires_in`` (token lifetime, seconds),
    ``basic`` ({username, password}), ``api_key`` ({header, key}) and ``tokens`` (static
    bearer tokens) to accept those auth types too.
    """
    return XeroApp(book, faults=faults, credentials=credentials)
