"""Generic SOAP ERP connector (zeep), configured entirely by a preset (docs/connector-contract.md).

Nothing here knows a particular ERP: the WSDL, endpoint, auth header, extra SOAP headers,
request templates and response paths all come from the preset's ``connection`` and
``objects.<name>.request`` / ``.deleted`` sections.

zeep builds the requests from the WSDL types; responses are taken raw
(``client.settings(raw_response=True)``) and parsed with lxml through a parser that loads no
DTD, resolves no entity and touches no network, so ``xsd:double`` amounts stay exact strings
and any ``DOCTYPE`` is refused with :class:`UnsafeXml`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import requests
import zeep
import zeep.exceptions
from lxml import etree
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from connectors.base import Page, SampleMixin, forget_connections
from connectors.exceptions import (AuthError, ConnectorError, ConnectorTimeout, MalformedResponse, RateLimited,
                                   RemoteError, UnsafeXml)

log = logging.getLogger(__name__)
UTC = timezone.utc
PACKAGE_DIR = Path(__file__).resolve().parent
SOAP_ENV = ("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope")
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[A-Za-z0-9_]+)?)\}")
_PROLOG_DANGER = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


class _RedactEnvelopes(logging.Filter):
    """zeep's transport logs whole SOAP envelopes at DEBUG, auth headers included: keep the
    line, drop the envelope."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(("HTTP Post to", "HTTP Response from")):
            record.msg = " ".join(record.msg.split()[:3]) + " %s: <SOAP envelope not logged>"
            record.args = record.args[:1] if isinstance(record.args, tuple) else record.args
        return True


_zeep_transport_log = logging.getLogger("zeep.transports")
if not any(isinstance(f, _RedactEnvelopes) for f in _zeep_transport_log.filters):
    _zeep_transport_log.addFilter(_RedactEnvelopes())


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=True, remove_comments=True, remove_pis=True)


