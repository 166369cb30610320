"""One Salesforce run: pull (users, accounts, contacts, opportunities) → match → tags →
check the push mapping against describe → push AR status. Recorded as a ``SyncRun``
(direction ``in``, ``out`` or ``both``) with per-step counts, errors, and the API calls spent.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Callable

from .db import database
from .locks import LockBusy, exclusive
from .models import RunStatus, Source, SyncRun, utcnow
from .sf_pull import SalesforcePull, apply_tag_rules, link_contacts
from .sf_push import Pusher
from .sf_schema import Problem, check_mapping, push_objects

log = logging.getLogger(__name__)
_KEEP = ("name", "type", "length", "precision", "scale", "createable", "updateable", "externalId", "unique",
         "picklistValues", "referenceTo", "restrictedPicklist", "nillable")


class SalesforceSyncError(RuntimeError):
    pass


class SalesforceBusy(SalesforceSyncError):
    """Another process is running this source's Salesforce sync."""


def _slim(describe: dict) -> dict:
    return {"name": describe.get("name"),
            "fields": [{k: f.get(k) for k in _KEEP if k in f} for f in describe.get("fields", [])]}


def describe_push_objects(source: Source, connector, *, refresh: bool = False) -> dict[str, dict | None]:
    """Describes of the push objects, cached on the source for ``describe_ttl_seconds``.

    The stale ones are fetched together: one ``composite`` request (one API call) when the
    connector offers ``describe_many``, else one describe each."""
    ttl = int((source.config.get("push") or {}).get("describe_ttl_seconds", 3600))
    cache = dict(source.config.get("describe_cache") or {})
    now = utcnow()
    out: dict[str, dict | None] = {}
    stale: list[str] = []
    for spec in push_objects(source.config).values():
        sobject = spec["object"]
        entry = cache.get(sobject)
        fresh = entry and not refresh and datetime.fromisoformat(entry["at"]) > now - timedelta(seconds=ttl)
        if fresh:
            out[sobject] = entry["describe"]
        elif sobject not in stale:
            stale.append(sobject)
    if stale:
        many = getattr(connector, "describe_many", None)
        fetched = many(stale) if many is not None else {name: _describe_one(connector, name) for name in stale}
        for sobject in stale:
            described = fetched.get(sobject)
            out[sobject] = None if described is None else _slim(described)
            cache[sobject] = {"at": now.isoformat(), "describe": out[sobject]}
        config = dict(source.config)
        config["describe_cache"] = cache
        source.config = config
        Source.update(config=config).where(Source.id == source.id).execute()
    return out


def _describe_one(connector, sobject: str) -> dict | None:
    try:
        return connector.describe(sobject)
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise


def check(source: Source, connector, *, refresh: bool = True) -> list[Problem]:
    """``arhub salesforce check``: every problem that would stop or spoil a push."""
    return check_mapping(source.config, describe_push_objects(source, connector, refresh=refresh))


