"""The collector workspace's reads: whose work is mine today, my accounts by priority, my
approvals, my replies. Plain functions over the store (SQL aggregation, a fixed number of
queries per page whatever its size: no query per row).

**Priority** of an account = Σ over its overdue open invoices of (open amount in the reporting
currency × days past due) — "money-days". It equals *overdue amount × weighted age*, where the
weighted age is the amount-weighted mean of the days past due (Σ aᵢ·dᵢ / Σ aᵢ): 10,000 overdue
60 days (600,000) comes before 50,000 overdue 5 days (250,000), and one large invoice two days
late does not outrank a small one a year late by amount alone. Invoices without a reporting
amount (no FX rate) are left out of the figure and counted (``fx_missing``), never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from peewee import JOIN

from middleware.ar import money_from_sql, sql_days, sql_money
from middleware.bulk import placeholders
from middleware.db import database
from middleware.dunning.base import OPEN_STATUSES as OPEN_ACTION_STATUSES
from middleware.models import (
    ActionStatus, Activity, CampaignStep, Customer, DunningAction, Message, User,
)
from middleware.people import cover_map

ZERO = Decimal(0)
OPEN = "open"


# ------------------------------------------------------------------------------- whose work


@dataclass
class Scope:
    """Whose work ``collector`` does on ``on``: their own book unless they are away, plus the
    books of colleagues whose cover chain ends at them."""

    collector: str
    on: date
    emails: list[str]  # the Customer.collector values whose accounts are this person's today
    covering: list[User] = field(default_factory=list)  # colleagues away, covered by this person
    me: User | None = None
    my_cover: str | None = None  # while I am away: who handles my work (None: the team queue)
    away: bool = False


def scope_for(collector: str, on: date) -> Scope:
    collector = collector.strip().lower()
    moved = cover_map(on)  # {unavailable user: who handles their work}
    covered = sorted(email for email, target in moved.items() if target == collector and email != collector)
    me = User.get_or_none(User.email == collector)
    away = collector in moved
    emails = ([] if away else [collector]) + covered
    covering = list(User.select().where(User.email.in_(covered)).order_by(User.name)) if covered else []
    return Scope(collector, on, emails, covering, me, moved.get(collector) if away else None, away)


# ------------------------------------------------------------------------------- SQL helpers


def _as_date(value) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _as_datetime(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


# ------------------------------------------------------------------------------- accounts


@dataclass
class Account:
    id: int
    name: str
    number: str | None
    billing_currency: str
    collector: str | None
    overdue_reporting: Decimal = ZERO
    priority: Decimal = ZERO  # money-days (reporting currency × days)
    oldest_due: date | None = None
    oldest_days: int = 0
    fx_missing: int = 0
    open_reporting: Decimal = ZERO
    open_billing: dict = field(default_factory=dict)  # currency -> open amount
    overdue_billing: dict = field(default_factory=dict)  # currency -> overdue amount
    last_contact: datetime | None = None
    last_contact_direction: str | None = None
    next_step: str | None = None
    next_date: date | None = None
    next_status: str | None = None
    paused_until: date | None = None
    paused_reason: str | None = None
    promise_until: date | None = None
    disputes: int = 0
    waiting_replies: int = 0

    @property
    def weighted_age(self) -> Decimal | None:
        """Amount-weighted mean days past due (priority / overdue)."""
        if not self.overdue_reporting:
            return None
        return (self.priority / self.overdue_reporting).quantize(Decimal("0.1"))

    @property
    def paused(self) -> bool:
        return self.paused_until is not None


def count_accounts(emails: list[str]) -> int:
    if not emails:
        return 0
    return Customer.select().where(Customer.deleted_at.is_null(), Customer.collector.in_(emails)).count()


def accounts(emails: list[str], on: date, *, limit: int = 50, offset: int = 0) -> list[Account]:
    """The live customers assigned to ``emails``, highest priority first (then overdue amount,
    name), one page. One aggregate query for the ordering, then a few ``IN (page ids)`` queries."""
    if not emails:
        return []
    ph = placeholders(1)
    coll = placeholders(len(emails))
    amount = sql_money('i."open_amount_reporting"')
    days = sql_days(ph, 'i."due_date"')
    sql = (
        f'SELECT c."id", c."name", c."number", c."billing_currency", c."collector", c."paused_until", '
        f'c."paused_reason", a."overdue", a."priority", a."oldest_due", a."fx_missing" '
        f'FROM "customer" c LEFT JOIN ('
        f'  SELECT i."customer_id" AS cid, SUM({amount}) AS "overdue", SUM({amount} * {days}) AS "priority", '
        f'  MIN(i."due_date") AS "oldest_due", '
        f'  SUM(CASE WHEN i."open_amount_reporting" IS NULL THEN 1 ELSE 0 END) AS "fx_missing" '
        f'  FROM "invoice" i JOIN "customer" c2 ON c2."id" = i."customer_id" '
        f'  WHERE c2."collector" IN ({coll}) AND c2."deleted_at" IS NULL AND i."deleted_at" IS NULL '
        f'  AND i."status" = {ph} AND i."open_amount" > 0 AND i."due_date" < {ph} '
        f'  GROUP BY i."customer_id") a ON a.cid = c."id" '
        f'WHERE c."collector" IN ({coll}) AND c."deleted_at" IS NULL '
        f'ORDER BY COALESCE(a."priority", 0) DESC, COALESCE(a."overdue", 0) DESC, c."name", c."id" '
        f'LIMIT {int(limit)} OFFSET {int(offset)}')
    params = [on, *emails, OPEN, on, *emails]
    rows: list[Account] = []
    for (cid, name, number, currency, collector, paused_until, paused_reason, overdue, priority, oldest,
         fx_missing) in database.execute_sql(sql, params).fetchall():
        oldest = _as_date(oldest)
        paused_until = _as_date(paused_until)
        rows.append(Account(
            id=cid, name=name, number=number, billing_currency=currency, collector=collector,
            overdue_reporting=money_from_sql(overdue).quantize(Decimal("0.01")),
            priority=money_from_sql(priority).quantize(Decimal("0.01")), oldest_due=oldest,
            oldest_days=(on - oldest).days if oldest else 0, fx_missing=int(fx_missing or 0),
            paused_until=paused_until if paused_until and paused_until >= on else None,
            paused_reason=paused_reason if paused_until and paused_until >= on else None))
    _fill_details(rows, on)
    return rows


def _fill_details(rows: list[Account], on: date) -> None:
    """Open and overdue amounts per currency, last contact, next planned step, promises,
    disputes and waiting replies for one page of accounts: one query each."""
    if not rows:
        return
    by_id = {r.id: r for r in rows}
    ids = list(by_id)
    ph = placeholders(1)
    idp = placeholders(len(ids))
    billing, reporting = sql_money('i."open_amount"'), sql_money('i."open_amount_reporting"')
    sql = (f'SELECT i."customer_id", i."currency", SUM({billing}), SUM({reporting}), '
           f'SUM(CASE WHEN i."due_date" < {ph} THEN {billing} ELSE 0 END) '
           f'FROM "invoice" i WHERE i."customer_id" IN ({idp}) AND i."deleted_at" IS NULL AND i."status" = {ph} '
           f'AND i."open_amount" > 0 GROUP BY i."customer_id", i."currency"')
    for cid, currency, open_amount, open_reporting, overdue in database.execute_sql(sql, [on, *ids, OPEN]).fetchall():
        row = by_id[cid]
        row.open_billing[currency] = money_from_sql(open_amount)
        row.open_reporting += money_from_sql(open_reporting)
        if money_from_sql(overdue):
            row.overdue_billing[currency] = money_from_sql(overdue)
    for row in rows:
        row.open_reporting = row.open_reporting.quantize(Decimal("0.01"))
    # last contact: the newest message in or out (Message.customer is indexed)
    sql = (f'SELECT m."customer_id", m."direction", m."at" FROM "message" m JOIN ('
           f'SELECT "customer_id" AS cid, MAX("at") AS last FROM "message" WHERE "customer_id" IN ({idp}) '
           f'GROUP BY "customer_id") x ON x.cid = m."customer_id" AND x.last = m."at"')
    for cid, direction, at in database.execute_sql(sql, ids).fetchall():
        at = _as_datetime(at)
        row = by_id[cid]
        if row.last_contact is None or at > row.last_contact:
            row.last_contact, row.last_contact_direction = at, direction
    # next planned step: the earliest open action (planned, waiting for approval, approved, task)
    upcoming = (DunningAction.select(DunningAction.customer, DunningAction.planned_for, DunningAction.status,
                                     CampaignStep.name)
                .join(CampaignStep, on=(DunningAction.step == CampaignStep.id), join_type=JOIN.LEFT_OUTER)
                .where(DunningAction.customer.in_(ids),
                       DunningAction.status.in_(list(OPEN_ACTION_STATUSES) + [ActionStatus.QUEUED.value]))
                .order_by(DunningAction.planned_for, DunningAction.id).tuples())
    for cid, planned_for, status, step_name in upcoming:
        row = by_id[cid]
        if row.next_date is None:
            row.next_date, row.next_status, row.next_step = planned_for, status, step_name or "(step deleted)"
    # open promises and disputes (Activity has an index on (customer, kind))
    for cid, kind, until in (Activity.select(Activity.customer, Activity.kind, Activity.until)
                             .where(Activity.customer.in_(ids), Activity.kind.in_(["promise", "dispute"]),
                                    Activity.resolved_at.is_null()).tuples()):
        row = by_id[cid]
        if kind == "dispute":
            row.disputes += 1
        elif until is not None and until >= on and (row.promise_until is None or until > row.promise_until):
            row.promise_until = until
    for cid, _message in (Message.select(Message.customer, Message.id)
                       .where(Message.customer.in_(ids), Message.direction == "in", Message.handled_at.is_null(),
                              Message.status.in_(["routed", "queued"])).tuples()):
        by_id[cid].waiting_replies += 1


# ------------------------------------------------------------------------------- approvals


def approvals(emails: list[str], *, limit: int = 50, offset: int = 0):
    """Dunning emails waiting for approval on the accounts of ``emails``, soonest expiry first
    (a query of ``DunningAction`` with the customer joined)."""
    if not emails:
        return DunningAction.select().where(DunningAction.id.is_null()), 0
    query = (DunningAction.select(DunningAction, Customer)
             .join(Customer, on=(DunningAction.customer == Customer.id))
             .where(DunningAction.status == ActionStatus.PENDING_APPROVAL.value, Customer.collector.in_(emails),
                    Customer.deleted_at.is_null()))
    total = query.count()
    return (query.order_by(DunningAction.expires_at.asc(nulls="LAST"), DunningAction.id)
            .limit(limit).offset(offset)), total


# ------------------------------------------------------------------------------- replies


def replies_for(collector: str, on: date):
    """Unhandled replies routed to ``collector`` or to a colleague whose work ``collector``
    handles today (the reply goes where its ``routed_to`` is covered)."""
    moved = cover_map(on)
    me = collector.strip().lower()
    owners = ([] if me in moved else [me]) + [e for e, t in moved.items() if t == me and e != me]
    if not owners:
        return Message.select().where(Message.id.is_null())
    return (Message.select(Message, Customer)
            .join(Customer, on=(Message.customer == Customer.id), join_type=JOIN.LEFT_OUTER)
            .where(Message.direction == "in", Message.handled_at.is_null(), Message.status == "routed",
                   Message.routed_to.in_(owners))
            .order_by(Message.at, Message.id))


def team_replies(*, unmatched: bool = False):
    status = "unmatched" if unmatched else "queued"
    return (Message.select(Message, Customer)
            .join(Customer, on=(Message.customer == Customer.id), join_type=JOIN.LEFT_OUTER)
            .where(Message.direction == "in", Message.handled_at.is_null(), Message.status == status)
            .order_by(Message.at, Message.id))
