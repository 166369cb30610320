"""Dunning: campaigns (audience + steps) → planned actions, deterministic and idempotent.

Who: every customer with open invoices is in exactly one enabled campaign, the one of lowest
``priority`` (then lowest id) whose ``audience`` rule it matches (:func:`check_audience`).
What and when: each step of that campaign (and of the customer's A/B variant) counts
``offset_days`` (calendar or business days) from its anchor (issue, sent, due, the previous
step, a promise to pay); the action is due on the first sending day on or after that date
(the company's business days minus its holidays) and is sent from the start of the step's
window in the recipient's time zone. One action per customer, step and day lists all the
invoices at that step. Exclusions are actions too (status ``skipped`` with a human reason),
so the console's timeline shows why nothing went out.

:func:`plan` loads what it needs in a few bulk queries, computes in dicts, and inserts with
``ON CONFLICT (key) DO NOTHING``: the key hashes (customer, sorted invoice ids, step,
variant, date), so planning twice, or in two processes at once, writes each action once.
See docs/dunning.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
import time as _time
import zoneinfo
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Sequence

from peewee import chunked

from .bulk import placeholders, to_decimal, upsert
from .db import database, is_postgres
from .fx import RateBook
from .models import (
    ActionStatus, AuditLog, Campaign, CampaignStep, CampaignVariant, Company, Contact, Customer,
    DunningAction, Invoice, Template, User, utcnow,
)
from .sf_pull import open_opportunities

UTC = timezone.utc
ZERO = Decimal(0)
CENT = Decimal("0.0001")
OPPORTUNITY_TYPES = ("Renewal", "Expansion")
ANCHORS = ("issue", "sent", "due", "previous", "promise")
FIXED_ANCHORS = ("issue", "sent", "due")
CATCH_UP_DAYS = 3
CHUNK = 900
_PLAN_LOCK = 0x64756E6E  # "dunn": serialises the write phase of concurrent planners on PostgreSQL
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: statuses an action can be skipped from by a person
OPEN_STATUSES = (ActionStatus.PLANNED.value, ActionStatus.PENDING_APPROVAL.value, ActionStatus.APPROVED.value,
                 ActionStatus.TASK.value)


class DunningError(ValueError):
    """A campaign, audience rule or action request that cannot be honoured (the message says why)."""


class ActionStateError(DunningError):
    """An approval, rejection or skip on an action that is not (or no longer) in a state that allows it."""


# ---------------------------------------------------------------------------------- calendar
class Calendar:
    """Sending days: the company's business days (``"Mon,Tue,..."``) minus its holidays (ISO dates)."""

    def __init__(self, business_days: str = "Mon,Tue,Wed,Thu,Fri", holidays: Iterable[str | date] = ()):
        names = [p.strip().lower()[:3] for p in (business_days or "").split(",") if p.strip()]
        unknown = [n for n in names if n not in WEEKDAYS]
        if unknown or not names:
            raise DunningError(f"company business_days {business_days!r}: expected names like Mon,Tue,...")
        self.weekdays = frozenset(WEEKDAYS.index(n) for n in names)
        self.holidays = frozenset(h if isinstance(h, date) else date.fromisoformat(str(h)) for h in holidays or ())

    @classmethod
    def of(cls, company: Company) -> "Calendar":
        return cls(company.business_days, company.holidays or ())

    def is_sending_day(self, day: date) -> bool:
        return day.weekday() in self.weekdays and day not in self.holidays

    def next_sending_day(self, day: date) -> date:
        """The first sending day on or after ``day``."""
        for _ in range(400):
            if self.is_sending_day(day):
                return day
            day += timedelta(days=1)
        raise DunningError("no sending day within 400 days: check the company's business days and holidays")

    def add_sending_days(self, day: date, n: int) -> date:
        """``n`` sending days after (negative: before) ``day``."""
        step = 1 if n >= 0 else -1
        for _ in range(abs(n)):
            day += timedelta(days=step)
            while not self.is_sending_day(day):
                day += timedelta(days=step)
        return day

    def step_day(self, anchor: date, offset: int, business: bool) -> date:
        """When a step anchored on ``anchor`` is due: the first sending day ≥ anchor + offset."""
        day = self.add_sending_days(anchor, offset) if business else anchor + timedelta(days=offset)
        return self.next_sending_day(day)


def window_start_utc(day: date, window_start: str, tz_name: str | None, fallback_tz: str = "UTC") -> datetime:
    """``window_start`` ("HH:MM") on ``day`` in ``tz_name`` (else ``fallback_tz``), as aware UTC."""
    zone = _zone(tz_name) or _zone(fallback_tz) or UTC
    hour, minute = (int(p) for p in (window_start or "09:00").split(":")[:2])
    return datetime.combine(day, time(hour, minute), tzinfo=zone).astimezone(UTC)


_ZONES: dict[str, Any] = {}


def _zone(name: str | None):
    if not name:
        return None
    if name not in _ZONES:
        try:
            _ZONES[name] = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            _ZONES[name] = None
    return _ZONES[name]


# ---------------------------------------------------------------------------------- audience
_RANGE_OPS = {"gte": ("≥", lambda a, b: a >= b), "gt": (">", lambda a, b: a > b),
              "lte": ("≤", lambda a, b: a <= b), "lt": ("<", lambda a, b: a < b)}
_LIST_KEYS = ("tags_any", "tags_all", "tags_none", "segments", "currencies", "countries")
AUDIENCE_KEYS = frozenset(_LIST_KEYS) | {f"{f}_{op}" for f in ("arr", "balance") for op in _RANGE_OPS} | {
    "open_opportunity"}


@dataclass(frozen=True)
class Check:
    """One condition of a rule, with what it wanted and what the customer has."""
    name: str
    wanted: str
    actual: str
    ok: bool

    def __str__(self) -> str:
        return f"{self.name}: {self.actual} (wanted {self.wanted}) → {'yes' if self.ok else 'no'}"


class Facts:
    """What audience and approval rules look at, for one customer on one day. ``balance`` (open
    amount in reporting currency; None: unknown, a rate is missing) may be given as a function,
    computed on first use: only customers that reach a rule on the balance pay for it."""
    __slots__ = ("customer_id", "name", "arr", "segment", "country", "currency", "tags", "_balance",
                 "opportunities", "as_of")

    def __init__(self, customer_id: int, name: str = "", arr: Decimal | None = None, segment: str | None = None,
                 country: str | None = None, currency: str | None = None, tags: frozenset = frozenset(),
                 balance: Decimal | None | Callable[[], Decimal | None] = None, opportunities: list | None = None,
                 as_of: date | None = None):
        self.customer_id, self.name, self.arr, self.segment = customer_id, name, arr, segment
        self.country, self.currency, self.tags, self._balance = country, currency, tags, balance
        self.opportunities, self.as_of = opportunities or [], as_of

    @property
    def balance(self) -> Decimal | None:
        if callable(self._balance):
            self._balance = self._balance()
        return self._balance


def validate_audience(rule: dict | None, *, allow: Iterable[str] = ()) -> dict:
    """The rule, checked: unknown keys and malformed values raise :class:`DunningError` (a typo
    must not silently match every customer). ``{}`` matches everyone."""
    rule = dict(rule or {})
    extra = set(allow)
    for key, value in rule.items():
        if key in extra:
            continue
        if key not in AUDIENCE_KEYS:
            raise DunningError(f"audience: unknown condition {key!r} (known: {', '.join(sorted(AUDIENCE_KEYS))})")
        if key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DunningError(f"audience: {key} must be a list of strings, got {value!r}")
        elif key == "open_opportunity":
            if not isinstance(value, dict) or set(value) - {"within_days", "types"} or not isinstance(
                    value.get("within_days"), int):
                raise DunningError('audience: open_opportunity must be {"within_days": N, "types": [...]}')
        else:
            try:
                Decimal(str(value))
            except InvalidOperation:
                raise DunningError(f"audience: {key} must be a number, got {value!r}") from None
    return rule


def _num(value: Decimal) -> str:
    """A Decimal without trailing zeros and never in exponent form: 150000.0000 → 150000."""
    return format(value.normalize(), "f")


def _fmt(value) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, Decimal):
        return _num(value)
    if isinstance(value, (set, frozenset, list, tuple)):
        return "[" + ", ".join(sorted(map(str, value))) + "]" if value else "none"
    return str(value)


def check_audience(rule: dict | None, facts: Facts, *, details: bool = False,
                   ignore: Iterable[str] = ()) -> tuple[bool, list[Check]]:
    """Whether ``facts`` match ``rule`` (every condition must hold). With ``details`` every
    condition is evaluated and returned as a :class:`Check`; without, evaluation stops at the
    first failure and the list is empty (the planner's fast path)."""
    checks: list[Check] = []
    ok_all = True
    skip = set(ignore)
    for key, want in (rule or {}).items():
        if key in skip:
            continue
        ok, wanted, actual = _check_one(key, want, facts)
        ok_all = ok_all and ok
        if details:
            checks.append(Check(key, wanted, actual, ok))
        elif not ok:
            return False, checks
    return ok_all, checks


