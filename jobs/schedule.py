"""Cron configuration for ``rq cron jobs.schedule`` (the Procfile's ``cron`` process).

rq 3's cron scheduler imports this module and enqueues each registered function
when due. Run exactly one cron process per deployment; the jobs are idempotent, so
a duplicate enqueue during a restart is harmless.

* ``jobs.sync.sync_erp_all`` on queue ``sync`` every ``ARHUB_SYNC_INTERVAL_MINUTES``
  (default 15). The interval starts when the cron process starts (first run at once).
* ``jobs.salesforce.sync_salesforce_all`` on queue ``sync`` every
  ``ARHUB_SALESFORCE_INTERVAL_MINUTES`` (default 30): pull, match and push what changed
  (an unchanged account costs no API call); every ERP sync run by the cron also enqueues a
  Salesforce push right after it, so balances reach reps within minutes.
* ``jobs.dunning.plan_dunning`` on queue ``dunning`` daily at ``ARHUB_DUNNING_PLAN_TIME`` in
  ``ARHUB_TIMEZONE`` (converted to UTC when the cron process starts: restart it after a DST
  change, or the plan moves by an hour).
* ``jobs.dunning.send_due_actions`` on queue ``dunning`` every 5 minutes (emails whose sending
  window opened).
* ``jobs.inbox.poll_imap`` on queue ``default`` every minute when ``ARHUB_IMAP_URL`` is set.
* ``jobs.balances.refresh_balances`` on queue ``default`` at minute ``BALANCE_REFRESH_TIME`` (00:05
  in ``ARHUB_TIMEZONE``) of every hour: the run after midnight rebuilds ``customer_balance`` for the
  new day, so the first customer list sorted by amount does not; the other 23 runs find the table
  current (one one-row SELECT) and stop. Hourly rather than daily so it lands at 00:05 local
  whatever DST did since the cron process started (a daily time in UTC would drift to 23:05 and
  refresh nothing), and so a failed midnight run is retried within the hour.
"""
from __future__ import annotations

from rq import cron

from datetime import datetime, timezone

from jobs.balances import JOB_TIMEOUT_SECONDS as BALANCE_JOB_TIMEOUT_SECONDS
from jobs.balances import refresh_balances
from jobs.dunning import plan_dunning, send_due_actions
from jobs.inbox import poll_imap
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


def utc_cron_for(local_time: str, tz) -> str:
    """``"07:00"`` in ``tz`` today → the daily cron expression in UTC (``"0 6 * * *"``)."""
    hours, minutes = (int(part) for part in local_time.split(":"))
    local = datetime.now(tz).replace(hour=hours, minute=minutes, second=0, microsecond=0)
    utc = local.astimezone(timezone.utc)
    return f"{utc.minute} {utc.hour} * * *"


cron.register(
    plan_dunning,
    queue_name="dunning",
    cron=utc_cron_for(_settings.dunning_plan_time, _settings.tzinfo),
    job_timeout=SYNC_JOB_TIMEOUT_SECONDS,
    name="plan-dunning",
)

#: Local time (ARHUB_TIMEZONE) of the balance refresh after midnight; its minute is used every hour.
BALANCE_REFRESH_TIME = "00:05"


def hourly_cron_at(local_time: str, tz) -> str:
    """Every hour at the minute ``local_time`` has in UTC: ``"00:05"`` in Asia/Kolkata (UTC+5:30)
    → ``"35 * * * *"``; one of those runs is at ``local_time`` whatever the DST offset."""
    return utc_cron_for(local_time, tz).split(" ", 1)[0] + " * * * *"


cron.register(
    refresh_balances,
    queue_name="default",
    cron=hourly_cron_at(BALANCE_REFRESH_TIME, _settings.tzinfo),
    job_timeout=BALANCE_JOB_TIMEOUT_SECONDS,
    name="refresh-balances",
)

cron.register(send_due_actions, queue_name="dunning", interval=300, job_timeout=600, name="send-due-emails")

if _settings.imap_url:
    cron.register(poll_imap, queue_name="default", interval=60, job_timeout=600, name="poll-imap")
