"""jobs/schedule.py: the cron configuration `rq cron jobs.schedule` loads."""
from __future__ import annotations

import redis
from rq.cron import CronScheduler

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
