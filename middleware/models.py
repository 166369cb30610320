"""The canonical AR store (peewee). SQLite by default, PostgreSQL in production.

Conventions: money is ``Decimal`` (``MoneyField``), currencies are ISO 4217 codes,
timestamps are UTC (stored naive, returned aware), business dates are ``date``.
States are ``str`` enums stored as text. Every record pulled from a source keeps
``(source, external_id)`` unique and a ``content_hash`` of its canonical form, so a
re-run can tell created, updated and unchanged apart without rewriting rows.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from enum import Enum

from peewee import (
    BooleanField,
    CharField,
    DateField,
    DecimalField,
    DateTimeField,
    ForeignKeyField,
    FloatField,
    IntegerField,
    Model,
    SQL,
    TextField,
)

from .db import database, is_postgres

UTC = timezone.utc


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTimeField(DateTimeField):
    """Stores UTC as a naive timestamp; always returns an aware UTC datetime."""

    def db_value(self, value):
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value):
        value = super().python_value(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class MoneyField(DecimalField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_digits", 20)
        kwargs.setdefault("decimal_places", 4)
        super().__init__(*args, **kwargs)

    def db_value(self, value):
        # sqlite3 has no Decimal adapter; text keeps every digit on the way in
        value = super().db_value(value)
        return str(value) if value is not None and not isinstance(value, str) else value


class RateField(MoneyField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_digits", 24)
        kwargs.setdefault("decimal_places", 12)
        super().__init__(*args, **kwargs)


class JSONField(TextField):
    def db_value(self, value):
        return None if value is None else json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class InvoiceStatus(str, Enum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOIDED = "voided"
    DELETED = "deleted"


class RunStatus(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # finished, some records rejected or some objects failed
    FAILED = "failed"


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Company(BaseModel):
    name = CharField(default="My company")
    reporting_currency = CharField(max_length=3, default="USD")
    timezone = CharField(default="UTC")
    business_days = CharField(default="Mon,Tue,Wed,Thu,Fri")
    holidays = JSONField(default=list)


class Source(BaseModel):
    """An ERP (or later, Salesforce) connection configured from a preset."""

    name = CharField(unique=True)
    kind = CharField()  # "soap" | "rest" | "salesforce"
    preset = CharField(null=True)
    config = JSONField(default=dict)  # the preset's connection + objects (no secrets)
    endpoint = CharField(null=True)
    credentials_encrypted = TextField(null=True)  # Fernet token of a JSON dict
    enabled = BooleanField(default=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)


class SyncCursor(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    object_name = CharField()
    cursor = UTCDateTimeField(null=True)
    deleted_cursor = UTCDateTimeField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("source", "object_name"), True),)


class FieldMapping(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    object_name = CharField()  # canonical entity: customer, contact, invoice, credit_memo, payment, fx_rate, currency
    canonical_field = CharField()  # e.g. "due_date", "applications[].amount", "contacts[].email"
    source_path = CharField(null=True)  # e.g. "DueDate", "applyList.apply[].amount", "customFieldList.customField[scriptId=custentity_arr].value"
    transform = CharField(default="text")
    args = JSONField(default=dict)
    default = CharField(null=True)
    position = IntegerField(default=0)
    enabled = BooleanField(default=True)

    class Meta:
        indexes = ((("source", "object_name", "canonical_field"), True),)


class Currency(BaseModel):
    code = CharField(max_length=3, primary_key=True)
    name = CharField(null=True)
    minor_units = IntegerField(default=2)


class Customer(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    external_id = CharField()
    number = CharField(null=True, index=True)
    name = CharField(index=True)
    email = CharField(null=True)
    billing_currency = CharField(max_length=3, index=True)
    country = CharField(max_length=2, null=True)
    # the ERP's default billing address, whole: {"lines": [...], "city", "region", "postal_code",
    # "country"} (migration 8); read and written as one value, never filtered on in SQL
    billing_address = JSONField(null=True)
    parent_external_id = CharField(null=True)
    parent = ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL")
    segment = CharField(null=True, index=True)
    arr = MoneyField(null=True)
    terms_days = IntegerField(null=True)
    locale = CharField(null=True)
    timezone = CharField(null=True)  # IANA zone for sending windows (None: the company's)
    inactive = BooleanField(default=False)
    collector = CharField(null=True, index=True)
    sf_account_id = CharField(null=True, index=True)
    match_state = CharField(null=True)
    paused_until = DateField(null=True)
    paused_reason = TextField(null=True)
    content_hash = CharField(max_length=32)
    erp_modified_at = UTCDateTimeField(null=True)
    deleted_at = UTCDateTimeField(null=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("source", "external_id"), True),
                   (("match_state", "id"), False))  # matching review: one state's customers in id order (migration 7)

    @classmethod
    def create_table(cls, safe=True, **options):
        """The table, its indexes, then the name/email search objects of the dialect (:data:`CUSTOMER_SEARCH_DDL`)."""
        super().create_table(safe, **options)
        for statement in customer_search_ddl(safe=safe):
            cls._meta.database.execute_sql(statement)

    @classmethod
    def drop_table(cls, safe=True, drop_sequences=True, **options):
        if not is_postgres():  # the FTS5 table would outlive its content table
            cls._meta.database.execute_sql(f'DROP TABLE {"IF EXISTS " if safe else ""}"customer_search"')
        super().drop_table(safe, drop_sequences, **options)


# The customer list (console/views/customers/queries.py, migration 9): live customers by name, index
# only (the trailing deleted_at, always NULL here, makes it covering for SQLite's COUNT(*) too), and
# the few deleted ones (what an amount sort leaves out of customer_balance without reading customers).
Customer.add_index(Customer.index(Customer.name, Customer.id, Customer.deleted_at, name="customer_live_name",
                                  where=SQL('"deleted_at" IS NULL')))
Customer.add_index(Customer.index(Customer.id, name="customer_deleted", where=SQL('"deleted_at" IS NOT NULL')))

#: The customer search's index (migration 10), per dialect: what ``q=`` finds by name (contains) and by
#: the email's domain (ends with) without reading every customer. SQLite: an FTS5 table with the
#: trigram tokenizer over customer's name and email (external content: it stores only the index),
#: kept in step by triggers, so every writer of customers keeps it current. PostgreSQL: pg_trgm GIN
#: indexes on LOWER(name) and LOWER(email), which serve ``LIKE '%...%'`` directly.
CUSTOMER_SEARCH_DDL = {
    "sqlite": [
        'CREATE VIRTUAL TABLE "customer_search" USING fts5("name", "email", content=\'customer\', '
        'content_rowid=\'id\', tokenize=\'trigram\')',
        'CREATE TRIGGER "customer_search_insert" AFTER INSERT ON "customer" BEGIN '
        'INSERT INTO "customer_search" ("rowid", "name", "email") VALUES (new."id", new."name", new."email"); END',
        'CREATE TRIGGER "customer_search_delete" AFTER DELETE ON "customer" BEGIN '
        'INSERT INTO "customer_search" ("customer_search", "rowid", "name", "email") '
        'VALUES (\'delete\', old."id", old."name", old."email"); END',
        'CREATE TRIGGER "customer_search_update" AFTER UPDATE OF "name", "email" ON "customer" '
        'WHEN old."name" IS NOT new."name" OR old."email" IS NOT new."email" BEGIN '
        'INSERT INTO "customer_search" ("customer_search", "rowid", "name", "email") '
        'VALUES (\'delete\', old."id", old."name", old."email"); '
        'INSERT INTO "customer_search" ("rowid", "name", "email") VALUES (new."id", new."name", new."email"); END',
    ],
    "postgres": [
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        'CREATE INDEX "customer_name_trgm" ON "customer" USING gin (LOWER("name") gin_trgm_ops)',
        'CREATE INDEX "customer_email_trgm" ON "customer" USING gin (LOWER("email") gin_trgm_ops)',
    ],
}
#: Tables the SQLite search adds besides the models' (the FTS5 table and its shadow tables).
CUSTOMER_SEARCH_TABLES = {"sqlite": {"customer_search", "customer_search_config", "customer_search_data",
                                     "customer_search_docsize", "customer_search_idx"}, "postgres": set()}


def customer_search_ddl(db=None, safe: bool = False) -> list[str]:
    """:data:`CUSTOMER_SEARCH_DDL` of ``db``'s dialect (default: the bound database); ``safe``: IF NOT EXISTS."""
    statements = CUSTOMER_SEARCH_DDL["postgres" if is_postgres(db) else "sqlite"]
    if safe:
        statements = [s.replace("CREATE VIRTUAL TABLE ", "CREATE VIRTUAL TABLE IF NOT EXISTS ", 1)
                      .replace("CREATE TRIGGER ", "CREATE TRIGGER IF NOT EXISTS ", 1)
                      .replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1) for s in statements]
    return statements


