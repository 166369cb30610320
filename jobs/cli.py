"""The ``arhub`` command line (click + rich). Composition root: ``bootstrap()``."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=False)
err = Console(stderr=True)


def _ctx(migrate: bool = False):
    from jobs.bootstrap import bootstrap

    return bootstrap(migrate=migrate)


@click.group()
@click.version_option(package_name="arhub")
def main() -> None:
    """arhub: accounts-receivable sync hub between your ERP and Salesforce."""


# --------------------------------------------------------------------- db
@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    from middleware.migrations import current_version, upgrade

    ctx = _ctx()
    applied = upgrade(ctx.db)
    if applied:
        console.print(f"applied migrations {', '.join(map(str, applied))}; now at version {current_version(ctx.db)}")
    else:
        console.print(f"already at version {current_version(ctx.db)}: nothing to do")


@db.command("status")
def db_status() -> None:
    """Show the schema version and the latest known one."""
    from middleware.migrations import current_version, head

    ctx = _ctx()
    console.print(f"database at version {current_version(ctx.db)}; latest is {head()}")


@db.command("snapshot", hidden=True)
@click.argument("version", type=int)
@click.option("--models", "model_names", default="", help="comma-separated model names (default: all)")
def db_snapshot(version: int, model_names: str) -> None:
    """(developers) Freeze the models' DDL as migration VERSION's snapshot, for both dialects."""
    from peewee import PostgresqlDatabase, SqliteDatabase

    from middleware import models
    from middleware.db import database
    from middleware.migrations import write_snapshot

    model_list = [getattr(models, name.strip()) for name in model_names.split(",") if name.strip()] or None
    for dbo in (SqliteDatabase(":memory:"), PostgresqlDatabase("snapshot")):
        database.initialize(dbo)
        console.print(f"wrote {write_snapshot(version, dbo, model_list)}")


# ----------------------------------------------------------------- sources
def _credentials(credentials_file, pairs) -> dict:
    """``--credentials-file`` (JSON) and ``--credential KEY=VALUE`` options merged."""
    credentials = json.load(credentials_file) if credentials_file else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--credential")
        credentials[key] = value
    return credentials


@main.group()
def source() -> None:
    """ERP connections."""


@source.command("add")
@click.argument("name")
@click.option("--preset", required=True, help="preset name (netsuite-2023_2, xero) or path to a YAML/JSON file")
@click.option("--endpoint", help="override the preset's endpoint / base URL")
@click.option("--credentials-file", type=click.File("r"), help="JSON file with the credentials (stored encrypted)")
@click.option("--credential", "pairs", multiple=True, metavar="KEY=VALUE", help="a credential (repeatable)")
@click.option("--reset-mappings", is_flag=True, help="replace edited field mappings with the preset's")
def source_add(name, preset, endpoint, credentials_file, pairs, reset_mappings) -> None:
    """Create or update source NAME from a preset."""
    from jobs.sync import load_preset
    from middleware.sources import configure_source

    _ctx(migrate=True)
    credentials = _credentials(credentials_file, pairs)
    src = configure_source(name, load_preset(preset), endpoint=endpoint, credentials=credentials or None,
                           replace_mappings=reset_mappings, actor="cli")
    console.print(f"source {src.name!r} ({src.kind}, preset {src.preset}) saved; credentials encrypted")


@source.command("list")
def source_list() -> None:
    """List sources with their last sync."""
    from middleware.models import Source, SyncRun

    _ctx()
    table = Table("name", "kind", "preset", "endpoint", "last run", "status")
    for src in Source.select().order_by(Source.name):
        last = SyncRun.select().where(SyncRun.source == src).order_by(SyncRun.id.desc()).first()
        table.add_row(src.name, src.kind, src.preset or "", src.endpoint or "(preset)",
                      f"{last.started_at:%Y-%m-%d %H:%M}" if last else "never", last.status if last else "")
    console.print(table)


# -------------------------------------------------------------------- sync
@main.group()
def sync() -> None:
    """Synchronise with the ERP and with Salesforce."""


def _summary(run) -> Table:
    table = Table(title=f"sync run {run.id}: {run.source.name} ({run.mode}) - {run.status}")
    for col in ("object", "fetched", "created", "updated", "unchanged", "rejected", "deleted", "seconds"):
        table.add_column(col, justify="left" if col == "object" else "right")
    for name, stats in (run.objects or {}).items():
        table.add_row(name, *(str(stats.get(k, 0)) for k in ("fetched", "created", "updated", "unchanged",
                                                             "rejected", "deleted", "seconds")))
    total_seconds = (run.finished_at - run.started_at).total_seconds() if run.finished_at and run.started_at else ""
    table.add_row("total", *(str(getattr(run, k)) for k in ("fetched", "created", "updated", "unchanged",
                                                           "rejected", "deleted")),
                  f"{total_seconds:.2f}" if total_seconds != "" else "", style="bold")
    return table


def print_run(run) -> None:
    console.print(_summary(run))
    console.print(run.message or "")
    for entry in run.errors or []:
        kind = "error" if "error" in entry else "warning"
        console.print(f"[{'red' if kind == 'error' else 'yellow'}]{kind}[/]: {entry.get('object')}: "
                      f"{entry.get(kind)}")
    if run.rejected:
        console.print(f"{run.rejected} rejected record(s) kept with their raw payload: arhub sync rejects --run {run.id}")


@sync.command("erp")
@click.option("--source", "source_name", help="one source (default: every enabled ERP source)")
@click.option("--full", is_flag=True, help="ignore the cursors and pull everything")
def sync_erp(source_name, full) -> None:
    """Pull customers, invoices, credit memos, payments and rates from the ERP."""
    from jobs.sync import run_sync
    from middleware.models import Source
    from middleware.sync import SyncAlreadyRunning

    _ctx(migrate=True)
    names = [source_name] if source_name else [s.name for s in Source.select().where(
        Source.enabled & Source.kind.in_(["soap", "rest"])).order_by(Source.name)]
    if not names:
        raise click.ClickException("no ERP source configured: arhub source add NAME --preset ...")
    failed = False
    for name in names:
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
            tasks: dict[str, int] = {}

            def report(obj, stats):
                if obj not in tasks:
                    tasks[obj] = progress.add_task(f"{name}/{obj}", total=None, detail="")
                progress.update(tasks[obj], detail=f"{stats.fetched} fetched, {stats.created} new, "
                                                   f"{stats.updated} changed, {stats.rejected} rejected")

            try:
                run = run_sync(name, full=full, progress=report)
            except SyncAlreadyRunning as exc:
                err.print(f"[yellow]{exc}[/]: not started")
                failed = True
                continue
        print_run(run)
        failed = failed or run.status == "failed"
    sys.exit(1 if failed else 0)


@sync.command("reprocess")
@click.option("--source", "source_name", required=True)
def sync_reprocess(source_name) -> None:
    """Run the unresolved rejected records through the current mappings again (no ERP call)."""
    from middleware.models import Source
    from middleware.sync import SyncService

    ctx = _ctx(migrate=True)
    src = Source.get_or_none(Source.name == source_name)
    if src is None:
        raise click.ClickException(f"no source named {source_name!r}")
    run = SyncService(src, connector=None, reporting_currency=ctx.settings.reporting_currency,
                      chunk_size=ctx.settings.sync_chunk_size).reprocess()
    print_run(run)
    sys.exit(1 if run.status == "failed" else 0)


@sync.command("rejects")
@click.option("--run", "run_id", type=int, help="one sync run (default: the latest runs)")
@click.option("--limit", default=20, show_default=True)
def sync_rejects(run_id, limit) -> None:
    """Show unresolved rejected records: which record, which field, why."""
    from middleware.models import RejectedRecord

    _ctx()
    query = RejectedRecord.select().where(RejectedRecord.resolved_at.is_null()).order_by(
        RejectedRecord.id.desc()).limit(limit)
    if run_id:
        query = query.where(RejectedRecord.run == run_id)
    table = Table("run", "object", "record", "field", "reason")
    for rej in query:
        for reason in rej.reasons:
            table.add_row(str(rej.run_id), rej.object_name, rej.external_id or "?", reason.get("field", ""),
                          reason.get("message", ""))
    console.print(table)


@sync.command("salesforce")
@click.option("--source", "source_name", help="the Salesforce source (default: the only one)")
@click.option("--pull", "do_pull", is_flag=True, help="only pull users, accounts, contacts, opportunities and match")
@click.option("--push", "do_push", is_flag=True, help="only push AR status")
@click.option("--full", is_flag=True, help="pull everything and resend every record")
def sync_salesforce_cmd(source_name, do_pull, do_push, full) -> None:
    """Pull from Salesforce, link accounts, and push AR status (both unless --pull or --push)."""
    from jobs.salesforce import run_salesforce
    from middleware.sf_sync import SalesforceBusy

    _ctx(migrate=True)
    pull, push = (do_pull, do_push) if (do_pull or do_push) else (True, True)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
        tasks: dict[str, int] = {}

        def report(name, done, total):
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total or None, detail="")
            progress.update(tasks[name], completed=done, total=total or None,
                            detail=f"{done}/{total}" if total else f"{done} records")

        try:
            run = run_salesforce(source_name, pull=pull, push=push, full=full, progress=report)
        except (LookupError, SalesforceBusy) as exc:
            raise click.ClickException(str(exc)) from None
    table = Table(title=f"Salesforce run {run.id}: {run.source.name} ({run.direction}, {run.mode}) - {run.status}")
    table.add_column("step")
    table.add_column("figures")
    for name, stats in (run.objects or {}).items():
        table.add_row(name, ", ".join(f"{k} {v}" for k, v in stats.items() if k != "errors" and v not in (None, [], 0))
                      or "-")
    console.print(table)
    console.print(run.message or "")
    for entry in run.errors or []:
        kind = "error" if "error" in entry else "warning"
        where = ".".join(str(p) for p in (entry.get("object"), entry.get("field")) if p)
        console.print(f"[{'red' if kind == 'error' else 'yellow'}]{kind}[/]: {where}: {entry.get(kind)}")
    sys.exit(1 if run.status == "failed" else 0)


# -------------------------------------------------------------- salesforce
@main.group()
def salesforce() -> None:
    """The Salesforce connection: add it, check the write-back mapping, write deployable metadata."""


@salesforce.command("add")
@click.argument("name")
@click.option("--preset", default="salesforce", show_default=True, help="preset name or YAML/JSON path")
@click.option("--login-url", help="https://login.salesforce.com, https://test.salesforce.com, a My Domain, or the emulator")
@click.option("--environment", type=click.Choice(["production", "sandbox"]), help="instead of --login-url")
@click.option("--auth", type=click.Choice(["password", "soap", "client_credentials", "jwt"]))
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), help="CA file to trust (private CA, emulator)")
@click.option("--credentials-file", type=click.File("r"), help="JSON file with the credentials (stored encrypted)")
@click.option("--credential", "pairs", multiple=True, metavar="KEY=VALUE",
              help="username, password, security_token, client_id, client_secret, private_key (repeatable)")
def salesforce_add(name, preset, login_url, environment, auth, ca_bundle, credentials_file, pairs) -> None:
    """Create or update the Salesforce source NAME."""
    from pathlib import Path

    from jobs.sync import load_preset
    from middleware.sources import SourceError, configure_salesforce

    _ctx(migrate=True)
    credentials = _credentials(credentials_file, pairs)
    connection = {k: v for k, v in {"login_url": login_url, "environment": environment, "auth": auth,
                                    "ca_bundle": str(Path(ca_bundle).resolve()) if ca_bundle else None}.items() if v}
    try:
        src = configure_salesforce(name, load_preset(preset), connection=connection,
                                   credentials=credentials or None, actor="cli")
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"Salesforce source {src.name!r} saved ({src.config['connection'].get('login_url') or src.config['connection'].get('environment')}, "
                  f"auth {src.config['connection'].get('auth')}); credentials encrypted")


@salesforce.command("check")
@click.option("--source", "source_name", help="the Salesforce source (default: the only one)")
def salesforce_check(source_name) -> None:
    """Compare the write-back mapping with the org's describe; name every missing or unwritable field."""
    from jobs.salesforce import get_salesforce_source, make_salesforce_connector
    from middleware.sf_schema import push_objects
    from middleware.sf_sync import check

    _ctx(migrate=True)
    try:
        src = get_salesforce_source(source_name)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    connector = make_salesforce_connector(src)
    try:
        problems = check(src, connector, refresh=True)
    finally:
        connector.close()
    objects = push_objects(src.config)
    fields = sum(len(spec.get("fields") or {}) for spec in objects.values())
    if problems:
        table = Table("object", "field", "problem", title=f"{len(problems)} problem(s): nothing would be pushed")
        for p in problems:
            table.add_row(p.object, p.field or "", p.message)
        console.print(table)
        sys.exit(1)
    console.print(f"ok: {fields} mapped fields on {', '.join(s['object'] for s in objects.values())} exist and are "
                  f"writable ({connector.calls} API calls)")


