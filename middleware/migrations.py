"""Versioned schema migrations, run by ``arhub db upgrade``.

Every database, fresh or old, walks the same chain. Migration 1 replays a frozen DDL
snapshot (``middleware/schema/0001.<dialect>.sql``, written once by ``arhub db
snapshot`` from the models of that release); later migrations alter it step by step.
A test builds a database through the chain and another straight from the current
models and asserts that their introspected schemas are identical, so models and
migrations cannot drift apart.

Concurrency: PostgreSQL takes an advisory lock, SQLite an immediate transaction,
so two processes upgrading at once apply each migration once.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import models
from .db import database, is_postgres

SCHEMA_DIR = Path(__file__).with_name("schema")
VERSION_TABLE = "arhub_schema_version"
_LOCK_KEY = 0x61726875  # "arhu"


def dialect(db=None) -> str:
    return "postgres" if is_postgres(db or database.obj) else "sqlite"


def model_ddl(db=None, model_list=None) -> list[str]:
    """The DDL the models produce on ``db``'s dialect (tables, then indexes); all by default."""
    db = db or database.obj
    model_list = models.MODELS if model_list is None else model_list
    ctx_sql = lambda q: db.get_sql_context().sql(q).query()[0]  # noqa: E731
    statements = []
    for model in model_list:
        statements.append(ctx_sql(model._schema._create_table(safe=False)))
    for model in model_list:
        statements.extend(ctx_sql(idx) for idx in model._schema._create_indexes(safe=False))
    return statements


def _replay(version: int) -> Callable:
    def run(db) -> None:
        path = SCHEMA_DIR / f"{version:04d}.{dialect(db)}.sql"
        for statement in path.read_text().split(";\n"):
            if statement.strip():
                db.execute_sql(statement)
    return run


def _m0002_rejected_resolved(db) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    migrate(SchemaMigrator.from_database(db).add_column(
        "rejected_record", "resolved_at", models.UTCDateTimeField(null=True)))


def _m0003_salesforce(db) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    _replay(3)(db)
    migrate(SchemaMigrator.from_database(db).add_column("sync_run", "api_calls", models.IntegerField(null=True)))


def _m0004_collections(db) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    _replay(4)(db)
    migrate(SchemaMigrator.from_database(db).add_column("customer", "timezone", models.CharField(null=True)))


def _m0005_open_invoices_by_customer(db) -> None:
    # frozen SQL (not the model's index object): a later change to the model must not change this step
    db.execute_sql('CREATE INDEX "invoice_open_by_customer" ON "invoice" ("customer_id", "due_date", '
                   '"open_amount_reporting", "open_amount", "deleted_at", "status") WHERE "status" = \'open\'')


def _m0006_customer_balance(db) -> None:
    # frozen SQL; the rows are written by middleware.balances (the first list by amount, or a sync)
    money = "NUMERIC(20, 4)" if dialect(db) == "postgres" else "DECIMAL(20, 4)"
    db.execute_sql(
        f'CREATE TABLE "customer_balance" ("customer_id" INTEGER NOT NULL PRIMARY KEY, "open_reporting" {money} '
        f'NOT NULL, "overdue_reporting" {money} NOT NULL, "oldest_due" DATE, "open_invoices" INTEGER NOT NULL, '
        '"fx_missing" INTEGER NOT NULL, "n_current" INTEGER NOT NULL, "n_1_30" INTEGER NOT NULL, "n_31_60" INTEGER '
        'NOT NULL, "n_61_90" INTEGER NOT NULL, "n_91" INTEGER NOT NULL, "as_of" DATE NOT NULL, FOREIGN KEY '
        '("customer_id") REFERENCES "customer" ("id") ON DELETE CASCADE)')
    for column in ("overdue_reporting", "open_reporting", "oldest_due"):
        db.execute_sql(f'CREATE INDEX "customer_balance_{column}_customer_id" ON "customer_balance" '
                       f'("{column}", "customer_id")')


def _m0007_wording_and_indexes(db) -> None:
    # frozen SQL; the collector's wording of one email (middleware.mailer.approve_with_wording),
    # then indexes for the matching review, the inbox and the dashboard's payments of a month
    for column in ("subject_override", "body_override"):
        db.execute_sql(f'ALTER TABLE "dunning_action" ADD COLUMN "{column}" TEXT')
    db.execute_sql('CREATE INDEX "customer_match_state_id" ON "customer" ("match_state", "id")')
    db.execute_sql('CREATE INDEX "message_inbox_pending" ON "message" ("routed_to") '
                   'WHERE "direction" = \'in\' AND "handled_at" IS NULL')
    db.execute_sql('CREATE INDEX "payment_date" ON "payment" ("date")')


