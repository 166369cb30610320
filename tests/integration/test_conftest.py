"""tests/conftest.py: the db, redis_url and rq_worker fixtures keep their promises."""
from __future__ import annotations

import pytest
import redis

from jobs.queues import get_queue
from middleware.migrations import VERSION_TABLE, current_version, head
from middleware.models import Source

JOBS = "tests.integration.queue_jobs"


def test_db_is_migrated_to_head_and_empty(db):
    """Each test starts on a database at the head migration with every table empty."""
    assert current_version(db) == head()
    for table in db.get_tables():
        if table != VERSION_TABLE and not table.startswith("customer_search_"):  # FTS5 shadow tables: its config
            assert db.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] == 0, table


@pytest.mark.parametrize("attempt", [1, 2])
def test_db_rows_do_not_leak_between_tests(db, attempt):
    """Rows committed by one test are gone in the next, and ids restart at 1."""
    with db.atomic():
        source = Source.create(name="only-one", kind="rest")
    assert source.id == 1
    assert Source.select().count() == 1


def test_db_url_is_what_settings_and_children_see(db, settings):
    """The settings of a test using `db` carry that database's URL (inherited by workers)."""
    assert settings.database_url.split(":", 1)[0] in ("sqlite", "postgresql")
    assert Source._meta.database.obj is db


def test_redis_url_is_flushed_and_private(redis_url, settings):
    """redis_url points at an empty Redis db, and settings use it."""
    client = redis.Redis.from_url(redis_url)
    assert settings.redis_url == redis_url
    assert client.dbsize() == 0
    client.set("arhub:test:key", "1")
    client.close()


def test_rq_worker_shares_the_test_database(db, redis_url, settings, rq_worker, wait_until):
    """A real worker subprocess reads rows the test committed, from the same database."""
    with db.atomic():
        Source.create(name="erp-a", kind="soap")
        Source.create(name="erp-b", kind="rest")
    job = get_queue("default", settings).enqueue(f"{JOBS}.source_names")
    wait_until(lambda: job.get_status(refresh=True) in ("finished", "failed"), message="the job")
    assert job.get_status() == "finished", job.latest_result().exc_string
    assert job.return_value() == ["erp-a", "erp-b"]