class Contact(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    external_id = CharField()  # stable per source: "<customer id>:<role>:<n>" when the ERP has no contact ids
    customer = ForeignKeyField(Customer, null=True, backref="contacts", on_delete="CASCADE")
    customer_external_id = CharField()
    name = CharField(null=True)
    email = CharField(null=True, index=True)
    phone = CharField(null=True)
    role = CharField(default="billing")  # billing | escalation | other
    origin = CharField(default="erp")  # erp | salesforce
    content_hash = CharField(max_length=32)
    deleted_at = UTCDateTimeField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("source", "external_id"), True),)


class _Document(BaseModel):
    """Fields shared by invoices, credit memos and payments (FK indexes come from the composite ones)."""

    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    external_id = CharField()
    number = CharField(null=True, index=True)
    customer = ForeignKeyField(Customer, null=True, on_delete="SET NULL", index=False)
    customer_external_id = CharField()
    currency = CharField(max_length=3)
    amount = MoneyField()
    fx_rate = RateField(null=True)  # reporting units per unit of ``currency`` at the document date
    fx_rate_date = DateField(null=True)
    fx_rate_source = CharField(null=True)
    amount_reporting = MoneyField(null=True)
    fx_missing = BooleanField(default=False)
    content_hash = CharField(max_length=32)
    erp_modified_at = UTCDateTimeField(null=True)
    deleted_at = UTCDateTimeField(null=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)