def _check_one(key: str, want, f: Facts) -> tuple[bool, str, str]:
    if key == "tags_any":
        return bool(f.tags & set(want)), f"any of {_fmt(want)}", _fmt(f.tags)
    if key == "tags_all":
        return set(want) <= f.tags, f"all of {_fmt(want)}", _fmt(f.tags)
    if key == "tags_none":
        return not (f.tags & set(want)), f"none of {_fmt(want)}", _fmt(f.tags)
    if key == "segments":
        return f.segment in want, f"one of {_fmt(want)}", _fmt(f.segment)
    if key == "currencies":
        return (f.currency or "").upper() in {w.upper() for w in want}, f"one of {_fmt(want)}", _fmt(f.currency)
    if key == "countries":
        return (f.country or "").upper() in {w.upper() for w in want}, f"one of {_fmt(want)}", _fmt(f.country)
    if key == "open_opportunity":
        days, types = want["within_days"], set(want.get("types") or OPPORTUNITY_TYPES)
        limit = f.as_of + timedelta(days=days) if f.as_of else None
        hits = [o for o in f.opportunities if o["type"] in types and o["close_date"] is not None
                and limit is not None and o["close_date"] <= limit]
        actual = ", ".join(f"{o['type']} '{o['name']}' closing {o['close_date']}" for o in hits) or "none"
        return bool(hits), f"an open {'/'.join(sorted(types))} closing within {days} days", actual
    attr, op = key.rsplit("_", 1)
    symbol, compare = _RANGE_OPS[op]
    value = f.arr if attr == "arr" else f.balance
    bound = Decimal(str(want))
    return value is not None and compare(value, bound), f"{symbol} {_num(bound)}", _fmt(value)


def compile_audience(rule: dict | None, *, ignore: Iterable[str] = ()) -> Callable[[Facts], bool]:
    """A predicate equal to ``check_audience(rule, facts)[0]`` without building any text: the
    planner runs it for every candidate customer and campaign."""
    tests: list[Callable[[Facts], bool]] = []
    skip = set(ignore)
    costly = ("balance_", "open_opportunity")  # evaluated last: a cheap condition that fails spares them
    for key, want in sorted((rule or {}).items(), key=lambda kv: kv[0].startswith(costly)):
        if key in skip:
            continue
        if key in ("tags_any", "tags_all", "tags_none", "segments"):
            wanted = frozenset(want)
            tests.append({"tags_any": lambda f, w=wanted: not w.isdisjoint(f.tags),
                          "tags_all": lambda f, w=wanted: w <= f.tags,
                          "tags_none": lambda f, w=wanted: w.isdisjoint(f.tags),
                          "segments": lambda f, w=wanted: f.segment in w}[key])
        elif key in ("currencies", "countries"):
            wanted = frozenset(w.upper() for w in want)
            attr = "currency" if key == "currencies" else "country"
            tests.append(lambda f, w=wanted, a=attr: (getattr(f, a) or "").upper() in w)
        elif key == "open_opportunity":
            tests.append(lambda f, w=want: _check_one("open_opportunity", w, f)[0])
        else:
            attr, op = key.rsplit("_", 1)
            compare, bound = _RANGE_OPS[op][1], Decimal(str(want))
            tests.append(lambda f, a=attr, c=compare, b=bound: (
                (f.arr if a == "arr" else f.balance) is not None and c(f.arr if a == "arr" else f.balance, b)))
    if not tests:
        return lambda f: True
    if len(tests) == 1:
        return tests[0]
    return lambda f: all(t(f) for t in tests)


def _describe(check: Check) -> str:
    """``ARR 150000 ≥ 100000``, ``tags [strategic] any of [strategic]``: a condition that held."""
    label = {"arr": "ARR", "balance": "balance"}.get(check.name.split("_")[0], check.name.replace("_", " "))
    return f"{label} {check.actual} {check.wanted}"


def _rule_needs(rules: Iterable[dict | None]) -> set[str]:
    needs: set[str] = set()
    for rule in rules:
        for key in rule or {}:
            if key.startswith("tags_"):
                needs.add("tags")
            elif key.startswith("balance_"):
                needs.add("balance")
            elif key == "open_opportunity":
                needs.add("opportunities")
    return needs


