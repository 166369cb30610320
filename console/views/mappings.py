"""Field mappings: the ERP → canonical rows per source and object, with a live preview against a
sample record fetched from the ERP, and the Salesforce push mapping with a check against describe.

* Reading needs ``view``; saving, fetching a sample and checking need ``manage`` (admins).
* Fetching a sample and the describe talk to remote systems: they are RQ jobs on the ``sync``
  queue (:mod:`jobs.mapping_sample`), which store their result in Redis; the page polls the job.
* The preview runs here, locally, on the stored sample and the draft rows of the form
  (:func:`middleware.mapping.preview` + the sync's validation), so nothing is saved to try a change.
* Every saved change writes an ``AuditLog`` row (``object_type`` ``mapping``) with the rows before and after.
"""
from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime
from decimal import Decimal

from flask import abort, flash, jsonify, redirect, render_template, request, url_for
from flask_admin import expose
from flask_login import current_user
from marshmallow import fields as mfields

from console.auth import can
from console.views.base import SecureView
from middleware.db import database
from middleware.mapping import RECORD_TRANSFORMS, TRANSFORMS, CompiledMapping, FieldSpec, preview
from middleware.models import AuditLog, FieldMapping, Source, utcnow
from middleware.schemas import SCHEMAS

MENU_ORDER = 60
ERP_KINDS = ("soap", "rest")
TRANSFORM_NAMES = sorted([*TRANSFORMS, *RECORD_TRANSFORMS])
BLANK_ROWS = 3
_SF_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# ------------------------------------------------------------------ helpers
def canonical_fields(object_name: str) -> list[tuple[str, bool]]:
    """(canonical field, required) of an object, list items as ``contacts[].email``, fields of a
    nested object as ``billing_address.city``."""
    schema = SCHEMAS.get(object_name)
    if schema is None:
        return []
    out = []
    for name, field in schema.fields.items():
        inner = getattr(field, "inner", None)
        nested = getattr(inner, "schema", None) if isinstance(field, mfields.List) else None
        if nested is not None:
            out += [(f"{name}[].{sub}", f.required) for sub, f in nested.fields.items()]
        elif isinstance(field, mfields.Nested) and not field.many:
            out += [(f"{name}.{sub}", f.required) for sub, f in field.schema.fields.items()]
        else:
            out.append((name, field.required))
    return out


def _norm(name: str) -> str:
    """``applications[0].amount`` / ``applications[].amount`` / ``applications.0.amount`` → ``applications.amount``."""
    return ".".join(p for p in re.sub(r"\[\d*\]", ".", name).split(".") if p and not p.isdigit())


def _row_dict(row: FieldMapping) -> dict:
    return {"field": row.canonical_field, "path": row.source_path, "transform": row.transform or "text",
            "args": dict(row.args or {}), "default": row.default, "enabled": bool(row.enabled)}


def _stored_rows(source: Source, object_name: str) -> list[FieldMapping]:
    return list(FieldMapping.select().where((FieldMapping.source == source) & (FieldMapping.object_name == object_name))
                .order_by(FieldMapping.position, FieldMapping.id))


