"""Salesforce connector: simple-salesforce over a ``requests.Session`` we own.

I/O only. It logs in (OAuth2 username-password, client credentials, JWT bearer, or the
SOAP ``login`` that simple-salesforce's username/password/token flow uses) against a
configurable login URL (production ``https://login.salesforce.com``, sandbox
``https://test.salesforce.com``, a My Domain, or our emulator), pages SOQL through
``query``/``queryAll`` (deletions included), describes sObjects (several in one ``composite``
call), upserts through sObject Collections (200 records a call) and Bulk API 2.0 ingest jobs
(started, then waited for, so two jobs process while we upload the second), and counts every
API call it spends from the ``Sforce-Limit-Info`` header of every response.

Errors are translated at this boundary (one ``exc_map`` in :func:`_translate`): an expired
session is renewed once and the call retried; 5xx and ``UNABLE_TO_LOCK_ROW`` on a whole
request are retried with backoff; ``REQUEST_LIMIT_EXCEEDED`` becomes
:class:`ApiLimitExceeded`; everything else a :class:`SalesforceRequestError` that carries
Salesforce's error array. SOQL is only ever built with ``format_soql``.
"""
from __future__ import annotations

import csv
import io
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator
from xml.sax.saxutils import escape

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
)
from simple_salesforce.format import format_soql
from simple_salesforce.login import soap_login, token_login

from .exceptions import (ApiLimitExceeded, AuthError, ConnectorError, ConnectorTimeout, RemoteError,
                         SalesforceRequestError)

log = logging.getLogger(__name__)

LOGIN_URLS = {"production": "https://login.salesforce.com", "sandbox": "https://test.salesforce.com"}
DEFAULT_VERSION = "59.0"
COLLECTION_LIMIT = 200
COMPOSITE_SUBREQUESTS = 25
_LIMIT_RE = re.compile(r"api-usage=(\d+)/(\d+)")
RETRYABLE_CODES = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"}
BULK_ROWS_PER_S = 10000.0  # first guess at a Bulk job's processing rate, until a job was seen
MAX_POLL_WAIT = 60.0


@dataclass
class BulkResult:
    """What a Bulk API 2.0 ingest job did: ``failed`` and ``unprocessed`` are the original
    rows (dicts of column → text), failed ones with ``sf__Error``."""

    job_id: str | None
    state: str
    processed: int = 0
    failed: list[dict] = field(default_factory=list)
    unprocessed: list[dict] = field(default_factory=list)
    error: str | None = None


@dataclass(eq=False)
class BulkJob:
    """A Bulk API 2.0 ingest job we uploaded and closed (``closed_at``: ``time.monotonic()``)."""

    job_id: str
    sobject: str
    rows: int
    closed_at: float


def _errors_of(content: Any) -> list[dict]:
    """Salesforce error bodies are JSON arrays of {message, errorCode, fields}."""
    if isinstance(content, list):
        return [e for e in content if isinstance(e, dict)]
    if isinstance(content, dict) and ("errorCode" in content or "message" in content):
        return [content]
    return [{"errorCode": "UNKNOWN", "message": str(content)[:500]}]


def _translate(exc: SalesforceError, what: str) -> Exception:
    """simple-salesforce exception → our connector exception (the one exc_map)."""
    errors = _errors_of(getattr(exc, "content", None))
    codes = {e.get("errorCode") for e in errors}
    status = getattr(exc, "status", None)
    text = "; ".join(f"{e.get('errorCode')}: {e.get('message')}" for e in errors)
    if "REQUEST_LIMIT_EXCEEDED" in codes:
        return ApiLimitExceeded(f"{what}: Salesforce API limit exceeded ({text})", status=status)
    if isinstance(exc, (SalesforceExpiredSession, SalesforceAuthenticationFailed)):
        return AuthError(f"{what}: {text or exc}", status=status)
    if status is not None and status >= 500:
        return RemoteError(f"{what}: Salesforce answered {status} ({text})", status=status, retryable=True)
    return SalesforceRequestError(f"{what}: {text}", status=status, errors=errors,
                                  retryable=bool(codes & RETRYABLE_CODES))


