"""RQ jobs behind the console's mapping editor: things that talk to a remote system.

* :func:`fetch_sample`: the first record(s) of one page of an ERP object, kept in Redis for the
  live mapping preview (the preview itself runs locally, in the web process, on the stored sample).
* :func:`check_salesforce_mapping`: the org's describe of the push objects and
  :func:`middleware.sf_schema.check_mapping` on the saved push mapping (``arhub salesforce check``),
  the result kept in Redis for the console.

Both are idempotent (a retry fetches again and overwrites the stored result) and let connector
errors propagate, so RQ records them as failed with the traceback; the console shows the
failure from the job's status.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

SAMPLE_SIZE = 5
SAMPLE_TTL_SECONDS = 7 * 24 * 3600  # samples hold customer data: they expire
CHECK_TTL_SECONDS = 30 * 24 * 3600


def sample_key(source_id: int, object_name: str) -> str:
    return f"arhub:mapping-sample:{source_id}:{object_name}"


def check_key(source_id: int) -> str:
    return f"arhub:sf-mapping-check:{source_id}"


def _plain(value: Any) -> Any:
    """JSON-safe raw values: Decimal → its exact text, dates → ISO text (what the ERP sent)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _store(key: str, payload: dict, ttl: int) -> None:
    from jobs.queues import get_redis

    get_redis().set(key, json.dumps(payload, default=_plain), ex=ttl)


def _load(key: str) -> dict | None:
    from jobs.queues import get_redis

    raw = get_redis().get(key)
    return json.loads(raw) if raw else None


def stored_sample(source_id: int, object_name: str) -> dict | None:
    """``{"source", "object", "fetched_at", "records": [...], "filtered_out"}`` or None (never fetched, or expired)."""
    return _load(sample_key(source_id, object_name))


def stored_check(source_id: int) -> dict | None:
    """``{"source", "checked_at", "ok", "problems": [{"object", "field", "message"}], "fields", "api_calls"}`` or None."""
    return _load(check_key(source_id))


# ------------------------------------------------------------------ RQ jobs
def fetch_sample(source_name: str, object_name: str, count: int = SAMPLE_SIZE) -> dict:
    """RQ job (queue ``sync``): the first page of ``object_name`` from the ERP, its first ``count``
    records (those the object's record filter keeps come first), stored for the mapping preview."""
    from jobs.bootstrap import bootstrap
    from jobs.sync import make_connector
    from middleware.mapping import CompiledMapping
    from middleware.models import Source, utcnow

    bootstrap()
    source = Source.get_or_none(Source.name == source_name)
    if source is None:
        raise LookupError(f"no source named {source_name!r}")
    connector = make_connector(source)
    try:
        pages = connector.pull(object_name, None)
        try:
            first = next(pages, None)
        finally:
            pages.close()
    finally:
        connector.close()
    records = list(first.records) if first is not None else []
    record_filter = ((source.config.get("objects") or {}).get(object_name) or {}).get("filter")
    kept = records
    if record_filter:
        wants = CompiledMapping(object_name, [], None, record_filter).wants
        kept = [r for r in records if wants(r)]
    payload = {"source": source.name, "object": object_name, "fetched_at": utcnow().isoformat(),
               "records": kept[:count], "filtered_out": len(records) - len(kept)}
    _store(sample_key(source.id, object_name), payload, SAMPLE_TTL_SECONDS)
    return {"source": source.name, "object": object_name, "records": len(payload["records"])}


def check_salesforce_mapping(source_name: str | None = None) -> dict:
    """RQ job (queue ``sync``): describe the push objects (fresh, not the cached describe) and compare the
    saved push mapping with them: unknown fields, type mismatches, not updateable, lengths."""
    from jobs.bootstrap import bootstrap
    from jobs.salesforce import get_salesforce_source, make_salesforce_connector
    from middleware.sf_schema import push_objects
    from middleware.sf_sync import check

    bootstrap()
    source = get_salesforce_source(source_name)
    connector = make_salesforce_connector(source)
    try:
        problems = check(source, connector, refresh=True)
        calls = connector.calls
    finally:
        connector.close()
    objects = push_objects(source.config)
    payload = {"source": source.name, "checked_at": datetime.now(timezone.utc).isoformat(), "ok": not problems,
               "problems": [{"object": p.object, "field": p.field, "message": p.message} for p in problems],
               "fields": sum(len(spec.get("fields") or {}) for spec in objects.values()),
               "objects": [spec.get("object") for spec in objects.values()], "api_calls": calls}
    _store(check_key(source.id), payload, CHECK_TTL_SECONDS)
    return {"source": source.name, "ok": payload["ok"], "problems": len(problems)}
