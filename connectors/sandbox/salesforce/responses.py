"""HTTP pieces the app, Bulk API and login modules share: JSON and error responses, 405s, the
JSON request body.
"""
from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request, Response

from connectors.sandbox.salesforce.schema import ApiError

def _json(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), status=status,
                    content_type="application/json;charset=UTF-8", headers=headers)


def _errors(status: int, code: str, message: str, fields: list | None = None) -> Response:
    body = {"message": message, "errorCode": code}
    if fields is not None:
        body["fields"] = fields
    return _json([body], status)


def _method_not_allowed(method: str, allowed: str) -> Response:
    return _errors(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are {allowed}")


def _body(request: Request) -> Any:
    text = request.get_data(as_text=True)
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None
