"""The WSGI application (:class:`SalesforceApp`): sessions, API accounting (``Sforce-Limit-Info``,
``limits``), faults, routing, REST ``query``/``queryAll`` with ``nextRecordsUrl`` paging, sObjects
(describe, CRUD, upsert by external id, ``updated``/``deleted``), ``composite/sobjects``, and the
``/_sandbox/`` control API. Bulk API 2.0 (:class:`~connectors.sandbox.salesforce.bulk.BulkApi`),
``composite`` and ``composite/batch`` (:class:`~connectors.sandbox.salesforce.composite.CompositeApi`)
and the logins (:class:`~connectors.sandbox.salesforce.auth.LoginFlows`) are mixed in.
"""
from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from werkzeug.wrappers import Request, Response

from connectors.sandbox import soql
from connectors.sandbox.faults import Fault, Faults
from connectors.sandbox.salesforce.auth import LoginFlows, _load_public_key
from connectors.sandbox.salesforce.bulk import BulkApi, IngestJob, QueryJob
from connectors.sandbox.salesforce.composite import CompositeApi
from connectors.sandbox.salesforce.org import Org
from connectors.sandbox.salesforce.responses import _body, _errors, _json, _method_not_allowed
from connectors.sandbox.salesforce.schema import (
    SANDBOX_CREDENTIALS, ApiError, FieldDef, RecordError, SfError, SObjectType, _MultipleMatches)
from connectors.sandbox.soql import SoqlError, id_checksum, parse_datetime, sf_datetime, to18

API_VERSIONS = tuple(f"{v}.0" for v in range(31, 63))
DEFAULT_API_BUDGET = 100_000
DEFAULT_SESSION_SECONDS = 7200
QUERY_BATCH = 2000
MIN_QUERY_BATCH = 200
COMPOSITE_LIMIT = 200
_CURSOR_LIMIT = 256
_CURSOR_IDLE_SECONDS = 15 * 60
_VERSION_RE = re.compile(r"/services/data/v(\d+\.\d)(?:/(.*))?\Z")


@dataclass
class Session:
    token: str
    user_id: str
    expires: float


@dataclass
class Context:
    session: Session
    version: str
    request: Request


@dataclass
class FaultSettings:
    latency_ms: float = 0.0
    error_5xx_rate: float = 0.0
    lock_row_rate: float = 0.0
    seed: int | None = None


@dataclass
class QueryCursor:
    plan: soql.Plan
    records: list[dict]
    include_deleted: bool
    batch: int
    touched: float


