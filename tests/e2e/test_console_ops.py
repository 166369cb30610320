"""In a real browser: an admin finds a failed job, reads its traceback and retries it."""
from __future__ import annotations

import pytest

from jobs.queues import InlineWorker
from tests.e2e.conftest import login

pytestmark = pytest.mark.e2e


def test_an_admin_retries_a_failed_job(page, console_url, make_user):
    """From the job queues page to the failed sync job: the traceback is shown, Retry queues it again."""
    from jobs.queues import get_queue, get_redis

    make_user("ada@example.com", "admin", "Ada Admin")
    queue = get_queue("sync")
    job = queue.enqueue("jobs.sync.sync_erp", "gone-erp", description="sync of gone-erp")
    InlineWorker([queue], connection=get_redis()).work(burst=True)
    assert job.get_status() == "failed"

    login(page, console_url, "ada@example.com")
    page.goto(console_url + "/ops/queues/")
    page.get_by_test_id("sync-failed").click()
    page.get_by_role("link", name=job.id).click()
    traceback = page.get_by_test_id("traceback")
    assert "LookupError: no source named 'gone-erp'" in traceback.inner_text()
    assert page.get_by_test_id("job-status").inner_text() == "failed"
    page.get_by_role("button", name="Retry").click()
    page.get_by_text(f"Job {job.id} is queued again on sync.").wait_for()
    assert page.get_by_test_id("job-status").inner_text() == "queued"
    assert job.id in queue.job_ids


def test_a_viewer_sees_failed_jobs_without_actions(page, console_url, make_user):
    """A viewer can read the failed registry but is offered no Retry button."""
    from jobs.queues import get_queue, get_redis

    make_user("vic@example.com", "viewer", "Vic Viewer")
    queue = get_queue("sync")
    job = queue.enqueue("jobs.sync.sync_erp", "gone-erp")
    InlineWorker([queue], connection=get_redis()).work(burst=True)
    login(page, console_url, "vic@example.com")
    page.goto(console_url + "/ops/queues/sync/failed/")
    page.get_by_test_id(f"job-{job.id}").wait_for()
    assert page.get_by_role("button", name="Retry").count() == 0
