"""Plan types, action keys and campaign loading."""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Iterable

from ..bulk import to_decimal
from ..models import Campaign, CampaignStep, CampaignVariant, Company
from .audience import validate_audience
from .base import ANCHORS, CENT, DunningError


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
    from ..settings import get_settings

    return get_settings().reporting_currency
