"""jobs/schedule.py: the cron configuration `rq cron jobs.schedule` loads."""
from __future__ import annotations

import redis
from rq.cron import CronScheduler

from jobs.balances import refresh_balances
from jobs.salesforce import sync_salesforce_all
from jobs.sync import sync_erp_all


def test_registers_erp_sync_every_configured_interval(settings, monkeypatch):
    """rq's cron loads jobs.schedule and finds sync_erp_all on queue `sync` every
    ARHUB_SYNC_INTERVAL_MINUTES minutes."""
    from middleware.settings import reset_settings

    monkeypatch.setenv("ARHUB_SYNC_INTERVAL_MINUTES", "7")
    reset_settings()
    scheduler = CronScheduler(connection=redis.Redis())  # no I/O until start()
    scheduler.load_config_from_file("jobs.schedule")
    [job] = [j for j in scheduler.get_jobs() if j.name == "sync-erp-all"]
    assert job.func is sync_erp_all
    assert job.queue_name == "sync"
    assert job.interval == 7 * 60
    assert job.job_options["job_timeout"] >= 600
    assert job.name == "sync-erp-all"


def test_default_intervals_are_15_and_30_minutes(settings):
    """Without ARHUB_SYNC_INTERVAL_MINUTES the ERP sync runs every 15 minutes; without
    ARHUB_SALESFORCE_INTERVAL_MINUTES the Salesforce sync every 30."""
    scheduler = CronScheduler(connection=redis.Redis())
    scheduler.load_config_from_file("jobs.schedule")
    intervals = {j.name: j.interval for j in scheduler.get_jobs()}
    assert intervals["sync-erp-all"] == 15 * 60 and intervals["sync-salesforce-all"] == 30 * 60
    assert "poll-imap" not in intervals, "no IMAP URL: no poller"


def test_registers_the_salesforce_sync(settings, monkeypatch):
    """rq's cron finds sync_salesforce_all on queue `sync` every ARHUB_SALESFORCE_INTERVAL_MINUTES."""
    from middleware.settings import reset_settings

    monkeypatch.setenv("ARHUB_SALESFORCE_INTERVAL_MINUTES", "45")
    reset_settings()
    scheduler = CronScheduler(connection=redis.Redis())
    scheduler.load_config_from_file("jobs.schedule")
    [job] = [j for j in scheduler.get_jobs() if j.name == "sync-salesforce-all"]
    assert job.func is sync_salesforce_all and job.queue_name == "sync" and job.interval == 45 * 60


def test_the_daily_plan_runs_at_the_local_time_in_utc(settings, monkeypatch):
    """ARHUB_DUNNING_PLAN_TIME=07:30 in Asia/Tokyo (UTC+9, no DST) is 22:30 UTC; emails due are
    enqueued every 5 minutes; an IMAP URL adds the reply poller."""
    from middleware.settings import reset_settings

    monkeypatch.setenv("ARHUB_TIMEZONE", "Asia/Tokyo")
    monkeypatch.setenv("ARHUB_DUNNING_PLAN_TIME", "07:30")
    monkeypatch.setenv("ARHUB_IMAP_URL", "imaps://ar:secret@imap.example.com/INBOX")
    reset_settings()
    scheduler = CronScheduler(connection=redis.Redis())
    scheduler.load_config_from_file("jobs.schedule")
    jobs = {j.name: j for j in scheduler.get_jobs()}
    assert jobs["plan-dunning"].cron == "30 22 * * *" and jobs["plan-dunning"].queue_name == "dunning"
    assert jobs["send-due-emails"].interval == 300
    assert jobs["poll-imap"].interval == 60


def test_the_balance_refresh_runs_just_after_local_midnight_every_day(settings, monkeypatch):
    """customer_balance is rebuilt by the cron at 00:05 in ARHUB_TIMEZONE, before anyone lists
    customers by amount: the job runs at that minute of every hour (in Asia/Kolkata, UTC+5:30,
    minute 35 UTC; 00:05 IST is 18:35 UTC), so one run falls at 00:05 local on every day of the
    year, DST or not, and the others find the table current."""
    from middleware.settings import reset_settings

    monkeypatch.setenv("ARHUB_TIMEZONE", "Asia/Kolkata")
    reset_settings()
    scheduler = CronScheduler(connection=redis.Redis())
    scheduler.load_config_from_file("jobs.schedule")
    job = {j.name: j for j in scheduler.get_jobs()}["refresh-balances"]
    assert job.func is refresh_balances and job.queue_name == "default"
    assert job.cron == "35 * * * *"
    assert job.job_options["job_timeout"] >= 600


def test_hourly_cron_at_hits_local_midnight_in_winter_and_summer():
    """Computed on any day, the expression matches 00:05 local time (read as UTC, as the cron
    process does) on a winter and a summer day in Europe/Berlin (UTC+1 / UTC+2) and in
    America/New_York (UTC-5 / UTC-4), and on any day in Asia/Kathmandu (UTC+5:45)."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from croniter import croniter

    from jobs.schedule import hourly_cron_at

    for zone in ("Europe/Berlin", "America/New_York", "Asia/Kathmandu"):
        tz = ZoneInfo(zone)
        expression = hourly_cron_at("00:05", tz)
        for month in (1, 7):
            local = datetime(2026, month, 15, 0, 5, tzinfo=tz)
            utc = local.astimezone(timezone.utc).replace(tzinfo=None)
            assert croniter.match(expression, utc), (zone, month, expression, utc)
            assert not croniter.match(expression, utc.replace(minute=(utc.minute + 30) % 60)), expression
