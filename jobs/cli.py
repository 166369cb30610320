"""The ``arhub`` command line (click + rich). Composition root: ``bootstrap()``."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

import click
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobs.cli_bench import bench
from jobs.cli_collections import collectors, dunning, inbox, rules, statements, users
from jobs.cli_common import _ctx, console, err


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


# ------------------------------------------- groups defined in their own modules
# (jobs/cli_bench.py, jobs/cli_collections.py: they do not import this module, so no import cycle)
main.add_command(bench)
main.add_command(dunning)
main.add_command(inbox)
main.add_command(statements)
main.add_command(users)
main.add_command(rules)
main.add_command(collectors)


if __name__ == "__main__":  # pragma: no cover
    main()
