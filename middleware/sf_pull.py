"""Salesforce → store: users, accounts, AR contacts and opportunities, then tags by rules.

Incremental by ``SystemModstamp`` (one cursor per sObject, advanced only after the pages it
covers are committed, re-read with an overlap), deletions through ``queryAll``
(``IsDeleted``). Accounts keep every pulled field for tag rules; contacts with a configured
AR role land in ``Contact`` (origin ``salesforce``) beside the ERP's; opportunities feed the
dunning rules ("open renewal closing within N days").
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Iterator, Protocol

from .bulk import placeholders, to_decimal, upsert
from .db import database
from .matching import domain_of, normalize_name
from .models import (
    Contact, Customer, CustomerTag, SfAccount, SfOpportunity, SfUser, Source, SyncCursor, Tag, utcnow,
)

UTC = timezone.utc
OVERLAP = timedelta(seconds=60)
PULL_ORDER = ("users", "accounts", "contacts", "opportunities")


class SalesforcePort(Protocol):
    calls: int
    api_used: int | None
    api_max: int | None

    def pull(self, sobject: str, fields: Iterable[str], since: datetime | None, *,
             include_deleted: bool = True) -> Iterator[list[dict]]: ...
    def describe(self, sobject: str) -> dict: ...


@dataclass
class PullStats:
    fetched: int = 0
    written: int = 0
    deleted: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"fetched": self.fetched, "written": self.written, "deleted": self.deleted, **self.extra}


def parse_sf_datetime(value: str | None) -> datetime | None:
    """``2026-11-23T10:15:00.000+0000`` → aware UTC datetime."""
    if not value:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) >= 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    return datetime.fromisoformat(text).astimezone(UTC)


def _date(value: str | None) -> date | None:
    return date.fromisoformat(value[:10]) if value else None


def _money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _dig(record: dict, path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class SalesforcePull:
    def __init__(self, source: Source, connector: SalesforcePort, *,
                 progress: Callable[[str, int], None] | None = None):
        self.source = source
        self.connector = connector
        self.pull_config = source.config.get("pull") or {}
        self.progress = progress or (lambda name, n: None)

    def run(self, full: bool = False, kinds: Iterable[str] = PULL_ORDER) -> dict[str, PullStats]:
        out: dict[str, PullStats] = {}
        for kind in kinds:
            if kind in self.pull_config:
                out[kind] = self.pull_kind(kind, full)
        return out

    # ---------------------------------------------------------------- one sObject
    def pull_kind(self, kind: str, full: bool) -> PullStats:
        cfg = self.pull_config[kind]
        sobject = cfg["object"]
        fields = list((cfg.get("fields") or {}).values()) + list(cfg.get("extra_fields") or [])
        if cfg.get("external_id_field"):
            fields.append(cfg["external_id_field"])
        if cfg.get("role_field"):
            fields.append(cfg["role_field"])
        cursor = SyncCursor.get_or_none(SyncCursor.source == self.source, SyncCursor.object_name == sobject)
        since = None if full or cursor is None or cursor.cursor is None else cursor.cursor - OVERLAP
        stats = PullStats()
        newest = cursor.cursor if cursor is not None else None
        writer = getattr(self, f"_write_{kind}")
        for page in self.connector.pull(sobject, fields, since):
            stats.fetched += len(page)
            with database.atomic():
                written, deleted = writer(cfg, page)
            stats.written += written
            stats.deleted += deleted
            stamps = [parse_sf_datetime(r.get("SystemModstamp")) for r in page]
            stamps = [s for s in stamps if s is not None]
            if stamps and (newest is None or max(stamps) > newest):
                newest = max(stamps)
            self.progress(sobject, stats.fetched)
        with database.atomic():  # after every page is committed
            if cursor is None:
                SyncCursor.create(source=self.source, object_name=sobject, cursor=newest)
            else:
                SyncCursor.update(cursor=newest, updated_at=utcnow()).where(SyncCursor.id == cursor.id).execute()
        return stats

    def _write_users(self, cfg: dict, page: list[dict]) -> tuple[int, int]:
        f = cfg.get("fields") or {}
        rows = [(self.source.id, r["Id"], _dig(r, f.get("name", "Name")), _dig(r, f.get("email", "Email")),
                 bool(_dig(r, f.get("active", "IsActive"))) and not r.get("IsDeleted"),
                 parse_sf_datetime(r.get("SystemModstamp"))) for r in page]
        upsert(SfUser, ("source_id", "sf_id", "name", "email", "active", "modstamp"), rows,
               ("source_id", "sf_id"), ("name", "email", "active", "modstamp"))
        return len(rows), sum(1 for r in page if r.get("IsDeleted"))

    def _write_accounts(self, cfg: dict, page: list[dict]) -> tuple[int, int]:
        f = cfg.get("fields") or {}
        ext = cfg.get("external_id_field")
        rows = []
        for r in page:
            name = _dig(r, f.get("name", "Name")) or ""
            erp_key = _dig(r, ext) if ext else None
            kept = {k: v for k, v in r.items() if k not in ("attributes",) and not isinstance(v, dict)}
            rows.append((self.source.id, r["Id"], name, normalize_name(name), (str(erp_key).strip() or None)
                         if erp_key is not None else None, domain_of(_dig(r, f.get("website", "Website")) or ""),
                         _dig(r, f.get("country", "BillingCountryCode")), _dig(r, f.get("type", "Type")),
                         _dig(r, f.get("parent", "ParentId")), _dig(r, f.get("owner", "OwnerId")),
                         json.dumps(kept, default=str, sort_keys=True), bool(r.get("IsDeleted")),
                         parse_sf_datetime(r.get("SystemModstamp"))))
        cols = ("source_id", "sf_id", "name", "name_key", "erp_key", "domain", "country", "account_type",
                "parent_sf_id", "owner_sf_id", "fields", "is_deleted", "modstamp")
        upsert(SfAccount, cols, rows, ("source_id", "sf_id"), cols[2:])
        return len(rows), sum(1 for r in page if r.get("IsDeleted"))

    def _write_contacts(self, cfg: dict, page: list[dict]) -> tuple[int, int]:
        f = cfg.get("fields") or {}
        roles = cfg.get("roles") or {}
        role_field = cfg.get("role_field")
        now = utcnow()
        rows, deleted = [], 0
        for r in page:
            role = roles.get(_dig(r, role_field)) if role_field else None
            gone = bool(r.get("IsDeleted")) or role is None  # not (or no longer) an AR contact
            deleted += gone
            first, last = _dig(r, f.get("first_name", "FirstName")), _dig(r, f.get("last_name", "LastName"))
            name = " ".join(p for p in (first, last) if p) or None
            email = _dig(r, f.get("email", "Email"))
            record = {"name": name, "email": email, "phone": _dig(r, f.get("phone", "Phone")), "role": role}
            digest = hashlib.md5(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
            rows.append((self.source.id, r["Id"], _dig(r, f.get("account", "AccountId")) or "", name,
                         (email or "").strip().lower() or None, record["phone"], role or "other", "salesforce",
                         digest, now if gone else None, now))
        cols = ("source_id", "external_id", "customer_external_id", "name", "email", "phone", "role", "origin",
                "content_hash", "deleted_at", "updated_at")
        upsert(Contact, cols, rows, ("source_id", "external_id"), cols[2:])
        return len(rows), deleted

    def _write_opportunities(self, cfg: dict, page: list[dict]) -> tuple[int, int]:
        f = cfg.get("fields") or {}
        rows = [(self.source.id, r["Id"], _dig(r, f.get("account", "AccountId")), _dig(r, f.get("name", "Name")),
                 _dig(r, f.get("type", "Type")), _dig(r, f.get("stage", "StageName")),
                 _date(_dig(r, f.get("close_date", "CloseDate"))), _money(_dig(r, f.get("amount", "Amount"))),
                 _dig(r, f.get("currency", "CurrencyIsoCode")), bool(_dig(r, f.get("closed", "IsClosed"))),
                 bool(_dig(r, f.get("won", "IsWon"))), bool(r.get("IsDeleted")),
                 parse_sf_datetime(r.get("SystemModstamp"))) for r in page]
        cols = ("source_id", "sf_id", "account_sf_id", "name", "opp_type", "stage", "close_date", "amount", "currency",
                "is_closed", "is_won", "is_deleted", "modstamp")
        upsert(SfOpportunity, cols, rows, ("source_id", "sf_id"), cols[2:])
        return len(rows), sum(1 for r in page if r.get("IsDeleted"))


# ----------------------------------------------------------------------------- after matching
def link_contacts(sf_source: Source) -> int:
    """Point Salesforce contacts at the customer linked to their account (one of them, when
    several ERP customers share an account)."""
    sql = ('UPDATE "contact" SET "customer_id" = (SELECT MIN(c."id") FROM "customer" c WHERE c."sf_account_id" = '
           '"contact"."customer_external_id" AND c."deleted_at" IS NULL) WHERE "source_id" = ' + placeholders(1))
    with database.atomic():
        return database.execute_sql(sql, (sf_source.id,)).rowcount


def _rule_matches(rule: dict, fields: dict) -> bool:
    value = fields.get(rule["field"])
    op, want = rule.get("op", "="), rule.get("value")
    if op in ("=", "=="):
        return value is not None and str(value) == str(want)
    if op == "!=":
        return value is None or str(value) != str(want)
    if op == "in":
        return value is not None and str(value) in {str(v) for v in want}
    if op == "contains":
        return value is not None and str(want).lower() in str(value).lower()
    if op in (">=", ">", "<=", "<"):
        number, bound = _money(value), _money(want)
        if number is None or bound is None:
            return False
        return {">=": number >= bound, ">": number > bound, "<=": number <= bound, "<": number < bound}[op]
    raise ValueError(f"tag rule {rule.get('name')!r}: unknown op {op!r} (=, !=, in, contains, >=, >, <=, <)")


def apply_tag_rules(sf_source: Source) -> dict[str, int]:
    """Recompute the ``rule:sf:<name>`` tags of linked customers from their account's fields.
    Manual tags and other rules' tags are never touched. Returns ``{"added": n, "removed": m}``."""
    rules = sf_source.config.get("tags") or []
    origin_prefix = "rule:sf:"
    tag_ids = {}
    for rule in rules:
        tag, _ = Tag.get_or_create(name=rule["name"])
        tag_ids[rule["name"]] = tag.id
    wanted: set[tuple[int, int]] = set()
    origins: dict[tuple[int, int], str] = {}
    query = (Customer.select(Customer.id, SfAccount.fields)
             .join(SfAccount, on=(SfAccount.sf_id == Customer.sf_account_id))
             .where(SfAccount.source == sf_source.id, ~SfAccount.is_deleted, Customer.deleted_at.is_null())
             .tuples())
    for customer_id, fields in query.iterator():
        data = fields if isinstance(fields, dict) else json.loads(fields or "{}")
        for rule in rules:
            if _rule_matches(rule, data):
                key = (customer_id, tag_ids[rule["name"]])
                wanted.add(key)
                origins[key] = origin_prefix + rule["name"]
    existing = {(c, t): o for c, t, o in CustomerTag.select(CustomerTag.customer, CustomerTag.tag, CustomerTag.origin)
                .tuples().iterator()}
    stale = [k for k, o in existing.items() if o.startswith(origin_prefix) and k not in wanted]
    new = [(c, t, origins[(c, t)], utcnow()) for (c, t) in wanted if (c, t) not in existing]
    with database.atomic():
        for start in range(0, len(stale), 400):
            part = stale[start:start + 400]
            cond = " OR ".join(['("customer_id" = {0} AND "tag_id" = {0})'.format(placeholders(1))] * len(part))
            database.execute_sql(f'DELETE FROM "customer_tag" WHERE {cond}', [v for pair in part for v in pair])
        upsert(CustomerTag, ("customer_id", "tag_id", "origin", "created_at"), new, ("customer_id", "tag_id"), ())
    return {"added": len(new), "removed": len(stale)}