@salesforce.command("metadata")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--source", "source_name", help="use this source's (edited) mapping instead of the preset's")
def salesforce_metadata(outdir, source_name) -> None:
    """Write the write-back objects, fields and a permission set as SFDX source under OUTDIR."""
    from jobs.sync import load_preset
    from middleware.sf_schema import write_metadata

    config = load_preset("salesforce")
    if source_name:
        from jobs.salesforce import get_salesforce_source

        _ctx(migrate=True)
        config = get_salesforce_source(source_name).config
    paths = write_metadata(config, outdir)
    console.print(f"wrote {len(paths)} files under {outdir}; deploy with: "
                  f"sf project deploy start --source-dir {outdir}/force-app")


# ----------------------------------------------------------------- mapping
@main.group()
def mapping() -> None:
    """Field mappings."""


@mapping.command("preview")
@click.option("--source", "source_name", required=True)
@click.option("--object", "object_name", required=True,
              type=click.Choice(["customer", "invoice", "credit_memo", "payment", "fx_rate", "currency"]))
@click.option("--sample-file", type=click.File("r"), help="a raw record as JSON (default: fetch one from the ERP)")
def mapping_preview(source_name, object_name, sample_file) -> None:
    """Show what the source's mapping makes of one raw record, with every per-field error."""
    from jobs.sync import make_connector
    from middleware.models import Source
    from middleware.sync import preview

    _ctx()
    src = Source.get_or_none(Source.name == source_name)
    if src is None:
        raise click.ClickException(f"no source named {source_name!r}")
    if sample_file:
        sample = json.load(sample_file)
    else:
        connector = make_connector(src)
        try:
            sample = connector.sample(object_name)
        finally:
            connector.close()
        if sample is None:
            raise click.ClickException(f"{source_name} has no {object_name} record to preview")
    result = preview(src, object_name, sample)
    table = Table("canonical field", "value", title=f"{source_name} {object_name} preview")
    for key, value in result["record"].items():
        table.add_row(key, repr(value))
    console.print(table)
    for error in result["errors"]:
        console.print(f"[red]error[/] {error['field']}: {error['message']}"
                      + (f" (path {error['path']})" if error.get("path") else ""))
    for path in result["unmatched_paths"]:
        console.print(f"[yellow]unmatched[/] source path {path!r} matched nothing in this record")
    sys.exit(0 if result["ok"] else 1)