class Invoice(_Document):
    issue_date = DateField()
    sent_date = DateField(null=True)
    due_date = DateField()
    status = CharField(default=InvoiceStatus.OPEN.value)
    open_amount = MoneyField()
    erp_open_amount = MoneyField(null=True)  # as reported by the ERP, for reconciliation
    open_amount_reporting = MoneyField(null=True)  # revaluation at the latest rate
    revalued_at = DateField(null=True)
    po_number = CharField(null=True)
    memo = TextField(null=True)

    class Meta:
        indexes = (
            (("source", "external_id"), True),
            (("customer", "status", "due_date"), False),
            (("status", "due_date"), False),
            (("fx_missing",), False),
        )


#: The console's customer list sums open invoices per customer for today (open, overdue, oldest
#: due date) straight from this partial covering index: only open invoices, no table lookups
#: (migration 5). ``status`` is in it too: SQLite only reads a partial index without the table
#: when every column the query names is in the index.
Invoice.add_index(Invoice.index(Invoice.customer, Invoice.due_date, Invoice.open_amount_reporting, Invoice.open_amount,
                                Invoice.deleted_at, Invoice.status, name="invoice_open_by_customer",
                                where=SQL("\"status\" = 'open'")))  # a literal: snapshots keep no parameters


class CreditMemo(_Document):
    date = DateField()
    unapplied_amount = MoneyField()
    status = CharField(default="open")
    reason = TextField(null=True)

    class Meta:
        indexes = ((("source", "external_id"), True), (("customer", "date"), False))


class Payment(_Document):
    date = DateField()
    unapplied_amount = MoneyField()
    reference = CharField(null=True)

    class Meta:
        indexes = ((("source", "external_id"), True), (("customer", "date"), False),
                   (("date",), False))  # payments of a period across customers: the dashboard (migration 7)


class Application(BaseModel):
    """A payment or credit memo applied to an invoice (by external ids, resolved to the invoice)."""

    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    doc_kind = CharField()  # "payment" | "credit_memo"
    doc_external_id = CharField()
    invoice_external_id = CharField()
    invoice = ForeignKeyField(Invoice, null=True, backref="applications", on_delete="SET NULL")
    amount = MoneyField()
    date = DateField()

    class Meta:
        indexes = (
            (("source", "doc_kind", "doc_external_id", "invoice_external_id"), True),
            (("source", "invoice_external_id"), False),
        )