# ---------------------------------------------------------------------------------- A/B
def _unit(*parts) -> float:
    """A stable number in [0, 1) from ``parts`` (sha256), the same in every process and run."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:13], 16) / float(16 ** 13)


def assign_variant(customer_id: int, campaign_id: int, holdout_percent: int,
                   variants: Sequence[tuple[int, int]]) -> tuple[int | None, bool]:
    """``(variant id or None, held out)`` for a customer in a campaign. ``variants`` are
    ``(id, weight)``. Stable: a hash of (campaign id, customer id), never a random draw; the
    holdout and the variant use independent hashes, so changing the holdout share does not
    reshuffle the variants."""
    if holdout_percent and _unit("holdout", campaign_id, customer_id) * 100 < holdout_percent:
        return None, True
    weighted = [(vid, w) for vid, w in sorted(variants) if w > 0]
    if not weighted:
        return None, False
    point = _unit("variant", campaign_id, customer_id) * sum(w for _, w in weighted)
    for vid, weight in weighted:
        if point < weight:
            return vid, False
        point -= weight
    return weighted[-1][0], False


# ---------------------------------------------------------------------------------- plan types
@dataclass(slots=True)
class PlannedAction:
    """One action the planner decided (written unless dry-run), with names for people."""
    key: str
    customer_id: int
    customer_name: str
    campaign_id: int
    campaign_name: str
    step_id: int
    step_name: str
    variant_id: int | None
    variant_name: str | None
    planned_for: date
    status: str
    reason: str | None
    channel: str
    invoice_ids: list[int]
    invoice_numbers: list[str]
    to_address: str | None
    cc: list[str]
    send_after: datetime | None
    expires_at: datetime | None
    template: str | None


@dataclass
class PlanResult:
    as_of: date
    dry_run: bool
    sending_day: bool = True
    rows: list[PlannedAction] = field(default_factory=list)
    inserted: int = 0
    already_planned: int = 0  # (invoice, step) pairs due in the window that already had an action
    #: customers with an invoice at a step date of some enabled campaign in the window, but in no campaign
    unassigned: list[tuple[int, str]] = field(default_factory=list)
    customers_considered: int = 0  # customers with an invoice at a step date in the window
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (load, assign, group, ...)

    @property
    def counts(self) -> dict[tuple[str, str, str], int]:
        """``{(campaign, step, status): number of actions}``."""
        return dict(Counter((r.campaign_name, r.step_name, r.status) for r in self.rows))

    @property
    def by_status(self) -> dict[str, int]:
        return dict(Counter(r.status for r in self.rows))


@dataclass(eq=False)  # hashed by identity: one object per step
class _Step:
    id: int
    campaign_id: int
    variant_id: int | None
    position: int
    name: str
    anchor: str
    offset: int
    business: bool
    window_start: str
    channel: str
    template: str | None
    recipient_role: str
    cc_collector: bool
    approval: dict | None
    attach_statement: bool


@dataclass
class _Campaign:
    id: int
    name: str
    priority: int
    audience: dict
    holdout_percent: int
    min_invoice_amount: Decimal | None
    skip_open_renewal_days: int | None
    variants: dict[int, str]
    weights: list[tuple[int, int]]
    steps: list[_Step]

    def steps_for(self, variant_id: int | None) -> list[_Step]:
        return [s for s in self.steps if s.variant_id is None or s.variant_id == variant_id]


class _Inv:
    """An open invoice as the planner needs it (slots: the planner holds many)."""
    __slots__ = ("id", "customer_id", "number", "currency", "open_raw", "issue_date", "sent_date", "due_date")

    def __init__(self, id, customer_id, number, currency, open_raw, issue_date, sent_date, due_date):  # noqa: A002
        self.id, self.customer_id, self.number, self.currency = id, customer_id, number, currency
        self.open_raw, self.issue_date, self.sent_date, self.due_date = open_raw, issue_date, sent_date, due_date

    @property
    def open_amount(self) -> Decimal:
        return _money(self.open_raw)


def _day(value) -> date | None:
    if value is None or isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(str(value)[:10])


def _money(value) -> Decimal | None:
    value = to_decimal(value)
    return None if value is None else value.quantize(CENT)


def action_key(customer_id: int, invoice_ids: Iterable[int], step_id: int, variant_id: int | None,
               day: date) -> str:
    """The idempotency key: sha256 of (customer, sorted invoice ids, step, variant, date)."""
    text = f"{customer_id}|{','.join(map(str, sorted(invoice_ids)))}|{step_id}|{variant_id or ''}|{day.isoformat()}"
    return hashlib.sha256(text.encode()).hexdigest()


def load_campaigns(enabled_only: bool = True) -> list[_Campaign]:
    """Campaigns with their variants and steps, in priority order (lowest number first, then id)."""
    query = Campaign.select().order_by(Campaign.priority, Campaign.id)
    if enabled_only:
        query = query.where(Campaign.enabled == True)  # noqa: E712
    campaigns = list(query)
    ids = [c.id for c in campaigns]
    variants: dict[int, list] = defaultdict(list)
    steps: dict[int, list] = defaultdict(list)
    if ids:
        for v in CampaignVariant.select().where(CampaignVariant.campaign.in_(ids)).order_by(CampaignVariant.id):
            variants[v.campaign_id].append(v)
        for s in CampaignStep.select().where(CampaignStep.campaign.in_(ids)).order_by(
                CampaignStep.position, CampaignStep.id):
            if s.anchor not in ANCHORS:
                raise DunningError(f"campaign step {s.name!r}: unknown anchor {s.anchor!r} ({', '.join(ANCHORS)})")
            steps[s.campaign_id].append(_Step(
                s.id, s.campaign_id, s.variant_id, s.position, s.name, s.anchor, s.offset_days, s.business_days,
                s.window_start, s.channel, s.template, s.recipient_role, s.cc_collector, s.approval,
                s.attach_statement))
    out = []
    for c in campaigns:
        validate_audience(c.audience)
        for s in steps[c.id]:
            if s.approval is not None:
                validate_audience(s.approval, allow=("expires_days",))
        out.append(_Campaign(c.id, c.name, c.priority, c.audience or {}, c.holdout_percent or 0,
                             to_decimal(c.min_invoice_amount), c.skip_open_renewal_days,
                             {v.id: v.name for v in variants[c.id]}, [(v.id, v.weight) for v in variants[c.id]],
                             steps[c.id]))
    return out


def _company() -> Company:
    return Company.select().order_by(Company.id).first() or Company()


def _reporting_currency(company: Company) -> str:
    if company.id is not None:
        return company.reporting_currency
    from .settings import get_settings

    return get_settings().reporting_currency


# ---------------------------------------------------------------------------------- the planner
class _Planner:
    """One planning pass for ``as_of``. ``customer_ids`` narrows it (explain uses one customer and
    then loads every open invoice and all the history of that customer).

    Order of work, each a bulk query: open disputes/promises/replies, the recent history of the
    planned campaigns, the candidate invoices (open, with an anchor date that puts some step of
    some enabled campaign in the window), their customers, tags, opportunities and (only if a rule
    needs it) balances; then campaign membership, grouping by (customer, step), exclusions."""

    MANY = 30000  # above this many customers a full scan beats chunked IN lists

    def __init__(self, as_of: date, *, campaign_ids: Iterable[int] | None = None,
                 customer_ids: Iterable[int] | None = None, catch_up_days: int = CATCH_UP_DAYS):
        self.as_of = as_of
        self.company = _company()
        self.cal = Calendar.of(self.company)
        self.company_tz = self.company.timezone or "UTC"
        self.reporting = _reporting_currency(self.company)
        self.window_start = self.cal.add_sending_days(self.cal.next_sending_day(as_of), -catch_up_days) \
            if catch_up_days > 0 else as_of
        self.only_customers = None if customer_ids is None else sorted(set(customer_ids))
        self.campaigns = load_campaigns()
        wanted = None if campaign_ids is None else set(campaign_ids)
        self.planned = [c for c in self.campaigns if wanted is None or c.id in wanted]
        self.matchers = {c.id: compile_audience(c.audience) for c in self.campaigns}
        self.approvals = {s.id: compile_audience(s.approval, ignore=("expires_days",))
                          for c in self.campaigns for s in c.steps if s.approval is not None}
        self.memo: dict[tuple[int, date], date] = {}
        self._book: RateBook | None = None
        self._dates: dict[str, date] = {}
        self._windows: dict[tuple[str, str], datetime] = {}
        self.totals: dict[int, dict[str, tuple]] = {}
        self.rows: list[PlannedAction] = []
        self.timings: dict[str, float] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def _date(self, value) -> date | None:
        if value is None or value.__class__ is date:
            return value
        found = self._dates.get(value)
        if found is None:
            found = self._dates[value] = _day(value)
        return found

    def _chunks(self, ids: Sequence[int]) -> list:
        """Chunks of ``ids`` for IN lists, or ``[None]`` (one full query) when there are many."""
        if self.only_customers is not None:
            return [self.only_customers]
        return [None] if len(ids) > self.MANY else list(chunked(ids, CHUNK))

    @staticmethod
    def _in(column: str, part) -> tuple[str, tuple]:
        return ("", ()) if part is None else (f' AND {column} IN ({placeholders(len(part))})', tuple(part))

    def step_day(self, step: _Step, anchor: date) -> date:
        key = (step.id, anchor)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self.cal.step_day(anchor, step.offset, step.business)
        return found

    def book(self) -> RateBook:
        if self._book is None:
            self._book = RateBook.load(self.reporting)
        return self._book

    # -- loads -------------------------------------------------------------------------------------
    def load_activities(self) -> None:
        """Open disputes, unresolved promises, unhandled inbound replies."""
        extra, args = self._in('"customer_id"', self.only_customers)
        sql = ('SELECT "customer_id", "invoice_id", "kind", "until", "body", "created_at", "id" FROM "activity" '
               'WHERE "kind" IN (\'promise\', \'dispute\') AND "resolved_at" IS NULL' + extra)
        self.disputes: dict[int, dict[int | None, str]] = defaultdict(dict)  # customer → invoice (None: all) → why
        self.promises: dict[tuple[int, int | None], date] = {}  # (customer, invoice or None) → until of the latest
        latest: dict[tuple[int, int | None], tuple] = {}
        for cid, iid, kind, until, body, created, aid in database.execute_sql(sql, args).fetchall():
            if kind == "dispute":
                self.disputes[cid][iid] = (body or "").strip()
            elif until is not None:
                stamp = (str(created), aid)
                if (cid, iid) not in latest or stamp > latest[(cid, iid)]:
                    latest[(cid, iid)] = stamp
                    self.promises[(cid, iid)] = _day(until)
        sql = ('SELECT DISTINCT "customer_id" FROM "message" WHERE "direction" = \'in\' AND "handled_at" IS NULL '
               'AND "customer_id" IS NOT NULL AND ("status" IS NULL OR "status" <> \'auto_reply\')' + extra)
        self.waiting_reply = {row[0] for row in database.execute_sql(sql, args).fetchall()}
        self.invoice_promises = {cid for cid, iid in self.promises if iid is not None}

    def load_history(self) -> None:
        """Actions already recorded for the planned campaigns up to ``as_of``:
        ``(invoice, step) → [(day, status, reason)]``."""
        self.history: dict[tuple[int, int], list[tuple[date, str, str | None]]] = defaultdict(list)
        ids = [c.id for c in self.planned]
        if not ids:
            return
        args: list = [*ids, self.as_of]
        sql = (f'SELECT "step_id", "planned_for", "invoice_ids", "status", "reason" FROM "dunning_action" '
               f'WHERE "campaign_id" IN ({placeholders(len(ids))}) AND "planned_for" <= {placeholders(1)}')
        if self.only_customers is None:
            back = max([abs(s.offset) * 2 for c in self.planned for s in c.steps if s.anchor == "previous"] or [0])
            sql += f' AND "planned_for" >= {placeholders(1)}'
            args.append(self.window_start - timedelta(days=back + 31))
        else:
            extra, more = self._in('"customer_id"', self.only_customers)
            sql, args = sql + extra, args + list(more)
        history = self.history
        for step_id, day, invoice_ids, status, reason in database.execute_sql(sql, args).fetchall():
            entry = (self._date(day), status, reason)
            for iid in json.loads(invoice_ids) if isinstance(invoice_ids, str) else invoice_ids or []:
                history[(iid, step_id)].append(entry)

    def load_invoices(self) -> None:
        """Candidate invoices: open, with an anchor date (issue/sent/due, in SQL) that puts a step of
        any enabled campaign in the window, plus those a previous step or a promise anchors (by id).
        Explaining a customer loads all of its open invoices."""
        self.invoices: dict[int, _Inv] = {}
        cols = '"id", "customer_id", "number", "currency", "open_amount", "issue_date", "sent_date", "due_date"'
        base = (f'SELECT {cols} FROM "invoice" WHERE "status" = {placeholders(1)} AND "open_amount" > 0 '
                'AND "deleted_at" IS NULL AND "customer_id" IS NOT NULL')
        self.tables: dict[int, dict[date, date]] = {}
        sets: dict[str, set] = defaultdict(set)
        for camp in self.campaigns:
            for step in camp.steps:
                if step.anchor in FIXED_ANCHORS:
                    self.tables[step.id] = self._anchor_table(step)
                    sets[step.anchor] |= set(self.tables[step.id])
        if self.only_customers is not None:
            extra, args = self._in('"customer_id"', self.only_customers)
            self._add_invoices(database.execute_sql(base + extra, ("open", *args)).fetchall())
            return
        clauses, args = [], ["open"]
        for column, anchor in (("due_date", "due"), ("issue_date", "issue"), ("sent_date", "sent")):
            if sets[anchor]:
                clauses.append(f'"{column}" IN ({placeholders(len(sets[anchor]))})')
                args += sorted(sets[anchor])
        if sets["sent"]:
            clauses.append(f'("sent_date" IS NULL AND "issue_date" IN ({placeholders(len(sets["sent"]))}))')
            args += sorted(sets["sent"])
        if clauses:
            self._add_invoices(database.execute_sql(base + " AND (" + " OR ".join(clauses) + ")", args).fetchall())
        ids = self._previous_candidates() | self._promise_invoice_ids()
        ids -= set(self.invoices)
        for part in chunked(sorted(ids), CHUNK):
            self._add_invoices(database.execute_sql(
                base + f' AND "id" IN ({placeholders(len(part))})', ("open", *part)).fetchall())
        if any(s.anchor == "promise" for c in self.planned for s in c.steps):
            customers = sorted({cid for cid, iid in self.promises if iid is None})
            for part in chunked(customers, CHUNK):
                self._add_invoices(database.execute_sql(
                    base + f' AND "customer_id" IN ({placeholders(len(part))})', ("open", *part)).fetchall())

    def _add_invoices(self, rows) -> None:
        invoices, d = self.invoices, self._date
        for iid, cid, number, cur, amount, issued, sent, due in rows:
            invoices[iid] = _Inv(iid, cid, number or f"#{iid}", cur, amount, d(issued), d(sent), d(due))

    def _anchor_table(self, step: _Step) -> dict[date, date]:
        """``{anchor date: step day}`` for the anchor dates whose step day falls in the window."""
        span = abs(step.offset) * (2 if step.business else 1) + 40
        out, day = {}, self.window_start - timedelta(days=span)
        end = self.as_of + timedelta(days=span)
        while day <= end:
            due = self.step_day(step, day)
            if self.window_start <= due <= self.as_of:
                out[day] = due
            day += timedelta(days=1)
        return out

    def _previous_candidates(self) -> set[int]:
        """Invoice ids whose previous step's action puts a ``previous``-anchored step in the window."""
        pairs = {(prev.id, step) for camp in self.planned for variant in [None, *camp.variants]
                 for prev, step in zip(camp.steps_for(variant), camp.steps_for(variant)[1:])
                 if step.anchor == "previous"}
        if not pairs:
            return set()
        following: dict[int, list[_Step]] = defaultdict(list)
        for prev_id, step in pairs:
            following[prev_id].append(step)
        out: set[int] = set()
        for (iid, sid), entries in self.history.items():
            for step in following.get(sid, ()):
                if self.window_start <= self.step_day(step, max(e[0] for e in entries)) <= self.as_of:
                    out.add(iid)
        return out

    def _promise_invoice_ids(self) -> set[int]:
        if not any(s.anchor == "promise" for c in self.planned for s in c.steps):
            return set()
        return {iid for (cid, iid) in self.promises if iid is not None}

    def load_customers(self, ids: list[int]) -> None:
        self.customers: dict[int, tuple] = {}
        wanted = set(ids)
        for part in self._chunks(ids):
            extra, args = self._in('"id"', part)
            sql = ('SELECT "id", "name", "arr", "segment", "country", "billing_currency", "timezone", "locale", '
                   '"collector", "paused_until", "paused_reason", "sf_account_id", "number" FROM "customer" '
                   'WHERE "deleted_at" IS NULL' + extra)
            self.customers.update((row[0], row) for row in database.execute_sql(sql, args).fetchall()
                                  if row[0] in wanted)

    def load_open_totals(self, ids: list[int]) -> None:
        """Open amounts by customer and currency: (open, open in reporting, open without a reporting
        amount), raw as the database returns them (converted when used)."""
        totals = self.totals
        todo = sorted({cid for cid in ids if cid not in totals})
        if not todo:
            return
        for part in self._chunks(todo):
            extra, args = self._in('"customer_id"', part)
            # every customer: on SQLite a plain scan is ~3x faster than walking the customer index
            # with a row lookup per invoice, which its planner would pick
            hint = " NOT INDEXED" if part is None and not is_postgres() else ""
            sql = ('SELECT "customer_id", "currency", SUM("open_amount"), SUM("open_amount_reporting"), '
                   f'SUM(CASE WHEN "open_amount_reporting" IS NULL THEN "open_amount" ELSE 0 END) FROM "invoice"{hint} '
                   'WHERE "status" = ' + placeholders(1) + ' AND "open_amount" > 0 AND "deleted_at" IS NULL '
                   'AND "customer_id" IS NOT NULL' + extra + ' GROUP BY "customer_id", "currency"')
            for cid, cur, amount, rep, missing in database.execute_sql(sql, ("open", *args)).fetchall():
                self.totals.setdefault(cid, {})[cur] = (amount, rep, missing)
        for cid in todo:
            self.totals.setdefault(cid, {})

    def open_by_currency(self, cid: int) -> dict[str, Decimal]:
        if cid not in self.totals:
            self.load_open_totals([cid])
        return {cur: _money(v[0]) for cur, v in self.totals[cid].items()}

    def balance(self, cid: int) -> Decimal | None:
        """Open amount in reporting currency (stored revaluations; a missing one converted at the
        as-of date's rate; None when that rate is missing too)."""
        if cid not in self.totals:
            self.load_open_totals([cid])
        total = ZERO
        for cur, (_, rep, missing) in self.totals[cid].items():
            total += _money(rep) or ZERO
            missing = _money(missing)
            if missing:
                conv = self.book().convert(missing, cur, self.as_of)
                if conv is None:
                    return None
                total += conv.amount
        return total

    def load_tags(self) -> None:
        extra, args = self._in('ct."customer_id"', self.only_customers)
        sql = ('SELECT ct."customer_id", t."name" FROM "customer_tag" ct JOIN "tag" t ON t."id" = ct."tag_id" '
               'WHERE 1 = 1' + extra)
        for cid, name in database.execute_sql(sql, args).fetchall():
            if cid in self.customers:
                self.tags[cid].add(name)

    def assign(self) -> None:
        """Facts and campaign membership (first match in priority order) of the candidate customers."""
        rules = [c.audience for c in self.campaigns] + [s.approval for c in self.campaigns for s in c.steps]
        needs = _rule_needs(rules)
        self.tags: dict[int, set] = defaultdict(set)
        if "tags" in needs:
            self.load_tags()
        self.opps: dict[int, list] = {}
        days = [c.skip_open_renewal_days or 0 for c in self.campaigns]
        days += [r["open_opportunity"]["within_days"] for r in rules if r and "open_opportunity" in r]
        if "opportunities" in needs or any(c.skip_open_renewal_days for c in self.campaigns):
            self.opps = open_opportunities(self.only_customers, as_of=self.as_of, within_days=max(days))
        if "balance" in needs:  # the sums in bulk; converted lazily, for customers that reach a balance rule
            self.load_open_totals(sorted(self.customers))
        self.membership: dict[int, _Campaign | None] = {}
        self.facts_of: dict[int, Facts] = {}
        empty: frozenset = frozenset()
        matchers = [(c, self.matchers[c.id]) for c in self.campaigns]
        opps, tags, as_of, balance = self.opps, self.tags, self.as_of, self.balance
        for cid, row in self.customers.items():
            f = self.facts_of[cid] = Facts(
                cid, row[1], to_decimal(row[2]), row[3], row[4], row[5],
                frozenset(tags[cid]) if cid in tags else empty,
                (lambda cid=cid: balance(cid)), opps.get(cid), as_of)
            self.membership[cid] = next((c for c, match in matchers if match(f)), None)

    def _timed(self, stage: str, fn, *args):
        started = _time.perf_counter()
        out = fn(*args)
        self.timings[stage] = self.timings.get(stage, 0.0) + _time.perf_counter() - started
        return out

    def prepare(self) -> None:
        self._timed("activities", self.load_activities)
        self._timed("history", self.load_history)
        self._timed("invoices", self.load_invoices)
        self._timed("customers", self.load_customers, sorted({inv.customer_id for inv in self.invoices.values()} | set(
            self.only_customers or ())))
        self._timed("assign", self.assign)

    # -- per invoice and step --------------------------------------------------------------------
    def anchor(self, step: _Step, inv: _Inv, previous: _Step | None) -> tuple[date | None, str | None]:
        """The anchor date of ``step`` for ``inv`` and a note when it is a fallback or missing."""
        if step.anchor == "issue":
            return inv.issue_date, None
        if step.anchor == "due":
            return inv.due_date, None
        if step.anchor == "sent":
            if inv.sent_date is None:
                return inv.issue_date, "no sent date: the issue date is used"
            return inv.sent_date, None
        if step.anchor == "previous":
            if previous is None:
                return None, "the first step has no previous step"
            entries = self.history.get((inv.id, previous.id))
            if not entries:
                return None, f"previous step {previous.name!r} not yet planned for this invoice"
            return max(e[0] for e in entries), None
        until = self.promises.get((inv.customer_id, inv.id)) or self.promises.get((inv.customer_id, None))
        return (until, None) if until else (None, "no promise to pay")

    def done(self, inv_id: int, step_id: int, due: date) -> tuple[date, str, str | None] | None:
        """The action already recorded for this invoice at this step on or after ``due``."""
        entries = [e for e in self.history.get((inv_id, step_id), ()) if e[0] >= due]
        return max(entries) if entries else None

    # -- the pass --------------------------------------------------------------------------------
    def run(self) -> PlanResult:
        started = _time.perf_counter()
        result = PlanResult(self.as_of, dry_run=True, sending_day=self.cal.is_sending_day(self.as_of))
        if result.sending_day:
            self.prepare()
            result.customers_considered = len(self.customers)
            result.unassigned = sorted((cid, self.customers[cid][1])
                                       for cid, c in self.membership.items() if c is None)
            result.rows, result.already_planned = self.compute()
        result.seconds = _time.perf_counter() - started
        result.timings = self.timings
        return result

    def compute(self) -> tuple[list[PlannedAction], int]:
        groups, already = self._timed("group", self.group)
        customers = sorted({cid for cid, _ in groups})
        self._timed("contacts", self.load_contacts, customers)
        self._timed("credits", self.load_credits, customers)
        self._timed("decide", self._decide_all, groups)
        return self.rows, already

    def _decide_all(self, groups: dict) -> None:
        self.reasons: dict[int, str | None] = {}
        for (cid, step_id), invoices in sorted(groups.items()):
            invoices.sort(key=lambda i: i.id)
            self.decide(cid, self.step_by_id[step_id], invoices)

    def group(self) -> tuple[dict, int]:
        """``{(customer, step): [invoice]}`` for steps due in the window and not done yet."""
        self.step_by_id: dict[int, _Step] = {}
        self.assignment: dict[int, tuple[int | None, bool]] = {}
        planned_ids = {c.id for c in self.planned}
        by_customer: dict[int, list[_Inv]] = defaultdict(list)
        for inv in self.invoices.values():
            by_customer[inv.customer_id].append(inv)
        groups: dict[tuple[int, int], list] = defaultdict(list)
        already = 0
        lo, hi, history = self.window_start, self.as_of, self.history
        layouts: dict[tuple[int, int | None], tuple] = {}
        for cid, invoices in by_customer.items():
            camp = self.membership.get(cid)
            if camp is None or camp.id not in planned_ids:
                continue
            variant, held = self.assignment[cid] = assign_variant(cid, camp.id, camp.holdout_percent, camp.weights)
            layout = layouts.get((camp.id, variant))
            if layout is None:
                layout = layouts[(camp.id, variant)] = self._layout(camp, variant)
            by_issue, by_sent, by_due, others = layout
            for inv in invoices:
                hits = [*by_issue.get(inv.issue_date, ()), *by_sent.get(inv.sent_date or inv.issue_date, ()),
                        *by_due.get(inv.due_date, ())]
                for previous, step in others:
                    anchor, _ = self.anchor(step, inv, previous)
                    if anchor is not None:
                        due = self.step_day(step, anchor)
                        if lo <= due <= hi:
                            hits.append((step, due))
                for step, due in hits:
                    entries = history.get((inv.id, step.id))
                    if entries and any(e[0] >= due for e in entries):
                        already += 1
                        continue
                    groups[(cid, step.id)].append(inv)
        return groups, already

    def _layout(self, camp: _Campaign, variant: int | None) -> tuple:
        """For the steps a variant gets: ``{anchor date: [(step, step day)]}`` by issue, sent and
        due date (only anchor dates with a step day in the window), and the (previous step, step)
        pairs anchored on a previous step or a promise."""
        tables: dict[str, dict[date, list]] = {"issue": {}, "sent": {}, "due": {}}
        others = []
        steps = camp.steps_for(variant)
        for previous, step in zip([None, *steps], steps):
            self.step_by_id[step.id] = step
            if step.anchor in FIXED_ANCHORS:
                for anchor, due in self.tables[step.id].items():
                    tables[step.anchor].setdefault(anchor, []).append((step, due))
            else:
                others.append((previous, step))
        return tables["issue"], tables["sent"], tables["due"], others

    def load_contacts(self, customer_ids: list[int]) -> None:
        """Bulk ``sf_pull.merged_contacts``: the customer's ERP contacts and its Salesforce account's,
        one per email, Salesforce's role winning; per role, recipients sorted by email."""
        self.contacts: dict[int, dict[str, list[tuple[str, str | None]]]] = {}
        if not customer_ids:
            return
        cols = '"id", "customer_id", "customer_external_id", "name", "email", "role", "origin"'
        wanted = set(customer_ids)
        rows = []
        for part in self._chunks(customer_ids):
            extra, args = self._in('"customer_id"', part)
            rows += database.execute_sql(f'SELECT {cols} FROM "contact" WHERE "deleted_at" IS NULL{extra}',
                                         args).fetchall()
        accounts: dict[str, list[int]] = defaultdict(list)
        for cid in customer_ids:
            sf = self.customers[cid][11]
            if sf:
                accounts[sf].append(cid)
        if accounts:
            rows += [r for r in database.execute_sql(
                f'SELECT {cols} FROM "contact" WHERE "deleted_at" IS NULL AND "origin" = \'salesforce\'').fetchall()
                if r[2] in accounts]
        merged: dict[int, dict[str, list]] = defaultdict(dict)  # customer → email key → [email, name, role]
        rows.sort(key=lambda r: (r[6] != "erp", r[0]))
        for row_id, owner, account, name, email, role, origin in rows:
            targets = [owner] if owner in wanted else []
            if origin == "salesforce" and account in accounts:
                targets += [c for c in accounts[account] if c != owner]
            key = (email or f"#{row_id}").lower()
            for cid in targets:
                entry = merged[cid].get(key)
                if entry is None:
                    merged[cid][key] = [email, name, role]
                    continue
                entry[0], entry[1] = email or entry[0], name or entry[1]
                if role in ("billing", "escalation"):
                    entry[2] = role
        for cid, people in merged.items():
            by_role: dict[str, list] = {}
            for email, name, role in people.values():
                if email:
                    by_role.setdefault(role, []).append((email, name))
            for found in by_role.values():
                if len(found) > 1:
                    found.sort()
            self.contacts[cid] = by_role

    def load_credits(self, customer_ids: list[int]) -> None:
        """Unapplied credit memos and payments by customer and currency."""
        self.credits: dict[int, dict[str, Decimal]] = defaultdict(dict)
        wanted = set(customer_ids)
        for table, cond in (("credit_memo", " AND \"status\" NOT IN ('voided', 'deleted')"), ("payment", "")):
            sql = (f'SELECT "customer_id", "currency", SUM("unapplied_amount") FROM "{table}" WHERE '
                   f'"unapplied_amount" > 0 AND "deleted_at" IS NULL AND "customer_id" IS NOT NULL{cond} '
                   f'GROUP BY "customer_id", "currency"')
            for cid, cur, amount in database.execute_sql(sql).fetchall():
                if cid in wanted:
                    self.credits[cid][cur] = self.credits[cid].get(cur, ZERO) + _money(amount)

    def credit_covers(self, cid: int) -> str | None:
        """The reason to skip when unapplied credits cover the open invoices, else None."""
        credits = self.credits.get(cid)
        if not credits:
            return None
        opened = self.open_by_currency(cid)
        currencies = set(credits) | set(opened)
        if len(currencies) == 1:  # one currency: compared as is, no rate needed
            cur = currencies.pop()
            credit, owed = credits.get(cur, ZERO), opened.get(cur, ZERO)
            if credit >= owed:
                return f"credit balance: unapplied credits {_num(credit)} {cur} cover the open {_num(owed)} {cur}"
            return None
        total_credit = ZERO
        for cur, amount in credits.items():
            conv = self.book().convert(amount, cur, self.as_of)
            if conv is None:
                return None  # a missing rate is never guessed: no skip
            total_credit += conv.amount
        balance = self.balance(cid)
        if balance is not None and total_credit >= balance:
            return (f"credit balance: unapplied credits {_num(total_credit)} {self.reporting} cover the open "
                    f"{_num(balance)} {self.reporting}")
        return None

    def customer_reason(self, cid: int, camp: _Campaign, held: bool) -> str | None:
        """Why nothing goes to this customer today (None: go on), checks in a fixed order."""
        row = self.customers[cid]
        if held:
            return "holdout"
        paused = self._date(row[9])
        if paused is not None and paused >= self.as_of:
            return f"paused until {paused.isoformat()}: {row[10] or 'no reason given'}"
        if cid in self.waiting_reply:
            return "waiting for the collector to answer the customer's reply"
        until = self.promises.get((cid, None))
        if until is not None and until >= self.as_of:
            return f"promise to pay by {until.isoformat()}"
        if None in self.disputes.get(cid, {}):
            why = self.disputes[cid][None]
            return "customer disputes its invoices" + (f": {why}" if why else "")
        if camp.skip_open_renewal_days:
            limit = self.as_of + timedelta(days=camp.skip_open_renewal_days)
            for o in sorted(self.opps.get(cid, []), key=lambda o: (o["close_date"] or date.max, o["id"])):
                if o["type"] in OPPORTUNITY_TYPES and o["close_date"] is not None and o["close_date"] <= limit:
                    return (f"open {o['type']} opportunity '{o['name']}' closes on {o['close_date'].isoformat()} "
                            f"(within {camp.skip_open_renewal_days} days)")
        return self.credit_covers(cid)

    def decide(self, cid: int, step: _Step, invoices: list[_Inv]) -> None:
        camp = self.membership[cid]
        variant, held = self.assignment[cid]
        if cid not in self.reasons:
            self.reasons[cid] = self.customer_reason(cid, camp, held)
        reason = self.reasons[cid]
        if reason is not None:
            self.emit(cid, camp, step, variant, invoices, ActionStatus.SKIPPED.value, reason)
            return
        disputes = self.disputes.get(cid)
        if disputes is None and cid not in self.invoice_promises and camp.min_invoice_amount is None:
            keep, dropped = invoices, {}  # the common case: nothing to drop
        else:
            keep, dropped = self._drop(cid, camp, invoices, disputes or {})
        for why, group in sorted(dropped.items()) if dropped else ():
            detail = ", ".join(f"{i.number} ({_num(i.open_amount)} {i.currency})" for i in group)
            self.emit(cid, camp, step, variant, group, ActionStatus.SKIPPED.value, f"{why}: {detail}")
        if not keep:
            return
        self._send(cid, camp, step, variant, keep)

    def _drop(self, cid: int, camp: _Campaign, invoices: list[_Inv], disputes: dict) -> tuple[list, dict]:
        """Invoices that stay, and those left out by reason: disputed, promised, under the minimum."""
        keep, dropped = [], defaultdict(list)
        for inv in invoices:
            until = self.promises.get((cid, inv.id))
            if inv.id in disputes:
                dropped["disputed" + (f" ({disputes[inv.id]})" if disputes[inv.id] else "")].append(inv)
            elif until is not None and until >= self.as_of:
                dropped[f"promise to pay by {until.isoformat()}"].append(inv)
            elif camp.min_invoice_amount is not None and inv.open_amount < camp.min_invoice_amount:
                dropped[f"under the campaign minimum of {_num(camp.min_invoice_amount)}"].append(inv)
            else:
                keep.append(inv)
        return keep, dropped

    def _send(self, cid: int, camp: _Campaign, step: _Step, variant: int | None, keep: list[_Inv]) -> None:
        """The step's action for the invoices that stay: a task, a task to find a contact, an email
        waiting for approval, or a planned email."""
        if step.channel == "task":
            self.emit(cid, camp, step, variant, keep, ActionStatus.TASK.value, f"task: {step.name}")
            return
        recipients = self.contacts.get(cid, {}).get(step.recipient_role) or []
        if not recipients:
            self.emit(cid, camp, step, variant, keep, ActionStatus.TASK.value,
                      f"no {step.recipient_role} contact: find one", channel="task")
            return
        status, why, expires = ActionStatus.PLANNED.value, None, None
        if step.approval is not None and self.approvals[step.id](self.facts_of[cid]):
            rule = {k: v for k, v in step.approval.items() if k != "expires_days"}
            checks = check_audience(rule, self.facts_of[cid], details=True)[1]
            status = ActionStatus.PENDING_APPROVAL.value
            why = "needs approval" + (": " + "; ".join(_describe(c) for c in checks) if checks else "")
            expires = timedelta(days=int(step.approval.get("expires_days", 3)))
        self.emit(cid, camp, step, variant, keep, status, why, to=recipients[0][0], expires=expires)

    def emit(self, cid: int, camp: _Campaign, step: _Step, variant: int | None, invoices: list[_Inv], status: str,
             reason: str | None, *, to: str | None = None, expires: timedelta | None = None,
             channel: str | None = None) -> None:
        row = self.customers[cid]
        ids = [i.id for i in invoices]
        window = (row[6] or "", step.window_start)
        send_after = self._windows.get(window)
        if send_after is None:
            send_after = self._windows[window] = window_start_utc(self.as_of, step.window_start, row[6],
                                                                  self.company_tz)
        collector = row[8]
        self.rows.append(PlannedAction(
            action_key(cid, ids, step.id, variant, self.as_of), cid, row[1], camp.id, camp.name, step.id, step.name,
            variant, camp.variants.get(variant), self.as_of, status, reason, channel or step.channel, ids,
            [i.number for i in invoices], to, [collector] if step.cc_collector and collector and to else [],
            send_after, send_after + expires if expires else None, step.template))