# ---------------------------------------------------------------------- fx
@main.group()
def fx() -> None:
    """Exchange rates."""


@fx.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def fx_import(path) -> None:
    """Import rates from a CSV (date,currency,rate[,base]) or an ECB eurofxref XML file."""
    from middleware import fx as fxmod

    ctx = _ctx(migrate=True)
    try:
        count, currencies = fxmod.import_file(path, ctx.settings.reporting_currency)
    except fxmod.FxImportError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    console.print(f"imported {count} rates for {', '.join(sorted(currencies))} into "
                  f"{ctx.settings.reporting_currency}; documents reconverted")


# ----------------------------------------------------------------- sandbox
@main.group()
def sandbox() -> None:
    """The ERP emulators (NetSuite SOAP, Xero REST) serving a generated book."""


@sandbox.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--customers", default=200, show_default=True)
@click.option("--invoices", default=2000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--salesforce-port", default=8766, show_default=True,
              help="HTTPS port of the Salesforce emulator (an org seeded from the same book)")
@click.option("--ca-file", type=click.Path(dir_okay=False),
              help="where to write the Salesforce emulator's CA certificate [default: <var dir>/sandbox-ca.pem]")
@click.option("--no-salesforce", is_flag=True, help="serve the ERP emulators only")
def sandbox_serve(host, port, customers, invoices, seed, salesforce_port, ca_file, no_salesforce) -> None:
    """Serve the sandboxes (ERPs over HTTP, Salesforce over HTTPS) until interrupted."""
    from connectors.sandbox.server import serve

    if ca_file is None:
        from pathlib import Path

        from middleware.settings import SettingsError, get_settings

        try:
            var_dir = get_settings().var_dir
        except SettingsError:
            var_dir = Path("var")
        ca_file = str(var_dir / "sandbox-ca.pem")
    serve(host=host, port=port, customers=customers, invoices=invoices, seed=seed,
          salesforce_port=None if no_salesforce else salesforce_port, ca_file=ca_file)


