"""Generic REST/JSON ERP connector (requests), configured entirely by a preset.

Nothing here knows a particular ERP (docs/connector-contract.md): the base URL, headers, auth,
modified-since convention, pagination style and per-object paths come from the preset's
``connection`` and ``objects.<name>.request`` sections, secrets from ``credentials``.

Transport behaviour:

* auth ``bearer`` (``credentials.token``), ``oauth2_client_credentials`` (``client_id``/
  ``client_secret``; the token is fetched, cached, refreshed shortly before it expires and
  once more when an API call answers 401), ``basic`` (``username``/``password``),
  ``api_key`` (``{header: X-Api-Key}`` or ``{query: api_key}`` + ``credentials.api_key``), ``none``;
* pagination ``page`` / ``offset`` / ``cursor`` / ``next_link`` (body path or ``Link`` header) /
  ``none``; every style stops on an empty page, page and offset also on a short page, except
  that with an optional ``total_pages_path`` the page style stops at the announced last page
  instead (a record vanishing from a page between requests must not end the pull early);
* 429 is retried after ``Retry-After`` (or the backoff), 5xx, connection errors and timeouts
  with exponential backoff capped at ``retries.max_sleep``; the sleep function is injectable;
* errors leave as :mod:`connectors.exceptions` classes; JSON is parsed with
  ``parse_float=Decimal`` so no amount ever becomes a float.

Secrets (credentials, tokens) never appear in ``repr``, exceptions or logs; logs name the
object, page and URL path only (query strings can carry keys).

Preset keys beyond the contract document's example (all optional):
``auth.client_auth`` (``basic`` | ``body``: how the OAuth client authenticates, default basic),
``auth.query`` (API key as a query parameter instead of a header),
``pagination.total_pages_path`` (or per request), ``modified_since.format`` ``iso-z`` / ``epoch`` /
``epoch_ms``, per-request ``pagination`` and ``headers`` overrides (e.g. ``style: none`` for an
unpaged endpoint), and an ``objects.<name>.deleted`` section for REST APIs with a deletions
endpoint. The token URL can be overridden by the ``token_url`` argument or
``credentials["token_url"]`` (a sandbox), and may be relative to the base URL.
"""
from __future__ import annotations

import json
import logging
import re
import time

from datetime import datetime, timezone
from decimal import Decimal
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Callable, Iterator
from urllib.parse import urljoin, urlsplit

import requests

from connectors.base import Page, SampleMixin, forget_connections
from connectors.exceptions import (AuthError, ConnectorError, ConnectorTimeout, MalformedResponse, RateLimited,
                                   RemoteError)

log = logging.getLogger(__name__)
UTC = timezone.utc
_PLACEHOLDER = re.compile(r"\{credentials\.([A-Za-z0-9_]+)\}")
_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?', re.IGNORECASE)


def dig(data: Any, path: str | None) -> Any:
    """Follow a dotted path through dicts (and list indexes); ``_MISSING`` when absent."""
    if not path:
        return data
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


_MISSING = object()


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601, HTTP-date or Microsoft JSON ``/Date(ms+zzzz)/`` as an aware UTC datetime."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    m = _MS_DATE.match(text)
    if m:
        return datetime.fromtimestamp(int(m.group(1)) / 1000, UTC)
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            stamp = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).astimezone(UTC)


def format_since(since: datetime, fmt: str) -> str:
    """``since`` as the preset's ``modified_since.format``: http-date | iso | iso-z | epoch | epoch_ms."""
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    since = since.astimezone(UTC)
    if fmt == "http-date":  # whole seconds: floor, so nothing at the boundary is missed
        return format_datetime(since.replace(microsecond=0), usegmt=True)
    if fmt == "iso":
        return since.isoformat()
    if fmt == "iso-z":
        return since.isoformat().replace("+00:00", "Z")
    if fmt == "epoch":
        return str(int(since.timestamp()))
    if fmt == "epoch_ms":
        return str(int(since.timestamp() * 1000))
    raise ConnectorError(f"unknown modified_since format {fmt!r}")