def _m0008_customer_billing_address(db) -> None:
    # frozen SQL; JSON text (models.JSONField): the address is shown whole (statement, pay page)
    # and never filtered on, and ERPs differ in how many street lines they have
    db.execute_sql('ALTER TABLE "customer" ADD COLUMN "billing_address" TEXT')


def _m0009_customer_list_indexes(db) -> None:
    # frozen SQL; the customer list by name reads (and counts) live customers from the first index
    # alone, and the amount sorts leave out deleted customers through the second (a few rows)
    db.execute_sql('CREATE INDEX "customer_live_name" ON "customer" ("name", "id", "deleted_at") '
                   'WHERE "deleted_at" IS NULL')
    db.execute_sql('CREATE INDEX "customer_deleted" ON "customer" ("id") WHERE "deleted_at" IS NOT NULL')


def _m0010_customer_search(db) -> None:
    # frozen SQL (models.CUSTOMER_SEARCH_DDL is the models' copy; the schema test compares them):
    # the customer search by name and email without reading every customer
    if dialect(db) == "postgres":
        db.execute_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # trusted since PostgreSQL 13
        db.execute_sql('CREATE INDEX "customer_name_trgm" ON "customer" USING gin (LOWER("name") gin_trgm_ops)')
        db.execute_sql('CREATE INDEX "customer_email_trgm" ON "customer" USING gin (LOWER("email") gin_trgm_ops)')
        return
    db.execute_sql('CREATE VIRTUAL TABLE "customer_search" USING fts5("name", "email", content=\'customer\', '
                   'content_rowid=\'id\', tokenize=\'trigram\')')
    db.execute_sql('CREATE TRIGGER "customer_search_insert" AFTER INSERT ON "customer" BEGIN '
                   'INSERT INTO "customer_search" ("rowid", "name", "email") VALUES (new."id", new."name", '
                   'new."email"); END')
    db.execute_sql('CREATE TRIGGER "customer_search_delete" AFTER DELETE ON "customer" BEGIN '
                   'INSERT INTO "customer_search" ("customer_search", "rowid", "name", "email") '
                   'VALUES (\'delete\', old."id", old."name", old."email"); END')
    db.execute_sql('CREATE TRIGGER "customer_search_update" AFTER UPDATE OF "name", "email" ON "customer" '
                   'WHEN old."name" IS NOT new."name" OR old."email" IS NOT new."email" BEGIN '
                   'INSERT INTO "customer_search" ("customer_search", "rowid", "name", "email") '
                   'VALUES (\'delete\', old."id", old."name", old."email"); '
                   'INSERT INTO "customer_search" ("rowid", "name", "email") VALUES (new."id", new."name", '
                   'new."email"); END')
    db.execute_sql('INSERT INTO "customer_search" ("customer_search") VALUES (\'rebuild\')')  # the existing rows


#: (version, description, function(db)) in order. Append; never edit a released entry.
def _m0011_unlinked_applications(db) -> None:
    # frozen SQL; every ERP sync asks whether applications still wait for their invoice: without it
    # SQLite read every application of the source (1.6 s at a million invoices, each sync)
    db.execute_sql('CREATE INDEX "application_unlinked" ON "application" ("source_id") WHERE "invoice_id" IS NULL')


MIGRATIONS: list[tuple[int, str, Callable]] = [
    (1, "baseline: sources, mappings, customers, contacts, documents, applications, FX, sync runs", _replay(1)),
    (2, "rejected records: resolved_at (landed later or reprocessed)", _m0002_rejected_resolved),
    (3, "Salesforce: tags, users, accounts, opportunities, match candidates, push state; sync_run.api_calls",
     _m0003_salesforce),
    (4, "collections: users, assignment rules, templates, campaigns, variants, steps, dunning actions, messages, "
        "activities; customer.timezone", _m0004_collections),
    (5, "invoice_open_by_customer: a partial covering index of open invoices per customer (console customer list)",
     _m0005_open_invoices_by_customer),
    (6, "customer_balance: today's open/overdue per customer in the reporting currency, indexed for the customer "
        "list's amount sorts", _m0006_customer_balance),
    (7, "dunning_action.subject_override/body_override (an email's wording edited at approval); indexes "
        "customer(match_state, id), message(routed_to) of unhandled replies, payment(date)",
     _m0007_wording_and_indexes),
    (8, "customer.billing_address: the ERP's default billing address as JSON (lines, city, region, postal code, "
        "country)", _m0008_customer_billing_address),
    (9, "customer_live_name: live customers by name, index only (the customer list's pages and counts); "
        "customer_deleted: the deleted ones (left out of the amount sorts)", _m0009_customer_list_indexes),
    (10, "customer search by name and email domain: SQLite FTS5 trigram table customer_search kept by triggers, "
         "PostgreSQL pg_trgm GIN indexes on LOWER(name) and LOWER(email)", _m0010_customer_search),
    (11, "application_unlinked: applications still waiting for their invoice (each sync's late-link check)",
     _m0011_unlinked_applications),
]