#: Applications whose invoice has not arrived (or was deleted): each ERP sync asks whether any wait
#: for an invoice it wrote (migration 11).
Application.add_index(Application.index(Application.source, name="application_unlinked",
                                        where=SQL('"invoice_id" IS NULL')))


class FxRate(BaseModel):
    """Units of ``base_currency`` (the reporting currency) per unit of ``currency`` from ``rate_date``."""

    base_currency = CharField(max_length=3)
    currency = CharField(max_length=3)
    rate_date = DateField()
    rate = RateField()
    source_name = CharField()  # e.g. "erp:netsuite", "file:eurofxref-hist.xml"
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("base_currency", "currency", "rate_date"), True),)


class SyncRun(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", backref="runs", index=False)
    direction = CharField(default="in")
    mode = CharField(default="incremental")  # incremental | full
    status = CharField(default=RunStatus.RUNNING.value)
    started_at = UTCDateTimeField(default=utcnow)
    finished_at = UTCDateTimeField(null=True)
    fetched = IntegerField(default=0)
    created = IntegerField(default=0)
    updated = IntegerField(default=0)
    unchanged = IntegerField(default=0)
    rejected = IntegerField(default=0)
    deleted = IntegerField(default=0)
    errors = JSONField(default=list)  # [{"object": ..., "error": ..., "detail": ...}]
    objects = JSONField(default=dict)  # per object counts
    cursor_before = JSONField(default=dict)
    cursor_after = JSONField(default=dict)
    message = TextField(null=True)
    api_calls = IntegerField(null=True)  # Salesforce runs: API requests spent (from Sforce-Limit-Info)

    class Meta:
        indexes = ((("source", "started_at"), False),)


class RejectedRecord(BaseModel):
    run = ForeignKeyField(SyncRun, on_delete="CASCADE", backref="rejects")
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    object_name = CharField()
    external_id = CharField(null=True)
    raw = JSONField()
    reasons = JSONField()  # [{"field": ..., "path": ..., "message": ...}]
    created_at = UTCDateTimeField(default=utcnow)
    resolved_at = UTCDateTimeField(null=True)  # the record later landed, or was reprocessed

    class Meta:
        indexes = ((("source", "object_name", "external_id"), False),)


class AuditLog(BaseModel):
    at = UTCDateTimeField(default=utcnow, index=True)
    actor = CharField()
    action = CharField()
    object_type = CharField()
    object_id = CharField(null=True)
    before = JSONField(null=True)
    after = JSONField(null=True)


# -- tags ---------------------------------------------------------------------------


class Tag(BaseModel):
    name = CharField(unique=True)  # lower-case slug: "strategic", "arr-100k-plus"
    description = TextField(null=True)
    created_at = UTCDateTimeField(default=utcnow)


class CustomerTag(BaseModel):
    """A tag on a customer. ``origin`` is ``manual`` or ``rule:<rule name>``; rule tags are
    recomputed on every sync, manual ones are only changed by people."""
    customer = ForeignKeyField(Customer, on_delete="CASCADE", index=False)
    tag = ForeignKeyField(Tag, on_delete="CASCADE")
    origin = CharField(default="manual")
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("customer", "tag"), True),)


# -- Salesforce: what we read, what we matched, what we pushed ------------------------


class MatchState(str, Enum):
    EXTERNAL_ID = "external_id"  # linked by the configured external-id field
    AUTO = "auto"  # linked by score above the threshold
    MANUAL = "manual"  # linked by a person: survives every sync
    REVIEW = "review"  # candidates wait in the review queue
    UNMATCHED = "unmatched"  # no candidate
    MANUAL_UNLINKED = "manual_unlinked"  # unlinked by a person: never auto-linked again