# -------------------------------------------------------------------- demo
@main.command("demo")
@click.option("--customers", default=2000, show_default=True)
@click.option("--invoices", default=20000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--exit-after-sync", is_flag=True, help="stop once the first sync is done (for scripts)")
def demo(customers, invoices, seed, exit_after_sync) -> None:
    """Run the embedded stack with sample data: sandboxes, SQLite, embedded Redis, one RQ worker."""
    from jobs.demo import run_demo

    sys.exit(run_demo(customers=customers, invoices=invoices, seed=seed, exit_after_sync=exit_after_sync,
                      console=console))


# ------------------------------------------------------------------- bench
@main.group()
def bench() -> None:
    """Benchmarks that print figures and ratios (recorded in docs/benchmarks.md)."""


@bench.command("ingest")
@click.option("--path", "path", type=click.Choice(["rest", "soap"]), required=True)
@click.option("--customers", default=15000, show_default=True)
@click.option("--invoices", default=100000, show_default=True)
@click.option("--changed", default=11000, show_default=True, help="invoices changed before the incremental sync")
@click.option("--db", "db_kind", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
              help="server for --db postgres (a scratch database is created and dropped)")
@click.option("--json", "as_json", is_flag=True)
def bench_ingest(path, customers, invoices, changed, db_kind, pg_url, as_json) -> None:
    """Full sync then an incremental one, against the sandbox, with the floor measured in the same run."""
    from jobs.bench import ingest

    result = ingest(path=path, customers=customers, invoices=invoices, changed=changed, db_kind=db_kind,
                    pg_url=pg_url, log=None if as_json else console.print)
    if as_json:
        click.echo(json.dumps(result))
    else:
        table = Table("figure", "value", title=f"ingest bench ({path}, {db_kind})")
        for key, value in result.items():
            table.add_row(key, str(value))
        console.print(table)


@bench.command("salesforce")
@click.option("--accounts", required=True, type=int, help="ERP customers (and Salesforce accounts seeded from them)")
@click.option("--invoices", type=int, help="ERP invoices [default: 3 x accounts]")
@click.option("--changed", default=11000, show_default=True, help="invoices changed before the incremental push")
@click.option("--db", "db_kind", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
              help="server for --db postgres (a scratch database is created and dropped)")
@click.option("--json", "as_json", is_flag=True)
def bench_salesforce(accounts, invoices, changed, db_kind, pg_url, as_json) -> None:
    """Full and incremental AR push to the Salesforce emulator, in API calls and seconds, against one call a record."""
    from jobs.bench_salesforce import render, salesforce

    result = salesforce(accounts=accounts, invoices=invoices, changed=changed, db_kind=db_kind, pg_url=pg_url,
                        log=None if as_json else console.print)
    if as_json:
        click.echo(json.dumps(result))
    else:
        console.print(render(result, f"Salesforce push bench ({accounts:,} accounts, {db_kind})"))


@bench.command("statements")
@click.option("--invoices-per-statement", default=60, show_default=True, type=click.IntRange(min=1))
@click.option("--count", default=30, show_default=True, type=click.IntRange(min=1), help="statements rendered")
@click.option("--db", "db_kind", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
              help="server for --db postgres (a scratch database is created and dropped)")
@click.option("--json", "as_json", is_flag=True)
def bench_statements(invoices_per_statement, count, db_kind, pg_url, as_json) -> None:
    """Statement PDFs per second, against a bare WeasyPrint render of the same HTML in the same run."""
    from jobs.bench_statements import statements as run_bench

    result = run_bench(invoices_per_statement=invoices_per_statement, count=count, db_kind=db_kind, pg_url=pg_url,
                       log=None if as_json else console.print)
    if as_json:
        click.echo(json.dumps(result))
    else:
        table = Table("figure", "value", title=f"statements bench ({count} x {invoices_per_statement} lines, {db_kind})")
        for key, value in result.items():
            table.add_row(key, str(value))
        console.print(table)


@bench.command("dunning")
@click.option("--customers", default=15000, show_default=True, type=click.IntRange(min=1))
@click.option("--invoices", default=100000, show_default=True, type=click.IntRange(min=1))
@click.option("--statements", "statement_count", default=12, show_default=True, type=click.IntRange(min=0),
              help="two-page statements rendered (0: skip)")
@click.option("--emails", default=2000, show_default=True, type=click.IntRange(min=0),
              help="planned emails sent at most (0: skip)")
@click.option("--email-worker", type=click.Choice(["mail", "fork"]), default="mail", show_default=True,
              help="the two workers' class: jobs.queues.MailWorker (the Procfile's mailer) or the forking Worker")
@click.option("--db", "db_kind", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
              help="server for --db postgres (a scratch database is created and dropped)")
@click.option("--json", "as_json", is_flag=True)
def bench_dunning(customers, invoices, statement_count, emails, email_worker, db_kind, pg_url, as_json) -> None:
    """The daily dunning plan (worst and normal day), statement PDFs against bare WeasyPrint, and
    emails through two rq workers to a loopback SMTP server."""
    from jobs.bench_dunning import dunning as run_bench

    result = run_bench(customers=customers, invoices=invoices, db_kind=db_kind, pg_url=pg_url,
                       statements=statement_count, emails=emails, email_worker=email_worker,
                       log=None if as_json else console.print)
    if as_json:
        click.echo(json.dumps(result))
    else:
        table = Table("figure", "value", title=f"dunning bench ({customers:,} customers, {invoices:,} invoices, {db_kind})")
        for key, value in result.items():
            table.add_row(key, str(value))
        console.print(table)


@bench.command("console")
@click.option("--customers", default=15000, show_default=True, type=click.IntRange(min=10))
@click.option("--invoices", default=100000, show_default=True, type=click.IntRange(min=10))
@click.option("--requests", default=50, show_default=True, type=click.IntRange(min=1), help="timed requests per page")
@click.option("--db", "db_kind", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True)
@click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
              help="server for --db postgres (a scratch database is created and dropped)")