# ----------------------------------------------------------------------------- reads for others
def merged_contacts(customer: Customer) -> list[dict]:
    """The customer's AR contacts from the ERP and from its Salesforce account, one per email
    (Salesforce's role wins when both have the same person: it is where sales keeps it current)."""
    query = Contact.select().where(Contact.deleted_at.is_null() & (
        (Contact.customer == customer.id) |
        ((Contact.origin == "salesforce") & (Contact.customer_external_id == (customer.sf_account_id or "-")))))
    by_email: dict[str, dict] = {}
    for c in sorted(query, key=lambda c: (c.origin != "erp", c.id)):  # ERP first, Salesforce overrides
        key = (c.email or f"#{c.id}").lower()
        merged = by_email.get(key, {})
        merged.update({k: v for k, v in {"name": c.name, "email": c.email, "phone": c.phone}.items() if v})
        if c.role in ("billing", "escalation") or "role" not in merged:
            merged["role"] = c.role
        merged.setdefault("origins", [])
        if c.origin not in merged["origins"]:
            merged["origins"].append(c.origin)
        by_email[key] = merged
    return sorted(by_email.values(), key=lambda m: (m.get("role") != "billing", m.get("role") != "escalation",
                                                    m.get("email") or ""))


def open_opportunities(customer_ids: Iterable[int] | None = None, *, as_of: date, within_days: int | None = None,
                       types: Iterable[str] | None = None) -> dict[int, list[dict]]:
    """``{customer id: [open opportunity]}`` for linked customers, optionally only those closing
    within ``within_days`` of ``as_of`` and of ``types`` (e.g. Renewal, Expansion)."""
    query = (SfOpportunity.select(Customer.id, SfOpportunity.sf_id, SfOpportunity.name, SfOpportunity.opp_type,
                                  SfOpportunity.stage, SfOpportunity.close_date, SfOpportunity.amount,
                                  SfOpportunity.currency)
             .join(Customer, on=(Customer.sf_account_id == SfOpportunity.account_sf_id))
             .where(~SfOpportunity.is_closed, ~SfOpportunity.is_deleted))
    if customer_ids is not None:
        query = query.where(Customer.id.in_(list(customer_ids)))
    if within_days is not None:
        query = query.where(SfOpportunity.close_date <= as_of + timedelta(days=within_days))
    if types is not None:
        query = query.where(SfOpportunity.opp_type.in_(list(types)))
    out: dict[int, list[dict]] = {}
    for cid, sf_id, name, opp_type, stage, close_date, amount, currency in query.tuples().iterator():
        out.setdefault(cid, []).append({"id": sf_id, "name": name, "type": opp_type, "stage": stage,
                                        "close_date": close_date, "amount": to_decimal(amount), "currency": currency})
    return out


def account_owner(customer: Customer) -> dict | None:
    """The Salesforce owner (rep) of the customer's linked account: ``{"id", "name", "email"}``."""
    if not customer.sf_account_id:
        return None
    row = (SfUser.select(SfUser.sf_id, SfUser.name, SfUser.email, SfUser.active)
           .join(SfAccount, on=((SfAccount.owner_sf_id == SfUser.sf_id) & (SfAccount.source == SfUser.source)))
           .where(SfAccount.sf_id == customer.sf_account_id).tuples().first())
    return None if row is None else {"id": row[0], "name": row[1], "email": row[2], "active": row[3]}