class SfUser(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    sf_id = CharField(max_length=18)
    name = CharField(null=True)
    email = CharField(null=True)
    active = BooleanField(default=True)
    modstamp = UTCDateTimeField(null=True)

    class Meta:
        indexes = ((("source", "sf_id"), True),)


class SfAccount(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    sf_id = CharField(max_length=18)
    name = CharField()
    name_key = CharField(index=True)  # normalized name (matching blocks on it)
    erp_key = CharField(null=True, index=True)  # value of the configured external-id field
    domain = CharField(null=True, index=True)  # from Website, lower-case, no "www."
    country = CharField(null=True)
    account_type = CharField(null=True)
    parent_sf_id = CharField(max_length=18, null=True)
    owner_sf_id = CharField(max_length=18, null=True)
    fields = JSONField(default=dict)  # every pulled field, for tag rules
    is_deleted = BooleanField(default=False)
    modstamp = UTCDateTimeField(null=True)

    class Meta:
        indexes = ((("source", "sf_id"), True),)


class SfOpportunity(BaseModel):
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    sf_id = CharField(max_length=18)
    account_sf_id = CharField(max_length=18, null=True, index=True)
    name = CharField(null=True)
    opp_type = CharField(null=True)
    stage = CharField(null=True)
    close_date = DateField(null=True)
    amount = MoneyField(null=True)
    currency = CharField(max_length=3, null=True)
    is_closed = BooleanField(default=False)
    is_won = BooleanField(default=False)
    is_deleted = BooleanField(default=False)
    modstamp = UTCDateTimeField(null=True)

    class Meta:
        indexes = ((("source", "sf_id"), True),)


class MatchCandidate(BaseModel):
    """A possible ERP customer ↔ Account link waiting for a person (or kept as evidence)."""
    customer = ForeignKeyField(Customer, on_delete="CASCADE", index=False)
    sf_account_id = CharField(max_length=18)
    score = FloatField()  # 0..100, rapidfuzz scale (a similarity, not money)
    reasons = JSONField(default=list)  # ["name 96", "domain acme.com", "country DE"]
    status = CharField(default="pending")  # pending | accepted | rejected
    created_at = UTCDateTimeField(default=utcnow)
    decided_at = UTCDateTimeField(null=True)
    decided_by = CharField(null=True)

    class Meta:
        indexes = ((("customer", "sf_account_id"), True), (("status", "score"), False))


class SfPushState(BaseModel):
    """Per pushed record: the hash of the last payload Salesforce acknowledged.

    A record is sent again only when its payload hash differs from ``acked_hash``;
    a failure keeps ``error`` and leaves ``acked_hash`` alone, so the next run retries it."""
    source = ForeignKeyField(Source, on_delete="CASCADE", index=False)
    object_name = CharField()  # AR_Summary__c | AR_Invoice__c
    record_key = CharField()  # the external-id value we upsert by
    customer = ForeignKeyField(Customer, null=True, on_delete="CASCADE", index=False)
    acked_hash = CharField(max_length=32, null=True)
    sf_id = CharField(max_length=18, null=True)
    error = TextField(null=True)
    attempts = IntegerField(default=0)
    acked_at = UTCDateTimeField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("source", "object_name", "record_key"), True),)



# -- people, rules, campaigns, actions, messages, activities (migration 4) --------------


class Role(str, Enum):
    ADMIN = "admin"
    COLLECTOR = "collector"
    VIEWER = "viewer"


class User(BaseModel):
    """A person using arhub: admins, collectors (customers are assigned to them by email),
    viewers. The console (login, passwords) builds on this row."""
    email = CharField(unique=True)  # lower-case
    name = CharField()
    role = CharField(default=Role.COLLECTOR.value)
    password_hash = CharField(null=True)
    active = BooleanField(default=True)
    timezone = CharField(default="UTC")
    locale = CharField(default="en")
    away_until = DateField(null=True)  # cover while away: work goes to ``cover`` until this date
    cover = ForeignKeyField("self", null=True, on_delete="SET NULL")
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)


class AssignmentRule(BaseModel):
    """A rule that sets something on matching customers, in ``priority`` order (lowest first;
    the first match wins for ``segment`` and ``collector``, every match adds for ``tag``).

    ``kind``: ``tag`` | ``segment`` | ``collector``; ``conditions``: a JSON list of
    ``{"field": ..., "op": ..., "value": ...}`` (all must hold) over customer fields (arr,
    country, billing_currency, segment, tags, sf_owner_email, account_type, ...);
    ``value``: the tag name, the segment name or the collector's email."""
    kind = CharField()
    name = CharField()
    priority = IntegerField(default=100)
    conditions = JSONField(default=list)
    value = CharField()
    enabled = BooleanField(default=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("kind", "priority"), False),)


class Template(BaseModel):
    """An admin-edited message template (Jinja2, rendered in a sandbox), one per name and language."""
    name = CharField()
    language = CharField(default="en")
    subject = TextField()
    body_text = TextField()
    body_html = TextField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)
    updated_by = CharField(null=True)

    class Meta:
        indexes = ((("name", "language"), True),)


