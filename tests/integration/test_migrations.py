"""middleware.migrations on empty SQLite and PostgreSQL databases: the chain equals the models, and is idempotent."""
from __future__ import annotations

import os

import pytest

from middleware import models
from middleware.db import connect, database
from middleware.migrations import MIGRATIONS, VERSION_TABLE, current_version, describe_schema, head, upgrade
from tests.conftest import PG_HOST, PG_PORT, _worker_tag, pg_admin


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request, tmp_path):
    """Factory: ``empty_database(tag)`` -> the URL of a brand-new, empty database of this test's dialect."""
    created: list[str] = []
    admin = None
    user = None
    if request.param == "postgres":
        admin, user = pg_admin()

    def make(tag: str) -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / tag}.db"
        name = f"arhub_mig_{_worker_tag(request)}_{os.getpid()}_{tag}".lower()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"

    make.dialect = request.param
    yield make
    if not database.is_closed():
        database.close()
    if admin is not None:
        with admin.cursor() as cur:
            for name in created:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_migrated_database_has_exactly_the_schema_of_the_models(empty_database):
    """A database built through the migration chain and one built from the current models are identical
    (tables, column types, nullability, keys, indexes, foreign keys), so models and migrations cannot drift."""
    migrated = connect(empty_database("chain"))
    assert upgrade(migrated) == [number for number, _, _ in MIGRATIONS]
    chain = describe_schema(migrated)
    migrated.close()

    direct = connect(empty_database("models"))  # binds the models to this database
    direct.create_tables(models.MODELS)
    from_models = describe_schema(direct)
    direct.close()

    search_tables = models.CUSTOMER_SEARCH_TABLES[empty_database.dialect]
    assert set(chain) == {m._meta.table_name for m in models.MODELS} | search_tables
    assert all(chain[t]["columns"] for t in chain)
    assert any(chain[t]["indexes"] for t in chain) and any(chain[t]["foreign_keys"] for t in chain)
    for table in sorted(set(chain) | set(from_models)):
        assert chain.get(table) == from_models.get(table), f"table {table} differs between migrations and models"


def test_upgrade_twice_applies_nothing_the_second_time(empty_database):
    """A second ``upgrade`` finds the database at head and applies nothing; the version table lists each migration once."""
    url = empty_database("twice")
    db = connect(url)
    assert current_version(db) == 0
    first = upgrade(db)
    assert first and first[-1] == head()
    schema = describe_schema(db)
    assert upgrade(db) == []
    assert current_version(db) == head()
    assert describe_schema(db) == schema
    rows = db.execute_sql(f'SELECT "version" FROM "{VERSION_TABLE}" ORDER BY "version"').fetchall()
    assert [r[0] for r in rows] == first
    db.close()
    reopened = connect(url)  # another process later: still at head, still nothing to do
    assert current_version(reopened) == head()
    assert upgrade(reopened) == []
    reopened.close()



def test_an_old_database_upgraded_ends_identical_to_a_fresh_one_and_keeps_its_data(empty_database):
    """A database left at version 1 with data in it, upgraded to head, has the fresh database's schema and its rows."""
    old = connect(empty_database("old"))
    assert upgrade(old, target=1) == [1]
    old.execute_sql('INSERT INTO "source" ("name", "kind", "config", "enabled", "created_at", "updated_at") '
                    "VALUES ('erp', 'rest', '{}', " + ("true" if empty_database.dialect == "postgres" else "1")
                    + ", '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
    assert upgrade(old) == [n for n, _, _ in MIGRATIONS if n > 1]
    upgraded = describe_schema(old)
    assert models.Source.get(models.Source.name == "erp").kind == "rest"
    old.close()
    fresh = connect(empty_database("fresh"))
    upgrade(fresh)
    assert describe_schema(fresh) == upgraded
    fresh.close()


def test_the_customer_search_objects_exist_on_both_paths(empty_database):
    """The customer search's index is there whether the database was migrated or built from the models:
    SQLite's FTS5 trigram table with its three triggers, PostgreSQL's two pg_trgm GIN indexes."""
    for build in ("chain", "models"):
        db = connect(empty_database(f"search_{build}"))
        if build == "chain":
            upgrade(db)
        else:
            db.create_tables(models.MODELS)
        schema = describe_schema(db)
        if empty_database.dialect == "sqlite":
            assert "tokenize='trigram'" in schema["customer_search"]["virtual"]
            assert [name for name, _ in schema["customer"]["triggers"]] == [
                "customer_search_delete", "customer_search_insert", "customer_search_update"]
        else:
            names = {name for name, _, _ in schema["customer"]["indexes"]}
            assert {"customer_name_trgm", "customer_email_trgm"} <= names
        db.close()
