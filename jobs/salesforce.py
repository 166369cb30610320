"""Salesforce entry points: the connector a ``Source`` describes, runs, and RQ jobs.

Composition only: build :class:`connectors.salesforce.SalesforceConnector` from the source
(decrypted credentials, login URL, CA bundle) and hand it to
:class:`middleware.sf_sync.SalesforceSync`. Jobs take names and let errors propagate.
"""
from __future__ import annotations

from typing import Callable

from middleware.models import Source, SyncRun
from middleware.sources import source_credentials


def salesforce_sources() -> list[Source]:
    return list(Source.select().where(Source.enabled & (Source.kind == "salesforce")).order_by(Source.name))


def get_salesforce_source(name: str | None) -> Source:
    if name:
        source = Source.get_or_none(Source.name == name, Source.kind == "salesforce")
        if source is None:
            raise LookupError(f"no Salesforce source named {name!r}")
        return source
    sources = salesforce_sources()
    if not sources:
        raise LookupError("no Salesforce source configured: arhub salesforce add NAME --login-url ...")
    if len(sources) > 1:
        raise LookupError(f"several Salesforce sources ({', '.join(s.name for s in sources)}): name one with --source")
    return sources[0]


def make_salesforce_connector(source: Source, **kwargs):
    from connectors.salesforce import SalesforceConnector

    return SalesforceConnector(source.config, source_credentials(source), **kwargs)


def run_salesforce(source_name: str | None = None, *, pull: bool = True, push: bool = True, full: bool = False,
                   progress: Callable[[str, int, int], None] | None = None, connector=None) -> SyncRun:
    from jobs.bootstrap import bootstrap
    from middleware.sf_sync import SalesforceSync

    ctx = bootstrap()
    source = get_salesforce_source(source_name)
    own = connector is None
    connector = connector or make_salesforce_connector(source)
    try:
        return SalesforceSync(source, connector, reporting_currency=ctx.settings.reporting_currency,
                              public_url=ctx.settings.public_url, progress=progress).run(pull=pull, push=push, full=full)
    finally:
        if own:
            connector.close()


# ------------------------------------------------------------------ RQ jobs
def sync_salesforce(source_name: str | None = None, pull: bool = True, push: bool = True, full: bool = False) -> dict:
    """RQ job: pull, match and push. Idempotent: a retried job sends only what was not acknowledged."""
    from middleware.sf_sync import SalesforceBusy

    try:
        run = run_salesforce(source_name, pull=pull, push=push, full=full)
    except SalesforceBusy as exc:
        return {"run": None, "status": "skipped", "message": str(exc)}
    return {"run": run.id, "status": run.status, "message": run.message, "api_calls": run.api_calls}


def push_ar_status(source_name: str | None = None) -> dict:
    """RQ job: push only (after an ERP sync changed balances)."""
    return sync_salesforce(source_name, pull=False, push=True)


def sync_salesforce_all() -> list[dict]:
    """RQ job (cron): every enabled Salesforce source, one after the other."""
    from jobs.bootstrap import bootstrap

    bootstrap()
    return [sync_salesforce(source.name) for source in salesforce_sources()]
