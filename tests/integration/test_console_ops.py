"""Ops pages: sync runs with their rejects and "run now", RQ queues with retry and cancel of real jobs,
and the audit log; reading is for everyone signed in, every action for admins only."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from rq.job import Job

from console import create_app
from jobs.queues import InlineWorker, get_queue, get_redis
from middleware.models import AuditLog, RejectedRecord, Source, SyncRun
from middleware.people import create_user
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf



def _login(client, email):
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}).status_code == 302
    return client


@pytest.fixture
def app(db, redis_url):
    create_user("ada@example.com", "Ada Admin", "admin", PASSWORD, actor="test")
    create_user("vic@example.com", "Vic Viewer", "viewer", PASSWORD, actor="test")
    return create_app()


@pytest.fixture
def admin(app):
    return _login(app.test_client(), "ada@example.com")


@pytest.fixture
def viewer(app):
    return _login(app.test_client(), "vic@example.com")


@pytest.fixture
def failed_job(db, redis_url):
    """A real sync job that failed in a real RQ worker: its source does not exist."""
    queue = get_queue("sync")
    job = queue.enqueue("jobs.sync.sync_erp", "gone-erp", description="sync of gone-erp")
    InlineWorker([queue], connection=get_redis()).work(burst=True)
    assert job.get_status() == "failed"
    return job


def _post(client, url, **data):
    token = _csrf(client.get("/ops/queues/").get_data(as_text=True))
    return client.post(url, data={"csrf_token": token, **data})


def test_a_failed_job_shows_its_traceback(admin, failed_job):
    """The failed registry of the sync queue lists the job with its error; its page shows the traceback."""
    listing = admin.get("/ops/queues/sync/failed/").get_data(as_text=True)
    assert failed_job.id in listing and "no source named &#39;gone-erp&#39;" in listing
    page = admin.get(f"/ops/queues/job/{failed_job.id}/").get_data(as_text=True)
    traceback = re.search(r'data-testid="traceback">(.*?)</pre>', page, re.S).group(1)
    assert "Traceback (most recent call last)" in traceback and "LookupError" in traceback
    assert "run_sync" in traceback


def test_retry_moves_a_failed_job_back_to_the_queue_and_is_audited(admin, failed_job):
    """Retry takes the job out of the failed registry and queues it again; the audit log says who did it."""
    resp = _post(admin, f"/ops/queues/job/{failed_job.id}/retry")
    assert resp.status_code == 302
    queue = get_queue("sync")
    assert failed_job.id in queue.job_ids and failed_job.id not in queue.failed_job_registry.get_job_ids()
    assert Job.fetch(failed_job.id, connection=get_redis()).get_status() == "queued"
    entry = AuditLog.get(AuditLog.action == "job.retry")
    assert entry.actor == "ada@example.com" and entry.object_id == failed_job.id
    assert entry.before["status"] == "failed" and entry.after["status"] == "queued"
    assert entry.after["func"] == "jobs.sync.sync_erp"


def test_a_viewer_may_look_but_not_retry(viewer, failed_job):
    """A viewer sees the failed job without a Retry button, and a forged retry answers 403 and changes nothing."""
    listing = viewer.get("/ops/queues/sync/failed/").get_data(as_text=True)
    assert failed_job.id in listing and ">Retry<" not in listing
    assert _post(viewer, f"/ops/queues/job/{failed_job.id}/retry").status_code == 403
    assert Job.fetch(failed_job.id, connection=get_redis()).get_status() == "failed"
    assert not AuditLog.select().where(AuditLog.action == "job.retry").exists()


def test_cancel_a_queued_and_a_scheduled_job(admin, db, redis_url):
    """Cancel removes a waiting job from its queue and a scheduled one from the scheduled registry; a failed
    job cannot be canceled."""
    queue = get_queue("statements")
    waiting = queue.enqueue("operator.add", 1, 2)
    later = queue.enqueue_in(timedelta(hours=1), "operator.add", 3, 4)
    assert later.id in queue.scheduled_job_registry.get_job_ids()
    listing = admin.get("/ops/queues/statements/queued/").get_data(as_text=True)
    assert waiting.id in listing and ">Cancel<" in listing
    for job in (waiting, later):
        assert _post(admin, f"/ops/queues/job/{job.id}/cancel").status_code == 302
        assert Job.fetch(job.id, connection=get_redis()).get_status() == "canceled"
    assert queue.job_ids == [] and queue.scheduled_job_registry.get_job_ids() == []
    assert AuditLog.select().where(AuditLog.action == "job.cancel").count() == 2
    counts = admin.get("/ops/queues/").get_data(as_text=True)
    assert re.search(r'data-testid="statements-canceled">2<', counts)


def test_queues_page_lists_workers_with_their_heartbeat(admin, db, redis_url):
    """A registered worker appears with its state and queues."""
    worker = InlineWorker([get_queue("dunning")], connection=get_redis(), name="ops-test-worker")
    worker.register_birth()
    try:
        page = admin.get("/ops/queues/").get_data(as_text=True)
        row = re.search(r'data-testid="workers">.*?</table>', page, re.S).group(0)
        assert "ops-test-worker" in row and "dunning" in row
    finally:
        worker.register_death()


@pytest.fixture
def runs(db):
    erp = Source.create(name="netsuite", kind="soap")
    other = Source.create(name="xero", kind="rest")
    now = datetime.now(timezone.utc)
    old = SyncRun.create(source=other, status="succeeded", started_at=now - timedelta(hours=2),
                         finished_at=now - timedelta(hours=2) + timedelta(seconds=3), fetched=5, created=5)
    run = SyncRun.create(source=erp, status="partial", started_at=now - timedelta(minutes=3), finished_at=now,
                         fetched=120, created=7, updated=3, unchanged=109, rejected=1,
                         errors=[{"object": "payment", "error": "HTTP 500 from the ERP", "detail": "page 3"}],
                         objects={"invoice": {"fetched": 120}})
    RejectedRecord.create(run=run, source=erp, object_name="invoice", external_id="INV-77",
                          raw={"tranId": "INV-77", "dueDate": "not a date", "amount": "12.50"},
                          reasons=[{"field": "due_date", "path": "dueDate", "message": "Not a valid date."}])
    return erp, run, old


def test_sync_runs_history_and_a_run_with_its_rejects(admin, runs):
    """The history filters by source; a run shows counts, duration, errors and each reject's raw payload."""
    erp, run, old = runs
    everything = admin.get("/ops/sync/").get_data(as_text=True)
    assert f'href="/ops/sync/{run.id}/"' in everything and f'href="/ops/sync/{old.id}/"' in everything
    only = admin.get("/ops/sync/?source=netsuite").get_data(as_text=True)
    assert f'href="/ops/sync/{run.id}/"' in only and f'href="/ops/sync/{old.id}/"' not in only
    page = admin.get(f"/ops/sync/{run.id}/").get_data(as_text=True)
    assert "120 fetched · 7 new · 3 changed · 109 unchanged" in page and "3 min 0 s" in page
    assert "HTTP 500 from the ERP" in page
    raw = re.search(r'data-testid="raw">(.*?)</pre>', page, re.S).group(1)
    assert "&#34;dueDate&#34;: &#34;not a date&#34;" in raw or '"dueDate": "not a date"' in raw
    assert "Not a valid date." in page


