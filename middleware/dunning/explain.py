"""Why a customer is (or is not) in a campaign, and what each step would do."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from ..models import Customer
from .audience import Check, check_audience
from .base import CATCH_UP_DAYS
from .campaigns import PlannedAction
from .outcomes import assign_variant
from .planner import _Planner


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
