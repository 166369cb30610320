"""Cron configuration for ``rq cron jobs.schedule`` (the Procfile's ``cron`` process).

rq 3's cron scheduler imports this module and enqueues each registered function
when due. Run exactly one cron process per deployment; the jobs are idempotent, so
a duplicate enqueue during a restart is harmless.

* ``jobs.sync.sync_erp_all`` on queue ``sync`` every ``ARHUB_SYNC_INTERVAL_MINUTES``
  (default 15). The interval starts when the cron process starts (first run at once).
* ``jobs.salesforce.sync_salesforce_all`` on queue ``sync`` every
  ``ARHUB_SALESFORCE_INTERVAL_MINUTES`` (default 30): pull, match and push what changed
  (an unchanged account costs no API call).
"""
from __future__ import annotations

from rq import cron

from jobs.salesforce import sync_salesforce_all
from jobs.sync import sync_erp_all
from middleware.settings import get_settings

SYNC_JOB_TIMEOUT_SECONDS = 3600

_settings = get_settings()

cron.register(
    sync_erp_all,
    queue_name="sync",
    interval=_settings.sync_interval_minutes * 60,
    job_timeout=SYNC_JOB_TIMEOUT_SECONDS,
    name="sync-erp-all",
)

cron.register(
    sync_salesforce_all,
    queue_name="sync",
    interval=_settings.salesforce_interval_minutes * 60,
    job_timeout=SYNC_JOB_TIMEOUT_SECONDS,
    name="sync-salesforce-all",
)