@contextmanager
def _write_lock():
    """A transaction that holds the planner's write lock: SQLite's write lock taken at BEGIN
    (IMMEDIATE, so a concurrent writer waits instead of failing on a stale snapshot), an advisory
    transaction lock on PostgreSQL. Reads inside it are exact."""
    db = database.obj
    with (db.atomic() if is_postgres(db) else db.atomic("IMMEDIATE")):
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_PLAN_LOCK,))
        yield db


def _write(rows: list[PlannedAction]) -> int:
    """Insert ``rows`` once (ON CONFLICT (key) DO NOTHING); returns how many were new. Under the
    write lock the count is exact: SQLite's change counter, PostgreSQL's keys present before."""
    if not rows:
        return 0
    now = utcnow()
    cols = ("key", "customer_id", "campaign_id", "step_id", "variant_id", "planned_for", "status", "reason",
            "channel", "invoice_ids", "to_address", "cc", "send_after", "expires_at", "attempts", "created_at",
            "updated_at")
    stamps: dict[Any, str | None] = {None: None}

    def ts(value):  # naive-UTC text, as the sqlite3 adapter and UTCDateTimeField write it (few distinct values)
        text = stamps.get(value)
        if text is None and value is not None:
            text = stamps[value] = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ") \
                if isinstance(value, datetime) else value.isoformat()
        return text

    created = ts(now)
    data = [(r.key, r.customer_id, r.campaign_id, r.step_id, r.variant_id, ts(r.planned_for), r.status, r.reason,
             r.channel, "[" + ", ".join(map(str, r.invoice_ids)) + "]", r.to_address, json.dumps(r.cc),
             ts(r.send_after), ts(r.expires_at), 0, created, created) for r in rows]
    with _write_lock() as db:
        if not is_postgres(db):
            before = db.connection().total_changes
            upsert(DunningAction, cols, data, ("key",), ())
            return db.connection().total_changes - before
        existing = 0
        for part in chunked([r.key for r in rows], CHUNK):
            existing += db.execute_sql(f'SELECT COUNT(*) FROM "dunning_action" WHERE "key" IN '
                                       f'({placeholders(len(part))})', part).fetchone()[0]
        upsert(DunningAction, cols, data, ("key",), ())
    return len(rows) - existing


