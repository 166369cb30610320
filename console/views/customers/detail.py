"""What the customer page and the invoice page show, read in a bounded number of queries.

Balances are today's, from the stored open amounts (as the list): per billing currency the open
amount, the overdue amount and the aging buckets, side by side with their reporting-currency
values (``open_amount_reporting``, revalued at the latest rate by the sync). Unapplied payments
and credit memos reduce the balance, not a bucket; they are converted at today's closing rate.
A missing rate is shown as missing and left out of the reporting totals, never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from middleware.ar import DEFAULT_EDGES, bucket_index, bucket_labels
from middleware.bulk import to_decimal
from middleware.fx import RateBook, round_money
from middleware.models import (
    Activity, Application, Campaign, CampaignStep, Company, CreditMemo, Customer, CustomerTag, DunningAction, Invoice,
    MatchCandidate, Message, Payment, SfAccount, SfUser, Source, Tag, UTC,
)

ZERO = Decimal("0")
RECENT_PAID = 20
RECENT = 200  # timeline entries per kind, payments


def reporting_currency() -> str:
    company = Company.select().order_by(Company.id).first()
    if company is not None and company.reporting_currency:
        return company.reporting_currency
    from middleware.settings import get_settings

    return get_settings().reporting_currency


@dataclass
class CurrencyBalance:
    currency: str
    open: Decimal = ZERO
    overdue: Decimal = ZERO
    buckets: list[Decimal] = field(default_factory=lambda: [ZERO] * (len(DEFAULT_EDGES) + 2))
    unapplied: Decimal = ZERO
    open_reporting: Decimal = ZERO
    overdue_reporting: Decimal = ZERO
    buckets_reporting: list[Decimal] = field(default_factory=lambda: [ZERO] * (len(DEFAULT_EDGES) + 2))
    unapplied_reporting: Decimal | None = ZERO
    fx_missing: int = 0
    closing_rate: tuple | None = None  # (rate, date, source) at today's closing rate

    @property
    def balance(self) -> Decimal:
        return self.open - self.unapplied


@dataclass
class Balances:
    reporting: str
    by_currency: list[CurrencyBalance]
    labels: list[str]

    def total(self, attr: str) -> Decimal:
        return sum((getattr(b, attr) or ZERO for b in self.by_currency), ZERO)

    @property
    def buckets_reporting(self) -> list[Decimal]:
        return [sum((b.buckets_reporting[i] for b in self.by_currency), ZERO) for i in range(len(self.labels))]

    @property
    def balance_reporting(self) -> Decimal:
        return self.total("open_reporting") - self.total("unapplied_reporting")

    @property
    def incomplete(self) -> bool:
        return any(b.fx_missing or b.unapplied_reporting is None for b in self.by_currency)


@dataclass
class TimelineEntry:
    at: datetime
    kind: str  # action | message_in | message_out | note | promise | dispute | pause | resume | ...
    title: str
    body: str | None = None
    actor: str | None = None
    status: str | None = None
    reason: str | None = None
    invoice_ids: list[int] = field(default_factory=list)
    ref: int | None = None
    open: bool = False  # an unresolved promise or dispute


def _aware(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, datetime.min.time(), tzinfo=UTC)


def _m(value) -> Decimal:
    return to_decimal(value) or ZERO


def balances(customer_id: int, open_invoices: list[Invoice], today: date, book: RateBook) -> Balances:
    labels = bucket_labels(DEFAULT_EDGES)
    per: dict[str, CurrencyBalance] = {}

    def cur(code: str) -> CurrencyBalance:
        return per.setdefault(code, CurrencyBalance(code))

    for inv in open_invoices:
        b = cur(inv.currency)
        amount = _m(inv.open_amount)
        days = (today - inv.due_date).days
        i = bucket_index(days, DEFAULT_EDGES)
        b.open += amount
        b.buckets[i] += amount
        if days > 0:
            b.overdue += amount
        if inv.open_amount_reporting is None:
            b.fx_missing += 1
            continue
        rep = _m(inv.open_amount_reporting)
        b.open_reporting += rep
        b.buckets_reporting[i] += rep
        if days > 0:
            b.overdue_reporting += rep
    credits = [(p.currency, _m(p.unapplied_amount)) for p in Payment.select(Payment.currency, Payment.unapplied_amount)
               .where(Payment.customer == customer_id, Payment.deleted_at.is_null(), Payment.unapplied_amount > 0)]
    credits += [(c.currency, _m(c.unapplied_amount)) for c in
                CreditMemo.select(CreditMemo.currency, CreditMemo.unapplied_amount)
                .where(CreditMemo.customer == customer_id, CreditMemo.deleted_at.is_null(),
                       CreditMemo.status != "voided", CreditMemo.unapplied_amount > 0)]
    for code, amount in credits:
        cur(code).unapplied += amount
    for b in per.values():
        b.closing_rate = book.rate(b.currency, today)
        if b.unapplied:
            conv = book.convert(b.unapplied, b.currency, today)
            b.unapplied_reporting = conv.amount if conv else None
    return Balances(book.reporting, sorted(per.values(), key=lambda b: b.currency), labels)


@dataclass
class Salesforce:
    account_id: str | None
    url: str | None
    name: str | None = None
    owner: str | None = None
    owner_email: str | None = None
    match_state: str | None = None
    score: float | None = None
    reasons: list = field(default_factory=list)


def _instance_url() -> str:
    source = Source.select().where(Source.kind == "salesforce").order_by(Source.id).first()
    config = (source.config or {}) if source is not None else {}
    for key in ("instance_url", "login_url"):
        if config.get(key):
            return str(config[key]).rstrip("/")
    if source is not None and source.endpoint:
        return source.endpoint.rstrip("/")
    return "https://test.salesforce.com" if config.get("environment") == "sandbox" else "https://login.salesforce.com"


def salesforce(customer: Customer) -> Salesforce:
    sf = Salesforce(customer.sf_account_id, None, match_state=customer.match_state)
    if customer.sf_account_id:
        sf.url = f"{_instance_url()}/{customer.sf_account_id}"
        account = SfAccount.select().where(SfAccount.sf_id == customer.sf_account_id).first()
        if account is not None:
            sf.name = account.name
            if account.owner_sf_id:
                owner = SfUser.select().where(SfUser.sf_id == account.owner_sf_id).first()
                sf.owner = owner.name if owner else account.owner_sf_id
                sf.owner_email = owner.email if owner else None
        candidate = MatchCandidate.get_or_none(MatchCandidate.customer == customer.id,
                                               MatchCandidate.sf_account_id == customer.sf_account_id)
        if candidate is not None:
            sf.score, sf.reasons = candidate.score, candidate.reasons or []
    else:
        best = (MatchCandidate.select().where(MatchCandidate.customer == customer.id)
                .order_by(MatchCandidate.score.desc()).first())
        if best is not None:
            sf.score, sf.reasons = best.score, best.reasons or []
    return sf


def tags(customer_id: int) -> list[tuple[str, str]]:
    query = (CustomerTag.select(Tag.name, CustomerTag.origin).join(Tag)
             .where(CustomerTag.customer == customer_id).order_by(Tag.name).tuples())
    return list(query)


def invoices(customer_id: int) -> tuple[list[Invoice], list[Invoice]]:
    """(open invoices by due date, the most recent other invoices)."""
    open_ = list(Invoice.select().where(Invoice.customer == customer_id, Invoice.status == "open",
                                        Invoice.open_amount > 0, Invoice.deleted_at.is_null())
                 .order_by(Invoice.due_date, Invoice.id))
    open_ids = {i.id for i in open_}
    other = [i for i in Invoice.select().where(Invoice.customer == customer_id, Invoice.deleted_at.is_null())
             .order_by(Invoice.issue_date.desc(), Invoice.id.desc()).limit(RECENT_PAID + len(open_ids))
             if i.id not in open_ids][:RECENT_PAID]
    return open_, other


def payments(customer_id: int) -> list[Payment]:
    return list(Payment.select().where(Payment.customer == customer_id, Payment.deleted_at.is_null())
                .order_by(Payment.date.desc(), Payment.id.desc()).limit(RECENT))


def timeline(customer_id: int, invoice_id: int | None = None) -> list[TimelineEntry]:
    """Dunning actions (skips with their reasons), messages in and out, notes, promises, disputes,
    pauses and the rest of the activities, newest first (``RECENT`` of each kind at most)."""
    out: list[TimelineEntry] = []
    steps = {}
    actions = list(DunningAction.select().where(DunningAction.customer == customer_id)
                   .order_by(DunningAction.planned_for.desc(), DunningAction.id.desc()).limit(RECENT))
    if invoice_id is not None:
        actions = [a for a in actions if invoice_id in (a.invoice_ids or [])]
    step_ids = {a.step_id for a in actions if a.step_id}
    if step_ids:
        steps = {s.id: s.name for s in CampaignStep.select(CampaignStep.id, CampaignStep.name)
                 .where(CampaignStep.id.in_(list(step_ids)))}
    campaign_ids = {a.campaign_id for a in actions if a.campaign_id}
    campaigns = {c.id: c.name for c in Campaign.select(Campaign.id, Campaign.name)
                 .where(Campaign.id.in_(list(campaign_ids)))} if campaign_ids else {}
    for a in actions:
        title = " · ".join(x for x in (campaigns.get(a.campaign_id), steps.get(a.step_id)) if x) or "dunning action"
        out.append(TimelineEntry(_aware(a.updated_at or a.created_at), "action",
                                 f"{title} ({a.channel}, planned for {a.planned_for.isoformat()})",
                                 body=(f"to {a.to_address}" if a.to_address else None), actor=a.decided_by,
                                 status=a.status, reason=a.reason or a.error, invoice_ids=a.invoice_ids or [],
                                 ref=a.id))
    if invoice_id is None:
        for msg in (Message.select().where(Message.customer == customer_id)
                    .order_by(Message.at.desc(), Message.id.desc()).limit(RECENT)):
            direction = "in" if msg.direction == "in" else "out"
            who = msg.from_address if direction == "in" else ", ".join(msg.to_addresses or [])
            out.append(TimelineEntry(_aware(msg.at), f"message_{direction}", msg.subject or "(no subject)",
                                     body=(msg.body_text or "")[:600] or None, actor=who, status=msg.status,
                                     ref=msg.id))
    query = Activity.select().where(Activity.customer == customer_id)
    if invoice_id is not None:
        query = query.where(Activity.invoice == invoice_id)
    for act in query.order_by(Activity.created_at.desc(), Activity.id.desc()).limit(RECENT):
        title = {"note": "Note", "promise": "Promise to pay", "dispute": "Dispute", "pause": "Dunning paused",
                 "resume": "Dunning resumed", "reply": "Reply", "assign": "Collector chosen by a person",
                 "segment": "Segment chosen by a person", "statement": "Statement"}.get(act.kind, act.kind)
        if act.kind in ("promise", "pause") and act.until:
            title += f" until {act.until.isoformat()}"
        if act.kind == "assign":
            title += f": {act.body or 'team queue'}"
        out.append(TimelineEntry(_aware(act.created_at), act.kind, title,
                                 body=None if act.kind == "assign" else act.body, actor=act.actor,
                                 status="resolved" if act.resolved_at else None,
                                 invoice_ids=[act.invoice_id] if act.invoice_id else [], ref=act.id,
                                 open=act.kind in ("promise", "dispute") and act.resolved_at is None))
        if act.amount is not None:
            out[-1].reason = str(act.amount)
    out.sort(key=lambda e: (e.at, e.ref or 0), reverse=True)
    return out


def applications(invoice: Invoice) -> list[dict]:
    """Payments and credit memos applied to the invoice, with their documents' numbers and dates."""
    apps = list(Application.select().where(Application.invoice == invoice.id).order_by(Application.date, Application.id))
    pay_ids = [a.doc_external_id for a in apps if a.doc_kind == "payment"]
    memo_ids = [a.doc_external_id for a in apps if a.doc_kind == "credit_memo"]
    pays = {p.external_id: p for p in Payment.select().where(Payment.source == invoice.source_id,
                                                             Payment.external_id.in_(pay_ids))} if pay_ids else {}
    memos = {m.external_id: m for m in CreditMemo.select().where(
        CreditMemo.source == invoice.source_id, CreditMemo.external_id.in_(memo_ids))} if memo_ids else {}
    out = []
    for a in apps:
        doc = (pays if a.doc_kind == "payment" else memos).get(a.doc_external_id)
        out.append({"kind": "payment" if a.doc_kind == "payment" else "credit memo", "date": a.date,
                    "amount": _m(a.amount), "number": (doc.number if doc else None) or a.doc_external_id,
                    "reference": getattr(doc, "reference", None) if doc else None})
    return out


def open_holds(customer_id: int) -> list[Activity]:
    return list(Activity.select().where(Activity.customer == customer_id, Activity.kind.in_(("promise", "dispute")),
                                        Activity.resolved_at.is_null()).order_by(Activity.created_at))


def rate_label(rate) -> str | None:
    if rate is None:
        return None
    value = to_decimal(rate)
    return format(value.normalize(), "f") if value is not None else None


def closing(book: RateBook, invoice: Invoice, today: date):
    """The closing rate behind the invoice's stored reporting open amount (its revaluation date)."""
    return book.rate(invoice.currency, invoice.revalued_at or today)


def round_reporting(amount: Decimal | None, currency: str) -> Decimal | None:
    return None if amount is None else round_money(amount, currency)


__all__ = ["Balances", "CurrencyBalance", "Salesforce", "TimelineEntry", "applications", "balances", "closing",
           "invoices", "open_holds", "payments", "rate_label", "reporting_currency", "round_reporting", "salesforce",
           "tags", "timeline"]
