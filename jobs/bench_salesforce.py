"""``arhub bench salesforce``: the push of AR status to Salesforce, in API calls and seconds,
against a naive integration that spends one call per record.

One run: generate the book (``--accounts`` customers, ``--invoices`` invoices, seed 1) and serve
it from ``arhub sandbox serve`` in its own process, with the Salesforce emulator (an org seeded
from the same book) on a free HTTPS port; pull the ERP through the Xero REST path into a scratch
database (timed, not a measured part); configure a Salesforce source; pull + match; a **full
push**; ``--changed`` invoices change in the ERP (new PO numbers, every fifth a partial payment),
an incremental ERP sync and an **incremental push**; finally the **naive baseline**: a sample of
``AR_Summary__c`` records upserted one ``PATCH .../sobjects/AR_Summary__c/ARHub_Key__c/<key>``
each through the same connector, its per-call time extrapolated to every record pushed.

Besides the figures, each push is broken down (``*_breakdown``): the API calls the emulator
served by endpoint, the seconds spent inside each kind of API call, the seconds slept before
Bulk job polls, and what is left (ours: building payloads from the store, hashing, recording).
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

import requests

NAIVE_SAMPLE = 2000


@contextmanager
def _scratch_database(db_kind: str, pg_url: str, workdir: str) -> Iterator[str]:
    """ARHUB_* pointed at a scratch SQLite file or PostgreSQL database (dropped afterwards)."""
    from middleware.settings import reset_settings

    saved = {k: os.environ.get(k) for k in ("ARHUB_DATABASE_URL", "ARHUB_VAR_DIR", "ARHUB_ENV_FILE")}
    pg_admin = scratch = None
    try:
        if db_kind == "postgres":
            import psycopg2
            scratch = f"arhub_bench_{uuid.uuid4().hex[:8]}"
            pg_admin = psycopg2.connect(pg_url)
            pg_admin.autocommit = True
            pg_admin.cursor().execute(f'CREATE DATABASE "{scratch}"')
            db_url = pg_url.rsplit("/", 1)[0] + "/" + scratch
        else:
            db_url = f"sqlite:///{workdir}/bench.db"
        os.environ.update({"ARHUB_DATABASE_URL": db_url, "ARHUB_VAR_DIR": workdir, "ARHUB_ENV_FILE": ""})
        reset_settings()
        yield db_url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()
        from middleware.db import database
        if database.obj is not None and not database.obj.is_closed():
            database.obj.close()
        if pg_admin is not None:
            pg_admin.cursor().execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            pg_admin.close()


class _Meter:
    """Times what a :class:`~connectors.salesforce.SalesforceConnector` spends, by kind of API
    call (``bulk create``, ``bulk status``, ``describe``, ``upsert`` ...) and asleep (Bulk job
    polls, retries), by wrapping the instance's ``_call`` and ``sleep``."""

    def __init__(self, connector):
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.slept = 0.0
        call, sleep = connector._call, connector.sleep

        def timed_call(what, fn):
            kind = " ".join(w for w in what.split() if w[:1].islower())  # "bulk status AR_Invoice__c" → "bulk status"
            t0 = time.perf_counter()
            try:
                return call(what, fn)
            finally:
                self.calls[kind] += 1
                self.seconds[kind] += time.perf_counter() - t0

        def timed_sleep(seconds):
            self.slept += seconds
            sleep(seconds)

        login = connector.login
        self.login_seconds = 0.0

        def timed_login():
            t0 = time.perf_counter()
            try:
                return login()
            finally:
                self.login_seconds += time.perf_counter() - t0

        connector._call, connector.sleep, connector.login = timed_call, timed_sleep, timed_login

    def report(self, total_seconds: float, served: dict) -> dict:
        in_calls = sum(self.seconds.values()) + self.login_seconds
        return {"served_by_endpoint": dict(sorted(served.items())), "login_seconds": round(self.login_seconds, 2),
                "connector_calls": {k: {"calls": self.calls[k], "seconds": round(v, 2)}
                                    for k, v in sorted(self.seconds.items())},
                "poll_sleep_seconds": round(self.slept, 2),
                "ours_seconds": round(max(total_seconds - in_calls - self.slept, 0.0), 2)}