def _version(rows: list[dict]) -> str:
    """A fingerprint of the stored rows: a save refuses to overwrite someone else's newer change."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _parse_form(form) -> tuple[list[dict], dict[str, list[str]]]:
    """The draft rows of the editor form (``field-N``, ``path-N`` ...) in form order, and per-row input errors."""
    numbers = sorted({int(k.split("-", 1)[1]) for k in form if k.startswith("field-") and k.split("-", 1)[1].isdigit()})
    rows, errors, seen = [], {}, {}
    for n in numbers:
        field = (form.get(f"field-{n}") or "").strip()
        path = (form.get(f"path-{n}") or "").strip() or None
        transform = (form.get(f"transform-{n}") or "text").strip()
        args_text = (form.get(f"args-{n}") or "").strip()
        default = form.get(f"default-{n}")
        default = default if default not in (None, "") else None
        if form.get(f"delete-{n}") or (not field and not path and not args_text and default is None):
            continue
        row = {"n": n, "field": field, "path": path, "transform": transform, "args": {}, "default": default,
               "enabled": bool(form.get(f"enabled-{n}"))}
        problems = []
        if not field:
            problems.append("a canonical field is needed")
        elif field in seen:
            problems.append(f"{field} is mapped twice (rows {seen[field] + 1} and {n + 1})")
        else:
            seen[field] = n
        if transform not in TRANSFORM_NAMES:
            problems.append(f"unknown transform {transform!r}")
        if args_text:
            try:
                args = json.loads(args_text)
            except ValueError as exc:
                problems.append(f"args are not JSON: {exc.msg} (column {exc.colno})")
            else:
                if isinstance(args, dict):
                    row["args"] = args
                else:
                    problems.append("args must be a JSON object, e.g. {\"max_length\": 80}")
        if problems:
            errors.setdefault(str(n), []).extend(problems)
        rows.append(row)
    return rows, errors


def _specs(rows: list[dict]) -> list[FieldSpec]:
    return [FieldSpec(r["field"], r["path"], r["transform"], dict(r["args"]), r["default"])
            for r in rows if r["enabled"] and r["field"]]


def _display(value) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list):
        return "[" + ", ".join("{" + ", ".join(f"{k}: {_display(v)}" for k, v in item.items()) + "}"
                               if isinstance(item, dict) else _display(item) for item in value) + "]"
    return "" if value is None else str(value)


def run_preview(source: Source, object_name: str, rows: list[dict], sample: dict | None,
                input_errors: dict[str, list[str]]) -> dict:
    """The draft mapping applied to the sample: values, per-field errors, and errors by editor row."""
    from middleware.sync import validate_record

    row_errors = {k: list(v) for k, v in input_errors.items()}
    by_field = {_norm(r["field"]): str(r["n"]) for r in rows if r["field"]}
    specs = _specs([r for r in rows if str(r["n"]) not in input_errors])
    lookups = source.config.get("lookups") or {}
    if sample is None:  # no sample yet: still show the definition errors (bad path, unknown transform)
        compiled = CompiledMapping(object_name, specs, lookups)
        errors = [e.as_dict() for e in compiled.errors]
        result = {"record": {}, "errors": errors, "unmatched_paths": [], "ok": not errors}
    else:
        validate = (lambda record: validate_record(object_name, record)[1]) if object_name in SCHEMAS else None
        result = preview(specs, sample, object_name, lookups, validate=validate)
    unplaced = []
    for error in result["errors"]:
        key = by_field.get(_norm(error["field"]))
        text = error["message"] + (f" (value {error['value']!r})" if error.get("value") is not None else "")
        if key is not None:
            row_errors.setdefault(key, []).append(text)
        else:
            unplaced.append(error)
    path_rows = {r["path"]: str(r["n"]) for r in rows if r["path"]}
    for path in result["unmatched_paths"]:
        if path in path_rows:
            row_errors.setdefault(path_rows[path], []).append("matched nothing in this sample")
    errors_by_field: dict[str, list[str]] = {}
    for error in result["errors"]:
        errors_by_field.setdefault(_norm(error["field"]), []).append(error["message"])
    values = [(name, _display(value), errors_by_field.get(_norm(name), [])) for name, value in result["record"].items()]
    return {"values": values, "errors": result["errors"], "unplaced": unplaced, "row_errors": row_errors,
            "unmatched": result["unmatched_paths"], "ok": result["ok"] and not input_errors,
            "error_count": len(result["errors"]) + sum(len(v) for v in input_errors.values()),
            "has_sample": sample is not None}


def _enqueue(func: str, *args, description: str) -> str:
    from jobs.queues import get_queue

    job = get_queue("sync").enqueue(func, *args, job_timeout=600, result_ttl=3600, failure_ttl=7 * 24 * 3600,
                                    description=description)
    return job.id


def job_state(job_id: str | None) -> dict | None:
    """``{"status", "done", "error"}`` of one of :mod:`jobs.mapping_sample`'s jobs (``missing`` for any other id)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from jobs.queues import get_redis

    if not job_id:
        return None
    try:
        job = Job.fetch(job_id, connection=get_redis())
    except NoSuchJobError:
        return {"status": "missing", "done": True, "error": None}
    if not (job.func_name or "").startswith("jobs.mapping_sample."):
        return {"status": "missing", "done": True, "error": None}
    status = job.get_status(refresh=True)
    status = getattr(status, "value", status)
    error = None
    if status == "failed":
        latest = job.latest_result()
        lines = [line for line in (getattr(latest, "exc_string", None) or "").strip().splitlines() if line.strip()]
        error = lines[-1] if lines else "the job failed"
    return {"status": status, "done": status in ("finished", "failed", "canceled", "stopped"), "error": error}