def plan(as_of: date, *, dry_run: bool = False, campaign_ids: Iterable[int] | None = None,
         catch_up_days: int = CATCH_UP_DAYS) -> PlanResult:
    """Plan the dunning actions due on ``as_of`` (a sending day), and those that came due on the
    ``catch_up_days`` sending days before it without an action (a missed run). Deterministic; with
    ``dry_run`` nothing is written. Campaign membership is decided over every enabled campaign
    even when ``campaign_ids`` narrows what is planned."""
    planner = _Planner(as_of, campaign_ids=campaign_ids, catch_up_days=catch_up_days)
    result = planner.run()
    result.dry_run = dry_run
    if not dry_run:
        started = _time.perf_counter()
        result.inserted = _write(result.rows)
        result.timings["write"] = _time.perf_counter() - started
        result.seconds += result.timings["write"]
    return result


# ---------------------------------------------------------------------------------- explain
@dataclass
class CampaignCheck:
    campaign: str
    priority: int
    matched: bool
    checks: list[Check]


@dataclass
class StepLine:
    """What one step does for one invoice on the day explained."""
    step: str
    invoice: str
    anchor: str
    anchor_date: date | None
    due: date | None
    outcome: str  # due today: planned/pending_approval/task/skipped; done; upcoming; missed; not due
    reason: str | None