class Campaign(BaseModel):
    """A dunning policy: who it applies to (``audience``, a JSON rule) and what it sends when
    (its steps). Each customer is in the enabled campaign of lowest ``priority`` whose audience
    it matches."""
    name = CharField(unique=True)
    description = TextField(null=True)
    priority = IntegerField(default=100)
    audience = JSONField(default=dict)
    enabled = BooleanField(default=True)
    holdout_percent = IntegerField(default=0)  # customers held out of every step (A/B baseline)
    min_invoice_amount = MoneyField(null=True)  # invoices under it (billing currency) are left out
    skip_open_renewal_days = IntegerField(null=True)  # skip while a renewal/expansion closes within N days
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)


class CampaignVariant(BaseModel):
    """An A/B variant: ``weight`` shares the non-held-out customers; steps without a variant
    belong to every variant, steps with one only to it."""
    campaign = ForeignKeyField(Campaign, backref="variants", on_delete="CASCADE")
    name = CharField()
    weight = IntegerField(default=1)

    class Meta:
        indexes = ((("campaign", "name"), True),)


class CampaignStep(BaseModel):
    campaign = ForeignKeyField(Campaign, backref="steps", on_delete="CASCADE")
    variant = ForeignKeyField(CampaignVariant, null=True, backref="steps", on_delete="CASCADE")
    position = IntegerField()
    name = CharField()
    anchor = CharField(default="due")  # issue | sent | due | previous | promise
    offset_days = IntegerField(default=0)  # negative: before the anchor
    business_days = BooleanField(default=False)
    window_start = CharField(default="09:00")  # sending window in the recipient's time zone
    window_end = CharField(default="17:00")
    channel = CharField(default="email")  # email | task
    template = CharField(null=True)  # Template.name
    attach_statement = BooleanField(default=False)
    recipient_role = CharField(default="billing")  # billing | escalation
    cc_collector = BooleanField(default=False)
    approval = JSONField(null=True)  # e.g. {"arr_gte": "100000", "expires_days": 3}

    class Meta:
        indexes = ((("campaign", "position"), False),)


class ActionStatus(str, Enum):
    PLANNED = "planned"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    TASK = "task"  # a collector task instead of an email
    SKIPPED = "skipped"
    FAILED = "failed"
    EXPIRED = "expired"


class DunningAction(BaseModel):
    """One planned step for one customer on one date, listing its invoices. ``key`` is the
    idempotency key (customer, invoices, step, variant, date): planning twice, or in two
    workers at once, inserts it once. Skips are actions too, with their ``reason``."""
    key = CharField(unique=True)
    customer = ForeignKeyField(Customer, on_delete="CASCADE", index=False)
    campaign = ForeignKeyField(Campaign, null=True, on_delete="SET NULL")
    step = ForeignKeyField(CampaignStep, null=True, on_delete="SET NULL")
    variant = ForeignKeyField(CampaignVariant, null=True, on_delete="SET NULL")
    planned_for = DateField()
    status = CharField(default=ActionStatus.PLANNED.value)
    reason = TextField(null=True)  # why skipped / failed / pending
    channel = CharField(default="email")
    invoice_ids = JSONField(default=list)
    to_address = CharField(null=True)
    cc = JSONField(default=list)
    send_after = UTCDateTimeField(null=True)  # the start of the recipient's sending window
    expires_at = UTCDateTimeField(null=True)  # pending approvals expire
    decided_by = CharField(null=True)
    decided_at = UTCDateTimeField(null=True)
    attempts = IntegerField(default=0)
    error = TextField(null=True)
    # the collector's own wording, set when approving (migration 7): plain text, already final,
    # sent as typed (never rendered by Jinja); None: the template's
    subject_override = TextField(null=True)
    body_override = TextField(null=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("customer", "planned_for"), False), (("status", "planned_for"), False))


