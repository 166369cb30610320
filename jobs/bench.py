"""``arhub bench ingest``: the ERP ingest path measured against its own floor.

One run: generate the book, serve it from the sandbox on loopback, full sync (the
invoice object timed on its own), then the floor on the same invoice pages from the
same sandbox: a bare fetch of every page with plain ``requests``, a plain parse
(``json`` / ``lxml``) and a raw ``executemany`` upsert of the same rows into the same
table. The ratio is what mapping, validation, the ORM and bookkeeping add. Finally
``--changed`` invoices change in the ERP and an incremental sync runs.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

import requests
from lxml import etree

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
MSGS = "urn:messages_2023_2.platform.webservices.netsuite.com"
COMMON = "urn:common_2023_2.platform.webservices.netsuite.com"
CORE = "urn:core_2023_2.platform.webservices.netsuite.com"


def _envelope(body: str) -> str:
    return (f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:msgs="{MSGS}" xmlns:common="{COMMON}" '
            f'xmlns:core="{CORE}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Header>'
            f'<msgs:searchPreferences><msgs:bodyFieldsOnly>false</msgs:bodyFieldsOnly>'
            f'<msgs:returnSearchColumns>false</msgs:returnSearchColumns><msgs:pageSize>1000</msgs:pageSize>'
            f'</msgs:searchPreferences></soapenv:Header><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>')


def _floor_fetch_soap(sandbox, creds) -> tuple[float, float, int]:
    """Bare SOAP paging (search + searchMoreWithId) and an lxml parse of each page."""
    url = sandbox.netsuite_url + "/services/NetSuitePort_2023_2"
    session = requests.Session()
    session.auth = (creds["username"], creds["password"])
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    fetch = parse = 0.0
    records = 0
    body = ('<msgs:search><msgs:searchRecord xsi:type="common:TransactionSearchBasic">'
            '<common:type operator="anyOf"><core:searchValue>_invoice</core:searchValue></common:type>'
            '</msgs:searchRecord></msgs:search>')
    page, total, search_id = 1, 1, None
    while page <= total:
        if page > 1:
            body = (f"<msgs:searchMoreWithId><msgs:searchId>{search_id}</msgs:searchId>"
                    f"<msgs:pageIndex>{page}</msgs:pageIndex></msgs:searchMoreWithId>")
        t0 = time.perf_counter()
        resp = session.post(url, data=_envelope(body).encode(), headers={**headers, "SOAPAction": "search"})
        resp.raise_for_status()
        content = resp.content
        t1 = time.perf_counter()
        root = etree.fromstring(content)
        result = next(el for el in root.iter() if isinstance(el.tag, str) and el.tag.endswith("}searchResult"))
        total = int(next(el for el in result if el.tag.endswith("}totalPages")).text)
        search_id = next(el for el in result if el.tag.endswith("}searchId")).text
        rec_list = next((el for el in result if el.tag.endswith("}recordList")), None)
        records += 0 if rec_list is None else len(rec_list)
        parse += time.perf_counter() - t1
        fetch += t1 - t0
        page += 1
    return fetch, parse, records


def _floor_fetch_rest(sandbox, creds) -> tuple[float, float, int]:
    """Bare REST paging (page/pageSize) and a json parse of each page."""
    session = requests.Session()
    token = session.post(sandbox.xero_url + "/connect/token", data={"grant_type": "client_credentials"},
                         auth=(creds["client_id"], creds["client_secret"])).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "xero-tenant-id": creds["tenant_id"], "Accept": "application/json"}
    fetch = parse = 0.0
    records, page = 0, 1
    while True:
        t0 = time.perf_counter()
        resp = session.get(sandbox.xero_url + "/api.xro/2.0/Invoices", headers=headers,
                           params={"page": page, "pageSize": 1000, "where": 'Type=="ACCREC"',
                                   "order": "UpdatedDateUTC ASC"})
        resp.raise_for_status()
        content = resp.content
        t1 = time.perf_counter()
        items = json.loads(content)["Invoices"]
        parse += time.perf_counter() - t1
        fetch += t1 - t0
        records += len(items)
        if len(items) < 1000:
            break
        page += 1
    return fetch, parse, records


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _floor_write(source_id: int) -> float:
    """A raw executemany upsert of the stored invoice rows into the same table."""
    from middleware.bulk import _upsert_sql
    from middleware.db import database, is_postgres

    db = database.obj
    cols = ("source_id", "external_id", "number", "customer_id", "customer_external_id", "currency", "amount",
            "issue_date", "sent_date", "due_date", "status", "open_amount", "erp_open_amount", "po_number", "memo",
            "amount_reporting", "fx_rate", "fx_rate_date", "fx_rate_source", "fx_missing", "erp_modified_at",
            "content_hash", "deleted_at", "created_at", "updated_at")
    quoted = ", ".join(f'"{c}"' for c in cols)
    rows = db.execute_sql(f'SELECT {quoted} FROM "invoice" WHERE "source_id" = '
                          + ("%s" if is_postgres(db) else "?"), (source_id,)).fetchall()
    ph = "%s" if is_postgres(db) else "?"
    sql = _upsert_sql("invoice", cols, ("source_id", "external_id"), cols[2:], ph, 1)
    t0 = time.perf_counter()
    with db.atomic():
        cursor = db.cursor()
        if is_postgres(db):
            from psycopg2.extras import execute_values
            values_sql = sql.replace("VALUES (" + ", ".join([ph] * len(cols)) + ")", "VALUES %s")
            execute_values(cursor, values_sql, rows, page_size=1000)
        else:
            cursor.executemany(sql, rows)
    return time.perf_counter() - t0


class _SandboxProcess:
    """The sandbox in its own process (``arhub sandbox serve``), so it does not share our GIL.

    ERP emulators only (``--no-salesforce``) unless ``salesforce_ca`` names where the Salesforce
    emulator's CA is to be written: it then also serves Salesforce over HTTPS on a free port
    (``salesforce_url``; its org is seeded from the same book on the first request)."""

    def __init__(self, customers: int, invoices: int, *, salesforce_ca: str | None = None):
        import socket
        import subprocess
        import sys

        def free_port() -> int:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                return sock.getsockname()[1]

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.netsuite_url, self.xero_url = self.url + "/netsuite", self.url + "/xero"
        args = [sys.executable, "-m", "jobs.cli", "sandbox", "serve", "--port", str(self.port),
                "--customers", str(customers), "--invoices", str(invoices), "--seed", "1"]
        self.salesforce_ca = salesforce_ca
        self.salesforce_url: str | None = None
        if salesforce_ca:
            sf_port = free_port()
            while sf_port == self.port:
                sf_port = free_port()
            self.salesforce_url = f"https://127.0.0.1:{sf_port}"
            args += ["--salesforce-port", str(sf_port), "--ca-file", salesforce_ca]
        else:
            args.append("--no-salesforce")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        deadline = time.monotonic() + 600
        erp_up = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandbox exited with {self.proc.returncode}")
            try:
                if erp_up is None:
                    requests.get(self.url + "/_sandbox/book", timeout=2).raise_for_status()
                    erp_up = time.monotonic()
                if self.salesforce_url:  # started before the ERP server: it answers now or never
                    requests.get(self.salesforce_url + "/_sandbox/stats", verify=self.salesforce_ca,
                                 timeout=10).raise_for_status()
                return self
            except requests.RequestException:
                if erp_up is not None and time.monotonic() - erp_up > 30:
                    break
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("sandbox did not start" + (" its Salesforce emulator" if erp_up is not None else ""))

    def mutate(self, action: dict):
        resp = requests.post(self.url + "/_sandbox/mutate", json=action, timeout=600)
        resp.raise_for_status()
        return resp.json()

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def ingest(*, path: str, customers: int, invoices: int, changed: int, db_kind: str, pg_url: str,
           log: Callable[[str], None] | None = None) -> dict:
    from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS as NS
    from connectors.sandbox.xero import SANDBOX_CREDENTIALS as XERO
    from jobs.bootstrap import bootstrap
    from jobs.sync import load_preset, make_connector
    from middleware.models import Source
    from middleware.settings import reset_settings
    from middleware.sources import configure_source
    from middleware.sync import SyncService

    say = log or (lambda msg: None)
    workdir = tempfile.mkdtemp(prefix="arhub-bench-")
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
        ctx = bootstrap(migrate=True, logging_=False)
        with _SandboxProcess(customers, invoices) as sandbox:
            if path == "soap":
                creds = NS
                src = configure_source("bench", load_preset("netsuite-2023_2"),
                                       endpoint=sandbox.netsuite_url + "/services/NetSuitePort_2023_2", credentials=NS)
            else:
                creds = XERO
                src = configure_source("bench", load_preset("xero"), endpoint=sandbox.xero_url + "/api.xro/2.0",
                                       credentials=dict(XERO, token_url=sandbox.xero_url + "/connect/token"))
            src = Source.get_by_id(src.id)
            connector = make_connector(src)

            def service():
                return SyncService(src, connector, reporting_currency=ctx.settings.reporting_currency,
                                   chunk_size=ctx.settings.sync_chunk_size, commit_rows=ctx.settings.sync_commit_rows,
                                   prepare=ctx.settings.sync_prepare,
                                   overlap_seconds=ctx.settings.cursor_overlap_seconds)

            before = [o for o in ("currency", "fx_rate", "customer") if o in src.config["objects"]]
            after = [o for o in ("credit_memo", "payment") if o in src.config["objects"]]
            (_floor_fetch_soap if path == "soap" else _floor_fetch_rest)(sandbox, creds)  # warm both the same way
            t_start = time.perf_counter()
            service().run(objects=before)
            t_inv, cpu_inv, children_inv = time.perf_counter(), time.process_time(), _children_cpu()
            inv_run = service().run(objects=["invoice"])
            invoice_seconds = time.perf_counter() - t_inv
            # where the invoice phase's CPU went: this process (writes and bookkeeping) and its
            # reaped children (the prepare process: fetch, parse, map, validate, hash)
            invoice_cpu = time.process_time() - cpu_inv
            invoice_prepare_cpu = _children_cpu() - children_inv
            service().run(objects=after)
            seconds = time.perf_counter() - t_start
            say(f"full sync {seconds:.1f}s (invoices {invoice_seconds:.1f}s: {inv_run.message})")
            fetch, parse, floor_records = (_floor_fetch_soap if path == "soap" else _floor_fetch_rest)(sandbox, creds)
            write = _floor_write(src.id)
            floor = fetch + parse + write
            say(f"floor: fetch {fetch:.1f}s + parse {parse:.1f}s + executemany {write:.1f}s = {floor:.1f}s")
            changed_ids = sandbox.mutate({"action": "modify_invoices", "count": changed})["ids"]
            # let the ERP re-index after the change (its cost, not ours): one empty request per object
            for obj in src.config["objects"]:
                for _page in connector.pull(obj, datetime.now(timezone.utc)):
                    break
            t_inc = time.perf_counter()
            inc = service().run()
            incremental_seconds = time.perf_counter() - t_inc
            incremental_objects = {name: stats.get("seconds", 0) for name, stats in (inc.objects or {}).items()}
            connector.close()
        stored = inv_run.created + inv_run.updated + inv_run.unchanged
        return {
            "path": path, "db": db_kind, "customers": customers, "invoices": stored,
            "seconds": round(seconds, 2), "invoice_seconds": round(invoice_seconds, 2),
            "invoices_per_s": round(stored / invoice_seconds), "floor_seconds": round(floor, 2),
            "floor_fetch_seconds": round(fetch, 2), "floor_parse_seconds": round(parse, 2),
            "floor_write_seconds": round(write, 2), "floor_records": floor_records,
            "floor_ratio": round(invoice_seconds / floor, 2),
            "invoice_cpu_seconds": round(invoice_cpu, 2), "invoice_prepare_cpu_seconds": round(invoice_prepare_cpu, 2),
            "incremental_changed": (inc.objects.get("invoice") or {}).get("updated", 0),
            "incremental_requested": len(changed_ids), "incremental_seconds": round(incremental_seconds, 2),
            # per object (pull and writes), and the rest: the run's bookkeeping and the finishing pass
            "incremental_object_seconds": incremental_objects,
            "incremental_other_seconds": round(max(incremental_seconds - sum(incremental_objects.values()), 0.0), 2),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}",
        }
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
        shutil.rmtree(workdir, ignore_errors=True)