@click.option("--json", "as_json", is_flag=True)
def bench_console(customers, invoices, requests, db_kind, pg_url, as_json) -> None:
    """Server time (p50/p95) of the console's customer list variants, customer page and dashboard on a
    store built in bulk."""
    from jobs.bench_console import console as run_bench, render

    result = run_bench(customers=customers, invoices=invoices, requests=requests, db_kind=db_kind, pg_url=pg_url,
                       log=None if as_json else console.print)
    if as_json:
        click.echo(json.dumps(result))
    else:
        console.print(render(result, f"console bench ({customers:,} customers, {invoices:,} invoices, {db_kind})"))


# ---------------------------------------------------------------------- ar
@main.group()
def ar() -> None:
    """AR figures from the store (docs/ar-metrics.md)."""


@ar.command("report")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), help="[default: today, UTC]")
@click.option("--period-days", default=90, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def ar_report(as_of, period_days, as_json) -> None:
    """Portfolio AR as of a date: totals, aging, DSO, BPDSO, ADD, CEI, days to pay, billing currencies."""
    from middleware.ar import portfolio
    from middleware.fx import round_money

    ctx = _ctx()
    day = as_of.date() if as_of else datetime.now(timezone.utc).date()
    m = portfolio(day, reporting_currency=ctx.settings.reporting_currency, period_days=period_days)
    if as_json:
        click.echo(json.dumps(m.as_dict(), default=str))
        return
    rep = m.reporting_currency

    def num(value, currency=None, suffix=""):
        return "—" if value is None else f"{round_money(value, currency or rep):,}{suffix}"

    table = Table("figure", "value", title=f"Portfolio as of {day} ({rep}; period {m.period_start} – {day})")
    for label, value in zip(m.bucket_labels, m.totals.buckets):
        table.add_row(f"aging {label}", num(value))
    for label, value in (("total AR", num(m.totals.open)), ("overdue", num(m.totals.overdue)),
                         ("unapplied credits", num(m.totals.unapplied)), ("balance", num(m.totals.balance)),
                         ("open invoices", f"{m.totals.open_count:,}"), ("customers", f"{m.customers:,}"),
                         ("oldest overdue (days)", str(m.totals.oldest_overdue_days)),
                         ("net credit sales", num(m.net_sales)), ("AR before the period (B)", num(m.opening_ar)),
                         ("DSO", num(m.dso)), ("DSO countback", num(m.dso_countback)), ("BPDSO", num(m.bpdso)),
                         ("ADD", num(m.add)), ("CEI", num(m.cei, suffix=" %")),
                         ("invoices paid in the period", f"{m.paid_count:,}"),
                         ("average days to pay", num(m.avg_days_to_pay)), ("average days late", num(m.avg_days_late)),
                         ("paid on time", num(None if m.share_on_time is None else m.share_on_time * 100, suffix=" %"))):
        table.add_row(label, value)
    table.columns[1].justify = "right"
    console.print(table)
    by = Table("currency", *m.bucket_labels, "open", "overdue", "unapplied", "invoices", title="By billing currency")
    for code, aging in m.by_currency.items():
        by.add_row(code, *(num(v, code) for v in aging.buckets), num(aging.open, code), num(aging.overdue, code),
                   num(aging.unapplied, code), f"{aging.open_count:,}")
    for column in by.columns[1:]:
        column.justify = "right"
    console.print(by)
    if m.fx_missing:
        gaps = Table("kind", "currency", "documents", "amount", "dates", title="Missing rates (left out, never 1)")
        for g in m.fx_missing:
            dates = str(g.first_date) if g.first_date == g.last_date else f"{g.first_date} – {g.last_date}"
            gaps.add_row(g.kind, g.currency, f"{g.documents:,}", num(g.amount, g.currency), dates)
        console.print(gaps)


# ----------------------------------------------------------------- dunning
@main.group()
def dunning() -> None:
    """Dunning campaigns: plan a day's actions, explain a customer, seed the default campaign."""


def _dunning_day(value, settings):
    return value.date() if value else datetime.now(settings.tzinfo).date()


def _first(rows: list, limit: int) -> list:
    return rows if limit <= 0 else rows[:limit]


@dunning.command("plan")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="the day to plan [default: today in ARHUB_TIMEZONE]")
@click.option("--dry-run", is_flag=True, help="show what would be planned; write nothing")
@click.option("--campaign", "campaign_names", multiple=True, help="plan only this campaign (repeatable)")
@click.option("--catch-up-days", default=3, show_default=True, help="also plan steps missed on the days before")
@click.option("--limit", default=50, show_default=True, help="rows shown per table (0: all)")
def dunning_plan(as_of, dry_run, campaign_names, catch_up_days, limit) -> None:
    """Plan the actions due on a day: who gets what, and why the others get nothing."""
    from middleware.dunning import plan
    from middleware.models import Campaign

    ctx = _ctx(migrate=True)
    day = _dunning_day(as_of, ctx.settings)
    ids = None
    if campaign_names:
        found = {c.name: c.id for c in Campaign.select().where(Campaign.name.in_(list(campaign_names)))}
        missing = sorted(set(campaign_names) - set(found))
        if missing:
            raise click.ClickException(f"no campaign named {', '.join(map(repr, missing))}")
        ids = list(found.values())
    result = plan(day, dry_run=dry_run, campaign_ids=ids, catch_up_days=catch_up_days)
    if not result.sending_day:
        console.print(f"{day.isoformat()} is not a sending day (business days and holidays): nothing planned")
    sends = [r for r in result.rows if r.status in ("planned", "pending_approval", "approved")]
    tasks = [r for r in result.rows if r.status == "task"]
    skips = [r for r in result.rows if r.status == "skipped"]
    table = Table("customer", "campaign", "step", "invoices", "to", "when (UTC)", "status",
                  title=f"emails on {day.isoformat()} ({len(sends)})")
    for r in _first(sends, limit):
        table.add_row(r.customer_name, r.campaign_name, r.step_name, ", ".join(r.invoice_numbers),
                      r.to_address + (f" (cc {', '.join(r.cc)})" if r.cc else ""),
                      f"{r.send_after:%Y-%m-%d %H:%M}", r.status + (f": {r.reason}" if r.reason else ""))
    console.print(table)
    if tasks:
        table = Table("customer", "campaign", "step", "invoices", "task", title=f"tasks for collectors ({len(tasks)})")
        for r in _first(tasks, limit):
            table.add_row(r.customer_name, r.campaign_name, r.step_name, ", ".join(r.invoice_numbers), r.reason or "")
        console.print(table)
    if skips:
        table = Table("customer", "campaign", "step", "invoices", "why nothing is sent",
                      title=f"skipped ({len(skips)})")
        for r in _first(skips, limit):
            table.add_row(r.customer_name, r.campaign_name, r.step_name, ", ".join(r.invoice_numbers), r.reason or "")
        console.print(table)
    if result.unassigned:
        names = ", ".join(name for _, name in _first(result.unassigned, limit))
        console.print(f"{len(result.unassigned)} customer(s) with a step due are in no campaign: {names}")
    if result.already_planned:
        console.print(f"{result.already_planned} invoice step(s) due were already planned earlier")
    for (campaign, step, status), count in sorted(result.counts.items()):
        console.print(f"  {campaign} / {step} / {status}: {count}")
    written = "dry run: nothing written" if dry_run else f"{result.inserted} new action(s) written"
    console.print(f"{len(result.rows)} action(s); {result.customers_considered} customer(s) had a step due; "
                  f"{written} ({result.seconds:.2f} s)")