class Message(BaseModel):
    """An email out (a dunning action, a statement, a test send) or in (a reply)."""
    direction = CharField()  # out | in
    customer = ForeignKeyField(Customer, null=True, on_delete="SET NULL")
    action = ForeignKeyField(DunningAction, null=True, on_delete="SET NULL")
    message_id = CharField(unique=True)  # RFC 5322 Message-ID, without <>
    thread_token = CharField(null=True, index=True)  # in Reply-To: routes the reply back
    in_reply_to = CharField(null=True)
    subject = TextField(null=True)
    from_address = CharField(null=True)
    to_addresses = JSONField(default=list)
    cc_addresses = JSONField(default=list)
    body_text = TextField(null=True)
    raw = TextField(null=True)  # inbound: the RFC 5322 source
    attachments = JSONField(default=list)  # [{"filename", "content_type", "size"}]
    status = CharField(default="sent")  # out: sending | sent | failed; in: routed | queued | auto_reply | unmatched
    routed_to = CharField(null=True)  # the collector's email (None: the team queue)
    matched_by = CharField(null=True)  # token | in_reply_to | invoice_number | sender | domain
    handled_at = UTCDateTimeField(null=True)
    at = UTCDateTimeField(default=utcnow, index=True)


#: Replies waiting for someone, per collector (the inbox, the workspace): a partial index of the
#: inbound messages not handled yet, a small slice of a table mostly made of outbound mail (migration 7).
Message.add_index(Message.index(Message.routed_to, name="message_inbox_pending",
                                where=SQL("\"direction\" = 'in' AND \"handled_at\" IS NULL")))


class Activity(BaseModel):
    """What people record on a customer: a note, a promise to pay (until, amount), a dispute
    (on an invoice, until resolved), a pause. Open promises and disputes hold the cadence."""
    customer = ForeignKeyField(Customer, on_delete="CASCADE")
    invoice = ForeignKeyField(Invoice, null=True, on_delete="SET NULL")
    kind = CharField()  # note | promise | dispute | pause | resume | reply
    body = TextField(null=True)
    amount = MoneyField(null=True)
    until = DateField(null=True)
    resolved_at = UTCDateTimeField(null=True)
    actor = CharField(default="system")
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("customer", "kind"), False),)


class CustomerBalance(BaseModel):
    """Today's open AR of one customer in the reporting currency, summed from the open invoices
    (``middleware.balances``, migration 6): what the console's customer list sorts and filters by
    amount on, through the indexes below, instead of grouping every open invoice per request.
    A row exists only for a customer with an open invoice; ``as_of`` is the day the overdue split
    and the bucket counts are for (refreshed when the day changes and after every ERP sync)."""
    customer = ForeignKeyField(Customer, primary_key=True, on_delete="CASCADE")
    open_reporting = MoneyField(default=0)  # Σ open_amount_reporting (an invoice without a rate: left out)
    overdue_reporting = MoneyField(default=0)  # the part due before as_of
    oldest_due = DateField(null=True)  # the earliest due date before as_of
    open_invoices = IntegerField(default=0)
    fx_missing = IntegerField(default=0)  # open invoices without a reporting amount
    n_current = IntegerField(default=0)  # open invoices per aging bucket (middleware.ar.DEFAULT_EDGES) on as_of
    n_1_30 = IntegerField(default=0)
    n_31_60 = IntegerField(default=0)
    n_61_90 = IntegerField(default=0)
    n_91 = IntegerField(default=0)
    as_of = DateField()

    class Meta:
        table_name = "customer_balance"
        indexes = ((("overdue_reporting", "customer"), False), (("open_reporting", "customer"), False),
                   (("oldest_due", "customer"), False))


MODELS = [Company, Source, SyncCursor, FieldMapping, Currency, Customer, Contact, Invoice, CreditMemo,
          Payment, Application, FxRate, SyncRun, RejectedRecord, AuditLog, Tag, CustomerTag, SfUser,
          SfAccount, SfOpportunity, MatchCandidate, SfPushState, User, AssignmentRule, Template, Campaign,
          CampaignVariant, CampaignStep, DunningAction, Message, Activity, CustomerBalance]
#: Tables added by migration 3 (Salesforce both ways); frozen in schema/0003.<dialect>.sql.
SALESFORCE_MODELS = [Tag, CustomerTag, SfUser, SfAccount, SfOpportunity, MatchCandidate, SfPushState]
#: Tables added by migration 4 (collections engine); frozen in schema/0004.<dialect>.sql.
COLLECTIONS_MODELS = [User, AssignmentRule, Template, Campaign, CampaignVariant, CampaignStep, DunningAction,
                      Message, Activity]