def test_run_now_enqueues_the_sync_job_and_runs_nothing_inline(admin, viewer, runs):
    """Run now puts the source's sync job on the sync queue for a worker (no run starts in the request);
    a viewer is refused."""
    erp, _, _ = runs
    before = SyncRun.select().count()
    assert _post(viewer, "/ops/sync/run", source="netsuite").status_code == 403
    assert get_queue("sync").count == 0
    resp = _post(admin, "/ops/sync/run", source="netsuite", full="1")
    assert resp.status_code == 302
    [job] = get_queue("sync").jobs
    assert job.func_name == "jobs.sync.sync_erp" and job.args == ("netsuite",) and job.kwargs == {"full": True}
    assert SyncRun.select().count() == before
    entry = AuditLog.get(AuditLog.action == "sync.run_now")
    assert entry.actor == "ada@example.com" and entry.after["job_id"] == job.id


def test_audit_log_filters_and_shows_only_changed_keys(admin, db):
    """Entries filter by actor, object type and date; each shows the changed keys before and after."""
    AuditLog.create(actor="ada@example.com", action="campaign.updated", object_type="campaign", object_id="4",
                    before={"name": "Gentle", "active": True, "steps": 3},
                    after={"name": "Gentle", "active": False, "steps": 3})
    AuditLog.create(actor="bob@example.com", action="user.updated", object_type="user", object_id="9",
                    before={"role": "viewer"}, after={"role": "collector"})
    AuditLog.create(actor="ada@example.com", action="template.updated", object_type="template", object_id="2",
                    at=datetime.now(timezone.utc) - timedelta(days=40), before={"subject": "a"}, after={"subject": "b"})
    page = admin.get("/ops/audit/?actor=ada&object_type=campaign").get_data(as_text=True)
    table = re.search(r'data-testid="audit">.*</table>', page, re.S).group(0)
    assert "campaign.updated" in table and "user.updated" not in table and "template.updated" not in table
    assert "<code>active</code>" in table and "<code>name</code>" not in table and "<code>steps</code>" not in table
    assert re.search(r'text-danger">true</pre>.*text-success">false</pre>', table, re.S)
    recent = admin.get(f"/ops/audit/?from={(datetime.now(timezone.utc) - timedelta(days=7)).date()}")
    html = recent.get_data(as_text=True)
    assert "user.updated" in html and "template.updated" not in html
