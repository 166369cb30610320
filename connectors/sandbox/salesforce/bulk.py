"""Bulk API 2.0: ingest jobs (CSV upload, processing in a daemon thread, successful/failed/
unprocessed results) and query jobs (CSV result pages with ``Sforce-Locator``), the
``jobs/ingest`` and ``jobs/query`` endpoints of :class:`~connectors.sandbox.salesforce.app.SalesforceApp`.
"""
from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from connectors.sandbox import soql
from connectors.sandbox.salesforce.responses import _body, _errors, _json, _method_not_allowed
from connectors.sandbox.salesforce.schema import ApiError, RecordError, SfError, _MultipleMatches
from connectors.sandbox.soql import sf_datetime, to18

if TYPE_CHECKING:
    from connectors.sandbox.salesforce.app import Context

MAX_INGEST_BYTES = 150 * 1024 * 1024


@dataclass
class IngestJob:
    id: str
    object: str
    operation: str
    external_id: str | None
    line_ending: str
    delimiter: str
    created_by: str
    created: str
    version: str
    state: str = "Open"
    modstamp: str = ""
    uploads: list[bytes] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    done: int = 0
    success: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failed: list[tuple[str, str, list[str]]] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0
    finished: float = 0.0
    thread: threading.Thread | None = None

    def info(self) -> dict:
        out = {"id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
               "createdDate": self.created, "systemModstamp": self.modstamp or self.created, "state": self.state,
               "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(self.version),
               "jobType": "V2Ingest", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
               "numberRecordsProcessed": len(self.success) + len(self.failed),
               "numberRecordsFailed": len(self.failed), "retries": 0,
               "totalProcessingTime": int((self.finished or self.started) * 1000 - self.started * 1000)
               if self.started else 0, "apiActiveProcessingTime": 0, "apexProcessingTime": 0}
        if self.external_id:
            out["externalIdFieldName"] = self.external_id
        if self.state == "Open":
            out["contentUrl"] = f"services/data/v{self.version}/jobs/ingest/{self.id}/batches"
        if self.error:
            out["errorMessage"] = self.error
        return out


@dataclass
class QueryJob:
    id: str
    operation: str
    query: str
    object: str
    line_ending: str
    delimiter: str
    created_by: str
    created: str
    version: str
    state: str = "UploadComplete"
    plan: soql.Plan | None = None
    records: list[dict] = field(default_factory=list)
    error: str | None = None

    def info(self) -> dict:
        out = {"id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
               "createdDate": self.created, "systemModstamp": self.created, "state": self.state,
               "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(self.version),
               "jobType": "V2Query", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
               "numberRecordsProcessed": len(self.records) if self.state == "JobComplete" else 0, "retries": 0,
               "totalProcessingTime": 0}
        if self.error:
            out["errorMessage"] = self.error
        return out


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
_LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
_INGEST_OPERATIONS = ("insert", "upsert", "update", "delete", "hardDelete")
_TERMINAL = ("JobComplete", "Failed", "Aborted")