class SalesforceApp(BulkApi, CompositeApi, LoginFlows):
    """The WSGI application: authentication, API accounting, faults, routing over an :class:`Org`."""

    def __init__(self, org: Org | Callable[[], Org], *, credentials: dict | None = None,
                 api_budget: int = DEFAULT_API_BUDGET, session_seconds: int = DEFAULT_SESSION_SECONDS,
                 jwt_public_key: str | bytes | None = None):
        """``org`` may be a zero-argument factory: the org is then built on first use (``arhub sandbox
        serve`` does so, a big seeded org costs seconds and hundreds of MB nobody may need)."""
        self._org = org if isinstance(org, Org) else None
        self._org_factory = None if isinstance(org, Org) else org
        self._org_lock = threading.Lock()
        self.credentials = dict(SANDBOX_CREDENTIALS, **(credentials or {}))
        self.api_max, self.api_used = api_budget, 0
        self.session_seconds = session_seconds
        self.jwt_key = _load_public_key(jwt_public_key) if jwt_public_key else None
        self.sessions: dict[str, Session] = {}
        self.faults = FaultSettings()
        self.queue = Faults()
        self._rng = random.Random()
        self.stats: dict[str, int] = {}
        self.cursors: OrderedDict[str, QueryCursor] = OrderedDict()
        self.ingest_jobs: dict[str, IngestJob] = {}
        self.query_jobs: dict[str, QueryJob] = {}
        self.bulk_batches = 0
        self.lock = threading.Lock()  # sessions, counters, cursors, jobs (the org has its own)
        self._seq = 0

    @property
    def org(self) -> Org:
        if self._org is None:
            with self._org_lock:
                if self._org is None:
                    self._org = self._org_factory()
        return self._org

    # ------------------------------------------------------------------ control (also via /_sandbox/)
    def set_faults(self, latency_ms: float = 0.0, error_5xx_rate: float = 0.0, lock_row_rate: float = 0.0,
                   seed: int | None = None) -> FaultSettings:
        with self.lock:
            self.faults = FaultSettings(float(latency_ms), float(error_5xx_rate), float(lock_row_rate), seed)
            self._rng = random.Random(seed)
            return self.faults

    def clear_faults(self) -> None:
        self.set_faults()
        self.queue.clear()

    def expire_sessions(self) -> int:
        with self.lock:
            count = len(self.sessions)
            self.sessions.clear()
            return count

    def set_budget(self, max: int | None = None, used: int | None = None) -> dict:  # noqa: A002 - the API's word
        with self.lock:
            if max is not None:
                self.api_max = int(max)
            if used is not None:
                self.api_used = int(used)
            return {"max": self.api_max, "used": self.api_used}

    def get_stats(self) -> dict:
        with self.lock:
            return {"api_used": self.api_used, "api_max": self.api_max, "by_endpoint": dict(self.stats),
                    "sessions": len(self.sessions), "bulk_batches": self.bulk_batches,
                    "ingest_jobs": {jid: job.state for jid, job in self.ingest_jobs.items()}}

    def reset_stats(self) -> None:
        with self.lock:
            self.stats.clear()
            self.api_used = 0
            self.bulk_batches = 0

    def issue_token(self, user_id: str) -> str:
        token = f"{self.org.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        with self.lock:
            self.sessions[token] = Session(token, user_id, time.monotonic() + self.session_seconds)
        return token

    def _new_id(self, prefix: str) -> str:
        with self.lock:
            self._seq += 1
            n = self._seq
        body = prefix + "Dn0" + format(n, "09d")
        return body + id_checksum(body)

    # ------------------------------------------------------------------ WSGI
    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except ApiError as exc:
            response = _errors(exc.status, exc.code, exc.message)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/_sandbox/"):
            return self.control(request, path[len("/_sandbox/"):].strip("/"))
        if path.rstrip("/") == "/services/oauth2/token":
            return self.oauth_token(request) if request.method == "POST" else _errors(
                405, "METHOD_NOT_ALLOWED", "HTTP Method 'GET' not allowed. Allowed are POST")
        if path.rstrip("/") == "/services/oauth2/revoke" and request.method == "POST":
            with self.lock:
                self.sessions.pop(request.values.get("token", ""), None)
            return Response(status=200)
        if path.startswith("/services/Soap/u/") and request.method == "POST":
            return self.soap_login(request)
        if path.rstrip("/") == "/services/data":
            return _json([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in API_VERSIONS])
        match = _VERSION_RE.match(path)
        if not match:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        ctx_or_response = self.authenticate(request, match.group(1))
        if isinstance(ctx_or_response, Response):
            return ctx_or_response
        ctx = ctx_or_response
        rest = (match.group(2) or "").strip("/")
        response = self.api_call(ctx, rest)
        response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_max}"
        return response

    def authenticate(self, request: Request, version: str) -> Context | Response:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else header[6:].strip() \
            if header[:6].lower() == "oauth " else ""
        with self.lock:
            session = self.sessions.get(token)
            if session is not None and session.expires < time.monotonic():
                self.sessions.pop(token, None)
                session = None
        if session is None:
            return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return Context(session, version, request)

    def api_call(self, ctx: Context, rest: str) -> Response:
        request = ctx.request
        name = _route_name(request.method, rest)
        with self.lock:
            if self.api_used >= self.api_max:
                return _errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            self.api_used += 1
            self.stats[name] = self.stats.get(name, 0) + 1
            faults = self.faults
            fail_5xx = faults.error_5xx_rate and self._rng.random() < faults.error_5xx_rate
            status_kind = self._rng.random() if fail_5xx else 0.0
        queued = self.queue.take(request.path)
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000.0)
        if queued is not None:
            if queued.delay:
                time.sleep(queued.delay)
            if queued.body == "malformed":
                return Response('{"totalSize": 3, "records": [', status=queued.status or 200,
                                content_type="application/json")
            if queued.status:
                headers = {"Retry-After": str(queued.retry_after)} if queued.retry_after else None
                code = "SERVER_UNAVAILABLE" if queued.status >= 500 else "REQUEST_LIMIT_EXCEEDED" \
                    if queued.status in (403, 429) else "UNKNOWN_EXCEPTION"
                return _json([{"message": f"sandbox fault: HTTP {queued.status}", "errorCode": code}],
                             queued.status, headers)
        if fail_5xx:
            if status_kind < 0.5:
                return _errors(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId "
                                                         "if you contact support: 1234567890-12345 (-1234567890)")
            return _errors(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable. Please try again later.")
        try:
            return self.route(ctx, rest)
        except ApiError as exc:
            return _errors(exc.status, exc.code, exc.message)
        except SoqlError as exc:
            return _errors(400, exc.code, exc.message)
        except RecordError as exc:
            return _json([e.rest() for e in exc.errors], exc.http_status)

    def lock_fault(self, rid: str | None = None) -> None:
        """Raise UNABLE_TO_LOCK_ROW for a write, at the configured rate."""
        rate = self.faults.lock_row_rate
        if rate:
            with self.lock:
                hit = self._rng.random() < rate
            if hit:
                suffix = f" or 1 records: {rid}" if rid else ""
                raise RecordError([SfError("UNABLE_TO_LOCK_ROW",
                                           f"unable to obtain exclusive access to this record{suffix}", [])])

    # ------------------------------------------------------------------ routing
    def route(self, ctx: Context, rest: str) -> Response:
        method = ctx.request.method
        parts = rest.split("/") if rest else []
        head = parts[0] if parts else ""
        if not parts:
            return self.resources(ctx)
        if head == "limits" and len(parts) == 1:
            return self.limits(ctx)
        if head in ("query", "queryAll"):
            if method != "GET":
                return _method_not_allowed(method, "GET")
            if len(parts) == 1:
                return self.query(ctx, head == "queryAll")
            if len(parts) == 2:
                return self.query_more(ctx, parts[1])
        if head == "sobjects":
            return self.sobjects(ctx, parts[1:])
        if head == "composite" and len(parts) >= 2 and parts[1] == "sobjects":
            return self.composite(ctx, parts[2:])
        if head == "composite" and len(parts) == 1:
            return self.composite_graphless(ctx)
        if head == "composite" and len(parts) == 2 and parts[1] == "batch":
            return self.composite_batch(ctx)
        if head == "jobs" and len(parts) >= 2 and parts[1] == "ingest":
            return self.ingest(ctx, parts[2:])
        if head == "jobs" and len(parts) >= 2 and parts[1] == "query":
            return self.bulk_query(ctx, parts[2:])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def resources(self, ctx: Context) -> Response:
        base = f"/services/data/v{ctx.version}"
        return _json({name: f"{base}/{name}" for name in
                      ("sobjects", "query", "queryAll", "limits", "composite", "jobs/ingest", "jobs/query")})

    def limits(self, ctx: Context) -> Response:
        org = self.org
        records = sum(len(t) for t in org.tables.values())
        storage_max = 10240
        with self.lock:
            ingest_used = len(self.ingest_jobs)
            query_used = len(self.query_jobs)
            return _json({
                "DailyApiRequests": {"Max": self.api_max, "Remaining": max(self.api_max - self.api_used, 0)},
                "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000 - self.bulk_batches},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000 - query_used},
                "DailyBulkV2QueryFileStorageMB": {"Max": 1048576, "Remaining": 1048576},
                "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
                "DataStorageMB": {"Max": storage_max, "Remaining": max(storage_max - records * 2 // 1024, 0)},
                "FileStorageMB": {"Max": 10240, "Remaining": 10240},
                "HourlyODataCallout": {"Max": 20000, "Remaining": 20000},
                "ConcurrentAsyncGetReportInstances": {"Max": 200, "Remaining": 200},
                "MassEmail": {"Max": 5000, "Remaining": 5000},
                "SingleEmail": {"Max": 5000, "Remaining": 5000},
                "PermissionSets": {"Max": 1500, "Remaining": 1500},
                "BulkV2IngestJobs": {"Max": 10000, "Remaining": 10000 - ingest_used},
            })

    # ------------------------------------------------------------------ query
    def _batch_size(self, request: Request) -> int:
        options = request.headers.get("Sforce-Query-Options", "")
        match = re.search(r"batchSize\s*=\s*(\d+)", options)
        if not match:
            return QUERY_BATCH
        return max(MIN_QUERY_BATCH, min(QUERY_BATCH, int(match.group(1))))

    def query(self, ctx: Context, include_deleted: bool) -> Response:
        text = ctx.request.args.get("q")
        if text is None:
            raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        plan, records = self.org.run_query(text, include_deleted)
        if plan.count:
            return _json({"totalSize": len(records), "done": True, "records": []})
        batch = self._batch_size(ctx.request)
        locator = None
        if len(records) > batch:
            locator = self._new_id("01g")
            with self.lock:
                self.cursors[locator] = QueryCursor(plan, records, include_deleted, batch, time.monotonic())
                self._evict_cursors()
        return self._query_page(ctx, plan, records, 0, batch, locator, include_deleted)

    def _evict_cursors(self) -> None:
        now = time.monotonic()
        while self.cursors and (len(self.cursors) > _CURSOR_LIMIT or
                                next(iter(self.cursors.values())).touched < now - _CURSOR_IDLE_SECONDS):
            self.cursors.popitem(last=False)

    def query_more(self, ctx: Context, token: str) -> Response:
        locator, _, offset = token.rpartition("-")
        with self.lock:
            cursor = self.cursors.get(locator)
            if cursor is not None:
                cursor.touched = time.monotonic()
                self.cursors.move_to_end(locator)
        if cursor is None or not offset.isdigit() or int(offset) >= len(cursor.records):
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._query_page(ctx, cursor.plan, cursor.records, int(offset), cursor.batch, locator,
                                cursor.include_deleted)

    def _query_page(self, ctx, plan, records, start, batch, locator, include_deleted) -> Response:
        org, version = self.org, ctx.version

        def attributes(obj, rec):
            return {"type": obj, "url": f"/services/data/v{version}/sobjects/{obj}/{rec['Id']}"}

        with org.lock:
            page = [soql.render(rec, plan.tree, attributes, plan.object, org.fetch)
                    for rec in records[start:start + batch]]
        body: dict[str, Any] = {"totalSize": len(records), "done": start + batch >= len(records)}
        if not body["done"]:
            endpoint = "queryAll" if include_deleted else "query"
            body["nextRecordsUrl"] = f"/services/data/v{version}/{endpoint}/{locator}-{start + batch}"
        body["records"] = page
        return _json(body)

    # ------------------------------------------------------------------ sObjects
    def sobjects(self, ctx: Context, parts: list[str]) -> Response:
        method, org = ctx.request.method, self.org
        if not parts:
            if method != "GET":
                return _method_not_allowed(method, "GET")
            return _json({"encoding": "UTF-8", "maxBatchSize": 200,
                          "sobjects": [t.summary(ctx.version) for t in org.types.values()]})
        sobject = org.require_type(parts[0])
        obj = sobject.name
        if len(parts) == 1:
            if method == "POST":
                return self.create_one(ctx, obj)
            if method == "GET":
                return _json({"objectDescribe": sobject.summary(ctx.version), "recentItems": []})
            return _method_not_allowed(method, "GET, HEAD, POST")
        if len(parts) == 2 and parts[1] == "describe":
            return _json(self.describe(sobject, ctx.version))
        if len(parts) == 2 and parts[1] in ("updated", "deleted"):
            return self.changed(ctx, obj, parts[1])
        if len(parts) == 2:
            rid = parts[1]
            if method == "GET":
                rec = org.get(obj, rid)
                fields = ctx.request.args.get("fields")
                names = [n.strip() for n in fields.split(",")] if fields else None
                if names:
                    unknown = [n for n in names if sobject.field(n) is None]
                    if unknown:
                        raise ApiError(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type "
                                                             f"{obj}")
                with org.lock:
                    return _json(org.record_view(obj, rec, ctx.version, names))
            if method == "PATCH":
                data = _body(ctx.request)
                with org.lock:
                    rec = org.get(obj, rid)
                    self.lock_fault(rec["Id"])
                    org.update(obj, rec["Id"], data, ctx.session.user_id)
                return Response(status=204)
            if method == "DELETE":
                with org.lock:
                    rec = org.get(obj, rid)
                    self.lock_fault(rec["Id"])
                    org.delete(obj, rec["Id"], ctx.session.user_id)
                return Response(status=204)
            return _method_not_allowed(method, "GET, HEAD, PATCH, DELETE")
        if len(parts) == 3:
            return self.by_external_id(ctx, sobject, parts[1], parts[2])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def describe(self, sobject: SObjectType, version: str) -> dict:
        out = sobject.summary(version)
        out["fields"] = [f.describe() for f in sobject.fields.values()]
        children = []
        for other in self.org.types.values():
            for f in other.fields.values():
                if f.type == "reference" and sobject.name in f.reference_to and f.child_relationship:
                    children.append({"cascadeDelete": f.cascade_delete, "childSObject": other.name,
                                     "deprecatedAndHidden": False, "field": f.name,
                                     "relationshipName": f.child_relationship, "restrictedDelete": False})
        out["childRelationships"] = children
        out["recordTypeInfos"] = []
        out["compactLayoutable"] = True
        return out

    def create_one(self, ctx: Context, obj: str) -> Response:
        data = _body(ctx.request)
        if not isinstance(data, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object")
        with self.org.lock:
            self.lock_fault()
            rid = self.org.create(obj, data, ctx.session.user_id)
        return _json({"id": rid, "success": True, "errors": []}, 201)

    def by_external_id(self, ctx: Context, sobject: SObjectType, fname: str, value: str) -> Response:
        method, org, obj = ctx.request.method, self.org, sobject.name
        f = sobject.field(fname)
        if f is None or not (f.external_id or f.name == "Id"):
            raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                                             f"{fname}")
        if method == "PATCH":
            data = _body(ctx.request)
            if not isinstance(data, dict):
                raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object")
            with org.lock:
                self.lock_fault()
                try:
                    rid, created = org.upsert(obj, f.name, value, data, ctx.session.user_id)
                except _MultipleMatches as exc:
                    return _json([f"/services/data/v{ctx.version}/sobjects/{obj}/{i}" for i in exc.ids], 300)
            return _json({"id": rid, "success": True, "errors": [], "created": created}, 201 if created else 200)
        with org.lock:
            ids = org.find(obj, f.name, value)
            if len(ids) > 1:
                return _json([f"/services/data/v{ctx.version}/sobjects/{obj}/{i}" for i in ids], 300)
            if not ids:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            if method == "GET":
                return _json(org.record_view(obj, org.tables[obj][ids[0]], ctx.version))
            if method == "DELETE":
                self.lock_fault(ids[0])
                org.delete(obj, ids[0], ctx.session.user_id)
                return Response(status=204)
        return _method_not_allowed(method, "GET, HEAD, PATCH, DELETE")

    def changed(self, ctx: Context, obj: str, kind: str) -> Response:
        args = ctx.request.args
        start, end = parse_datetime(args.get("start", "")), parse_datetime(args.get("end", ""))
        if start is None or end is None:
            raise ApiError(400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 datetimes")
        lo, hi = sf_datetime(start), sf_datetime(end)
        org = self.org
        with org.lock:
            if kind == "updated":
                ids = [rid for rid, rec in org.tables[obj].items()
                       if not rec["IsDeleted"] and lo <= rec["SystemModstamp"] < hi]
                return _json({"ids": ids, "latestDateCovered": hi})
            gone = [{"deletedDate": stamp, "id": rid} for rid, stamp in org.deleted_at[obj].items()
                    if lo <= stamp < hi]
            earliest = sf_datetime(org.clock() - timedelta(days=15))
            return _json({"deletedRecords": gone, "earliestDateAvailable": earliest, "latestDateCovered": hi})

    # ------------------------------------------------------------------ composite
    def composite(self, ctx: Context, parts: list[str]) -> Response:
        request, org = ctx.request, self.org
        method = request.method
        if method == "DELETE" and not parts:
            ids = [i for i in request.args.get("ids", "").split(",") if i]
            all_or_none = request.args.get("allOrNone", "false").lower() == "true"
            self._check_size(len(ids))
            return self._collection(ids, all_or_none, lambda rid: self._delete_item(ctx, rid))
        if method == "GET" and len(parts) == 1:
            sobject = org.require_type(parts[0])
            ids = [i for i in request.args.get("ids", "").split(",") if i]
            names = [n.strip() for n in request.args.get("fields", "").split(",") if n.strip()]
            self._check_size(len(ids))
            if not names:
                raise ApiError(400, "MALFORMED_QUERY", "fields parameter is required")
            for n in names:
                if sobject.field(n) is None:
                    raise ApiError(400, "INVALID_FIELD", f"No such column '{n}' on sobject of type {sobject.name}")
            out = []
            with org.lock:
                for rid in ids:
                    full = to18(rid)
                    rec = org.tables[sobject.name].get(full) if full else None
                    out.append(None if rec is None or rec["IsDeleted"]
                               else org.record_view(sobject.name, rec, ctx.version, names))
            return _json(out)
        body = _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be an object with a records list")
        records = body["records"]
        all_or_none = bool(body.get("allOrNone", False))
        self._check_size(len(records))
        if method == "POST" and not parts:
            return self._collection(records, all_or_none, lambda rec: self._create_item(ctx, rec))
        if method == "PATCH" and not parts:
            return self._collection(records, all_or_none, lambda rec: self._update_item(ctx, rec))
        if method == "PATCH" and len(parts) == 2:
            sobject = org.require_type(parts[0])
            f = sobject.field(parts[1])
            if f is None or not (f.external_id or f.name == "Id"):
                raise ApiError(404, "NOT_FOUND",
                               f"Provided external ID field does not exist or is not accessible: {parts[1]}")
            return self._collection(records, all_or_none, lambda rec: self._upsert_item(ctx, sobject, f, rec))
        return _method_not_allowed(method, "GET, POST, PATCH, DELETE")

    @staticmethod
    def _check_size(n: int) -> None:
        if n > COMPOSITE_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                                                     f"{COMPOSITE_LIMIT} records into this call")

    def _collection(self, items: list, all_or_none: bool, handle: Callable[[Any], dict]) -> Response:
        org = self.org
        with org.lock:
            mark = org.begin()
            try:
                results = []
                for item in items:
                    try:
                        results.append(handle(item))
                    except RecordError as exc:
                        results.append({"success": False, "errors": [e.status() for e in exc.errors]})
                    except ApiError as exc:
                        results.append({"success": False, "errors": [SfError(exc.code, exc.message).status()]})
                if all_or_none and any(not r["success"] for r in results):
                    org.rollback(mark)
                    rolled = SfError("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all "
                                     "records were valid and the request was using AllOrNone header").status()
                    results = [r if not r["success"] else
                               {"success": False, "errors": [rolled], **({"created": False} if "created" in r else {})}
                               for r in results]
                    for r in results:
                        r.pop("id", None)
            finally:
                org.end(mark)
        return _json(results)

    def _item_type(self, rec: Any, expected: str | None = None) -> SObjectType:
        if not isinstance(rec, dict):
            raise RecordError([SfError("JSON_PARSER_ERROR", "Each record must be a JSON object")])
        attrs = rec.get("attributes")
        name = attrs.get("type") if isinstance(attrs, dict) else None
        if name is None:
            if expected is not None:
                return self.org.types[expected]
            raise RecordError([SfError("INVALID_TYPE", "Must send a concrete entity type.")])
        sobject = self.org.sobject(name)
        if sobject is None:
            raise RecordError([SfError("INVALID_TYPE", f"sObject type '{name}' is not supported.")])
        if expected is not None and sobject.name != expected:
            raise RecordError([SfError("INVALID_TYPE", f"Expected records of type {expected}, got {name}")])
        return sobject

    def _create_item(self, ctx: Context, rec: Any) -> dict:
        sobject = self._item_type(rec)
        if any(isinstance(k, str) and k.lower() == "id" for k in rec):
            raise RecordError([SfError("INVALID_FIELD", "cannot specify Id in an insert call", [])])
        self.lock_fault()
        return {"id": self.org.create(sobject.name, rec, ctx.session.user_id), "success": True, "errors": []}

    def _update_item(self, ctx: Context, rec: Any) -> dict:
        sobject = self._item_type(rec)
        rid = next((v for k, v in rec.items() if isinstance(k, str) and k.lower() == "id"), None)
        if not rid:
            raise RecordError([SfError("MISSING_ARGUMENT", "Id not specified in an update call", [])])
        full = to18(str(rid))
        if full is None or self.org.type_of_id(full) != sobject.name:
            raise RecordError([SfError("MALFORMED_ID", f"{sobject.name} ID: id value of incorrect type: {rid}",
                                       ["Id"])])
        existing = self.org.tables[sobject.name].get(full)
        if existing is None:
            raise RecordError([SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])])
        if existing["IsDeleted"]:
            raise RecordError([SfError("ENTITY_IS_DELETED", "entity is deleted", [])])
        self.lock_fault(full)
        data = {k: v for k, v in rec.items() if not (isinstance(k, str) and k.lower() == "id")}
        return {"id": self.org.update(sobject.name, full, data, ctx.session.user_id), "success": True, "errors": []}

    def _upsert_item(self, ctx: Context, sobject: SObjectType, f: FieldDef, rec: Any) -> dict:
        self._item_type(rec, sobject.name)
        value = next((v for k, v in rec.items() if isinstance(k, str) and k.lower() == f.name.lower()), None)
        self.lock_fault()
        try:
            rid, created = self.org.upsert(sobject.name, f.name, value, rec, ctx.session.user_id)
        except _MultipleMatches as exc:
            raise RecordError([SfError("DUPLICATE_EXTERNAL_ID", f"{f.name}: more than one record found for "
                                       f"external id field: {exc.ids}", [f.name])]) from None
        return {"id": rid, "success": True, "errors": [], "created": created}

    def _delete_item(self, ctx: Context, rid: str) -> dict:
        full = to18(rid)
        obj = self.org.type_of_id(full) if full else None
        if obj is None:
            raise RecordError([SfError("MALFORMED_ID", f"malformed id {rid}", [])])
        rec = self.org.tables[obj].get(full)
        if rec is None:
            raise RecordError([SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])])
        if rec["IsDeleted"]:
            raise RecordError([SfError("ENTITY_IS_DELETED", "entity is deleted", [])])
        self.lock_fault(full)
        self.org.delete(obj, full, ctx.session.user_id)
        return {"id": full, "success": True, "errors": []}

    # ------------------------------------------------------------------ /_sandbox/
    def control(self, request: Request, action: str) -> Response:
        method = request.method
        try:
            data = json.loads(request.get_data(as_text=True) or "{}") if method in ("POST", "PUT") else {}
        except ValueError:
            return _json({"error": "bad request: body is not JSON"}, 400)
        try:
            if action == "faults":
                if method == "POST":
                    if isinstance(data, list) or "status" in data or "body" in data or "delay" in data:
                        items = data if isinstance(data, list) else [data]
                        self.queue.push(*(Fault.from_json(item) for item in items))
                        return _json({"queued": len(self.queue.queue)})
                    settings = self.set_faults(**{k: data[k] for k in ("latency_ms", "error_5xx_rate",
                                                                       "lock_row_rate", "seed") if k in data})
                    return _json(vars(settings))
                if method == "DELETE":
                    self.clear_faults()
                    return _json({"cleared": True})
                return _json({"settings": vars(self.faults), "queue": [vars(f) for f in self.queue.queue]})
            if action == "expire_sessions" and method == "POST":
                return _json({"expired": self.expire_sessions()})
            if action == "budget" and method == "POST":
                return _json(self.set_budget(data.get("max"), data.get("used")))
            if action == "drop_field" and method == "POST":
                return _json({"dropped": f"{data['object']}.{self.org.drop_field(data['object'], data['field'])}"})
            if action == "restore_field" and method == "POST":
                return _json({"restored": f"{data['object']}.{self.org.restore_field(data['object'], data['field'])}"})
            if action == "stats" and method == "GET":
                return _json(self.get_stats())
            if action == "reset_stats" and method == "POST":
                self.reset_stats()
                return _json(self.get_stats())
            if action == "seed_truth" and method == "GET":
                return _json(self.org.seed_truth)
        except KeyError as exc:
            return _json({"error": f"not found: {exc}"}, 404)
        except (TypeError, ValueError) as exc:
            return _json({"error": f"bad request: {exc}"}, 400)
        return _json({"error": "no such control endpoint"}, 404)


def _route_name(method: str, rest: str) -> str:
    parts = rest.split("/") if rest else []
    if not parts:
        return f"{method} /"
    head = parts[0]
    if head in ("query", "queryAll"):
        return f"{method} {head}" + ("/more" if len(parts) > 1 else "")
    if head == "sobjects":
        shape = ["sobjects", "{object}", "{id}", "{field}/{value}"][:len(parts)]
        if len(parts) == 4:
            shape[2] = ""
        if len(parts) == 3 and parts[2] in ("describe", "updated", "deleted"):
            shape[2] = parts[2]
        return f"{method} {'/'.join(p for p in shape if p)}"
    if head == "composite":
        if len(parts) == 1 or parts[1] == "batch":
            return f"{method} {'/'.join(parts[:2])}"
        return f"{method} composite/sobjects" + ("/{object}" if len(parts) > 2 else "")
    if head == "jobs":
        kind = parts[1] if len(parts) > 1 else ""
        tail = "/{id}" if len(parts) > 2 else ""
        tail += f"/{parts[3]}" if len(parts) > 3 else ""
        return f"{method} jobs/{kind}{tail}"
    return f"{method} {head}"
