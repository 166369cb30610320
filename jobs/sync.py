"""ERP sync entry points: presets from disk, connectors from sources, RQ jobs.

This is composition: it builds the connector a ``Source`` describes and hands it to
``middleware.sync.SyncService``. The RQ jobs take names, open the database through
``bootstrap()``, run one service call and let errors propagate (RQ records them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import yaml

from middleware.models import Source, SyncRun
from middleware.sources import source_credentials
from middleware.sync import ObjectStats, SyncAlreadyRunning, SyncService

PRESET_DIR = Path(__file__).resolve().parent.parent / "connectors" / "presets"


class PresetNotFound(LookupError):
    pass


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict:
    """A preset by name (``xero``) or by path to a YAML/JSON file."""
    path = Path(name_or_path)
    if not path.exists():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise PresetNotFound(f"no preset {name_or_path!r} (known: {', '.join(preset_names())})")
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def make_connector(source: Source, **kwargs):
    credentials = source_credentials(source)
    if source.kind == "soap":
        from connectors.erp_soap import SoapConnector
        return SoapConnector(source.config, credentials, endpoint=source.endpoint, **kwargs)
    if source.kind == "rest":
        from connectors.erp_rest import RestConnector
        return RestConnector(source.config, credentials, endpoint=source.endpoint, **kwargs)
    raise ValueError(f"source {source.name!r}: kind {source.kind!r} is not an ERP connector")


def run_sync(source_name: str, *, full: bool = False, objects: list[str] | None = None,
             progress: Callable[[str, ObjectStats], None] | None = None, connector=None,
             prepare: str | None = None) -> SyncRun:
    from jobs.bootstrap import bootstrap

    ctx = bootstrap()
    source = Source.get_or_none(Source.name == source_name)
    if source is None:
        raise LookupError(f"no source named {source_name!r}")
    own = connector is None
    connector = connector or make_connector(source)
    try:
        service = SyncService(source, connector, reporting_currency=ctx.settings.reporting_currency,
                              chunk_size=ctx.settings.sync_chunk_size, commit_rows=ctx.settings.sync_commit_rows,
                              prepare=prepare or ctx.settings.sync_prepare,
                              overlap_seconds=ctx.settings.cursor_overlap_seconds, progress=progress)
        return service.run(full=full, objects=objects)
    finally:
        if own:
            connector.close()


# ------------------------------------------------------------------ RQ jobs
def sync_erp(source_name: str, full: bool = False) -> dict:
    """RQ job: one source's sync. Idempotent: a retried job re-pulls from the committed cursor."""
    try:
        run = run_sync(source_name, full=full)
    except SyncAlreadyRunning as exc:  # the other run covers this one's work; nothing to retry
        return {"run": None, "status": "skipped", "message": str(exc)}
    return {"run": run.id, "status": run.status, "message": run.message}


def sync_erp_all() -> list[dict]:
    """RQ job (cron): every enabled ERP source, one after the other."""
    from jobs.bootstrap import bootstrap

    ctx = bootstrap()
    names = [s.name for s in Source.select().where(Source.enabled & Source.kind.in_(["soap", "rest"]))]
    results = [sync_erp(name) for name in names]
    if any(r.get("status") in ("succeeded", "partial") for r in results) and \
            Source.select().where(Source.enabled & (Source.kind == "salesforce")).exists():
        from jobs.queues import get_queue

        # balances changed: push them to Salesforce now (only changed records cost API calls)
        get_queue("sync", ctx.settings).enqueue("jobs.salesforce.push_ar_status", job_timeout=3600,
                                                description="Salesforce push after the ERP sync")
    return results
