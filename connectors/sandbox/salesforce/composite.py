"""``composite`` and ``composite/batch``: several REST requests in one HTTP request, mixed into
:class:`~connectors.sandbox.salesforce.app.SalesforceApp`.

As Salesforce documents them (REST API Developer Guide):

* ``POST /services/data/vXX.X/composite`` ({"allOrNone", "compositeRequest": [{"method", "url",
  "referenceId", "body", "httpHeaders"}]}, at most 25 subrequests, at most 5 of them queries):
  "The entire series of requests counts as a single call toward your API limits." Subrequests run
  in order; ``@{ref.field}`` / ``@{ref.records[0].Id}`` in a later url or body reads an earlier
  response. With ``allOrNone`` the first failure rolls every write back and the rest answer
  ``PROCESSING_HALTED``; without it, only subrequests that reference a failed one are halted.
  Answer: {"compositeResponse": [{"body", "httpHeaders", "httpStatusCode", "referenceId"}]}.
* ``POST /services/data/vXX.X/composite/batch`` ({"haltOnError", "batchRequests": [{"method",
  "url": "vXX.X/...", "richInput"}]}, at most 25): "Each subrequest counts against rate limits",
  so each subrequest is charged to the API budget here. Subrequests are independent; with
  ``haltOnError`` the ones after a failure answer 412 ``BATCH_PROCESSING_HALTED``.
  Answer: {"hasErrors": bool, "results": [{"statusCode", "result"}]}.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from connectors.sandbox.salesforce.responses import _body, _errors, _json, _method_not_allowed
from connectors.sandbox.salesforce.schema import ApiError, RecordError
from connectors.sandbox.soql import SoqlError

if TYPE_CHECKING:
    from connectors.sandbox.salesforce.app import Context

SUBREQUEST_LIMIT = 25
QUERY_LIMIT = 5  # query, queryAll and query-more subrequests of one composite request
_SUB_URL = re.compile(r"(?:/?services/data/)?/?v(\d+\.\d)(?:/(.*))?\Z")
_REF = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")
_REFERENCE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_HALTED = "The transaction was rolled back since another operation in the same transaction failed."
_KEPT_HEADERS = ("Location", "Last-Modified", "ETag")


class _Unresolved(Exception):
    pass


class CompositeApi:
    """The composite endpoints (uses the app's ``org``, ``lock``, ``api_used``, ``api_max``, ``stats``, ``route``)."""

    # ------------------------------------------------------------------ helpers
    def _subrequest(self, ctx: Context, method: str, url: str, body: Any, headers: dict | None = None
                    ) -> tuple[int, Any, dict]:
        """Run one subrequest through the app's routing (no accounting, no 5xx faults): (status, body, headers)."""
        path, _, query = str(url).partition("?")
        match = _SUB_URL.match(path)
        if not match:
            return 404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}], {}
        version, rest = match.group(1), (match.group(2) or "").strip("/")
        sub_headers = {k: v for k, v in (headers or {}).items() if k.lower() not in ("accept", "authorization",
                                                                                   "content-type")}
        sub_headers["Authorization"] = ctx.request.headers.get("Authorization", "")
        builder = EnvironBuilder(path=f"/services/data/v{version}/{rest}", method=method.upper(),
                                 query_string=query or None, headers=sub_headers,
                                 data=None if body is None else json.dumps(body),
                                 content_type="application/json" if body is not None else None)
        try:
            request = Request(builder.get_environ())
        finally:
            builder.close()
        sub = type(ctx)(ctx.session, version, request)
        try:
            response = self.route(sub, rest)
        except ApiError as exc:
            response = _errors(exc.status, exc.code, exc.message)
        except SoqlError as exc:
            response = _errors(400, exc.code, exc.message)
        except RecordError as exc:
            response = _json([e.rest() for e in exc.errors], exc.http_status)
        text = response.get_data(as_text=True)
        try:
            parsed = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = text
        kept = {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}
        return response.status_code, parsed, kept

    @staticmethod
    def _is_query(method: str, url: str) -> bool:
        match = _SUB_URL.match(str(url).partition("?")[0])
        rest = (match.group(2) or "") if match else ""
        return method.upper() == "GET" and rest.split("/")[0] in ("query", "queryAll")

    # ------------------------------------------------------------------ composite
    def composite_graphless(self, ctx: Context) -> Response:
        """``POST composite``: one API call, subrequests in order, references between them."""
        if ctx.request.method != "POST":
            if ctx.request.method == "GET":
                base = f"/services/data/v{ctx.version}/composite"
                return _json({name: f"{base}/{name}" for name in ("batch", "sobjects")})
            return _method_not_allowed(ctx.request.method, "GET, POST")
        body = _body(ctx.request)
        subs = body.get("compositeRequest") if isinstance(body, dict) else None
        if not isinstance(subs, list) or not subs:
            raise ApiError(400, "INVALID_API_INPUT", "compositeRequest must be a non-empty list of subrequests")
        if len(subs) > SUBREQUEST_LIMIT:
            raise ApiError(400, "INVALID_API_INPUT", f"Limit Exceeded: a composite request can contain at most "
                                                     f"{SUBREQUEST_LIMIT} subrequests")
        seen: set[str] = set()
        queries = 0
        for sub in subs:
            if not isinstance(sub, dict) or not sub.get("method") or not sub.get("url"):
                raise ApiError(400, "INVALID_API_INPUT", "Each subrequest needs method, url and referenceId")
            ref = sub.get("referenceId")
            if not isinstance(ref, str) or not _REFERENCE_ID.match(ref):
                raise ApiError(400, "INVALID_API_INPUT", f"Invalid referenceId: {ref!r}")
            if ref in seen:
                raise ApiError(400, "INVALID_API_INPUT", f"Duplicate ReferenceId provided in the request: {ref}")
            seen.add(ref)
            queries += self._is_query(sub["method"], sub["url"])
        if queries > QUERY_LIMIT:
            raise ApiError(400, "INVALID_API_INPUT", f"Limit Exceeded: at most {QUERY_LIMIT} query operations "
                                                     f"in a composite request")
        all_or_none = bool(body.get("allOrNone", False))
        org = self.org
        results: list[dict] = []
        answers: dict[str, Any] = {}
        failed: set[str] = set()
        with org.lock:
            mark = org.begin()
            try:
                halted = False
                for sub in subs:
                    ref = sub["referenceId"]
                    if halted:
                        results.append(self._halted(ref))
                        continue
                    try:
                        url = _resolve(sub["url"], answers, failed)
                        payload = _resolve(sub.get("body"), answers, failed)
                    except _Unresolved as exc:
                        results.append({"body": [{"errorCode": "PROCESSING_HALTED", "message": str(exc)}],
                                        "httpHeaders": {}, "httpStatusCode": 400, "referenceId": ref})
                        failed.add(ref)
                        halted = all_or_none
                        continue
                    status, answer, headers = self._subrequest(ctx, sub["method"], url, payload,
                                                               sub.get("httpHeaders"))
                    results.append({"body": answer, "httpHeaders": headers, "httpStatusCode": status,
                                    "referenceId": ref})
                    if status >= 400:
                        failed.add(ref)
                        halted = all_or_none
                    else:
                        answers[ref] = answer
                if all_or_none and failed:
                    org.rollback(mark)
                    results = [r if r["referenceId"] in failed else self._halted(r["referenceId"]) for r in results]
            finally:
                org.end(mark)
        return _json({"compositeResponse": results})

    @staticmethod
    def _halted(ref: str) -> dict:
        return {"body": [{"errorCode": "PROCESSING_HALTED", "message": _HALTED}], "httpHeaders": {},
                "httpStatusCode": 400, "referenceId": ref}

    # ------------------------------------------------------------------ composite/batch
    def composite_batch(self, ctx: Context) -> Response:
        """``POST composite/batch``: independent subrequests, each charged as an API call."""
        if ctx.request.method != "POST":
            return _method_not_allowed(ctx.request.method, "POST")
        body = _body(ctx.request)
        subs = body.get("batchRequests") if isinstance(body, dict) else None
        if not isinstance(subs, list) or not subs:
            raise ApiError(400, "INVALID_BATCH_REQUEST", "batchRequests must be a non-empty list of subrequests")
        if len(subs) > SUBREQUEST_LIMIT:
            raise ApiError(400, "INVALID_BATCH_REQUEST", f"A batch can contain at most {SUBREQUEST_LIMIT} "
                                                         f"subrequests")
        for sub in subs:
            if not isinstance(sub, dict) or not sub.get("method") or not sub.get("url"):
                raise ApiError(400, "INVALID_BATCH_REQUEST", "Each subrequest needs method and url")
        with self.lock:  # the request itself was charged once: charge the other subrequests
            extra = len(subs) - 1
            if self.api_used + extra > self.api_max:
                raise ApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            self.api_used += extra
        halt = bool(body.get("haltOnError", False))
        results, has_errors, halted = [], False, False
        for sub in subs:
            if halted:
                results.append({"statusCode": 412, "result": [{"errorCode": "BATCH_PROCESSING_HALTED",
                                                               "message": "Batch processing halted per request"}]})
                continue
            match = _SUB_URL.match(str(sub["url"]).partition("?")[0])
            head = ((match.group(2) or "") if match else "").split("/")[0]
            if head not in ("sobjects", "query", "queryAll", "limits"):
                status, answer = 404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
            else:
                status, answer, _ = self._subrequest(ctx, sub["method"], sub["url"], sub.get("richInput"))
            results.append({"statusCode": status, "result": answer})
            if status >= 400:
                has_errors = True
                halted = halt
        return _json({"hasErrors": has_errors, "results": results})


def _resolve(value: Any, answers: dict[str, Any], failed: set[str]) -> Any:
    """``@{ref.path}`` references in strings (recursively in lists and dicts) replaced by earlier answers."""
    if isinstance(value, str):
        def one(match: re.Match) -> str:
            ref, path = match.group(1), match.group(2)
            if ref in failed or ref not in answers:
                raise _Unresolved(f"Invalid reference specified. No value for {ref}{path} found in {ref}. "
                                  f"Provided referenceId ('{ref}') must be of a subrequest that succeeded "
                                  f"earlier in the request.")
            current = answers[ref]
            for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
                try:
                    current = current[step[0]] if step[0] else current[int(step[1])]
                except (KeyError, IndexError, TypeError):
                    raise _Unresolved(f"Invalid reference specified. No value for {ref}{path} found in "
                                      f"{ref}.") from None
            return str(current)
        return _REF.sub(one, value)
    if isinstance(value, list):
        return [_resolve(v, answers, failed) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, answers, failed) for k, v in value.items()}
    return value