@dataclass
class Explanation:
    customer_id: int
    customer_name: str
    as_of: date
    sending_day: bool
    campaign: str | None = None
    campaigns: list[CampaignCheck] = field(default_factory=list)
    variant: str | None = None
    holdout: bool = False
    customer_reason: str | None = None
    steps: list[StepLine] = field(default_factory=list)
    actions: list[PlannedAction] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.customer_name} (#{self.customer_id}) as of {self.as_of.isoformat()}"
               + ("" if self.sending_day else " (not a sending day: nothing is planned)")]
        for cc in self.campaigns:
            out.append(f"  campaign {cc.campaign!r} (priority {cc.priority}): "
                       f"{'MATCHES' if cc.matched else 'does not match'}")
            out += [f"    {c}" for c in cc.checks] or ["    (no conditions: everyone)"]
        if self.campaign is None:
            out.append("  → in no campaign: nothing is planned")
            return out
        out.append(f"  → campaign {self.campaign!r}" + (", holdout group" if self.holdout else "")
                   + (f", variant {self.variant!r}" if self.variant else ""))
        if self.customer_reason:
            out.append(f"  customer skipped today: {self.customer_reason}")
        for s in self.steps:
            when = f"{s.anchor} {s.anchor_date} → {s.due}" if s.anchor_date else s.anchor
            out.append(f"  step {s.step!r} / {s.invoice}: {when}: {s.outcome}" + (f" ({s.reason})" if s.reason else ""))
        for a in self.actions:
            out.append(f"  action today: {a.step_name} {a.status} [{', '.join(a.invoice_numbers)}] "
                       f"to {a.to_address or a.channel}" + (f": {a.reason}" if a.reason else ""))
        return out