class SalesforceConnector:
    """One org. ``config`` keys: ``login_url`` or ``environment`` (production|sandbox),
    ``api_version``, ``auth`` (password|soap|client_credentials|jwt), ``ca_bundle``,
    ``timeout``, ``retries``. ``credentials`` keys by flow: username, password,
    security_token, client_id, client_secret, private_key (PEM, for jwt)."""

    def __init__(self, config: dict, credentials: dict, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        connection = config.get("connection", config)
        self.login_url = (connection.get("login_url")
                          or LOGIN_URLS[connection.get("environment", "production")]).rstrip("/")
        self.api_version = str(connection.get("api_version", DEFAULT_VERSION))
        self.auth = connection.get("auth", "password")
        self.timeout = float(connection.get("timeout", 60))
        self.retries = int(connection.get("retries", 3))
        self._credentials = dict(credentials)
        self.session = session or _Session()
        if connection.get("ca_bundle"):
            self.session.verify = connection["ca_bundle"]
            self.session.pinned_ca = connection["ca_bundle"]
        self.session.hooks["response"].append(self._on_response)
        self.sleep = sleep
        self._sf: Salesforce | None = None
        self.calls = 0  # API requests this connector spent
        self.api_used: int | None = None
        self.api_max: int | None = None
        self.instance_url: str | None = None
        self.bulk_rate: float | None = None  # rows/s of the last Bulk job that completed
        self._inflight: list[BulkJob] = []  # Bulk jobs started (closed) and not yet seen ending

    def __repr__(self) -> str:  # never the credentials
        return f"SalesforceConnector({self.login_url!r}, auth={self.auth!r})"

    # ------------------------------------------------------------ accounting
    def _on_response(self, response: requests.Response, *args, **kwargs) -> None:
        if "/services/data/" not in response.url:
            return  # logins are not API calls
        self.calls += 1
        match = _LIMIT_RE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.api_used, self.api_max = int(match.group(1)), int(match.group(2))

    def _first_wait(self, job: BulkJob) -> float:
        """Seconds before the first poll of ``job``: the rows of every job still in flight, at the
        known rate, less the time since the first of them was closed. The org works through all of
        them, one after the other or side by side; either way ``job`` is done by the time their
        total is, and that is also when the push can go on, so waiting that long costs no time
        and saves polls."""
        ahead = [j for j in self._inflight if j is not job] + [job]
        rows = sum(j.rows for j in ahead)
        elapsed = time.monotonic() - min(j.closed_at for j in ahead)
        if self.bulk_rate:
            estimate = rows / self.bulk_rate * 1.1 + 0.25
        else:
            estimate = rows / BULK_ROWS_PER_S
        return min(max(0.5, estimate - elapsed), MAX_POLL_WAIT)

    @property
    def api_remaining(self) -> int | None:
        return None if self.api_max is None else self.api_max - self.api_used

    # ------------------------------------------------------------ login
    def login(self) -> Salesforce:
        creds = self._credentials
        token_url = f"{self.login_url}/services/oauth2/token"
        try:
            if self.auth == "soap":
                body = _soap_login_body(creds.get("username", ""),
                                        creds.get("password", "") + creds.get("security_token", ""),
                                        creds.get("client_id") or "arhub")
                session_id, instance = soap_login(
                    f"{self.login_url}/services/Soap/u/{self.api_version}", body,
                    {"content-type": "text/xml", "charset": "UTF-8", "SOAPAction": "login"}, None, self.session)
            else:
                data = self._token_request(token_url)
                session_id, instance = token_login(token_url, data, "login", data.get("client_id", ""),
                                                   None, None, self.session)
        except SalesforceAuthenticationFailed as exc:
            raise AuthError(f"Salesforce login at {self.login_url} ({self.auth}) failed: {exc.code}: {exc.message}",
                            status=401) from None
        except requests.Timeout as exc:
            raise ConnectorTimeout(f"Salesforce login at {self.login_url} timed out") from exc
        except requests.RequestException as exc:
            raise RemoteError(f"Salesforce login at {self.login_url} failed: {type(exc).__name__}: {exc}",
                              retryable=True) from exc
        self.instance_url = f"https://{instance}"
        self._sf = Salesforce(instance_url=self.instance_url, session_id=session_id, session=self.session,
                              version=self.api_version)
        return self._sf

    def _token_request(self, token_url: str) -> dict:
        creds = self._credentials
        if self.auth == "password":
            return {"grant_type": "password", "client_id": creds.get("client_id", ""),
                    "client_secret": creds.get("client_secret", ""), "username": creds.get("username", ""),
                    "password": creds.get("password", "") + creds.get("security_token", "")}
        if self.auth == "client_credentials":
            return {"grant_type": "client_credentials", "client_id": creds.get("client_id", ""),
                    "client_secret": creds.get("client_secret", "")}
        if self.auth == "jwt":
            import jwt  # PyJWT, a dependency of simple-salesforce

            now = datetime.now(timezone.utc)
            claims = {"iss": creds.get("client_id", ""), "sub": creds.get("username", ""),
                      "aud": creds.get("audience") or self.login_url, "exp": int((now + timedelta(minutes=3)).timestamp())}
            assertion = jwt.encode(claims, creds.get("private_key", ""), algorithm="RS256")
            return {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion,
                    "client_id": creds.get("client_id", "")}
        raise AuthError(f"unknown Salesforce auth flow {self.auth!r} (password, soap, client_credentials, jwt)")

    @property
    def sf(self) -> Salesforce:
        return self._sf or self.login()

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------ calls
    def _call(self, what: str, fn: Callable[[Salesforce], Any]) -> Any:
        """Run ``fn(sf)``: renew an expired session once, retry 5xx / lock errors with backoff."""
        relogged = False
        for attempt in range(self.retries + 1):
            try:
                return fn(self.sf)
            except SalesforceExpiredSession as exc:
                if relogged:
                    raise _translate(exc, what) from None
                relogged = True
                log.info("Salesforce session expired during %s: logging in again", what)
                self.login()
                continue
            except SalesforceError as exc:
                err = _translate(exc, what)
                if getattr(err, "retryable", False) and not isinstance(err, ApiLimitExceeded) \
                        and attempt < self.retries:
                    self.sleep(min(0.5 * 2 ** attempt, 8.0))
                    continue
                raise err from None
            except requests.Timeout as exc:
                if attempt < self.retries:
                    self.sleep(min(0.5 * 2 ** attempt, 8.0))
                    continue
                raise ConnectorTimeout(f"{what}: Salesforce did not answer within {self.timeout:g} s") from exc
            except requests.ConnectionError as exc:
                if attempt < self.retries:
                    self.sleep(min(0.5 * 2 ** attempt, 8.0))
                    continue
                raise RemoteError(f"{what}: cannot reach Salesforce: {exc}", retryable=True) from exc
        raise RemoteError(f"{what}: gave up after {self.retries + 1} attempts", retryable=True)

    def _raw(self, method: str, path: str, what: str, **kwargs) -> requests.Response:
        """A request under ``/services/data/vXX.X/`` through simple-salesforce's error routing."""
        def go(sf: Salesforce) -> requests.Response:
            return sf._call_salesforce(method, sf.base_url + path, name=what, timeout=self.timeout, **kwargs)
        return self._call(what, go)

    # ------------------------------------------------------------ reads
    def limits(self) -> dict:
        return self._call("limits", lambda sf: sf.limits())

    def describe(self, sobject: str) -> dict:
        return self._raw("GET", f"sobjects/{sobject}/describe/", f"describe {sobject}").json()

    def describe_many(self, sobjects: Iterable[str]) -> dict[str, dict | None]:
        """Describes of several sObjects in one ``composite`` request per 25 (None: no such sObject).

        Salesforce counts a ``composite`` request as one API call whatever the number of its
        subrequests ("The entire series of requests counts as a single call toward your API
        limits"), unlike ``composite/batch``, whose subrequests each count."""
        names = list(dict.fromkeys(sobjects))
        out: dict[str, dict | None] = {}
        for start in range(0, len(names), COMPOSITE_SUBREQUESTS):
            part = names[start:start + COMPOSITE_SUBREQUESTS]
            body = {"allOrNone": False, "compositeRequest": [
                {"method": "GET", "url": f"/services/data/v{self.api_version}/sobjects/{name}/describe",
                 "referenceId": f"describe{n}"} for n, name in enumerate(part)]}
            answer = self._raw("POST", "composite", f"describe {', '.join(part)}", json=body).json()
            by_ref = {r.get("referenceId"): r for r in answer.get("compositeResponse") or []}
            for n, name in enumerate(part):
                sub = by_ref.get(f"describe{n}") or {}
                status = int(sub.get("httpStatusCode") or 0)
                if status == 200:
                    out[name] = sub.get("body")
                elif status == 404:
                    out[name] = None
                else:
                    errors = _errors_of(sub.get("body"))
                    text = "; ".join(f"{e.get('errorCode')}: {e.get('message')}" for e in errors)
                    raise SalesforceRequestError(f"describe {name}: {text}", status=status or None, errors=errors)
        return out

    def query_pages(self, soql: str, *, include_deleted: bool = False) -> Iterator[list[dict]]:
        """Pages of records (``attributes`` dropped) for a SOQL built with ``format_soql``."""
        result = self._call("query", lambda sf: sf.query(soql, include_deleted=include_deleted,
                                                           timeout=self.timeout))
        while True:
            yield [_plain(r) for r in result.get("records", [])]
            next_url = result.get("nextRecordsUrl")
            if result.get("done", True) or not next_url:
                return
            result = self._call("query", lambda sf: sf.query_more(next_url, identifier_is_url=True,
                                                                    timeout=self.timeout))

    def pull(self, sobject: str, fields: Iterable[str], since: datetime | None, *,
             include_deleted: bool = True) -> Iterator[list[dict]]:
        """Records of ``sobject`` changed after ``since`` (all when None), deletions included,
        ordered by ``SystemModstamp``."""
        names = list(dict.fromkeys(["Id", "SystemModstamp", *fields, *(("IsDeleted",) if include_deleted else ())]))
        if since is None:
            soql = format_soql("SELECT {:literal} FROM {:literal} ORDER BY SystemModstamp, Id",
                               ", ".join(names), sobject)
        else:
            soql = format_soql("SELECT {:literal} FROM {:literal} WHERE SystemModstamp > {} "
                               "ORDER BY SystemModstamp, Id", ", ".join(names), sobject, since)
        yield from self.query_pages(soql, include_deleted=include_deleted)

    # ------------------------------------------------------------ writes
    def upsert_collection(self, sobject: str, external_id: str, records: list[dict], *,
                          all_or_none: bool = False) -> list[dict]:
        """One sObject Collections upsert (≤ 200 records). Returns one result per record:
        ``{id, success, created, errors: [{statusCode, message, fields}]}``."""
        if len(records) > COLLECTION_LIMIT:
            raise ValueError(f"sObject Collections take at most {COLLECTION_LIMIT} records, not {len(records)}")
        body = {"allOrNone": all_or_none,
                "records": [{"attributes": {"type": sobject}, **record} for record in records]}
        return self._raw("PATCH", f"composite/sobjects/{sobject}/{external_id}", f"upsert {sobject}",
                         json=body).json()

    def bulk_upsert(self, sobject: str, external_id: str, columns: list[str], rows: list[dict], *,
                    poll: Callable[[int], float] | None = None, max_wait: float = 3600.0) -> BulkResult:
        """One Bulk API 2.0 upsert job from start to end: :meth:`bulk_start` then :meth:`bulk_wait`."""
        return self.bulk_wait(self.bulk_start(sobject, external_id, columns, rows), poll=poll, max_wait=max_wait)

    def bulk_start(self, sobject: str, external_id: str, columns: list[str], rows: list[dict]) -> BulkJob:
        """Create a Bulk API 2.0 upsert job, upload the CSV and close it (3 calls); Salesforce then
        processes it while we do something else (start the next job, send collections).

        On an error after the create the job is aborted (one more call) and the error raised."""
        job = self._raw("POST", "jobs/ingest", f"bulk create {sobject}", json={
            "object": sobject, "operation": "upsert", "externalIdFieldName": external_id,
            "contentType": "CSV", "lineEnding": "LF", "columnDelimiter": "COMMA"}).json()
        job_id = job["id"]
        path = f"jobs/ingest/{job_id}"
        try:
            self._raw("PUT", f"{path}/batches", f"bulk upload {sobject}", data=_csv(columns, rows).encode("utf-8"),
                      headers={"Content-Type": "text/csv"})
            self._raw("PATCH", path, f"bulk close {sobject}", json={"state": "UploadComplete"})
        except Exception:  # clean up, then re-raise: the caller sees the original error
            try:
                self._raw("PATCH", path, f"bulk abort {sobject}", json={"state": "Aborted"})
            except (ConnectorError, requests.RequestException):  # the original error is what the caller must see
                log.warning("could not abort Bulk API job %s", job_id)
            raise
        started = BulkJob(job_id, sobject, len(rows), time.monotonic())
        self._inflight.append(started)
        return started

    def bulk_wait(self, job: BulkJob, *, poll: Callable[[int], float] | None = None,
                  max_wait: float = 3600.0) -> BulkResult:
        """Poll a started job until it ends; read the failed rows only when some failed (and the
        unprocessed ones when the job did not complete).

        Calls: the polls (+ ``failedResults`` when ``numberRecordsFailed`` > 0). The first poll waits
        for an estimate of the processing time: the rows of every job still in flight
        (:meth:`_first_wait`), at the rate this connector's last job was processed (or
        ``bulk_rate`` set from an earlier run), or at ``BULK_ROWS_PER_S`` when no job was seen;
        less the time since they were closed. A job
        still in progress says how many rows it processed so far: the next polls wait for the rest
        at the rate seen between polls (``_next_wait``)."""
        path = f"jobs/ingest/{job.job_id}"
        sobject, n = job.sobject, job.rows
        try:
            wait = poll(n) if poll else self._first_wait(job)
            waited = 0.0
            seen: tuple[float, int] | None = None  # (waited, processed) at the previous poll
            while True:
                self.sleep(wait)
                waited += wait
                info = self._raw("GET", path, f"bulk status {sobject}").json()
                state = info.get("state")
                if state in ("JobComplete", "Failed", "Aborted"):
                    break
                if waited >= max_wait:
                    return BulkResult(job.job_id, state or "InProgress",
                                      error=f"job {job.job_id} still {state} after {waited:.0f} s")
                processed = int(info.get("numberRecordsProcessed") or 0)
                wait = _next_wait(n, processed, waited, wait, seen)
                seen = (waited, processed)
        finally:
            if job in self._inflight:
                self._inflight.remove(job)
        result = BulkResult(job.job_id, state, processed=int(info.get("numberRecordsProcessed") or 0),
                            error=info.get("errorMessage"))
        if state == "JobComplete" and result.processed:
            since_close = max(time.monotonic() - job.closed_at, waited, 1e-3)
            busy = int(info.get("totalProcessingTime") or 0) / 1000.0
            self.bulk_rate = result.processed / (busy if 0 < busy <= since_close else since_close)
        if int(info.get("numberRecordsFailed") or 0):
            result.failed = _read_csv(self._raw("GET", f"{path}/failedResults/", f"bulk failed {sobject}").text)
        if state != "JobComplete":
            result.unprocessed = _read_csv(self._raw("GET", f"{path}/unprocessedrecords/",
                                                     f"bulk unprocessed {sobject}").text)
        return result


def _next_wait(rows: int, processed: int, waited: float, wait: float,
               seen: tuple[float, int] | None = None) -> float:
    """Seconds before the next poll of a job still in progress after ``waited`` seconds, with
    ``processed`` rows done (``seen``: the same at the previous poll).

    Two polls with progress give the processing rate: wait for the rest at that rate (+10% and a
    quarter second). One poll with progress gives the rate since the close, which includes the
    job's start (queueing, reading the CSV) and so runs long: wait for the rest at that rate
    but never more than twice the time so far. No progress yet: 1.5 times the last wait."""
    if seen is not None and 0 < seen[1] < processed and waited > seen[0]:
        estimate = (rows - processed) * (waited - seen[0]) / (processed - seen[1]) * 1.1 + 0.25
    elif 0 < processed < rows:
        estimate = min(waited * (rows - processed) / processed * 1.1 + 0.25, 2 * waited)
    else:
        estimate = wait * 1.5
    return min(max(0.5, estimate), MAX_POLL_WAIT)


class _Session(requests.Session):
    """A session whose configured CA bundle wins over ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``
    (requests lets those environment variables override ``session.verify``)."""

    pinned_ca: str | None = None

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.pinned_ca and verify is None:
            settings["verify"] = self.pinned_ca
        return settings


def _plain(record: dict) -> dict:
    """Drop ``attributes`` (also from parent relationship objects)."""
    out = {}
    for key, value in record.items():
        if key == "attributes":
            continue
        out[key] = _plain(value) if isinstance(value, dict) else value
    return out


def _csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["#N/A" if row.get(c) is None else _csv_value(row.get(c)) for c in columns])
    return buf.getvalue()


def _csv_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _soap_login_body(username: str, password: str, client_id: str) -> str:
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
        xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:partner.soap.sforce.com">
    <env:Header><urn:CallOptions><urn:client>{escape(client_id)}</urn:client>
        <urn:defaultNamespace>sf</urn:defaultNamespace></urn:CallOptions></env:Header>
    <env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com">
        <n1:username>{escape(username)}</n1:username><n1:password>{escape(password)}</n1:password>
    </n1:login></env:Body>
</env:Envelope>"""
