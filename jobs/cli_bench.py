"""``arhub bench``: benchmark commands; jobs/cli.py adds the group to ``main``."""
from __future__ import annotations

import json

import click
from rich.table import Table

from jobs.cli_common import console


# ------------------------------------------------------------------- bench
@click.group()
def bench() -> None:
    """Benchmarks that print figures and ratios (recorded in docs/benchmarks.md)."""


def _store_options(command):
    """``--db``, ``--pg-url`` and ``--json``, which every bench takes, listed after its own options."""
    for option in (
        click.option("--json", "as_json", is_flag=True),
        click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
                     help="server for --db postgres (a scratch database is created and dropped)"),
        click.option("--db", "db_kind", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True),
    ):  # applied bottom-up, as stacked decorators are
        command = option(command)
    return command


def _report(result: dict, as_json: bool, title: str, render=None) -> None:
    """A bench's result: one JSON object with ``--json``; else ``render(result, title)`` when the bench
    has its own layout, or a figure/value table."""
    if as_json:
        click.echo(json.dumps(result))
    elif render is not None:
        console.print(render(result, title))
    else:
        table = Table("figure", "value", title=title)
        for key, value in result.items():
            table.add_row(key, str(value))
        console.print(table)


@bench.command("ingest")
@click.option("--path", "path", type=click.Choice(["rest", "soap"]), required=True)
@click.option("--customers", default=15000, show_default=True)
@click.option("--invoices", default=100000, show_default=True)
@click.option("--changed", default=11000, show_default=True, help="invoices changed before the incremental sync")
@_store_options
def bench_ingest(path, customers, invoices, changed, db_kind, pg_url, as_json) -> None:
    """Full sync then an incremental one, against the sandbox, with the floor measured in the same run."""
    from jobs.bench import ingest

    result = ingest(path=path, customers=customers, invoices=invoices, changed=changed, db_kind=db_kind,
                    pg_url=pg_url, log=None if as_json else console.print)
    _report(result, as_json, f"ingest bench ({path}, {db_kind})")


@bench.command("salesforce")
@click.option("--accounts", required=True, type=int, help="ERP customers (and Salesforce accounts seeded from them)")
@click.option("--invoices", type=int, help="ERP invoices [default: 3 x accounts]")
@click.option("--changed", default=11000, show_default=True, help="invoices changed before the incremental push")
@_store_options
def bench_salesforce(accounts, invoices, changed, db_kind, pg_url, as_json) -> None:
    """Full and incremental AR push to the Salesforce emulator, in API calls and seconds, against one call a record."""
    from jobs.bench_salesforce import render, salesforce

    result = salesforce(accounts=accounts, invoices=invoices, changed=changed, db_kind=db_kind, pg_url=pg_url,
                        log=None if as_json else console.print)
    _report(result, as_json, f"Salesforce push bench ({accounts:,} accounts, {db_kind})", render)


@bench.command("statements")
@click.option("--invoices-per-statement", default=60, show_default=True, type=click.IntRange(min=1))
@click.option("--count", default=30, show_default=True, type=click.IntRange(min=1), help="statements rendered")
@_store_options
def bench_statements(invoices_per_statement, count, db_kind, pg_url, as_json) -> None:
    """Statement PDFs per second, against a bare WeasyPrint render of the same HTML in the same run."""
    from jobs.bench_statements import statements as run_bench

    result = run_bench(invoices_per_statement=invoices_per_statement, count=count, db_kind=db_kind, pg_url=pg_url,
                       log=None if as_json else console.print)
    _report(result, as_json, f"statements bench ({count} x {invoices_per_statement} lines, {db_kind})")


@bench.command("dunning")
@click.option("--customers", default=15000, show_default=True, type=click.IntRange(min=1))
@click.option("--invoices", default=100000, show_default=True, type=click.IntRange(min=1))
@click.option("--statements", "statement_count", default=12, show_default=True, type=click.IntRange(min=0),
              help="two-page statements rendered (0: skip)")
@click.option("--emails", default=2000, show_default=True, type=click.IntRange(min=0),
              help="planned emails sent at most (0: skip)")
@click.option("--email-worker", type=click.Choice(["mail", "fork"]), default="mail", show_default=True,
              help="the two workers' class: jobs.queues.MailWorker (the Procfile's mailer) or the forking Worker")
@_store_options
def bench_dunning(customers, invoices, statement_count, emails, email_worker, db_kind, pg_url, as_json) -> None:
    """The daily dunning plan (worst and normal day), statement PDFs against bare WeasyPrint, and
    emails through two rq workers to a loopback SMTP server."""
    from jobs.bench_dunning import dunning as run_bench

    result = run_bench(customers=customers, invoices=invoices, db_kind=db_kind, pg_url=pg_url,
                       statements=statement_count, emails=emails, email_worker=email_worker,
                       log=None if as_json else console.print)
    _report(result, as_json, f"dunning bench ({customers:,} customers, {invoices:,} invoices, {db_kind})")


@bench.command("console")
@click.option("--customers", default=15000, show_default=True, type=click.IntRange(min=10))
@click.option("--invoices", default=100000, show_default=True, type=click.IntRange(min=10))
@click.option("--requests", default=50, show_default=True, type=click.IntRange(min=1), help="timed requests per page")
@_store_options
def bench_console(customers, invoices, requests, db_kind, pg_url, as_json) -> None:
    """Server time (p50/p95) of the console's customer list variants, customer page and dashboard on a
    store built in bulk."""
    from jobs.bench_console import console as run_bench, render

    result = run_bench(customers=customers, invoices=invoices, requests=requests, db_kind=db_kind, pg_url=pg_url,
                       log=None if as_json else console.print)
    _report(result, as_json, f"console bench ({customers:,} customers, {invoices:,} invoices, {db_kind})", render)
