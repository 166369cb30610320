"""Dunning test helpers (tests/integration/dunning/): the books' dates and holidays, ``Book``
(customers, contacts and invoices written straight into the store), campaigns built from step
dicts, and readers of the planned actions."""
from __future__ import annotations

import itertools
import re
from datetime import date, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from middleware.dunning import plan
from middleware.models import Campaign, CampaignStep, Contact, Customer, DunningAction, Invoice, Source

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[2]
HOLIDAYS = ["2026-04-03", "2026-05-01"]
DUE = date(2026, 4, 1)  # a Wednesday
DAY_AFTER = date(2026, 4, 2)  # Thursday: "due + 1"


class Book:
    """Builds customers, contacts and invoices straight into the store."""

    def __init__(self):
        self.source = Source.create(name="erp", kind="rest", config={})
        self.ids = itertools.count(1)

    def customer(self, name: str, *, billing: bool = True, escalation: bool = True, collector="cora@acme.test",
                 currency: str = "USD", **fields) -> Customer:
        n = next(self.ids)
        slug = re.sub(r"[^a-z]+", "", name.lower()) or f"c{n}"
        c = Customer.create(source=self.source, external_id=f"C{n}", number=f"CUST-{n}", name=name,
                            billing_currency=currency, content_hash="x" * 32, collector=collector, **fields)
        for role, wanted, local in (("billing", billing, "ap"), ("escalation", escalation, "cfo")):
            if wanted:
                Contact.create(source=self.source, external_id=f"C{n}:{role}", customer=c,
                               customer_external_id=c.external_id, name=f"{name} {role}",
                               email=f"{local}@{slug}.test", role=role, content_hash="x" * 32)
        return c

    def invoice(self, customer: Customer, *, due: date = DUE, issued: date | None = None,
                sent: date | None | str = "issued", amount: str = "100.00", open_amount: str | None = None, number: str | None = None,
                currency: str | None = None) -> Invoice:
        n = next(self.ids)
        issued = issued or due - timedelta(days=30)
        open_amount = Decimal(open_amount or amount)
        return Invoice.create(
            source=self.source, external_id=f"I{n}", number=number or f"INV-{n}", customer=customer,
            customer_external_id=customer.external_id, currency=currency or customer.billing_currency,
            amount=Decimal(amount), open_amount=open_amount, open_amount_reporting=open_amount, content_hash="x" * 32,
            issue_date=issued, sent_date=issued if sent == "issued" else sent, due_date=due)


def campaign(name: str, steps: list[dict], *, priority: int = 100, audience: dict | None = None, **fields) -> Campaign:
    c = Campaign.create(name=name, priority=priority, audience=audience or {}, **fields)
    for position, step in enumerate(steps, 1):
        CampaignStep.create(campaign=c, position=position, **{"template": "overdue-1", **step})
    return c


def actions(customer: Customer | None = None) -> list[DunningAction]:
    query = DunningAction.select().order_by(DunningAction.planned_for, DunningAction.id)
    if customer is not None:
        query = query.where(DunningAction.customer == customer.id)
    return list(query)


def numbers(action) -> list[str]:
    ids = action.invoice_ids
    by_id = {i.id: i.number for i in Invoice.select().where(Invoice.id.in_(ids))}
    return [by_id[i] for i in ids]


def run_daily(start: date, end: date) -> None:
    """Plan every day from ``start`` to ``end``, as the daily cron does."""
    day = start
    while day <= end:
        plan(day)
        day += timedelta(days=1)