class SalesforceSync:
    def __init__(self, source: Source, connector, *, reporting_currency: str, public_url: str,
                 progress: Callable[[str, int, int], None] | None = None, now: datetime | None = None):
        self.source = source
        self.connector = connector
        self.reporting = reporting_currency
        self.public_url = public_url
        self.progress = progress or (lambda name, done, total: None)
        self.now = now

    def run(self, *, pull: bool = True, push: bool = True, full: bool = False) -> SyncRun:
        try:
            with exclusive(f"salesforce-{self.source.id}"):
                return self._run(pull, push, full)
        except LockBusy as exc:
            raise SalesforceBusy(f"Salesforce source {self.source.name!r} is already syncing") from exc

    def _run(self, pull: bool, push: bool, full: bool) -> SyncRun:
        direction = "both" if pull and push else "in" if pull else "out"
        run = SyncRun.create(source=self.source, direction=direction, mode="full" if full else "incremental")
        objects: dict[str, dict] = {}
        errors: list[dict] = []
        status = RunStatus.SUCCEEDED
        calls_before = self.connector.calls
        try:
            if pull:
                stats = SalesforcePull(self.source, self.connector,
                                       progress=lambda name, n: self.progress(name, n, 0)).run(full=full)
                for kind, s in stats.items():
                    objects[kind] = s.as_dict()
                    run.fetched += s.fetched
                    run.updated += s.written
                    run.deleted += s.deleted
                from .matching import run_matching  # matching reads what the pull wrote

                erp_names = self.source.config.get("erp_sources")  # default: every ERP source
                result = run_matching(self.source, erp_sources=erp_names or None)
                objects["matching"] = {k: v for k, v in vars(result).items()
                                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
                if getattr(result, "hierarchy_mismatches", None):
                    errors.append({"object": "matching", "warning": f"{len(result.hierarchy_mismatches)} account "
                                   "hierarchy mismatch(es) between the ERP and Salesforce"})
                objects["contacts_linked"] = {"linked": link_contacts(self.source)}
                objects["tags"] = apply_tag_rules(self.source)
            if push:
                problems = check_mapping(self.source.config, describe_push_objects(self.source, self.connector))
                if problems:  # the org changed under the mapping: name every field, send nothing
                    problems = check(self.source, self.connector, refresh=True)
                if problems:
                    for p in problems:
                        errors.append({"object": p.object, "field": p.field, "error": p.message})
                    raise SalesforceSyncError(f"push not started: {len(problems)} mapping problem(s): "
                                              + "; ".join(str(p) for p in problems[:5]))
                pusher = Pusher(self.source, self.connector, reporting_currency=self.reporting,
                                public_url=self.public_url, describes=describe_push_objects(self.source, self.connector),
                                now=self.now, progress=self.progress)
                pushed = pusher.push(full=full)
                for role, s in pushed.items():
                    objects[f"push_{role}"] = s.as_dict()
                    run.created += s.acknowledged
                    run.unchanged += s.candidates - s.changed
                    run.rejected += s.failed
                    errors.extend({"object": role, "error": e} for e in s.errors)
                if any(s.failed for s in pushed.values()):
                    problems = check(self.source, self.connector, refresh=True)
                    errors.extend({"object": p.object, "field": p.field, "error": p.message} for p in problems)
                    status = RunStatus.PARTIAL
                if pusher.stopped:
                    errors.append({"object": "push", "warning": pusher.stopped})
                    status = RunStatus.PARTIAL
        except Exception as exc:
            errors.append({"object": None, "error": f"{type(exc).__name__}: {exc}"})
            self._close(run, objects, errors, RunStatus.FAILED, calls_before)
            if isinstance(exc, SalesforceSyncError) or (type(exc).__module__ or "").startswith("connectors"):
                return run  # recorded; the caller reads the run
            raise
        self._close(run, objects, errors, status, calls_before)
        return run

    def _close(self, run: SyncRun, objects: dict, errors: list, status: RunStatus, calls_before: int) -> None:
        run.objects, run.errors, run.status = objects, errors, status.value
        run.api_calls = self.connector.calls - calls_before
        run.finished_at = utcnow()
        parts = []
        for role in ("summary", "invoice"):
            s = objects.get(f"push_{role}")
            if s:
                parts.append(f"{role}: {s['acknowledged']} sent ({s['method']}), {s['failed']} failed, "
                             f"{s['candidates'] - s['changed']} unchanged" + (f", {s['deferred']} deferred"
                                                                               if s['deferred'] else ""))
        if "matching" in objects:
            m = objects["matching"]
            parts.insert(0, f"matching: {m.get('linked_external_id', 0)} linked by external id, "
                            f"{m.get('linked_auto', 0) + m.get('inherited', 0)} by score, {m.get('review', 0)} to review, "
                            f"{m.get('unmatched', 0)} unmatched, {m.get('unchanged', 0) + m.get('manual_kept', 0)} kept")
        if "accounts" in objects:
            parts.insert(0, f"pulled {run.fetched} records")
        remaining = self.connector.api_remaining
        parts.append(f"{run.api_calls} API calls" + (f" ({remaining} left today)" if remaining is not None else ""))
        if status == RunStatus.FAILED:
            parts.insert(0, "failed: " + next((e["error"] for e in reversed(errors) if "error" in e), "?"))
        run.message = "; ".join(parts)
        with database.atomic():
            run.save()