def _find_customer(text: str):
    from middleware.models import Customer

    live = Customer.deleted_at.is_null()
    found = []
    if text.isdigit():
        found = list(Customer.select().where(live, Customer.id == int(text)))
    for column in (Customer.number, Customer.external_id, Customer.name):
        if not found:
            found = list(Customer.select().where(live, column == text).limit(5))
    if not found:
        raise click.ClickException(f"no customer with id, number, external id or name {text!r}")
    if len(found) > 1:
        raise click.ClickException(f"{text!r} names {len(found)} customers: use the id "
                                   f"({', '.join(str(c.id) for c in found)})")
    return found[0]


@dunning.command("explain")
@click.argument("customer")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="the day to explain [default: today in ARHUB_TIMEZONE]")
def dunning_explain(customer, as_of) -> None:
    """Which campaign CUSTOMER (id, number, external id or name) is in and why, and what each step does."""
    from middleware.dunning import explain

    ctx = _ctx()
    found = _find_customer(customer)
    for line in explain(found.id, _dunning_day(as_of, ctx.settings)).lines():
        console.print(line, markup=False, highlight=False)


@dunning.command("seed")
def dunning_seed() -> None:
    """Create the default campaign and its email templates (once; later edits are kept)."""
    from middleware.dunning import seed_default_campaign

    _ctx(migrate=True)
    out = seed_default_campaign()
    console.print(f"default campaign #{out['campaign']}: {out['steps_created']} step(s) and "
                  f"{out['templates_created']} template(s) created")


# ------------------------------------------------------------------- inbox
@main.group()
def inbox() -> None:
    """Customer replies: receive one, poll the mailbox, see and handle what waits for whom."""


def _reply_summary(message) -> str:
    customer = message.customer.name if message.customer_id else "no customer"
    to = {"routed": f"routed to {message.routed_to}", "queued": "in the team queue",
          "auto_reply": "automatic reply: not routed", "unmatched": "unmatched"}.get(message.status, message.status)
    how = f" (matched by {message.matched_by})" if message.matched_by else ""
    return f"message #{message.id} <{message.message_id}>: {customer}{how}, {to}"


@inbox.command("receive")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def inbox_receive(path) -> None:
    """Receive the reply in the .eml file PATH, as the webhook and the IMAP poll do."""
    from middleware.inbox import InboxError, ingest

    _ctx()
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        message, created = ingest(raw)
    except InboxError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(_reply_summary(message) + ("" if created else "; already received, nothing stored"),
                  markup=False, highlight=False)