def explain(customer_id: int, as_of: date, *, catch_up_days: int = CATCH_UP_DAYS) -> Explanation:
    """Which campaign the customer is in and why (every condition with its values), and for
    every step and open invoice what happens on ``as_of`` and why. Writes nothing."""
    customer = Customer.get_by_id(customer_id)
    planner = _Planner(as_of, customer_ids=[customer_id], catch_up_days=catch_up_days)
    sending = planner.cal.is_sending_day(as_of)
    planner.prepare()
    rows = planner.compute()[0] if sending else []
    ex = Explanation(customer_id, customer.name, as_of, sending)
    if not planner.invoices or customer_id not in planner.customers:
        ex.customer_reason = "no open invoices"
        return ex
    facts = planner.facts_of[customer_id]
    for camp in planner.campaigns:
        ok, checks = check_audience(camp.audience, facts, details=True)
        ex.campaigns.append(CampaignCheck(camp.name, camp.priority, ok, checks))
        if ok:
            break
    camp = planner.membership.get(customer_id)
    if camp is None:
        return ex
    ex.campaign = camp.name
    variant, ex.holdout = assign_variant(customer_id, camp.id, camp.holdout_percent, camp.weights)
    ex.variant = camp.variants.get(variant)
    planner.load_credits([customer_id])
    ex.customer_reason = planner.customer_reason(customer_id, camp, ex.holdout)
    ex.actions = rows
    by_step_invoice = {(a.step_id, iid): a for a in rows for iid in a.invoice_ids}
    steps = camp.steps_for(variant)
    previous = {s.id: p for p, s in zip([None, *steps], steps)}
    for step in steps:
        for inv in sorted(planner.invoices.values(), key=lambda i: (i.due_date, i.id)):
            anchor, note = planner.anchor(step, inv, previous[step.id])
            if anchor is None:
                ex.steps.append(StepLine(step.name, inv.number, step.anchor, None, None, "not due", note))
                continue
            due = planner.step_day(step, anchor)
            done = planner.done(inv.id, step.id, due)
            action = by_step_invoice.get((step.id, inv.id))
            if action is not None:
                outcome, why = f"due: {action.status}", action.reason
            elif done:
                outcome, why = f"done: {done[1]} on {done[0].isoformat()}", done[2]
            elif due > as_of:
                outcome, why = f"upcoming on {due.isoformat()}", None
            elif due >= planner.window_start and not sending:
                outcome, why = "waits for the next sending day", None
            else:
                outcome, why = f"was due on {due.isoformat()}, before the catch-up window: not sent", None
            ex.steps.append(StepLine(step.name, inv.number, step.anchor, anchor, due, outcome,
                                     "; ".join(x for x in (note, why) if x) or None))
    return ex


# ---------------------------------------------------------------------------------- approvals
def _transition(action_id: int, actor: str, from_statuses: Sequence[str], changes: dict, *,
                now: datetime | None = None, check_expiry: bool = False) -> DunningAction:
    """Move an action to a new state with one conditional UPDATE (two people acting at once:
    one wins, the other gets :class:`ActionStateError`), and record it in the audit log."""
    now = now or utcnow()
    with database.atomic():
        before = DunningAction.get_or_none(DunningAction.id == action_id)
        if before is None:
            raise ActionStateError(f"dunning action {action_id} does not exist")
        query = DunningAction.update(**changes, decided_by=actor, decided_at=now, updated_at=now).where(
            DunningAction.id == action_id, DunningAction.status.in_(list(from_statuses)))
        if check_expiry:
            query = query.where(DunningAction.expires_at.is_null() | (DunningAction.expires_at > now))
        if query.execute() != 1:
            current = DunningAction.get_by_id(action_id)
            if current.status in from_statuses and check_expiry:
                raise ActionStateError(f"dunning action {action_id}: the approval expired at {current.expires_at}")
            raise ActionStateError(f"dunning action {action_id} is {current.status}, not "
                                   f"{' or '.join(from_statuses)}")
        after = DunningAction.get_by_id(action_id)
        fields_ = ("status", "reason", "to_address", "cc", "send_after", "invoice_ids", "channel")
        AuditLog.create(actor=actor, action=f"dunning.{changes.get('status', 'edit')}",
                        object_type="dunning_action", object_id=str(action_id),
                        before={f: getattr(before, f) for f in fields_}, after={f: getattr(after, f) for f in fields_})
    return after


EDITABLE = ("to_address", "cc", "send_after", "invoice_ids")


def approve(action_id: int, actor: str, edits: dict | None = None, *, now: datetime | None = None) -> DunningAction:
    """Approve a pending action (status ``approved``), optionally editing the recipient, the cc
    list, the sending time or narrowing the invoices. Refused once it expired."""
    edits = dict(edits or {})
    unknown = set(edits) - set(EDITABLE)
    if unknown:
        raise DunningError(f"cannot edit {', '.join(sorted(unknown))} (editable: {', '.join(EDITABLE)})")
    if "invoice_ids" in edits:
        current = DunningAction.get_by_id(action_id).invoice_ids
        ids = sorted(set(int(i) for i in edits["invoice_ids"]))
        if not ids or not set(ids) <= set(current):
            raise DunningError("invoice_ids must be a non-empty subset of the action's invoices")
        edits["invoice_ids"] = ids
    if "cc" in edits:
        edits["cc"] = list(edits["cc"])
    return _transition(action_id, actor, [ActionStatus.PENDING_APPROVAL.value],
                       {"status": ActionStatus.APPROVED.value, **edits}, now=now, check_expiry=True)


def reject(action_id: int, actor: str, reason: str, *, now: datetime | None = None) -> DunningAction:
    """Reject a pending action: it becomes ``skipped`` with "rejected by <actor>: <reason>"."""
    return _transition(action_id, actor, [ActionStatus.PENDING_APPROVAL.value],
                       {"status": ActionStatus.SKIPPED.value, "reason": f"rejected by {actor}: {reason}"}, now=now)


def skip(action_id: int, actor: str, reason: str, *, now: datetime | None = None) -> DunningAction:
    """Skip an action not sent yet (planned, pending, approved or a task): "skipped by <actor>: <reason>"."""
    return _transition(action_id, actor, OPEN_STATUSES,
                       {"status": ActionStatus.SKIPPED.value, "reason": f"skipped by {actor}: {reason}"}, now=now)


def expire_pending(now: datetime | None = None) -> int:
    """Pending approvals whose ``expires_at`` has passed become ``expired``; returns how many."""
    now = now or utcnow()
    return (DunningAction.update(status=ActionStatus.EXPIRED.value, reason="approval expired before anyone decided",
                                 updated_at=now)
            .where(DunningAction.status == ActionStatus.PENDING_APPROVAL.value, DunningAction.expires_at <= now)
            .execute())


# ---------------------------------------------------------------------------------- A/B outcomes
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = statistics.NormalDist().inv_cdf(0.975)


def t975(df: int) -> float:
    """Student's t 97.5% quantile: exact table to 30 degrees of freedom, then a Cornish-Fisher
    expansion around the normal quantile (error < 0.001)."""
    if df <= 30:
        return T975[df - 1]
    z = Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Estimate:
    """A share or a mean with its 95% confidence interval (None when n is too small)."""
    value: float | None
    low: float | None
    high: float | None
    n: int