class _Token:
    __slots__ = ("value", "expires_at")

    def __init__(self, value: str, expires_at: float):
        self.value, self.expires_at = value, expires_at

    def __repr__(self) -> str:
        return "_Token(<redacted>)"


class RestConnector(SampleMixin):
    """Pull records from a REST/JSON ERP described by a preset.

    ``preset``: the parsed preset (``connection``, ``objects``); ``credentials``: a dict of
    secrets (never logged, never in ``repr``); ``endpoint`` overrides ``connection.base_url``
    (a Source's own endpoint); ``token_url`` (or ``credentials["token_url"]``) overrides
    ``connection.auth.token_url``, e.g. for a sandbox; a relative token URL is resolved
    against the base URL. ``session`` is the ``requests.Session`` to use (one is created and
    owned otherwise); ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(self, preset: dict, credentials: dict | None = None, *, endpoint: str | None = None,
                 token_url: str | None = None, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self._preset = preset
        conn = self._connection = preset.get("connection") or {}
        self._objects = preset.get("objects") or {}
        self.__credentials = dict(credentials or {})
        self.name = preset.get("name", "rest")
        self.base_url = (endpoint or conn.get("base_url") or "").rstrip("/")
        if not self.base_url:
            raise ConnectorError(f"{self.name}: no base_url in the preset and no endpoint given")
        self.timeout = float(conn.get("timeout", 30))
        retries = conn.get("retries") or {}
        self.max_retries = int(retries.get("max", 5))
        self.backoff = float(retries.get("backoff", 0.5))
        self.max_sleep = float(retries.get("max_sleep", 60))
        self._auth = dict(conn.get("auth") or {"type": "none"})
        self.auth_type = self._auth.get("type", "none")
        if self.auth_type not in ("none", "bearer", "basic", "api_key", "oauth2_client_credentials"):
            raise ConnectorError(f"{self.name}: unknown auth type {self.auth_type!r}")
        token_url = token_url or self.__credentials.get("token_url") or self._auth.get("token_url")
        self.token_url = urljoin(self.base_url + "/", token_url) if token_url else None
        self._modified_since = conn.get("modified_since") or {}
        self._pagination = conn.get("pagination") or {"style": "none"}
        self._owns_session = session is None
        self.session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._token: _Token | None = None
        self.tokens_fetched = 0
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r}, auth={self.auth_type!r})"

    # ------------------------------------------------------------------ public API
    def pull(self, object_name: str, since: datetime | None = None) -> Iterator[Page]:
        """Every page of ``object_name`` modified at/after ``since`` (all records when None)."""
        spec = self._request_spec(object_name, "request")
        yield from self._pages(object_name, spec, since)

    def pull_deleted(self, object_name: str, since: datetime | None = None) -> Iterator[list[dict]]:
        """Deletions from an optional ``objects.<name>.deleted`` section (same keys as ``request``
        plus ``id_path``, ``deleted_at_path`` and ``type`` or ``type_path``); nothing without one."""
        spec = (self._objects.get(object_name) or {}).get("deleted")
        if not spec:
            return
        for page in self._pages(object_name, spec, since):
            rows = []
            for record in page.records:
                ident = dig(record, spec.get("id_path", "id"))
                kind = dig(record, spec["type_path"]) if spec.get("type_path") else spec.get("type", object_name)
                stamp = dig(record, spec.get("deleted_at_path")) if spec.get("deleted_at_path") else None
                rows.append({"id": None if ident is _MISSING else str(ident),
                             "deleted_at": None if stamp in (None, _MISSING) else parse_timestamp(stamp),
                             "type": None if kind is _MISSING else str(kind)})
            if rows:
                yield rows

    def close(self) -> None:
        self._token = None
        if self._owns_session:
            self.session.close()

    def after_fork(self) -> None:
        """In a process forked from the one that used this connector: new connections (and tokens) of its own."""
        forget_connections(self.session)

    # ------------------------------------------------------------------ paging
    def _request_spec(self, object_name: str, section: str) -> dict:
        obj = self._objects.get(object_name)
        if obj is None:
            raise ConnectorError(f"{self.name}: preset has no object {object_name!r}")
        spec = obj.get(section)
        if not spec or not spec.get("path"):
            raise ConnectorError(f"{self.name}: preset has no {section} path for {object_name!r}")
        return spec

    def _pages(self, object_name: str, spec: dict, since: datetime | None) -> Iterator[Page]:
        pagination = {**self._pagination, **(spec.get("pagination") or {})}
        style = pagination.get("style", "none")
        url = self._url(spec["path"])
        params = {k: self._fill(v) for k, v in (spec.get("params") or {}).items()}
        headers = {k: self._fill(v) for k, v in {**(self._connection.get("headers") or {}),
                                                  **(spec.get("headers") or {})}.items()}
        if since is not None and self._modified_since:
            ms = self._modified_since
            value = format_since(since, ms.get("format", "http-date" if ms.get("style") == "header" else "iso"))
            if ms.get("style", "header") == "header":
                headers[ms.get("name", "If-Modified-Since")] = value
            else:
                params[ms.get("name", "modifiedSince")] = value
        records_path = spec.get("records_path")
        total_path = spec.get("total_pages_path", pagination.get("total_pages_path"))
        size = int(pagination.get("size", 100))
        number = 0
        if style == "page":
            page_no = int(pagination.get("start", 1))
            while True:
                number += 1
                query = {**params, pagination.get("param", "page"): page_no}
                if pagination.get("size_param"):
                    query[pagination["size_param"]] = size
                body, resp = self._get_json(object_name, number, url, query, headers)
                records = self._records(object_name, number, resp, body, records_path)
                total = self._total(body, total_path)
                yield Page(records, number, total, self._server_time(resp))
                # a known total outranks the short-page rule (a record may vanish from a page)
                if not records or (number >= total if total is not None else len(records) < size):
                    return
                page_no += 1
        elif style == "offset":
            offset = int(pagination.get("start", 0))
            while True:
                number += 1
                query = {**params, pagination.get("offset_param", "offset"): offset,
                         pagination.get("limit_param", "limit"): size}
                body, resp = self._get_json(object_name, number, url, query, headers)
                records = self._records(object_name, number, resp, body, records_path)
                yield Page(records, number, self._total(body, total_path), self._server_time(resp))
                if not records or len(records) < size:
                    return
                offset += len(records)
        elif style == "cursor":
            cursor = None
            while True:
                number += 1
                query = dict(params)
                if pagination.get("size_param"):
                    query[pagination["size_param"]] = size
                if cursor is not None:
                    query[pagination.get("param", "cursor")] = cursor
                body, resp = self._get_json(object_name, number, url, query, headers)
                records = self._records(object_name, number, resp, body, records_path)
                yield Page(records, number, self._total(body, total_path), self._server_time(resp))
                nxt = dig(body, pagination.get("cursor_path", "next_cursor"))
                if not records or nxt in (None, "", _MISSING):
                    return
                cursor = str(nxt)
        elif style == "next_link":
            query: dict | None = dict(params)
            if pagination.get("size_param"):
                query[pagination["size_param"]] = size
            seen = set()
            while True:
                number += 1
                body, resp = self._get_json(object_name, number, url, query, headers)
                records = self._records(object_name, number, resp, body, records_path)
                yield Page(records, number, self._total(body, total_path), self._server_time(resp))
                if pagination.get("next_path"):
                    nxt = dig(body, pagination["next_path"])
                else:
                    m = _LINK_NEXT.search(resp.headers.get("Link", ""))
                    nxt = m.group(1) if m else None
                if not records or nxt in (None, "", _MISSING):
                    return
                url, query = urljoin(resp.url, str(nxt)), None  # the link carries its own query
                if url in seen:
                    raise MalformedResponse(f"{self.name} {object_name}: page {number}: next link loops back",
                                            detail=urlsplit(url).path)
                seen.add(url)
        elif style == "none":
            body, resp = self._get_json(object_name, 1, url, params, headers)
            yield Page(self._records(object_name, 1, resp, body, records_path), 1, 1, self._server_time(resp))
        else:
            raise ConnectorError(f"{self.name}: unknown pagination style {style!r}")

    def _url(self, path: str) -> str:
        if urlsplit(path).scheme:
            return path
        return self.base_url + "/" + path.lstrip("/")

    def _fill(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return _PLACEHOLDER.sub(lambda m: str(self._cred(m.group(1))), value)

    def _cred(self, key: str) -> Any:
        try:
            return self.__credentials[key]
        except KeyError:
            raise AuthError(f"{self.name}: credentials lack {key!r}") from None

    @staticmethod
    def _total(body: Any, path: str | None) -> int | None:
        if not path:
            return None
        value = dig(body, path)
        try:
            return int(value) if value not in (None, _MISSING) else None
        except (TypeError, ValueError):
            return None

    @staticmethod
    def _server_time(resp: requests.Response) -> datetime | None:
        return parse_timestamp(resp.headers.get("Date")) if resp.headers.get("Date") else None

    def _records(self, object_name: str, number: int, resp: requests.Response, body: Any,
                 records_path: str | None) -> list:
        records = dig(body, records_path)
        if records is _MISSING or not isinstance(records, list):
            raise MalformedResponse(
                f"{self.name} {object_name}: page {number} from {self._where(resp.url)} has no list at "
                f"{records_path!r}", status=resp.status_code)
        return records

    @staticmethod
    def _where(url: str) -> str:
        """A URL without user info and query string (either may carry secrets)."""
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"

    # ------------------------------------------------------------------ HTTP
    def _get_json(self, object_name: str, number: int, url: str, params: dict | None,
                  headers: dict) -> tuple[Any, requests.Response]:
        resp = self._send("GET", url, params=params, headers=headers, what=f"{object_name} page {number}")
        try:
            return json.loads(resp.content, parse_float=Decimal), resp
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise MalformedResponse(
                f"{self.name} {object_name}: page {number} from {self._where(resp.url)} is not valid JSON: {exc}",
                status=resp.status_code, detail=resp.content[:200].decode("utf-8", "replace")) from exc

    def _send(self, method: str, url: str, *, params: dict | None = None, headers: dict | None = None,
              data: dict | None = None, auth: Any = None, what: str, authenticate: bool = True) -> requests.Response:
        """One HTTP exchange with retries; returns a 2xx response or raises a ConnectorError."""
        attempt = 0
        reauthenticated = False
        where = self._where(url)
        while True:
            send_headers = dict(headers or {})
            send_params = dict(params) if params is not None else None
            if authenticate:
                auth = self._apply_auth(send_headers, send_params)
                if send_params is None and self.auth_type == "api_key" and self._auth.get("query"):
                    send_params = {self._auth["query"]: self._cred("api_key")}
            self.requests_sent += 1
            try:
                resp = self.session.request(method, url, params=send_params, headers=send_headers, data=data,
                                            auth=auth, timeout=self.timeout)
            except requests.Timeout as exc:
                if attempt >= self.max_retries:
                    raise ConnectorTimeout(f"{self.name}: {what}: no answer from {where} within {self.timeout}s "
                                           f"after {attempt + 1} attempts") from None
                attempt += 1
                self._backoff(attempt, None, what, f"timeout ({type(exc).__name__})")
                continue
            except requests.ConnectionError as exc:
                if attempt >= self.max_retries:
                    raise RemoteError(f"{self.name}: {what}: cannot connect to {where} after {attempt + 1} attempts",
                                      retryable=True, detail=type(exc).__name__) from None
                attempt += 1
                self._backoff(attempt, None, what, f"connection error ({type(exc).__name__})")
                continue
            except requests.RequestException as exc:
                raise ConnectorError(f"{self.name}: {what}: request to {where} failed: {type(exc).__name__}") from None
            status = resp.status_code
            if 200 <= status < 300:
                return resp
            excerpt = resp.content[:300].decode("utf-8", "replace")
            if status == 401 and authenticate and self.auth_type == "oauth2_client_credentials" and not reauthenticated:
                log.info("%s: %s: 401, fetching a new token and retrying once", self.name, what)
                self._token = None
                reauthenticated = True
                continue
            if status in (401, 403):
                raise AuthError(f"{self.name}: {what}: HTTP {status} from {where}: credentials refused",
                                status=status, detail=excerpt)
            if status == 429:
                if attempt >= self.max_retries:
                    raise RateLimited(f"{self.name}: {what}: still rate limited (429) by {where} "
                                      f"after {attempt + 1} attempts", detail=excerpt)
                attempt += 1
                self._backoff(attempt, resp.headers.get("Retry-After"), what, "429 rate limited")
                continue
            if status >= 500:
                if attempt >= self.max_retries:
                    raise RemoteError(f"{self.name}: {what}: HTTP {status} from {where} after {attempt + 1} attempts",
                                      status=status, retryable=True, detail=excerpt)
                attempt += 1
                self._backoff(attempt, resp.headers.get("Retry-After") if status == 503 else None, what,
                              f"HTTP {status}")
                continue
            raise ConnectorError(f"{self.name}: {what}: HTTP {status} from {where}", status=status, detail=excerpt)

    def _backoff(self, attempt: int, retry_after: str | None, what: str, why: str) -> None:
        delay = self.backoff * 2 ** (attempt - 1)
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                stamp = parse_timestamp(retry_after)
                if stamp is not None:
                    delay = (stamp - datetime.now(UTC)).total_seconds()
        delay = max(0.0, min(delay, self.max_sleep))
        log.warning("%s: %s: %s, retry %d/%d in %.2fs", self.name, what, why, attempt, self.max_retries, delay)
        self._sleep(delay)

    # ------------------------------------------------------------------ auth
    def _apply_auth(self, headers: dict, params: dict | None) -> Any:
        """Add credentials to a request; returns a requests ``auth`` value or None."""
        kind = self.auth_type
        if kind == "bearer":
            headers["Authorization"] = f"Bearer {self._cred('token')}"
        elif kind == "oauth2_client_credentials":
            headers["Authorization"] = f"Bearer {self._access_token()}"
        elif kind == "basic":
            return requests.auth.HTTPBasicAuth(str(self._cred("username")), str(self._cred("password")))
        elif kind == "api_key":
            if self._auth.get("query"):
                if params is not None:
                    params[self._auth["query"]] = self._cred("api_key")
            else:
                headers[self._auth.get("header", "X-Api-Key")] = str(self._cred("api_key"))
        return None

    def _access_token(self) -> str:
        token = self._token
        now = self._clock()
        if token is not None and now < token.expires_at:
            return token.value
        if not self.token_url:
            raise ConnectorError(f"{self.name}: oauth2_client_credentials needs auth.token_url")
        data = {"grant_type": "client_credentials"}
        if self._auth.get("scope"):
            data["scope"] = self._auth["scope"]
        client_id, client_secret = str(self._cred("client_id")), str(self._cred("client_secret"))
        auth = None
        if self._auth.get("client_auth", "basic") == "basic":
            auth = requests.auth.HTTPBasicAuth(client_id, client_secret)
        else:
            data.update(client_id=client_id, client_secret=client_secret)
        try:
            resp = self._send("POST", self.token_url, data=data, auth=auth, headers={"Accept": "application/json"},
                              what="token request", authenticate=False)
        except ConnectorError as exc:
            if exc.status in (400, 401, 403):  # invalid_client, unauthorized_client, ...
                raise AuthError(f"{self.name}: token request refused (HTTP {exc.status})", status=exc.status,
                                detail=exc.detail) from None
            raise
        try:
            body = resp.json()
            value = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedResponse(f"{self.name}: token response from {self._where(self.token_url)} "
                                    f"has no access_token", status=resp.status_code) from exc
        margin = min(60.0, expires_in * 0.1)  # refresh a little before the expiry
        self._token = _Token(value, self._clock() + max(expires_in - margin, 0.0))
        self.tokens_fetched += 1
        return value


def from_preset(preset: dict, credentials: dict | None = None, **kwargs) -> RestConnector:
    """Build a connector for a ``kind: rest`` preset."""
    if preset.get("kind", "rest") != "rest":
        raise ConnectorError(f"preset {preset.get('name')!r} is not a REST preset")
    return RestConnector(preset, credentials, **kwargs)


__all__ = ["Page", "RestConnector", "from_preset", "dig", "parse_timestamp", "format_since"]