def parse_xml(content: bytes) -> etree._Element:
    """Parse untrusted XML: any DTD or entity declaration is refused (:class:`UnsafeXml`)."""
    root_start = re.search(rb"<[A-Za-z_]", content)
    prolog = content[: root_start.start()] if root_start else content
    if _PROLOG_DANGER.search(prolog) or _PROLOG_DANGER.search(content[:4096]):
        raise UnsafeXml("XML response has a DOCTYPE / entity declaration; refused")
    try:
        root = etree.fromstring(content, _safe_parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedResponse(f"response is not well-formed XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise UnsafeXml("XML response has a DOCTYPE; refused")
    return root


_LOCAL_NAMES: dict[str, str] = {}


def _local(tag: str) -> str:
    name = _LOCAL_NAMES.get(tag)
    if name is None:
        name = _LOCAL_NAMES[tag] = tag.rpartition("}")[2]
    return name


def element_to_dict(el: etree._Element, lists: frozenset[str] = frozenset(), path: str = "") -> Any:
    """Plain data of an element: local names as keys, text as ``str``, attributes by local name,
    ``xsi:type`` (local part) as ``_type``, repeated children (or those whose dotted path relative
    to the record is in ``lists``) as lists; a leaf with attributes keeps its text as ``_value``.

    Comments and processing instructions never reach here (the parser drops them)."""
    attrs = el.items()
    if not len(el):
        if not attrs:
            text = el.text
            return text if text is not None else ""
    out: dict[str, Any] = {}
    for key, value in attrs:
        if key == XSI_TYPE:
            out["_type"] = value.rpartition(":")[2]
        else:
            out[_local(key)] = value
    if not len(el):
        text = el.text
        if text is not None and text.strip():
            out["_value"] = text
        return out
    repeated: set[str] | None = None
    for child in el:
        tag = child.tag
        name = _LOCAL_NAMES.get(tag) or _local(tag)
        if len(child) or child.attrib:
            sub = f"{path}.{name}" if path else name
            value = element_to_dict(child, lists, sub)
        else:
            sub = None
            value = child.text if child.text is not None else ""
        if repeated is not None and name in repeated:
            out[name].append(value)
        elif name in out:
            out[name] = [out[name], value]
            repeated = repeated or set()
            repeated.add(name)
        elif lists and (sub or (f"{path}.{name}" if path else name)) in lists:
            out[name] = [value]
            repeated = repeated or set()
            repeated.add(name)
        else:
            out[name] = value
    return out


def _walk(el: etree._Element | None, path: str | None):
    """Follow a dotted path of local names; the last step may name an attribute.
    Returns an element, an attribute string, a list of elements (last step repeated) or None."""
    if el is None or not path:
        return el
    steps = path.split(".")
    current = [el]
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        found = []
        for node in current:
            found.extend(c for c in node if isinstance(c.tag, str) and _local(c.tag) == step)
        if not found:
            if last and len(current) == 1:
                for key, value in current[0].attrib.items():
                    if _local(key) == step:
                        return value
            return None if not last else []
        current = found
    return current


def _first(el, path):
    found = _walk(el, path)
    if isinstance(found, list):
        return found[0] if found else None
    return found


def _text(el, path) -> str | None:
    found = _first(el, path)
    if found is None or isinstance(found, str):
        return found
    return (found.text or "").strip()


def _utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (a naive one is taken as UTC), so the request never means local time."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


class SoapConnector(SampleMixin):
    """Pull records from a SOAP ERP described by a preset.

    ``preset``: the parsed preset (``connection``, ``objects``); ``credentials``: a dict of
    secrets (never logged, never in ``repr``); ``endpoint`` overrides the preset's endpoint
    (a Source's own endpoint); ``transport`` is a zeep ``Transport`` (its ``session`` is used),
    else one is built around ``session`` or a new ``requests.Session``.
    """

    def __init__(self, preset: dict, credentials: dict | None = None, *, endpoint: str | None = None,
                 transport: Transport | None = None, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self._preset = preset
        self._connection = preset.get("connection") or {}
        self._objects = preset.get("objects") or {}
        self.__credentials = dict(credentials or {})
        self._sleep = sleep
        conn = self._connection
        self.timeout = float(conn.get("timeout", 60))
        retries = conn.get("retries") or {}
        self.max_retries = int(retries.get("max", 3))
        self.backoff = float(retries.get("backoff", 1))
        self.max_sleep = float(retries.get("max_sleep", 60))
        self.auth_type = (conn.get("auth") or {}).get("type", "none")
        self.wsdl = self._wsdl_location(conn.get("wsdl"))
        self.endpoint = endpoint or conn.get("endpoint")  # placeholders filled when the service is built
        self._owns_session = transport is None and session is None
        if transport is None:
            session = session or requests.Session()
            transport = Transport(session=session, timeout=self.timeout, operation_timeout=self.timeout)
        elif transport.operation_timeout is None:
            transport.operation_timeout = self.timeout
        self._transport = transport
        self._client: zeep.Client | None = None
        self._service = None
        self._elements: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(wsdl={self.wsdl!r}, endpoint={self.endpoint!r}, "
                f"auth={self.auth_type!r})")

    # ------------------------------------------------------------------ public API
    def pull(self, object_name: str, since: datetime | None = None) -> Iterator[Page]:
        """Every page of ``object_name`` modified at/after ``since`` (all records when None)."""
        spec = self._object(object_name).get("request")
        if not spec:
            raise ConnectorError(f"preset has no request section for {object_name!r}")
        response = spec.get("response") or {}
        lists = frozenset(response.get("lists") or ())
        ctx = {"since": _utc(since), "page": 1, "search_id": None}
        result, server_time = self._call(spec["operation"], spec.get("args") or {}, ctx, response)
        total_pages = self._total_pages(result, response)
        records = self._records(result, response, lists)
        yield Page(records, 1, total_pages, server_time)
        next_spec = spec.get("next")
        if not next_spec or not total_pages:
            return
        ctx["search_id"] = _text(result, response.get("search_id_path"))
        next_response = {**response, **(next_spec.get("response") or {})}
        for number in range(2, total_pages + 1):
            ctx["page"] = number
            result, server_time = self._call(next_spec["operation"], next_spec.get("args") or {}, ctx,
                                             next_response)
            yield Page(self._records(result, next_response, lists), number, total_pages, server_time)

    def pull_deleted(self, object_name: str, since: datetime | None = None) -> Iterator[list[dict]]:
        """Deleted records of ``object_name`` as ``{"id", "deleted_at", "type"}`` dicts, page by page."""
        spec = self._object(object_name).get("deleted")
        if not spec:
            return
        response = spec.get("response") or {}
        number, total_pages = 1, None
        while True:
            ctx = {"since": _utc(since), "page": number, "search_id": None}
            result, _ = self._call(spec["operation"], spec.get("args") or {}, ctx, response)
            total_pages = self._total_pages(result, response)
            items = _walk(result, response.get("records_path"))
            rows = []
            for item in items if isinstance(items, list) else []:
                rows.append({"id": _text(item, response.get("id_path")),
                             "deleted_at": _parse_datetime(_text(item, response.get("deleted_at_path"))),
                             "type": _text(item, response.get("type_path"))})
            if rows:
                yield rows
            if not rows or total_pages is None or number >= total_pages:
                return
            number += 1

    def close(self) -> None:
        if self._owns_session:
            self._transport.session.close()

    def after_fork(self) -> None:
        """In a process forked from the one that used this connector: new connections of its own."""
        forget_connections(self._transport.session)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _wsdl_location(wsdl: str | None) -> str:
        if not wsdl:
            raise ConnectorError("preset connection.wsdl is missing")
        if re.match(r"^[a-z][a-z0-9+.-]*://", wsdl, re.I):
            return wsdl
        path = Path(wsdl)
        return str(path if path.is_absolute() else PACKAGE_DIR / path)

    def _object(self, name: str) -> dict:
        try:
            return self._objects[name]
        except KeyError:
            raise ConnectorError(f"preset has no object {name!r}") from None

    @property
    def client(self) -> zeep.Client:
        if self._client is None:
            wsse = None
            if self.auth_type == "ws_security_username":
                wsse = UsernameToken(self._cred("username"), self._cred("password"))
            elif self.auth_type == "basic":
                self._transport.session.auth = (self._cred("username"), self._cred("password"))
            # the WSDL is configuration we trust to import its XSDs; DTDs and entities stay forbidden
            settings = zeep.Settings(strict=False, forbid_dtd=True, forbid_entities=True, forbid_external=False,
                                     xml_huge_tree=True)
            try:
                self._client = zeep.Client(self.wsdl, transport=self._transport, wsse=wsse, settings=settings)
            except requests.exceptions.Timeout as exc:
                raise ConnectorTimeout(f"timed out loading the WSDL {self.wsdl}") from exc
            except requests.exceptions.RequestException as exc:
                raise RemoteError(f"could not load the WSDL {self.wsdl}: {type(exc).__name__}",
                                  retryable=True) from exc
            except (zeep.exceptions.Error, etree.XMLSyntaxError, OSError) as exc:
                raise MalformedResponse(f"could not load the WSDL {self.wsdl}: {exc}") from exc
        return self._client

    @property
    def service(self):
        if self._service is None:
            client = self.client
            binding = self._connection.get("binding")
            if binding is None:
                service = next(iter(client.wsdl.services.values()))
                port = next(iter(service.ports.values()))
                binding = port.binding.name
                address = port.binding_options.get("address")
            else:
                address = None
            address = self._substitute(self.endpoint, {}) if self.endpoint else address
            self._service = client.create_service(str(binding), address)
        return self._service

    def _cred(self, key: str) -> str:
        try:
            return str(self.__credentials[key])
        except KeyError:
            raise AuthError(f"credentials lack {key!r} needed by auth type {self.auth_type!r}") from None

    def _element(self, name: str):
        """An XSD element of the WSDL by ``{ns}local`` or by unique local name."""
        if name not in self._elements:
            if name.startswith("{"):
                elm = self.client.get_element(name)
            else:
                matches = [e for e in self.client.wsdl.types.elements if e.qname.localname == name]
                if not matches:
                    raise ConnectorError(f"the WSDL defines no element named {name!r}")
                elm = matches[0]
            self._elements[name] = elm
        return self._elements[name]

    # ------------------------------------------------------------------ templates
    def _substitute(self, value, ctx: dict):
        """Fill ``{since}``, ``{page}``, ``{search_id}`` and ``{credentials.X}`` placeholders."""
        if isinstance(value, str):
            whole = _PLACEHOLDER.fullmatch(value)
            if whole:
                return self._lookup(whole.group(1), ctx)
            return _PLACEHOLDER.sub(lambda m: str(self._lookup(m.group(1), ctx)), value)
        if isinstance(value, list):
            return [self._substitute(v, ctx) for v in value]
        if isinstance(value, dict):
            return {k: self._substitute(v, ctx) for k, v in value.items()}
        return value

    def _lookup(self, key: str, ctx: dict):
        if key.startswith("credentials."):
            return self._cred(key.split(".", 1)[1])
        if key not in ctx:
            raise ConnectorError(f"unknown placeholder {{{key}}} in the preset")
        return ctx[key]

    def _build(self, value, ctx: dict):
        """Template -> zeep arguments: drops ``_if`` dicts whose condition is unset, builds ``_type``."""
        if isinstance(value, dict):
            cond = value.get("_if")
            if cond is not None and ctx.get(cond) is None:
                return _DROP
            items = {k: self._build(v, ctx) for k, v in value.items() if k not in ("_if", "_type")}
            items = {k: v for k, v in items.items() if v is not _DROP}
            if "_type" in value:
                return self.client.get_type(value["_type"])(**items)
            return items
        if isinstance(value, list):
            return [v for v in (self._build(v, ctx) for v in value) if v is not _DROP]
        return self._substitute(value, ctx)

    # ------------------------------------------------------------------ headers
    def _headers(self) -> list:
        headers = []
        auth = self._connection.get("auth") or {}
        if self.auth_type == "token_passport":
            headers.append(self._token_passport(auth))
        elif self.auth_type == "passport":
            headers.append(self._passport(auth))
        elif self.auth_type not in ("none", "ws_security_username", "basic"):
            raise ConnectorError(f"unsupported SOAP auth type {self.auth_type!r}")
        for name, values in (self._connection.get("soap_headers") or {}).items():
            headers.append(self._element(name)(**self._substitute(values or {}, {})))
        return headers

    def _token_passport(self, auth: dict):
        """Token-based authentication header: HMAC-SHA256 over ``account&consumerKey&token&nonce&timestamp``
        keyed with ``consumerSecret&tokenSecret``, base64; a fresh nonce and timestamp per request."""
        account, consumer_key, token_id = self._cred("account"), self._cred("consumer_key"), self._cred("token_id")
        nonce, stamp = secrets.token_hex(16), str(int(time.time()))
        key = f"{self._cred('consumer_secret')}&{self._cred('token_secret')}".encode()
        base = "&".join((account, consumer_key, token_id, nonce, stamp)).encode()
        signature = base64.b64encode(hmac.new(key, base, hashlib.sha256).digest()).decode()
        element = self._element(auth.get("header", "tokenPassport"))
        return element(account=account, consumerKey=consumer_key, token=token_id, nonce=nonce, timestamp=stamp,
                       signature={"_value_1": signature, "algorithm": "HMAC-SHA256"})

    def _passport(self, auth: dict):
        """A ``passport`` header (email, password, account, optional role).  Built from the WSDL when
        it defines the element, else by hand in ``auth.header`` / ``auth.fields_namespace``."""
        values = {"email": self._cred("email"), "password": self._cred("password"),
                  "account": self._cred("account")}
        role = self.__credentials.get("role")
        name = auth.get("header", "passport")
        try:
            element = self._element(name)
        except (ConnectorError, LookupError, ValueError, zeep.exceptions.Error):
            element = None
        if element is not None:
            if role:
                values["role"] = {"internalId": str(role)}
            return element(**values)
        qname = etree.QName(name) if name.startswith("{") else etree.QName(auth.get("namespace", ""), name)
        fields_ns = auth.get("fields_namespace", qname.namespace)
        root = etree.Element(qname)
        for key, value in values.items():
            etree.SubElement(root, etree.QName(fields_ns, key)).text = value
        if role:
            etree.SubElement(root, etree.QName(fields_ns, "role"), internalId=str(role))
        return root

    # ------------------------------------------------------------------ calls
    def _call(self, operation: str, args: dict, ctx: dict, response: dict):
        """Send one operation (with retries); return (result element, server time)."""
        kwargs = self._build(args, ctx)
        attempt = 0
        while True:
            attempt += 1
            try:
                headers = self._headers()
                try:
                    method = self.service[operation]
                except (AttributeError, KeyError) as exc:
                    raise ConnectorError(f"the WSDL has no operation {operation!r}") from exc
                with self.client.settings(raw_response=True):
                    reply = method(**kwargs, _soapheaders=headers)
            except requests.exceptions.Timeout as exc:
                raise ConnectorTimeout(f"{operation}: no answer within {self.timeout:g}s") from exc
            except requests.exceptions.ConnectionError as exc:
                if "timed out" in str(exc).lower():
                    raise ConnectorTimeout(f"{operation}: no answer within {self.timeout:g}s") from exc
                if attempt <= self.max_retries:
                    self._backoff(attempt, None, operation, type(exc).__name__)
                    continue
                raise RemoteError(f"{operation}: connection failed after {attempt} attempts "
                                  f"({type(exc).__name__})", retryable=True) from exc
            except requests.exceptions.RequestException as exc:  # e.g. a body cut off mid-transfer
                if attempt <= self.max_retries:
                    self._backoff(attempt, None, operation, type(exc).__name__)
                    continue
                raise RemoteError(f"{operation}: request failed after {attempt} attempts "
                                  f"({type(exc).__name__})", retryable=True) from exc
            except (zeep.exceptions.Error, TypeError, ValueError) as exc:
                raise ConnectorError(f"{operation}: the preset's request does not fit the WSDL: {exc}") from exc
            status = reply.status_code
            if status == 429 or (status >= 500 and not self._is_fault(reply)):
                if attempt <= self.max_retries:
                    self._backoff(attempt, reply.headers.get("Retry-After"), operation, f"HTTP {status}")
                    continue
                if status == 429:
                    raise RateLimited(f"{operation}: HTTP 429 after {attempt} attempts", status=429)
                raise RemoteError(f"{operation}: HTTP {status} after {attempt} attempts", status=status,
                                  retryable=True, detail=reply.text[:200])
            return self._result(operation, reply, response)

    @staticmethod
    def _total_pages(result, response: dict) -> int | None:
        text = _text(result, response.get("total_pages_path")) if response.get("total_pages_path") else None
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise MalformedResponse(f"total pages {text!r} is not a number") from None

    @staticmethod
    def _records(result, response: dict, lists: frozenset[str]) -> list[dict]:
        path = response.get("records_path")
        if not path:
            raise MalformedResponse("the preset names no records_path")
        head, _, last = path.rpartition(".")
        container = _first(result, head) if head else result
        if container is None or isinstance(container, str):
            return []  # an empty result has no list element
        return [element_to_dict(el, lists) for el in container
                if isinstance(el.tag, str) and _local(el.tag) == last]

    @staticmethod
    def _is_fault(reply) -> bool:
        ctype = reply.headers.get("Content-Type", "")
        return "xml" in ctype and b"Fault" in reply.content[:4096]

    def _backoff(self, attempt: int, retry_after: str | None, operation: str, why: str) -> None:
        delay = self.backoff * 2 ** (attempt - 1)
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                try:
                    delay = (parsedate_to_datetime(retry_after) - datetime.now(UTC)).total_seconds()
                except (TypeError, ValueError):
                    pass
        delay = max(0.0, min(delay, self.max_sleep))
        log.warning("%s: %s, retry %d/%d in %.1fs", operation, why, attempt, self.max_retries, delay)
        self._sleep(delay)

    def _result(self, operation: str, reply, response: dict):
        status = reply.status_code
        server_time = None
        if reply.headers.get("Date"):
            try:
                server_time = parsedate_to_datetime(reply.headers["Date"]).astimezone(UTC)
            except (TypeError, ValueError):
                server_time = None
        if status in (401, 403) and not self._is_fault(reply):
            raise AuthError(f"{operation}: HTTP {status}: credentials refused", status=status)
        try:
            root = parse_xml(reply.content)
        except MalformedResponse as exc:
            if status in (401, 403):
                raise AuthError(f"{operation}: HTTP {status}: credentials refused", status=status) from exc
            raise
        body = next((c for c in root if isinstance(c.tag, str) and _local(c.tag) == "Body"), None) \
            if etree.QName(root).namespace in SOAP_ENV else None
        if body is None or not len(body):
            raise MalformedResponse(f"{operation}: the response has no SOAP Body", status=status)
        payload = body[0]
        if _local(payload.tag) == "Fault":
            error = self._fault_error(operation, payload, status)
            if status in (401, 403) and not isinstance(error, AuthError):
                error = AuthError(error.message, status=status, detail=error.detail)
            raise error
        if status >= 400:
            raise RemoteError(f"{operation}: HTTP {status}", status=status)
        result = _first(payload, response.get("result_path")) if response.get("result_path") else payload
        if result is None or isinstance(result, str):
            raise MalformedResponse(f"{operation}: no {response.get('result_path')!r} in the response")
        success_path = response.get("success_path")
        if success_path:
            ok = _text(result, success_path)
            if (ok or "").lower() not in ("true", "1"):
                messages = [m.text or "" for m in result.iter() if isinstance(m.tag, str)
                            and _local(m.tag) in ("message", "code")]
                raise RemoteError(f"{operation}: request failed: {' '.join(messages)[:500] or 'no detail'}",
                                  status=status, detail=" ".join(messages)[:1000])
        return result, server_time

    def _fault_error(self, operation: str, fault: etree._Element, status: int) -> ConnectorError:
        faultstring = _text(fault, "faultstring") or _text(fault, "Reason.Text") or "SOAP fault"
        faultcode = _text(fault, "faultcode") or _text(fault, "Code.Value") or ""
        detail = _first(fault, "detail")
        if detail is None:
            detail = _first(fault, "Detail")
        detail_name = next((_local(c.tag) for c in detail if isinstance(c.tag, str)), "") \
            if isinstance(detail, etree._Element) else ""
        code = ""
        if isinstance(detail, etree._Element) and len(detail):
            code = _text(detail[0], "code") or ""
        fault_map = self._connection.get("fault_map") or {}
        kind = fault_map.get(detail_name) or fault_map.get(code) or "remote"
        message = f"{operation}: SOAP fault {detail_name or faultcode}{f' ({code})' if code else ''}: {faultstring}"
        info = f"{faultcode} {detail_name} {code}".strip()
        if kind == "auth":
            return AuthError(message, status=status, detail=info)
        if kind == "rate_limited":
            return RateLimited(message, status=status, detail=info)
        return RemoteError(message, status=status, retryable=kind == "retryable", detail=info)


_DROP = object()