def _audit(object_id: str, before, after) -> None:
    AuditLog.create(actor=current_user.email, action="mapping.updated", object_type="mapping", object_id=object_id,
                    before=before, after=after)


def _manage_or_403() -> None:
    if not can("manage"):
        abort(403, description=f"Your role ({current_user.role}) may not change mappings: it needs admin.")


# ------------------------------------------------------------------ the view
class MappingsView(SecureView):
    permission = "view"

    def _source(self, source_id: int, kinds=ERP_KINDS) -> Source:
        source = Source.get_or_none(Source.id == source_id)
        if source is None or source.kind not in kinds:
            abort(404)
        return source

    @staticmethod
    def _objects(source: Source) -> list[str]:
        names = list((source.config.get("objects") or {}).keys())
        stored = [r.object_name for r in FieldMapping.select(FieldMapping.object_name)
                  .where(FieldMapping.source == source).distinct()]
        return names + sorted(n for n in stored if n not in names)

    @expose("/")
    def index(self):
        from peewee import fn

        sources = list(Source.select().order_by(Source.kind == "salesforce", Source.name))
        counts = {(s, o): n for s, o, n in FieldMapping.select(FieldMapping.source, FieldMapping.object_name,
                                                               fn.COUNT(FieldMapping.id))
                  .group_by(FieldMapping.source, FieldMapping.object_name).tuples()}
        erp = [(s, [(o, counts.get((s.id, o), 0)) for o in self._objects(s)]) for s in sources if s.kind in ERP_KINDS]
        salesforce = [s for s in sources if s.kind == "salesforce"]
        return self.render("console/mappings/index.html", erp=erp, salesforce=salesforce)

    # -- ERP field mappings ------------------------------------------------------------------
    def _sample(self, source: Source, object_name: str) -> tuple[dict | None, dict | None, int]:
        from jobs.mapping_sample import stored_sample

        stored = stored_sample(source.id, object_name)
        records = (stored or {}).get("records") or []
        try:
            index = int(request.values.get("sample", 0))
        except ValueError:
            index = 0
        index = index if 0 <= index < len(records) else 0
        return stored, (records[index] if records else None), index

    def _editor(self, source: Source, object_name: str, rows: list[dict], input_errors: dict, *, version: str,
                status: int = 200, saved_errors: bool = False):
        stored, sample, index = self._sample(source, object_name)
        result = run_preview(source, object_name, rows, sample, input_errors)
        next_n = max([r["n"] for r in rows] + [-1]) + 1
        blanks = [{"n": next_n + i, "field": "", "path": None, "transform": "text", "args": {}, "default": None,
                   "enabled": True} for i in range(BLANK_ROWS)]
        job_id = request.args.get("job")
        job = job_state(job_id)
        mapped = {r["field"] for r in rows if r["enabled"]}
        missing = [name for name, required in canonical_fields(object_name) if required and "[]" not in name
                   and name not in mapped]
        return self.render("console/mappings/editor.html", missing=missing, source=source, object_name=object_name,
                           rows=rows + blanks, result=result, stored=stored, sample=sample, sample_index=index,
                           sample_json=json.dumps(sample, indent=2, ensure_ascii=False, default=str) if sample else "",
                           fields=canonical_fields(object_name), transforms=TRANSFORM_NAMES, version=version,
                           job_id=job_id, job=job, can_manage=can("manage"), objects=self._objects(source),
                           saved_errors=saved_errors), status

    @expose("/<int:source_id>/<object_name>/")
    def editor(self, source_id: int, object_name: str):
        source = self._source(source_id)
        stored = [_row_dict(r) for r in _stored_rows(source, object_name)]
        rows = [dict(r, n=n) for n, r in enumerate(stored)]
        return self._editor(source, object_name, rows, {}, version=_version(stored))

    @expose("/<int:source_id>/<object_name>/preview", methods=["POST"])
    def preview(self, source_id: int, object_name: str):
        """The draft rows applied to the stored sample: JSON for the page's script, the page without it."""
        source = self._source(source_id)
        rows, input_errors = _parse_form(request.form)
        if request.headers.get("X-Requested-With") == "fetch":
            _, sample, _ = self._sample(source, object_name)
            result = run_preview(source, object_name, rows, sample, input_errors)
            html = render_template("console/mappings/_preview.html", result=result, object_name=object_name)
            return jsonify(html=html, row_errors=result["row_errors"], ok=result["ok"])
        return self._editor(source, object_name, rows, input_errors, version=request.form.get("version", ""))[0]

    @expose("/<int:source_id>/<object_name>/save", methods=["POST"])
    def save(self, source_id: int, object_name: str):
        _manage_or_403()
        source = self._source(source_id)
        rows, input_errors = _parse_form(request.form)
        version = request.form.get("version", "")
        compiled = CompiledMapping(object_name, _specs(rows), source.config.get("lookups") or {})
        if input_errors or compiled.errors:
            flash("Not saved: fix the rows marked in red first (a mapping that cannot work would fail the sync).",
                  "danger")
            return self._editor(source, object_name, rows, input_errors, version=version, status=400,
                                saved_errors=True)
        after = [{k: r[k] for k in ("field", "path", "transform", "args", "default", "enabled")} for r in rows]
        with database.atomic():
            before = [_row_dict(r) for r in _stored_rows(source, object_name)]
            if _version(before) != version:
                flash("Not saved: someone changed this mapping since you opened it. Your draft is below; "
                      "reload to see theirs.", "danger")
                return self._editor(source, object_name, rows, input_errors, version=version, status=409)
            if before == after:
                flash("Nothing changed.", "info")
                return redirect(url_for(".editor", source_id=source.id, object_name=object_name))
            FieldMapping.delete().where((FieldMapping.source == source)
                                        & (FieldMapping.object_name == object_name)).execute()
            if after:
                FieldMapping.insert_many([
                    {"source": source.id, "object_name": object_name, "canonical_field": r["field"],
                     "source_path": r["path"], "transform": r["transform"], "args": r["args"], "default": r["default"],
                     "enabled": r["enabled"], "position": n} for n, r in enumerate(after)]).execute()
            _audit(f"{source.name}:{object_name}", before, after)
        flash(f"Saved the {object_name} mapping of {source.name} ({len(after)} rows). The next sync uses it.", "success")
        return redirect(url_for(".editor", source_id=source.id, object_name=object_name))

    @expose("/<int:source_id>/<object_name>/fetch", methods=["POST"])
    def fetch(self, source_id: int, object_name: str):
        """Fetch a sample record from the ERP: a job on the sync queue (the web never calls the ERP)."""
        _manage_or_403()
        source = self._source(source_id)
        job_id = _enqueue("jobs.mapping_sample.fetch_sample", source.name, object_name,
                          description=f"mapping sample: {source.name} {object_name}")
        flash(f"Fetching a sample {object_name} from {source.name} (job {job_id[:8]}).", "info")
        return redirect(url_for(".editor", source_id=source.id, object_name=object_name, job=job_id))

    @expose("/job/<job_id>")
    def job(self, job_id: str):
        """The state of a sample or check job, for the page's polling."""
        state = job_state(job_id)
        return jsonify(state), (404 if state["status"] == "missing" else 200)

    # -- the Salesforce push mapping ---------------------------------------------------------
    @staticmethod
    def _push_rows(config: dict) -> list[dict]:
        from middleware.sf_schema import push_objects

        return [{"role": role, "object": spec.get("object"), "external_id": spec.get("external_id"),
                 "fields": list((spec.get("fields") or {}).items())}
                for role, spec in push_objects(config).items()]

    def _salesforce_page(self, source: Source, objects: list[dict], errors: dict, status: int = 200):
        from jobs.mapping_sample import stored_check
        from middleware.sf_schema import CANONICAL, check_mapping

        cache = source.config.get("describe_cache") or {}
        local = None
        if cache:
            draft = dict(source.config, push=dict(source.config.get("push") or {}, objects={
                o["role"]: {**((source.config.get("push") or {}).get("objects") or {}).get(o["role"], {}),
                            "object": o["object"], "external_id": o["external_id"], "fields": dict(o["fields"])}
                for o in objects}))
            described = {name: entry.get("describe") for name, entry in cache.items()}
            if all(o["object"] in described for o in objects):
                local = {"problems": check_mapping(draft, described),
                         "at": min((entry.get("at") or "") for entry in cache.values())}
        return self.render("console/mappings/salesforce.html", source=source, objects=objects, errors=errors,
                           canonical=sorted(CANONICAL), check=stored_check(source.id), local=local,
                           job_id=request.args.get("job"), job=job_state(request.args.get("job")),
                           can_manage=can("manage"),
                           version=_version(self._push_rows(source.config))), status

    @expose("/salesforce/<int:source_id>/")
    def salesforce(self, source_id: int):
        source = self._source(source_id, kinds=("salesforce",))
        return self._salesforce_page(source, self._push_rows(source.config), {})

    @expose("/salesforce/<int:source_id>/save", methods=["POST"])
    def salesforce_save(self, source_id: int):
        from middleware.sf_schema import CANONICAL

        _manage_or_403()
        source = self._source(source_id, kinds=("salesforce",))
        objects, errors = [], {}
        for current in self._push_rows(source.config):
            role = current["role"]
            sobject = (request.form.get(f"{role}-object") or "").strip()
            external_id = (request.form.get(f"{role}-external_id") or "").strip()
            fields, seen = [], set()
            numbers = sorted({int(k.rsplit("-", 1)[1]) for k in request.form
                              if k.startswith(f"{role}-sf-") and k.rsplit("-", 1)[1].isdigit()})
            for n in numbers:
                sf_name = (request.form.get(f"{role}-sf-{n}") or "").strip()
                canonical = (request.form.get(f"{role}-canonical-{n}") or "").strip()
                if request.form.get(f"{role}-delete-{n}") or (not sf_name and not canonical):
                    continue
                key, problems = f"{role}-{n}", []
                if not _SF_NAME.match(sf_name):
                    problems.append(f"{sf_name!r} is not a Salesforce field API name")
                elif sf_name in seen:
                    problems.append(f"{sf_name} is mapped twice")
                if canonical not in CANONICAL:
                    problems.append(f"unknown canonical field {canonical!r}")
                if problems:
                    errors[key] = problems
                seen.add(sf_name)
                fields.append((sf_name, canonical))
            for key, value in (("object", sobject), ("external_id", external_id)):
                if not _SF_NAME.match(value):
                    errors[f"{role}-{key}"] = [f"{value!r} is not a Salesforce API name"]
            if external_id and external_id not in dict(fields):
                errors[f"{role}-external_id"] = [f"{external_id} must be one of the mapped fields"]
            objects.append({"role": role, "object": sobject, "external_id": external_id, "fields": fields})
        if errors:
            flash("Not saved: fix the fields marked in red first.", "danger")
            return self._salesforce_page(source, objects, errors, status=400)
        with database.atomic():
            fresh = Source.get_by_id(source.id)
            before = self._push_rows(fresh.config)
            if _version(before) != request.form.get("version", ""):
                flash("Not saved: someone changed this mapping since you opened it; reload to see theirs.", "danger")
                return self._salesforce_page(fresh, objects, {}, status=409)
            if before == objects:
                flash("Nothing changed.", "info")
                return redirect(url_for(".salesforce", source_id=source.id))
            config = dict(fresh.config)
            push = dict(config.get("push") or {})
            push["objects"] = {o["role"]: {**(push.get("objects") or {}).get(o["role"], {}), "object": o["object"],
                                           "external_id": o["external_id"], "fields": dict(o["fields"])}
                               for o in objects}
            config["push"] = push
            Source.update(config=config, updated_at=utcnow()).where(Source.id == source.id).execute()
            _audit(f"{source.name}:push",
                   {o["role"]: {"object": o["object"], "external_id": o["external_id"], "fields": dict(o["fields"])}
                    for o in before},
                   {o["role"]: {"object": o["object"], "external_id": o["external_id"], "fields": dict(o["fields"])}
                    for o in objects})
        flash("Saved the Salesforce field mapping. Check it against the org's describe before the next push.",
              "success")
        return redirect(url_for(".salesforce", source_id=source.id))

    @expose("/salesforce/<int:source_id>/check", methods=["POST"])
    def salesforce_check(self, source_id: int):
        """Describe the push objects and compare the saved mapping: a job (it calls Salesforce)."""
        _manage_or_403()
        source = self._source(source_id, kinds=("salesforce",))
        job_id = _enqueue("jobs.mapping_sample.check_salesforce_mapping", source.name,
                          description=f"Salesforce mapping check: {source.name}")
        flash(f"Checking the mapping against {source.name}'s describe (job {job_id[:8]}).", "info")
        return redirect(url_for(".salesforce", source_id=source.id, job=job_id))


def register(admin) -> None:
    admin.add_view(MappingsView(name="Field mappings", category="Admin", endpoint="mappings", url="/mappings"))
