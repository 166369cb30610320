"""What a person records on a customer: pauses, notes, promises to pay, disputes.

Every function takes the ``actor`` (the person's email), writes an :class:`Activity` (the
customer's timeline) and, where it changes the customer's state, an :class:`AuditLog` row.
The dunning planner reads what these write: ``Customer.paused_until`` / ``paused_reason``
(the customer is skipped while paused), unresolved ``promise`` activities (the cadence waits
until the promised date) and unresolved ``dispute`` activities (the invoice, or with no invoice
the whole customer, leaves the cadence until resolved). Replies have their own entry point
(:func:`middleware.inbox.handle`); a collector change is :func:`middleware.rules.assign_collector`.
"""
from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation

from .db import database
from .models import Activity, AuditLog, Customer, Invoice, utcnow

__all__ = ["ActivityError", "add_note", "dispute", "pause", "promise", "resolve", "resume"]


class ActivityError(ValueError):
    """A request that cannot be recorded (says why, in words a collector understands)."""


def _customer(customer_id: int) -> Customer:
    customer = Customer.get_or_none(Customer.id == customer_id, Customer.deleted_at.is_null())
    if customer is None:
        raise ActivityError(f"no customer #{customer_id}")
    return customer


def _text(value: str | None) -> str | None:
    return (value or "").strip() or None


def pause(customer_id: int, until: date, reason: str | None, actor: str, *, today: date | None = None) -> Activity:
    """Pause the customer's dunning up to and including ``until`` (the planner skips it with
    "paused until ...: <reason>")."""
    customer = _customer(customer_id)
    if until is None:
        raise ActivityError("a pause needs an end date")
    if today is not None and until < today:
        raise ActivityError(f"the pause would end in the past ({until.isoformat()})")
    reason = _text(reason)
    return _set_pause(customer, "pause", until, reason, reason, actor)


def resume(customer_id: int, actor: str, note: str | None = None) -> Activity:
    """End a pause now: dunning picks the customer up at the next plan."""
    return _set_pause(_customer(customer_id), "resume", None, None, _text(note), actor)


def _set_pause(customer: Customer, kind: str, until: date | None, reason: str | None, body: str | None,
               actor: str) -> Activity:
    """Set (or clear, ``until=None``) the customer's pause, with its Activity and audit row, in one transaction."""
    now = utcnow()
    with database.atomic():
        before = {"paused_until": customer.paused_until, "paused_reason": customer.paused_reason}
        Customer.update(paused_until=until, paused_reason=reason, updated_at=now).where(
            Customer.id == customer.id).execute()
        act = Activity.create(customer=customer.id, kind=kind, until=until, body=body, actor=actor, created_at=now)
        AuditLog.create(at=now, actor=actor, action=f"customer.{kind}", object_type="customer",
                        object_id=str(customer.id), before=before,
                        after={"paused_until": until, "paused_reason": reason})
    return act


def add_note(customer_id: int, body: str, actor: str, *, invoice_id: int | None = None) -> Activity:
    customer = _customer(customer_id)
    body = _text(body)
    if body is None:
        raise ActivityError("the note is empty")
    invoice = _invoice(customer.id, invoice_id) if invoice_id else None
    return Activity.create(customer=customer.id, invoice=invoice, kind="note", body=body, actor=actor,
                           created_at=utcnow())


def _invoice(customer_id: int, invoice_id: int) -> Invoice:
    invoice = Invoice.get_or_none(Invoice.id == invoice_id, Invoice.customer == customer_id)
    if invoice is None:
        raise ActivityError(f"invoice #{invoice_id} is not an invoice of this customer")
    return invoice


def promise(customer_id: int, until: date, amount: Decimal | str | None, actor: str, *,
            invoice_id: int | None = None, note: str | None = None) -> Activity:
    """A promise to pay by ``until`` (``amount`` in the customer's billing currency, optional; on
    one invoice or, without ``invoice_id``, on the customer): the cadence waits until then."""
    customer = _customer(customer_id)
    if until is None:
        raise ActivityError("a promise to pay needs a date")
    value = None
    if amount not in (None, ""):
        try:
            value = Decimal(str(amount).replace(",", "").strip())
        except InvalidOperation:
            raise ActivityError(f"the promised amount {amount!r} is not a number") from None
        if value <= 0:
            raise ActivityError("the promised amount must be above zero")
    invoice = _invoice(customer.id, invoice_id) if invoice_id else None
    return Activity.create(customer=customer.id, invoice=invoice, kind="promise", until=until, amount=value,
                           body=_text(note), actor=actor, created_at=utcnow())


def dispute(customer_id: int, invoice_id: int, reason: str | None, actor: str) -> Activity:
    """The customer contests ``invoice_id``: it leaves the cadence until :func:`resolve`."""
    customer = _customer(customer_id)
    invoice = _invoice(customer.id, invoice_id)
    return Activity.create(customer=customer.id, invoice=invoice, kind="dispute", body=_text(reason), actor=actor,
                           created_at=utcnow())


def resolve(activity_id: int, actor: str, *, customer_id: int | None = None) -> Activity:
    """Close an open dispute or promise (the invoice goes back into the cadence)."""
    query = Activity.select().where(Activity.id == activity_id, Activity.kind.in_(("dispute", "promise")))
    if customer_id is not None:
        query = query.where(Activity.customer == customer_id)
    act = query.first()
    if act is None:
        raise ActivityError(f"no open dispute or promise #{activity_id}")
    if act.resolved_at is not None:
        return act
    now = utcnow()
    with database.atomic():
        Activity.update(resolved_at=now).where(Activity.id == act.id).execute()
        AuditLog.create(at=now, actor=actor, action=f"{act.kind}.resolve", object_type="activity",
                        object_id=str(act.id), after={"customer": act.customer_id, "invoice": act.invoice_id})
    act.resolved_at = now
    return act