class BulkApi:
    """The Bulk API 2.0 endpoints, mixed into :class:`SalesforceApp` (whose ``org``, ``lock``,
    ``ingest_jobs``, ``query_jobs``, ``bulk_batches``, ``_new_id`` and ``lock_fault`` they use)."""

    # ------------------------------------------------------------------ Bulk API 2.0 ingest
    def ingest(self, ctx: Context, parts: list[str]) -> Response:
        method = ctx.request.method
        if not parts:
            if method == "POST":
                return self.create_ingest_job(ctx)
            if method == "GET":
                with self.lock:
                    jobs = [j.info() for j in self.ingest_jobs.values()]
                return _json({"done": True, "records": jobs, "nextRecordsUrl": None})
            return _method_not_allowed(method, "GET, POST")
        with self.lock:
            job = self.ingest_jobs.get(parts[0])
        if job is None:
            raise ApiError(404, "NOT_FOUND", f"Job with id {parts[0]} not found")
        if len(parts) == 1:
            if method == "GET":
                with self.lock:
                    return _json(job.info())
            if method == "PATCH":
                return self.set_ingest_state(job, _body(ctx.request))
            if method == "DELETE":
                with self.lock:
                    if job.state not in ("UploadComplete",) + _TERMINAL:
                        raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} can only be deleted when it is in "
                                                               f"UploadComplete, JobComplete, Aborted or Failed "
                                                               f"state; it is {job.state}")
                    self.ingest_jobs.pop(job.id, None)
                return Response(status=204)
            return _method_not_allowed(method, "GET, PATCH, DELETE")
        if len(parts) == 2 and parts[1] == "batches":
            if method != "PUT":
                return _method_not_allowed(method, "PUT")
            data = ctx.request.get_data()
            with self.lock:
                if job.state != "Open":
                    raise ApiError(409, "INVALIDJOBSTATE", f"Job {job.id} is not in the Open state; it is "
                                                           f"{job.state}")
                if sum(map(len, job.uploads)) + len(data) > MAX_INGEST_BYTES:
                    raise ApiError(400, "INVALIDBATCH", "The job data exceeds the 150 MB limit")
                job.uploads.append(data)
                self.bulk_batches += 1
            return Response(status=201)
        if len(parts) == 2 and parts[1] in ("successfulResults", "failedResults", "unprocessedrecords",
                                            "unprocessedRecords"):
            if method != "GET":
                return _method_not_allowed(method, "GET")
            return self.ingest_results(job, parts[1])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def create_ingest_job(self, ctx: Context) -> Response:
        body = _body(ctx.request)
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = body.get("operation")
        if operation not in _INGEST_OPERATIONS:
            raise ApiError(400, "INVALIDJOB", f"Invalid operation: {operation}")
        sobject = self.org.sobject(body.get("object") or "")
        if sobject is None:
            raise ApiError(400, "INVALIDJOB", f"Unable to find object: {body.get('object')}")
        if body.get("contentType", "CSV") != "CSV":
            raise ApiError(400, "INVALIDJOB", f"Invalid contentType: {body.get('contentType')}; only CSV is "
                                              f"supported")
        delimiter = body.get("columnDelimiter", "COMMA")
        line_ending = body.get("lineEnding", "LF")
        if delimiter not in _DELIMITERS or line_ending not in _LINE_ENDINGS:
            raise ApiError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
        ext = body.get("externalIdFieldName")
        if operation == "upsert":
            f = sobject.field(ext or "")
            if f is None or not (f.external_id or f.name == "Id"):
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Field name provided, {ext} does not match an "
                                                  f"External ID, Salesforce Id, or indexed field for "
                                                  f"{sobject.name}")
            ext = f.name
        else:
            ext = None
        job = IngestJob(self._new_id("750"), sobject.name, operation, ext, line_ending, delimiter,
                        ctx.session.user_id, sf_datetime(self.org.clock()), ctx.version)
        with self.lock:
            self.ingest_jobs[job.id] = job
        return _json(job.info())

    def set_ingest_state(self, job: IngestJob, body: Any) -> Response:
        state = body.get("state") if isinstance(body, dict) else None
        with self.lock:
            if state == "UploadComplete":
                if job.state != "Open":
                    raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state} to "
                                                           f"UploadComplete")
                if len(job.uploads) > 1:
                    raise ApiError(400, "INVALIDJOB", f"Found multipe contents for job: <{job.id}>, please "
                                                      f"'Close' / 'Abort' / 'Delete' the current Job then create a "
                                                      f"new Job and make sure you only do 'PUT' once on a given Job.")
                job.state = "UploadComplete"
                job.modstamp = sf_datetime(self.org.clock())
                job.thread = threading.Thread(target=self._process_ingest, args=(job,), daemon=True,
                                              name=f"sf-bulk-{job.id}")
                job.thread.start()
            elif state == "Aborted":
                if job.state in _TERMINAL:
                    raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state} to Aborted")
                if job.state == "Open":
                    self._parse_job(job, fail=False)
                job.state = "Aborted"
                job.modstamp = sf_datetime(self.org.clock())
            else:
                raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state: {state}")
            return _json(job.info())

    def _parse_job(self, job: IngestJob, fail: bool = True) -> bool:
        """Split the uploaded CSV into header and rows; False (job Failed) if it cannot be read."""
        text = b"".join(job.uploads).decode("utf-8-sig", errors="replace")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS[job.delimiter])
        try:
            rows = list(reader)
        except csv.Error as exc:
            if fail:
                job.error = f"InvalidBatch : Failed to parse CSV: {exc}"
            return False
        rows = [r for r in rows if r and any(cell != "" for cell in r)]
        if not rows:
            if fail:
                job.error = "InvalidBatch : No content found for job"
            return False
        job.header, job.rows = [h.strip() for h in rows[0]], rows[1:]
        return True

    def _check_header(self, job: IngestJob) -> list[tuple[str, Any]] | None:
        """Per column: ("field", FieldDef) or ("rel", (lookup FieldDef, external id name)); None if invalid."""
        sobject = self.org.types[job.object]
        columns: list[tuple[str, Any]] = []
        seen = set()
        for name in job.header:
            if name.lower() in seen:
                job.error = f"InvalidBatch : Duplicate field name: {name}"
                return None
            seen.add(name.lower())
            if "." in name:
                rel_name, _, ext_name = name.partition(".")
                rel = sobject.relationship(rel_name)
                target = self.org.types.get(rel.reference_to[0]) if rel else None
                ext = target.field(ext_name) if target else None
                if rel is None or ext is None or not (ext.external_id or ext.name == "Id"):
                    job.error = f"InvalidBatch : Field name not found : {name}"
                    return None
                columns.append(("rel", (rel, ext.name)))
                continue
            f = sobject.field(name)
            if f is None:
                job.error = f"InvalidBatch : Field name not found : {name}"
                return None
            columns.append(("field", f))
        names = [c[1].name for c in columns if c[0] == "field"]
        if job.operation in ("delete", "hardDelete") and names != ["Id"]:
            job.error = "InvalidBatch : The 'delete' batch must contain only 'Id' field"
            return None
        if job.operation == "update" and "Id" not in names:
            job.error = "InvalidBatch : Field name not found : Id"
            return None
        if job.operation == "upsert" and job.external_id not in names:
            job.error = f"InvalidBatch : The external ID field {job.external_id} is not in the CSV header"
            return None
        return columns

    def _process_ingest(self, job: IngestJob) -> None:
        org = self.org
        with self.lock:
            if job.state != "UploadComplete":
                return
            job.state, job.started = "InProgress", time.time()
        ok = self._parse_job(job)
        columns = self._check_header(job) if ok else None
        if columns is None:
            with self.lock:
                job.state, job.finished = "Failed", time.time()
                job.modstamp = sf_datetime(org.clock())
            return
        chunk = 200
        for start in range(0, len(job.rows), chunk):
            with org.lock:
                for row in job.rows[start:start + chunk]:
                    if job.state == "Aborted":
                        break
                    self._ingest_row(job, columns, row)
                    job.done += 1
            if job.state == "Aborted":
                break
            time.sleep(0)  # let API requests in between chunks
        with self.lock:
            if job.state != "Aborted":
                job.state = "JobComplete"
            job.finished = time.time()
            job.modstamp = sf_datetime(org.clock())

    def _ingest_row(self, job: IngestJob, columns: list, row: list[str]) -> None:
        org, obj = self.org, job.object
        data: dict[str, Any] = {}
        if len(row) != len(columns):
            job.failed.append(("", SfError("INVALID_FIELD", f"Row has {len(row)} columns, the header has "
                                                            f"{len(columns)}", []).bulk(), row))
            return
        for (kind, spec), cell in zip(columns, row):
            if cell == "":  # an empty cell leaves the field as it is; "#N/A" sets it to null
                continue
            value = None if cell == "#N/A" else cell
            if kind == "rel":
                rel, ext_name = spec
                if value is None:
                    data[rel.name] = None
                else:
                    data[rel.relationship_name] = {ext_name: value}
            else:
                data[spec.name] = value
        rid = ""
        try:
            op = job.operation
            if op == "insert":
                self.lock_fault()
                rid = org.create(obj, data, job.created_by)
                job.success.append((rid, True, row))
            elif op == "update":
                raw_id = data.pop("Id", None)
                rid = to18(raw_id or "") or ""
                if not rid or org.type_of_id(rid) != obj:
                    raise RecordError([SfError("MALFORMED_ID", f"{obj} ID: id value of incorrect type: {raw_id}",
                                               ["Id"])])
                rec = org.tables[obj].get(rid)
                if rec is None or rec["IsDeleted"]:
                    raise RecordError([SfError("ENTITY_IS_DELETED" if rec else "INVALID_CROSS_REFERENCE_KEY",
                                               "entity is deleted" if rec else "invalid cross reference id", [])])
                self.lock_fault(rid)
                org.update(obj, rid, data, job.created_by)
                job.success.append((rid, False, row))
            elif op == "upsert":
                value = data.get(job.external_id)
                self.lock_fault()
                try:
                    rid, created = org.upsert(obj, job.external_id, value, data, job.created_by)
                except _MultipleMatches as exc:
                    raise RecordError([SfError("DUPLICATE_EXTERNAL_ID", f"{job.external_id}: more than one "
                                               f"record found for external id field: {exc.ids}",
                                               [job.external_id])]) from None
                job.success.append((rid, created, row))
            else:
                raw_id = data.get("Id")
                rid = to18(raw_id or "") or ""
                if not rid or org.type_of_id(rid) != obj:
                    raise RecordError([SfError("MALFORMED_ID", f"bad id {raw_id}", ["Id"])])
                if rid not in org.tables[obj]:
                    raise RecordError([SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])])
                self.lock_fault(rid)
                if op == "delete" and org.tables[obj][rid]["IsDeleted"]:
                    raise RecordError([SfError("ENTITY_IS_DELETED", "entity is deleted", [])])
                org.delete(obj, rid, job.created_by, hard=op == "hardDelete")
                job.success.append((rid, False, row))
        except RecordError as exc:
            job.failed.append((rid if job.operation != "insert" else "", exc.errors[0].bulk(), row))
        except ApiError as exc:
            job.failed.append((rid, SfError(exc.code, exc.message).bulk(), row))

    def ingest_results(self, job: IngestJob, kind: str) -> Response:
        delimiter, newline = _DELIMITERS[job.delimiter], _LINE_ENDINGS[job.line_ending]
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline, quoting=csv.QUOTE_ALL)
        with self.lock:
            if kind == "successfulResults":
                writer.writerow(["sf__Id", "sf__Created"] + job.header)
                for rid, created, row in list(job.success):
                    writer.writerow([rid, "true" if created else "false"] + row)
            elif kind == "failedResults":
                writer.writerow(["sf__Id", "sf__Error"] + job.header)
                for rid, error, row in list(job.failed):
                    writer.writerow([rid, error] + row)
            else:
                if job.state == "Open":
                    raise ApiError(400, "INVALIDJOBSTATE", "Unprocessed records are available once the job is "
                                                           "closed or aborted")
                if not job.header and job.uploads:
                    self._parse_job(job, fail=False)
                writer.writerow(job.header)
                if job.state in ("Aborted", "Failed", "UploadComplete", "InProgress"):
                    for row in job.rows[job.done:]:
                        writer.writerow(row)
        return Response(buf.getvalue(), content_type="text/csv; charset=UTF-8")

    # ------------------------------------------------------------------ Bulk API 2.0 query
    def bulk_query(self, ctx: Context, parts: list[str]) -> Response:
        method = ctx.request.method
        if not parts:
            if method == "POST":
                body = _body(ctx.request)
                if not isinstance(body, dict) or body.get("operation") not in ("query", "queryAll"):
                    raise ApiError(400, "INVALIDJOB", "operation must be query or queryAll")
                text = body.get("query") or ""
                plan, records = self.org.run_query(text, body["operation"] == "queryAll")
                if plan.count:
                    raise ApiError(400, "INVALIDJOB", "COUNT() is not supported by Bulk API 2.0 query jobs")
                job = QueryJob(self._new_id("750"), body["operation"], text, plan.object,
                               body.get("lineEnding", "LF"), body.get("columnDelimiter", "COMMA"),
                               ctx.session.user_id, sf_datetime(self.org.clock()), ctx.version,
                               state="JobComplete", plan=plan, records=records)
                if job.delimiter not in _DELIMITERS or job.line_ending not in _LINE_ENDINGS:
                    raise ApiError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
                with self.lock:
                    self.query_jobs[job.id] = job
                info = job.info()
                info["state"] = "UploadComplete"  # as Salesforce answers a create; a GET shows JobComplete
                return _json(info)
            if method == "GET":
                with self.lock:
                    return _json({"done": True, "records": [j.info() for j in self.query_jobs.values()],
                                  "nextRecordsUrl": None})
            return _method_not_allowed(method, "GET, POST")
        with self.lock:
            job = self.query_jobs.get(parts[0])
        if job is None:
            raise ApiError(404, "NOT_FOUND", f"Job with id {parts[0]} not found")
        if len(parts) == 1:
            if method == "GET":
                return _json(job.info())
            if method == "PATCH":
                body = _body(ctx.request)
                if not isinstance(body, dict) or body.get("state") != "Aborted" or job.state in _TERMINAL:
                    raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state}")
                job.state = "Aborted"
                return _json(job.info())
            if method == "DELETE":
                with self.lock:
                    self.query_jobs.pop(job.id, None)
                return Response(status=204)
        if len(parts) == 2 and parts[1] == "results" and method == "GET":
            if job.state != "JobComplete":
                raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is {job.state}; results are available "
                                                       f"when it is JobComplete")
            args = ctx.request.args
            start = int(args.get("locator") or 0) if (args.get("locator") or "0").isdigit() else -1
            if start < 0 or start > len(job.records):
                raise ApiError(400, "INVALID_LOCATOR", "invalid locator")
            size = int(args.get("maxRecords") or 50000)
            page = job.records[start:start + size]
            buf = io.StringIO()
            writer = csv.writer(buf, delimiter=_DELIMITERS[job.delimiter],
                                lineterminator=_LINE_ENDINGS[job.line_ending], quoting=csv.QUOTE_ALL)
            writer.writerow(soql.column_names(job.plan))
            with self.org.lock:
                for rec in page:
                    writer.writerow([_csv_value(v) for v in soql.flat_values(rec, job.plan.columns)])
            nxt = start + len(page)
            headers = {"Sforce-Locator": str(nxt) if nxt < len(job.records) else "null",
                       "Sforce-NumberOfRecords": str(len(page))}
            return Response(buf.getvalue(), content_type="text/csv; charset=UTF-8", headers=headers)
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