@inbox.command("poll")
@click.option("--limit", default=500, show_default=True, help="at most this many messages")
def inbox_poll(limit) -> None:
    """Receive the unseen messages of ARHUB_IMAP_URL now (what the poll job does)."""
    from jobs.inbox import ImapError, poll_imap

    try:
        result = poll_imap(limit=limit)
    except ImapError as exc:
        raise click.ClickException(str(exc)) from None
    if result["status"] != "ok":
        raise click.ClickException(f"{result['status']}: {result['message']}")
    statuses = {k: v for k, v in result.items() if k not in ("status", "fetched", "stored", "duplicates", "left")}
    text = f"fetched {result['fetched']}: {result['stored']} stored"
    if statuses:
        text += " (" + ", ".join(f"{status} {count}" for status, count in statuses.items()) + ")"
    text += f", {result['duplicates']} already received"
    if result["left"]:
        text += f"; {result['left']} left for the next poll"
    console.print(text, markup=False, highlight=False)


@inbox.command("list")
@click.option("--collector", help="replies routed to this collector")
@click.option("--queue", is_flag=True, help="replies in the team queue")
@click.option("--unmatched", is_flag=True, help="replies no customer was found for")
@click.option("--limit", default=100, show_default=True)
def inbox_list(collector, queue, unmatched, limit) -> None:
    """Replies waiting for someone (not handled yet), oldest first; by default routed and queued ones."""
    from middleware.inbox import pending

    _ctx()
    table = Table("id", "received", "from", "customer", "subject", "waiting for", "matched by")
    rows = list(pending(collector=collector, queue=queue, unmatched=unmatched).limit(limit))
    for m in rows:
        table.add_row(str(m.id), m.at.strftime("%Y-%m-%d %H:%M"), m.from_address or "",
                      m.customer.name if m.customer_id else "", (m.subject or "")[:60],
                      m.routed_to or ("team queue" if m.status == "queued" else m.status), m.matched_by or "")
    console.print(table if rows else "nothing waiting")


@inbox.command("handle")
@click.argument("message")
@click.option("--actor", required=True, help="who acted (the collector's email)")
@click.option("--promise-until", type=click.DateTime(formats=["%Y-%m-%d"]), help="promise to pay by (YYYY-MM-DD)")
@click.option("--amount", help="the promised amount, in the customer's billing currency")
@click.option("--dispute", "dispute_invoice", help="number of the disputed invoice")
@click.option("--note", help="a note for the customer's timeline")
def inbox_handle(message, actor, promise_until, amount, dispute_invoice, note) -> None:
    """Record what was done about reply MESSAGE (its id or Message-ID) and mark it handled."""
    from middleware.inbox import InboxError, handle

    _ctx()
    try:
        created = handle(message, actor, promise_until=promise_until.date() if promise_until else None,
                         promise_amount=amount, dispute_invoice=dispute_invoice, note=note)
    except (InboxError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    recorded = ", ".join(a.kind for a in created) or "nothing recorded"
    console.print(f"reply {message} handled by {actor}: {recorded}", markup=False, highlight=False)


# -------------------------------------------------------------- statements
@main.group()
def statements() -> None:
    """Customer statements as PDF (docs/statements.md)."""


@statements.command("render")
@click.argument("customer")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), help="[default: today, ARHUB_TIMEZONE]")
@click.option("--out", type=click.Path(dir_okay=False), help="[default: <var dir>/statements/<date>/<customer id>.pdf]")
def statements_render(customer, as_of, out) -> None:
    """Render CUSTOMER's statement (a customer number, or an id) to a PDF file now, in this process."""
    from jobs.statements import as_of_date, find_customer, write_statement

    ctx = _ctx()
    try:
        customer_id = find_customer(customer)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    path = write_statement(customer_id, as_of_date(as_of, ctx.settings), ctx.settings, out=out)
    console.print(f"wrote {path}", markup=False, highlight=False)


@statements.command("run")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), help="[default: today, ARHUB_TIMEZONE]")
def statements_run(as_of) -> None:
    """Enqueue one statement job per customer with open invoices on the statements queue (reruns add none twice)."""
    from jobs.statements import statement_run

    _ctx()
    result = statement_run(as_of=as_of.date() if as_of else None)
    console.print(f"statements of {result['as_of']}: {result['enqueued']} enqueued, {result['requeued']} failed "
                  f"ones requeued, {result['skipped']} already queued or done ({result['customers']} customers)")


# ------------------------------------------------------------------- users
@main.group()
def users() -> None:
    """People who use arhub: admins, collectors, viewers."""


def _read_password(prompt: bool) -> str:
    """A password from stdin: hidden and confirmed on a terminal, else the first line of the pipe."""
    if prompt and sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    return sys.stdin.readline().rstrip("\r\n")


@users.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "collector", "viewer"]), default="collector", show_default=True)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin (never an argument: it would "
              "show in the process list and the shell history)")
def users_create(email, name, role, password_stdin) -> None:
    """Create a user (without --password-stdin the user cannot log in until a password is set)."""
    from middleware.people import PeopleError, create_user

    _ctx(migrate=True)
    password = _read_password(True) if password_stdin else None
    try:
        user = create_user(email, name, role, password, actor="cli")
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"user {user.email} ({user.role}) created"
                  f"{'' if user.password_hash else '; no password yet: arhub users password'}",
                  markup=False, highlight=False)