class _SalesforceControl:
    """The Salesforce emulator's ``/_sandbox/`` control API (stats, budget)."""

    def __init__(self, url: str, ca_file: str):
        self.url, self.ca = url.rstrip("/") + "/_sandbox/", ca_file

    def reset_stats(self) -> None:
        requests.post(self.url + "reset_stats", json={}, verify=self.ca, timeout=60).raise_for_status()

    def served(self) -> dict:
        resp = requests.get(self.url + "stats", verify=self.ca, timeout=60)
        resp.raise_for_status()
        return resp.json()["by_endpoint"]


def salesforce(*, accounts: int, invoices: int | None = None, changed: int = 11000, db_kind: str = "sqlite",
               pg_url: str = "postgresql://postgres@127.0.0.1:5432/test", naive_sample: int = NAIVE_SAMPLE,
               log: Callable[[str], None] | None = None) -> dict:
    from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as SF
    from connectors.sandbox.xero import SANDBOX_CREDENTIALS as XERO
    from jobs.bench import _SandboxProcess
    from jobs.bootstrap import bootstrap
    from jobs.salesforce import make_salesforce_connector
    from jobs.sync import load_preset, make_connector
    from middleware.models import Customer, SfPushState, Source
    from middleware.sf_push import Pusher, payload_hash
    from middleware.sf_sync import SalesforceSync, describe_push_objects
    from middleware.sources import configure_salesforce, configure_source
    from middleware.sync import SyncService

    say = log or (lambda msg: None)
    invoices = 3 * accounts if invoices is None else invoices
    workdir = tempfile.mkdtemp(prefix="arhub-bench-sf-")
    ca_file = os.path.join(workdir, "sandbox-ca.pem")
    try:
        with _scratch_database(db_kind, pg_url, workdir):
            ctx = bootstrap(migrate=True, logging_=False)
            t0 = time.perf_counter()
            with _SandboxProcess(accounts, invoices, salesforce_ca=ca_file) as sandbox:
                say(f"sandbox up in {time.perf_counter() - t0:.1f}s: ERP {sandbox.url}, Salesforce "
                    f"{sandbox.salesforce_url}")
                # 1. the ERP, through the Xero REST path (not measured)
                erp = configure_source("xero", load_preset("xero"), endpoint=sandbox.xero_url + "/api.xro/2.0",
                                       credentials=dict(XERO, token_url=sandbox.xero_url + "/connect/token"))
                erp = Source.get_by_id(erp.id)
                erp_connector = make_connector(erp)

                def erp_sync():
                    return SyncService(erp, erp_connector, reporting_currency=ctx.settings.reporting_currency,
                                       chunk_size=ctx.settings.sync_chunk_size,
                                       commit_rows=ctx.settings.sync_commit_rows, prepare=ctx.settings.sync_prepare,
                                       overlap_seconds=ctx.settings.cursor_overlap_seconds).run()

                t0 = time.perf_counter()
                erp_run = erp_sync()
                erp_seconds = time.perf_counter() - t0
                say(f"ERP full sync (Xero REST, not measured) {erp_seconds:.1f}s: {erp_run.message}")

                # 2. the Salesforce source, pull + match
                sf_source = configure_salesforce(
                    "salesforce", load_preset("salesforce"),
                    connection={"login_url": sandbox.salesforce_url, "ca_bundle": ca_file, "auth": "password"},
                    credentials=dict(SF))
                control = _SalesforceControl(sandbox.salesforce_url, ca_file)
                t0 = time.perf_counter()
                warm = make_salesforce_connector(Source.get_by_id(sf_source.id))
                warm.login()  # seeds the org from the book (its cost, not ours); a login is no API call
                warm.close()
                say(f"Salesforce org seeded + login {time.perf_counter() - t0:.1f}s")

                def sf_run(*, pull: bool, push: bool):
                    """One run as ``run_salesforce`` does it: a new connector (and login) each time."""
                    source = Source.get_by_id(sf_source.id)
                    control.reset_stats()
                    started = time.perf_counter()
                    connector = make_salesforce_connector(source)
                    meter = _Meter(connector)
                    try:
                        run = SalesforceSync(source, connector, reporting_currency=ctx.settings.reporting_currency,
                                             public_url=ctx.settings.public_url).run(pull=pull, push=push)
                    finally:
                        connector.close()
                    seconds = time.perf_counter() - started
                    if run.status not in ("succeeded", "partial"):
                        raise RuntimeError(f"Salesforce run failed: {run.message} {run.errors[:5]}")
                    return run, seconds, meter.report(seconds, control.served())

                pull_run, pull_seconds, pull_breakdown = sf_run(pull=True, push=False)
                linked = Customer.select().where(Customer.sf_account_id.is_null(False),
                                                 Customer.deleted_at.is_null()).count()
                say(f"pull + match {pull_seconds:.1f}s, {pull_run.api_calls} calls, {linked} customers linked: "
                    f"{pull_run.message}")

                # 3. full push
                full_run, full_seconds, full_breakdown = sf_run(pull=False, push=True)
                full = {role: full_run.objects.get(f"push_{role}") or {} for role in ("summary", "invoice")}
                full_records = sum(s.get("acknowledged", 0) for s in full.values())
                say(f"full push {full_seconds:.1f}s, {full_run.api_calls} calls: {full_run.message}")

                # 4. --changed invoices change in the ERP, incremental ERP sync, incremental push
                changed_ids = sandbox.mutate({"action": "modify_invoices", "count": changed})["ids"]
                for obj in erp.config["objects"]:  # let the ERP re-index (its cost): one request per object
                    for _page in erp_connector.pull(obj, datetime.now(timezone.utc)):
                        break
                t0 = time.perf_counter()
                inc_erp = erp_sync()
                say(f"ERP incremental sync ({len(changed_ids)} invoices changed, not measured) "
                    f"{time.perf_counter() - t0:.1f}s: {inc_erp.message}")
                inc_run, inc_seconds, inc_breakdown = sf_run(pull=False, push=True)
                inc = {role: inc_run.objects.get(f"push_{role}") or {} for role in ("summary", "invoice")}
                inc_records = sum(s.get("acknowledged", 0) for s in inc.values())
                say(f"incremental push {inc_seconds:.1f}s, {inc_run.api_calls} calls: {inc_run.message}")

                # what the push does before sending anything, repeated here on its own: build every
                # payload from the store, hash it, read what Salesforce acknowledged
                source = Source.get_by_id(sf_source.id)
                connector = make_salesforce_connector(source)
                pusher = Pusher(source, connector, reporting_currency=ctx.settings.reporting_currency,
                                public_url=ctx.settings.public_url,
                                describes=describe_push_objects(source, connector))
                t0 = time.perf_counter()
                built = pusher.build(full=True)  # every payload (an incremental build skips unchanged summaries)
                build_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
                for items in built.values():
                    for _key, _cid, payload in items:
                        payload_hash(payload)
                hash_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
                acked = SfPushState.select(SfPushState.record_key, SfPushState.acked_hash, SfPushState.sf_id) \
                    .where(SfPushState.source == source.id).tuples()
                acked_rows = sum(1 for _ in acked.iterator())
                state_seconds = time.perf_counter() - t0
                push_work = {"build_payloads_seconds": round(build_seconds, 2), "hash_seconds": round(hash_seconds, 2),
                             "read_push_state_seconds": round(state_seconds, 2),
                             "payloads": {role: len(items) for role, items in built.items()},
                             "push_state_rows": acked_rows}
                say(f"push work, repeated alone: build {build_seconds:.1f}s, hash {hash_seconds:.1f}s, "
                    f"read push state {state_seconds:.1f}s")

                # 5. naive baseline: one PATCH per record, through the same connector's session
                spec = source.config["push"]["objects"]["summary"]
                bodies = []
                for key, _cid, payload in built["summary"][:naive_sample]:
                    body = pusher._to_sf(spec, payload)
                    body.pop(spec["external_id"], None)  # the key is in the URL
                    bodies.append((key, body))
                sobject = getattr(connector.sf, spec["object"])
                calls_before = connector.calls
                t0 = time.perf_counter()
                for key, body in bodies:
                    sobject.upsert(f"{spec['external_id']}/{key}", body)
                naive_sample_seconds = time.perf_counter() - t0
                naive_sample_calls = connector.calls - calls_before
                per_call = naive_sample_seconds / max(len(bodies), 1)
                say(f"naive: {len(bodies)} single-record upserts in {naive_sample_seconds:.1f}s "
                    f"({per_call * 1000:.1f} ms a call, {naive_sample_calls} calls)")
                # how fast the emulator processed each Bulk job (one more call, after the measuring)
                jobs = connector._raw("GET", "jobs/ingest", "bulk list").json().get("records") or []
                bulk_jobs = [{"object": j.get("object"), "rows": j.get("numberRecordsProcessed"),
                              "processing_seconds": round((j.get("totalProcessingTime") or 0) / 1000, 2),
                              "rows_per_s": round(j["numberRecordsProcessed"] * 1000 / j["totalProcessingTime"])
                              if j.get("totalProcessingTime") else None} for j in jobs]
                connector.close()
                erp_connector.close()

        def ratio(a: float, b: float) -> float | None:
            return round(a / b, 1) if b else None

        naive_calls, naive_inc_calls = full_records, inc_records
        naive_seconds = per_call * naive_calls
        naive_inc_seconds = per_call * naive_inc_calls
        return {
            "db": db_kind, "accounts": accounts, "invoices": invoices, "changed": len(changed_ids),
            "erp_sync_seconds": round(erp_seconds, 1),
            "linked": linked, "pull_calls": pull_run.api_calls, "pull_seconds": round(pull_seconds, 2),
            "full_push_calls": full_run.api_calls, "full_push_seconds": round(full_seconds, 2),
            "full_push_records": full_records,
            "full_push_summaries": full["summary"].get("acknowledged", 0),
            "full_push_invoices": full["invoice"].get("acknowledged", 0),
            "full_push_methods": f"{full['summary'].get('method')}/{full['invoice'].get('method')}",
            "full_push_failed": sum(s.get("failed", 0) for s in full.values()),
            "full_push_errors": [e.get("error") or e.get("warning") for e in full_run.errors[:5]],
            "incremental_accounts": inc["summary"].get("sent", 0),
            "incremental_invoices": inc["invoice"].get("sent", 0),
            "incremental_methods": f"{inc['summary'].get('method')}/{inc['invoice'].get('method')}",
            "incremental_failed": sum(s.get("failed", 0) for s in inc.values()),
            "incremental_calls": inc_run.api_calls, "incremental_seconds": round(inc_seconds, 2),
            "naive_sample": len(bodies), "naive_sample_seconds": round(naive_sample_seconds, 2),
            "naive_ms_per_call": round(per_call * 1000, 2),
            "naive_calls": naive_calls, "naive_seconds_estimate": round(naive_seconds, 1),
            "naive_incremental_calls": naive_inc_calls,
            "naive_incremental_seconds_estimate": round(naive_inc_seconds, 1),
            "full_push_call_ratio": ratio(naive_calls, full_run.api_calls),
            "incremental_call_ratio": ratio(naive_inc_calls, inc_run.api_calls),
            "full_push_speedup": ratio(naive_seconds, full_seconds),
            "incremental_speedup": ratio(naive_inc_seconds, inc_seconds),
            "pull_breakdown": pull_breakdown, "full_push_breakdown": full_breakdown,
            "incremental_breakdown": inc_breakdown, "push_work_alone": push_work, "bulk_jobs": bulk_jobs,
            "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}",
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def render(result: dict, title: str):
    """The result as a rich table: the figures, then each breakdown flattened."""
    from rich.table import Table

    table = Table("figure", "value", title=title)
    for key, value in result.items():
        if not isinstance(value, (dict, list)):
            table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    for key, value in result.items():
        if isinstance(value, list):
            for n, item in enumerate(value):
                table.add_row(f"{key}[{n}]", str(item))
        if isinstance(value, dict):
            for part, figures in value.items():
                text = figures if not isinstance(figures, dict) else ", ".join(
                    f"{k}: {v['calls']} in {v['seconds']} s" if isinstance(v, dict) else f"{k}: {v}"
                    for k, v in figures.items())
                table.add_row(f"{key}.{part}", str(text))
    return table