def wilson(successes: int, n: int) -> Estimate:
    """A share with Wilson's 95% score interval (sound near 0 and 1 and for small n)."""
    if n == 0:
        return Estimate(None, None, None, 0)
    p, z = successes / n, Z975
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_ci(values: Sequence[float]) -> Estimate:
    """A mean with a Student-t 95% interval (the normal one for large n)."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, None, 0)
    mean = statistics.fmean(values)
    if n == 1:
        return Estimate(mean, None, None, 1)
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


@dataclass
class VariantOutcome:
    group: str  # a variant's name, "holdout", or "all" for a campaign without variants
    customers: int
    invoices: int
    paid_within: Estimate  # share of invoices paid within N days of due (those whose due + N has passed)
    days_to_pay: Estimate  # paid invoices: paid on − issue date
    days_late: Estimate  # invoices due by as_of: (paid on, or as_of when unpaid) − due, at least 0
    paid_date_unknown: int = 0  # closed without applications: no date to measure


def variant_outcomes(campaign_id: int, as_of: date, *, within_days: int = 0) -> list[VariantOutcome]:
    """Outcomes per variant and holdout of the customers a campaign planned for up to ``as_of``.
    An invoice belongs to the group of the first action that listed it; its paid date is the
    date its applications (payments, credit memos, dated ≤ as_of) reached its amount."""
    names = {v.id: v.name for v in CampaignVariant.select().where(CampaignVariant.campaign == campaign_id)}
    group_of_invoice: dict[int, str] = {}
    customers: dict[str, set] = defaultdict(set)
    query = (DunningAction.select(DunningAction.customer, DunningAction.variant, DunningAction.status,
                                  DunningAction.reason, DunningAction.invoice_ids)
             .where(DunningAction.campaign == campaign_id, DunningAction.planned_for <= as_of)
             .order_by(DunningAction.planned_for, DunningAction.id).tuples())
    for cid, vid, status, reason, invoice_ids in query.iterator():
        ids = json.loads(invoice_ids) if isinstance(invoice_ids, str) else invoice_ids
        group = "holdout" if status == ActionStatus.SKIPPED.value and reason == "holdout" else (
            names.get(vid, "all") if vid else "all")
        customers[group].add(cid)
        for iid in ids:
            group_of_invoice.setdefault(iid, group)
    invoices: dict[int, tuple] = {}
    applied: dict[int, list] = defaultdict(list)
    ids = sorted(group_of_invoice)
    for part in chunked(ids, CHUNK):
        ph = placeholders(len(part))
        for row in database.execute_sql(
                f'SELECT "id", "amount", "issue_date", "due_date", "status" FROM "invoice" WHERE "id" IN ({ph})',
                part).fetchall():
            invoices[row[0]] = (to_decimal(row[1]), _day(row[2]), _day(row[3]), row[4])
        for iid, amount, day in database.execute_sql(
                f'SELECT "invoice_id", "amount", "date" FROM "application" WHERE "invoice_id" IN ({ph})',
                part).fetchall():
            applied[iid].append((_day(day), to_decimal(amount)))
    stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for iid, group in group_of_invoice.items():
        if iid not in invoices or invoices[iid][3] in ("voided", "deleted"):
            continue
        amount, issued, due, status = invoices[iid]
        paid_on, total = None, ZERO
        for day, value in sorted(applied.get(iid, ())):
            if day > as_of:
                break
            total += value
            if total >= amount:
                paid_on = day
                break
        s = stats[group]
        s["invoices"].append(iid)
        if paid_on is None and status == "paid":
            s["unknown"].append(iid)
            continue
        if due + timedelta(days=within_days) <= as_of:
            s["within"].append(paid_on is not None and paid_on <= due + timedelta(days=within_days))
        if paid_on is not None:
            s["to_pay"].append((paid_on - issued).days)
        if due <= as_of:
            s["late"].append(max(0, ((paid_on or as_of) - due).days))
    order = sorted(set(customers) | set(stats), key=lambda g: (g == "holdout", g))
    return [VariantOutcome(g, len(customers[g]), len(stats[g]["invoices"]),
                           wilson(sum(stats[g]["within"]), len(stats[g]["within"])),
                           mean_ci([float(v) for v in stats[g]["to_pay"]]),
                           mean_ci([float(v) for v in stats[g]["late"]]), len(stats[g]["unknown"]))
            for g in order]


# ---------------------------------------------------------------------------------- seeds
_LIST_TEXT = ("{% for i in invoices %}\n- {{ i.number }}: {{ i.open_amount|money(i.currency) }}, "
              "due {{ i.due_date|date }}\n{% endfor %}\n"
              "Total: {% for t in totals %}{{ t.amount|money(t.currency) }}{% if not loop.last %} + {% endif %}"
              "{% endfor +%}\n")
_LIST_HTML = ("<ul>\n{% for i in invoices %}\n<li>{{ i.number }}: {{ i.open_amount|money(i.currency) }}, "
              "due {{ i.due_date|date }}</li>\n{% endfor %}\n</ul>\n"
              "<p>Total: {% for t in totals %}{{ t.amount|money(t.currency) }}{% if not loop.last %} + {% endif %}"
              "{% endfor %}</p>\n")
_PAY_TEXT = "{% if pay_url %}\nPay online: {{ pay_url }}\n{% endif %}\n"
_PAY_HTML = '{% if pay_url %}\n<p><a href="{{ pay_url }}">Pay online</a></p>\n{% endif %}\n'
_HELLO = "Hello {{ contact.name or customer.name }},\n\n"
_SIGN = "\nThank you,\n{{ collector.name or collector.email or company.name }}\n{{ company.name }}\n"
_SIGN_HTML = "<p>Thank you,<br>{{ collector.name or collector.email or company.name }}<br>{{ company.name }}</p>\n"
_PLURAL = "{{ 'invoices' if invoices|length > 1 else 'invoice' }}"

#: name → (subject, opening paragraph, closing paragraph)
DEFAULT_TEMPLATES = {
    "proactive-check-in": (
        "Everything you need to pay your " + _PLURAL + "?",
        "We sent you the " + _PLURAL + " below a few days ago. Do you have everything you need to pay it? "
        "If a purchase order number, a form or a correction is missing, just reply to this email.",
        "We are happy to help."),
    "pre-due-reminder": (
        "A friendly reminder: " + _PLURAL + " due soon",
        "A quick reminder that the " + _PLURAL + " below will be due soon.",
        "If you have already scheduled the payment, thank you, and please ignore this email."),
    "overdue-1": (
        "Your " + _PLURAL + " just became due",
        "The " + _PLURAL + " below became due yesterday and we have not received the payment yet.",
        "If the payment is on its way, thank you. If something is holding it up, reply and we will sort it out."),
    "overdue-7": (
        "Overdue: " + _PLURAL + " from {{ company.name }}",
        "The " + _PLURAL + " below are now a week overdue.",
        "Could you let us know when we can expect the payment? Reply to this email with any question."),
    "overdue-14": (
        "Second reminder: overdue " + _PLURAL,
        "The " + _PLURAL + " below are two weeks overdue.",
        "Please arrange the payment, or reply to tell us what is in the way, so we can help."),
    "final-notice": (
        "Final notice: overdue " + _PLURAL + " from {{ company.name }}",
        "Despite our reminders, the " + _PLURAL + " below are still unpaid a month after the due date."
        "{% if statement_attached %} Your account statement is attached.{% endif +%}",
        "Please arrange the payment within the next few days, or contact us so we can find a solution together."),
}


def default_template_rows() -> list[tuple[str, str, str, str, str]]:
    """``(name, language, subject, body_text, body_html)`` of the shipped templates."""
    rows = []
    for name, (subject, opening, closing) in DEFAULT_TEMPLATES.items():
        text = _HELLO + opening + "\n\n" + _LIST_TEXT + _PAY_TEXT + "\n" + closing + "\n" + _SIGN
        html = ("<p>Hello {{ contact.name or customer.name }},</p>\n<p>" + opening + "</p>\n" + _LIST_HTML + _PAY_HTML
                + "<p>" + closing + "</p>\n" + _SIGN_HTML)
        rows.append((name, "en", subject, text, html))
    return rows


DEFAULT_CAMPAIGN = "Default"
_APPROVAL = {"arr_gte": "100000", "expires_days": 3}
#: (position, name, anchor, offset, template, recipient role, cc collector, statement, approval)
DEFAULT_STEPS = (
    (1, "proactive check-in", "sent", 6, "proactive-check-in", "billing", False, False, None),
    (2, "pre-due reminder", "due", -6, "pre-due-reminder", "billing", False, False, None),
    (3, "overdue 1", "due", 1, "overdue-1", "billing", False, False, _APPROVAL),
    (4, "overdue 7", "due", 7, "overdue-7", "billing", False, False, _APPROVAL),
    (5, "overdue 14", "due", 14, "overdue-14", "billing", False, False, _APPROVAL),
    (6, "final notice", "due", 30, "final-notice", "escalation", True, True, _APPROVAL),
)


def seed_default_campaign() -> dict:
    """The default campaign (everyone, lowest priority) and its templates, once. Existing rows,
    possibly edited by an admin, are left alone. Returns what was created."""
    now = utcnow()
    with _write_lock():
        before = Template.select().count()
        upsert(Template, ("name", "language", "subject", "body_text", "body_html", "updated_at", "updated_by"),
               [(*row, now, "seed") for row in default_template_rows()], ("name", "language"), ())
        created_templates = Template.select().count() - before
        campaign = Campaign.get_or_none(Campaign.name == DEFAULT_CAMPAIGN)
        created_steps = 0
        if campaign is None:  # steps only with a new campaign: an admin's edits and deletions stay
            campaign = Campaign.create(
                name=DEFAULT_CAMPAIGN, priority=1000, audience={}, description=(
                    "Proactive check-in 6 days after sending, a reminder 6 days before the due date, then 1, 7, "
                    "14 and 30 days overdue (the overdue steps need approval for ARR ≥ 100,000)."))
            for pos, name, anchor, offset, template, role, cc, statement, approval in DEFAULT_STEPS:
                CampaignStep.create(campaign=campaign, position=pos, name=name, anchor=anchor, offset_days=offset,
                                    template=template, recipient_role=role, cc_collector=cc,
                                    attach_statement=statement, approval=approval)
                created_steps += 1
    return {"campaign": campaign.id, "templates_created": created_templates, "steps_created": created_steps}


# ---------------------------------------------------------------------------------- template context
def template_context(action: DunningAction | int, *, pay_url: str | None = None) -> dict[str, Any]:
    """The context the email sender renders a step's template with (docs/dunning.md lists every
    key). Amounts are ``Decimal`` in the invoice's own currency; dates are ``date``."""
    action = action if isinstance(action, DunningAction) else DunningAction.get_by_id(action)
    customer = Customer.get_by_id(action.customer_id)
    company = _company()
    invoices = list(Invoice.select().where(Invoice.id.in_(action.invoice_ids)).order_by(Invoice.due_date, Invoice.id))
    totals: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for inv in invoices:
        totals[inv.currency] += inv.open_amount
    contact = (Contact.select().where(Contact.email == action.to_address, Contact.deleted_at.is_null())
               .order_by(Contact.origin != "salesforce", Contact.id).first()) if action.to_address else None
    step = CampaignStep.get_or_none(CampaignStep.id == action.step_id) if action.step_id else None
    user = User.get_or_none(User.email == (customer.collector or "").lower()) if customer.collector else None
    return {
        "customer": {"id": customer.id, "name": customer.name, "number": customer.number,
                     "locale": customer.locale or "en"},
        "contact": {"name": contact.name if contact else None, "email": action.to_address,
                    "role": contact.role if contact else (step.recipient_role if step else None)},
        "invoices": [{"number": i.number, "issue_date": i.issue_date, "due_date": i.due_date, "currency": i.currency,
                      "amount": i.amount, "open_amount": i.open_amount, "po_number": i.po_number,
                      "days_past_due": (action.planned_for - i.due_date).days} for i in invoices],
        "totals": [{"currency": cur, "amount": totals[cur]} for cur in sorted(totals)],
        "collector": {"name": user.name if user else None, "email": customer.collector},
        "company": {"name": company.name},
        "pay_url": pay_url,
        "statement_attached": bool(step and step.attach_statement),
    }