@users.command("password")
@click.argument("email")
def users_password(email) -> None:
    """Set EMAIL's password, read from stdin (hidden and confirmed on a terminal)."""
    from middleware.people import PeopleError, set_password

    _ctx()
    try:
        set_password(email, _read_password(True), actor="cli")
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"password of {email.strip().lower()} set", markup=False, highlight=False)


@users.command("list")
def users_list() -> None:
    """Users with their role and who covers them while away."""
    from middleware.people import list_users

    _ctx()
    table = Table("email", "name", "role", "active", "password", "away until", "cover")
    for user in list_users():
        table.add_row(user.email, user.name, user.role, "yes" if user.active else "no",
                      "set" if user.password_hash else "none",
                      user.away_until.isoformat() if user.away_until else "", user.cover.email if user.cover_id else "")
    console.print(table)


# ------------------------------------------------------------------- rules
@main.group()
def rules() -> None:
    """Assignment rules: tags, segments and collectors (docs/collectors-and-rules.md)."""


@rules.command("apply")
def rules_apply() -> None:
    """Apply every enabled rule to every customer now (what a person assigned is kept)."""
    from middleware.locks import LockBusy
    from middleware.rules import RuleError, apply_rules

    _ctx()
    try:
        result = apply_rules(actor="cli")
    except (RuleError, LockBusy) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"{result.customers} customers in {result.seconds:.1f}s: tags +{result.tags_added} "
                  f"-{result.tags_removed}; {result.segments_changed} segments and {result.collectors_changed} "
                  f"collectors changed; kept as people set them: {result.segment_held} segments, "
                  f"{result.collector_held} collectors; team queue: {result.team_queue}", markup=False, highlight=False)
    if result.matched:
        table = Table("rule", "customers")
        for name, count in result.matched.items():
            table.add_row(name, str(count))
        console.print(table)


@rules.command("seed")
def rules_seed() -> None:
    """Create the default tag and segment rules that do not exist yet."""
    from middleware.rules import seed_default_rules

    _ctx(migrate=True)
    created = seed_default_rules(actor="cli")
    console.print(f"created {', '.join(created)}" if created else "default rules already there: nothing to do",
                  markup=False, highlight=False)


@rules.command("list")
def rules_list() -> None:
    """Rules in the order they are evaluated."""
    from middleware.models import AssignmentRule

    _ctx()
    table = Table("kind", "priority", "name", "conditions", "value", "enabled")
    for rule in AssignmentRule.select().order_by(AssignmentRule.kind, AssignmentRule.priority, AssignmentRule.id):
        conditions = " and ".join(f"{c['field']} {c['op']} {json.dumps(c['value']) if 'value' in c else ''}".strip()
                                  for c in rule.conditions) or "(every customer)"
        table.add_row(rule.kind, str(rule.priority), rule.name, conditions, rule.value, "yes" if rule.enabled else "no")
    console.print(table)


# -------------------------------------------------------------- collectors
@main.group()
def collectors() -> None:
    """Collectors' books: reassign, cover while away, workload."""


@collectors.command("reassign")
@click.argument("from_email")
@click.argument("to_email")
@click.option("--customer", "customer_ids", type=int, multiple=True,
              help="only this customer id (repeatable); they then stay with TO whatever the rules say")
@click.option("--actor", default="cli", show_default=True, help="who is recorded in the audit log")
def collectors_reassign(from_email, to_email, customer_ids, actor) -> None:
    """Move FROM_EMAIL's book (and collector rules) to TO_EMAIL."""
    from middleware.rules import RuleError, reassign

    _ctx()
    try:
        result = reassign(from_email, to_email, actor, customer_ids=list(customer_ids) or None)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from None
    line = f"moved {result.moved} customers to {to_email.strip().lower()}"
    if result.rules_repointed:
        line += f"; rules now giving them: {', '.join(result.rules_repointed)}"
    if result.skipped:
        line += f"; {result.skipped} requested customers were not {from_email.strip().lower()}'s"
    console.print(line, markup=False, highlight=False)


@collectors.command("away")
@click.argument("email")
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), help="last day away (back the day after)")
@click.option("--cover", "cover_email", help="who takes the accounts, approvals and replies meanwhile")
@click.option("--back", is_flag=True, help="end the absence now")
@click.option("--actor", default="cli", show_default=True, help="who is recorded in the audit log")
def collectors_away(email, until, cover_email, back, actor) -> None:
    """Mark EMAIL away through --until, covered by --cover (none: the team queue)."""
    from middleware.people import PeopleError, set_away

    if back == bool(until):
        raise click.UsageError("give --until DATE, or --back")
    _ctx()
    try:
        user = set_away(email, None if back else until.date(), None if back else cover_email, actor=actor)
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from None
    if back:
        console.print(f"{user.email} is back", markup=False, highlight=False)
    else:
        console.print(f"{user.email} away through {user.away_until.isoformat()}; "
                      f"covered by {user.cover.email if user.cover_id else 'the team queue'}", markup=False,
                      highlight=False)


@collectors.command("workload")
@click.option("--effective", is_flag=True, help="count the books of people away today under whoever covers them")
def collectors_workload(effective) -> None:
    """Customers and open amount per collector, and the team queue."""
    from middleware.people import workload

    ctx = _ctx()
    table = Table("collector", "customers", "open invoices", f"open ({ctx.settings.reporting_currency})",
                  "without rate", "away until", "covered by / covering")
    for row in workload(effective=effective):
        table.add_row(row.collector or "(team queue)", str(row.customers), str(row.open_invoices),
                      f"{row.open_amount:,.2f}", str(row.fx_missing),
                      row.away_until.isoformat() if row.away_until else "",
                      row.covered_by or ", ".join(row.covering_for))
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
