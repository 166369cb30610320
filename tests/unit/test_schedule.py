"""jobs/schedule.py: the cron configuration `rq cron jobs.schedule` loads."""
from __future__ import annotations

import redis
from rq.cron import CronScheduler

from jobs.sync import sync_erp_all


def test_registers_erp_sync_every_configured_interval(settings, monkeypatch):
    """rq's cron loads jobs.schedule and finds sync_erp_all on queue `sync` every
    ARHUB_SYNC_INTERVAL_MINUTES minutes."""
    from middleware.settings import reset_settings

    monkeypatch.setenv("ARHUB_SYNC_INTERVAL_MINUTES", "7")
    reset_settings()
    scheduler = CronScheduler(connection=redis.Redis())  # no I/O until start()
    scheduler.load_config_from_file("jobs.schedule")
    [job] = scheduler.get_jobs()
    assert job.func is sync_erp_all
    assert job.queue_name == "sync"
    assert job.interval == 7 * 60
    assert job.job_options["job_timeout"] >= 600
    assert job.name == "sync-erp-all"


def test_default_interval_is_15_minutes(settings):
    """Without ARHUB_SYNC_INTERVAL_MINUTES the ERP sync runs every 15 minutes."""
    scheduler = CronScheduler(connection=redis.Redis())
    scheduler.load_config_from_file("jobs.schedule")
    assert [j.interval for j in scheduler.get_jobs()] == [15 * 60]