def head() -> int:
    return MIGRATIONS[-1][0]


def _ensure_version_table(db) -> None:
    db.execute_sql(
        f'CREATE TABLE IF NOT EXISTS "{VERSION_TABLE}" '
        '("version" INTEGER NOT NULL PRIMARY KEY, "description" TEXT NOT NULL, "applied_at" TEXT NOT NULL)')


def current_version(db=None) -> int:
    db = db or database.obj
    if VERSION_TABLE not in db.get_tables():
        return 0
    row = db.execute_sql(f'SELECT MAX("version") FROM "{VERSION_TABLE}"').fetchone()
    return row[0] or 0


def upgrade(db=None, target: int | None = None) -> list[int]:
    """Apply pending migrations up to ``target`` (default: head). Returns the versions applied."""
    db = db or database.obj
    target = head() if target is None else target
    applied: list[int] = []
    with db.atomic("IMMEDIATE") if not is_postgres(db) else db.atomic():
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        _ensure_version_table(db)
        version = current_version(db)
        for number, description, run in MIGRATIONS:
            if version < number <= target:
                run(db)
                db.execute_sql(
                    f'INSERT INTO "{VERSION_TABLE}" ("version", "description", "applied_at") VALUES '
                    + ("(%s, %s, %s)" if is_postgres(db) else "(?, ?, ?)"),
                    (number, description, datetime.now(timezone.utc).isoformat()))
                applied.append(number)
    return applied


def write_snapshot(version: int, db, model_list=None) -> Path:
    """Freeze the DDL of ``model_list`` (default: all models) for ``db``'s dialect as migration
    ``version``'s snapshot."""
    SCHEMA_DIR.mkdir(exist_ok=True)
    path = SCHEMA_DIR / f"{version:04d}.{dialect(db)}.sql"
    path.write_text(";\n".join(model_ddl(db, model_list)) + ";\n")
    return path


def _triggers(db, table: str) -> list[tuple]:
    """(name, SQL) of ``table``'s triggers (SQLite: as sqlite_master keeps them; PostgreSQL: name and
    definition, not the internal ones of foreign keys)."""
    if is_postgres(db):
        sql = ("SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s::regclass "
               "AND NOT tgisinternal ORDER BY tgname")
        return [tuple(r) for r in db.execute_sql(sql, (f'"{table}"',)).fetchall()]
    sql = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? ORDER BY name"
    return [tuple(r) for r in db.execute_sql(sql, (table,)).fetchall()]


def _virtual_sql(db, table: str) -> str | None:
    """The CREATE statement of a SQLite virtual table (its module and options), else None."""
    if is_postgres(db):
        return None
    row = db.execute_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return row[0] if row and row[0] and row[0].upper().startswith("CREATE VIRTUAL TABLE") else None


def describe_schema(db=None) -> dict:
    """Tables → columns (name, type, null, pk), indexes (name, columns, unique), foreign keys,
    triggers (name, SQL) and, for a SQLite virtual table, its CREATE statement."""
    db = db or database.obj
    schema = {}
    for table in sorted(db.get_tables()):
        if table == VERSION_TABLE:
            continue
        schema[table] = {
            "columns": sorted((c.name, c.data_type.lower(), c.null, c.primary_key) for c in db.get_columns(table)),
            "indexes": sorted((i.name, tuple(i.columns), i.unique) for i in db.get_indexes(table)),
            "foreign_keys": sorted((f.column, f.dest_table, f.dest_column) for f in db.get_foreign_keys(table)),
            "triggers": _triggers(db, table),
            "virtual": _virtual_sql(db, table),
        }
    return schema


