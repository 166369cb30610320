"""The context a step's template is rendered with."""
from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from ..models import CampaignStep, Contact, Customer, DunningAction, Invoice, User
from .base import ZERO
from .campaigns import _company


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
