"""Dunning (middleware.dunning): exclusions (each recorded with its reason) and the promise and
previous-step anchors, approvals (approve, edit, reject, expiry), A/B variant assignment, holdout
and outcomes with confidence intervals; on SQLite and PostgreSQL, with small hand-built books.

The company in these books works Mon-Fri in Europe/Berlin with two holidays: Good Friday
(2026-04-03) and 1 May (2026-05-01, a Friday). Fixtures: conftest.py; helpers:
tests/support/dunning.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from middleware import dunning
from middleware.dunning import (
    ActionStateError, DunningError, approve, assign_variant, expire_pending, mean_ci, plan, reject,
    seed_default_campaign, skip, variant_outcomes, wilson,
)
from middleware.models import (
    Activity, Application, AuditLog, Campaign, CampaignStep, CampaignVariant, Contact, CreditMemo, Customer,
    DunningAction, Message, SfOpportunity, Source,
)
from tests.support.dunning import DAY_AFTER, DUE, ROOT, UTC, actions, campaign, numbers, run_daily


def outcome(customer: Customer) -> list[tuple[str, str | None, list[str]]]:
    return sorted((a.status, a.reason, numbers(a)) for a in actions(customer))


# ----------------------------------------------------------------------------------- exclusions
EXCLUSION_STEPS = [{"name": "overdue", "anchor": "due", "offset_days": 1}]


def _paused(book, c, inv):
    Customer.update(paused_until=date(2026, 4, 10), paused_reason="CFO on leave").where(Customer.id == c.id).execute()
    return [("skipped", "paused until 2026-04-10: CFO on leave", ["INV-1"])]


def _pause_over(book, c, inv):
    Customer.update(paused_until=date(2026, 4, 1), paused_reason="old").where(Customer.id == c.id).execute()
    return [("planned", None, ["INV-1"])]


def _dispute_one(book, c, inv):
    other = book.invoice(c, number="INV-2")
    Activity.create(customer=c, invoice=other, kind="dispute", body="wrong PO")
    return [("planned", None, ["INV-1"]), ("skipped", "disputed (wrong PO): INV-2 (100 USD)", ["INV-2"])]


def _dispute_all(book, c, inv):
    Activity.create(customer=c, invoice=inv, kind="dispute")
    return [("skipped", "disputed: INV-1 (100 USD)", ["INV-1"])]


def _dispute_resolved(book, c, inv):
    Activity.create(customer=c, invoice=inv, kind="dispute", resolved_at=datetime(2026, 3, 30, tzinfo=UTC))
    return [("planned", None, ["INV-1"])]


def _promise(book, c, inv):
    Activity.create(customer=c, kind="promise", until=date(2026, 4, 5), amount=Decimal("100"))
    return [("skipped", "promise to pay by 2026-04-05", ["INV-1"])]


def _promise_on_invoice(book, c, inv):
    book.invoice(c, number="INV-2")
    Activity.create(customer=c, invoice=inv, kind="promise", until=date(2026, 4, 9))
    return [("planned", None, ["INV-2"]), ("skipped", "promise to pay by 2026-04-09: INV-1 (100 USD)", ["INV-1"])]


def _promise_broken(book, c, inv):
    Activity.create(customer=c, kind="promise", until=date(2026, 4, 1))
    return [("planned", None, ["INV-1"])]


def _renewal(book, c, inv, close=date(2026, 4, 20), closed=False, kind="Renewal"):
    sf = Source.get_or_create(name="salesforce", defaults={"kind": "salesforce", "config": {}})[0]
    Customer.update(sf_account_id="001000000000001AAA").where(Customer.id == c.id).execute()
    SfOpportunity.create(source=sf, sf_id=f"006{close:%Y%m%d}{kind[:3]}", account_sf_id="001000000000001AAA",
                         name=f"{kind} 2026", opp_type=kind, close_date=close, is_closed=closed)
    if close <= date(2026, 5, 2) and not closed and kind in ("Renewal", "Expansion"):
        return [("skipped", f"open {kind} opportunity '{kind} 2026' closes on {close} (within 30 days)", ["INV-1"])]
    return [("planned", None, ["INV-1"])]


def _small(book, c, inv):
    book.invoice(c, amount="5.00", number="INV-2")
    return [("planned", None, ["INV-1"]), ("skipped", "under the campaign minimum of 10: INV-2 (5 USD)", ["INV-2"])]


def _credit(book, c, inv, unapplied="150.00"):
    CreditMemo.create(source=book.source, external_id=f"CM-{c.id}", customer=c, customer_external_id=c.external_id,
                      currency="USD", amount=Decimal(unapplied), unapplied_amount=Decimal(unapplied),
                      content_hash="x" * 32, date=date(2026, 3, 20))
    if Decimal(unapplied) >= 100:
        return [("skipped", "credit balance: unapplied credits 150 USD cover the open 100 USD", ["INV-1"])]
    return [("planned", None, ["INV-1"])]


def _reply(book, c, inv, handled=False, status="routed"):
    Message.create(direction="in", customer=c, message_id=f"m-{c.id}-{status}@x", subject="Re: invoice",
                   status=status, handled_at=datetime(2026, 4, 1, tzinfo=UTC) if handled else None)
    if handled or status == "auto_reply":
        return [("planned", None, ["INV-1"])]
    return [("skipped", "waiting for the collector to answer the customer's reply", ["INV-1"])]


def _no_contact(book, c, inv):
    Contact.delete().where(Contact.customer == c.id, Contact.role == "billing").execute()
    return [("task", "no billing contact: find one", ["INV-1"])]


def _inactive(book, c, inv):
    Customer.update(inactive=True).where(Customer.id == c.id).execute()
    Contact.delete().where(Contact.customer == c.id).execute()  # skipped, not a "find a contact" task
    return [("skipped", "customer inactive in the ERP", ["INV-1"])]


def _holdout(book, c, inv):
    Campaign.update(holdout_percent=100).execute()
    return [("skipped", "holdout", ["INV-1"])]


EXCLUSIONS = {
    "paused": _paused, "pause ended": _pause_over, "one invoice disputed": _dispute_one,
    "every invoice disputed": _dispute_all, "dispute resolved": _dispute_resolved, "promise open": _promise,
    "promise on one invoice": _promise_on_invoice, "promise broken": _promise_broken, "renewal soon": _renewal,
    "expansion soon": lambda b, c, i: _renewal(b, c, i, kind="Expansion"),
    "renewal far": lambda b, c, i: _renewal(b, c, i, close=date(2026, 6, 30)),
    "renewal closed": lambda b, c, i: _renewal(b, c, i, closed=True),
    "new business soon": lambda b, c, i: _renewal(b, c, i, kind="New Business"),
    "small invoice": _small, "credit covers": _credit, "credit short": lambda b, c, i: _credit(b, c, i, "50.00"),
    "reply waiting": _reply, "reply handled": lambda b, c, i: _reply(b, c, i, handled=True),
    "auto-reply": lambda b, c, i: _reply(b, c, i, status="auto_reply"), "no billing contact": _no_contact,
    "holdout": _holdout, "inactive in the ERP": _inactive,
}


@pytest.mark.parametrize("case", list(EXCLUSIONS))
def test_every_exclusion_is_recorded_with_its_reason(book, case):
    """Each exclusion (pause, dispute, promise, open renewal or expansion, minimum amount, credit
    balance, unanswered reply, missing contact, holdout, customer inactive in the ERP) leaves a recorded action with a human
    reason, and the invoices it does not concern still go out; when it no longer applies the
    email goes out as usual."""
    campaign("Test", EXCLUSION_STEPS, min_invoice_amount=Decimal("10"), skip_open_renewal_days=30)
    c = book.customer("Case Ltd")
    inv = book.invoice(c, number="INV-1")
    expected = EXCLUSIONS[case](book, c, inv)
    plan(DAY_AFTER)
    assert outcome(c) == sorted(expected)
    task = [a for a in actions(c) if a.status == "task"]
    assert all(a.channel == "task" and a.to_address is None for a in task)


def test_promise_anchor_takes_over_after_the_promised_date(book):
    """While a promise to pay is open the cadence is skipped; the step anchored on the promise is
    due two days after the promised date if the invoice is still open."""
    campaign("Promises", [{"name": "overdue", "anchor": "due", "offset_days": 1},
                          {"name": "promise broken", "anchor": "promise", "offset_days": 2}])
    c = book.customer("Promiser")
    book.invoice(c, number="INV-1")
    Activity.create(customer=c, kind="promise", until=date(2026, 4, 7))
    run_daily(date(2026, 4, 1), date(2026, 4, 14))
    assert [(a.planned_for, CampaignStep.get_by_id(a.step_id).name, a.status, a.reason) for a in actions(c)] == [
        (date(2026, 4, 2), "overdue", "skipped", "promise to pay by 2026-04-07"),
        (date(2026, 4, 9), "promise broken", "planned", None),
    ]


def test_previous_step_anchor_counts_from_when_the_previous_step_was_planned(book):
    """A step anchored on the previous one is due its offset after the date the previous step was
    planned for that invoice (even when that one was skipped), never before it."""
    campaign("Chain", [{"name": "first", "anchor": "due", "offset_days": 1},
                       {"name": "second", "anchor": "previous", "offset_days": 5}])
    c = book.customer("Chain Co", paused_until=date(2026, 4, 2), paused_reason="audit")
    book.invoice(c, number="INV-1")
    run_daily(date(2026, 4, 1), date(2026, 4, 20))
    assert [(a.planned_for, CampaignStep.get_by_id(a.step_id).name, a.status) for a in actions(c)] == [
        (date(2026, 4, 2), "first", "skipped"), (date(2026, 4, 7), "second", "planned")]


# ----------------------------------------------------------------------------------- approvals
def test_approvals_for_large_accounts_approve_edit_reject_and_expiry(book):
    """Overdue emails to customers with ARR ≥ 100,000 wait for a person: pending with an expiry 3
    days after the window opens; approving (with an edited recipient) records who and when in
    the audit log, approving twice is refused, rejecting skips with the reason, and a pending
    one left alone expires and can no longer be approved. Smaller customers are not held."""
    seed_default_campaign()
    big = [book.customer(f"Big {n}", arr=Decimal("150000")) for n in range(3)]
    small = book.customer("Small", arr=Decimal("99999.99"))
    for c in [*big, small]:
        book.invoice(c)
    plan(DAY_AFTER)
    (a1,), (a2,), (a3,), (s,) = (actions(c) for c in [*big, small])
    assert s.status == "planned" and s.expires_at is None
    assert a1.status == "pending_approval" and a1.reason == "needs approval: ARR 150000 ≥ 100000"
    assert a1.send_after == datetime(2026, 4, 2, 7, tzinfo=UTC)
    assert a1.expires_at == datetime(2026, 4, 5, 7, tzinfo=UTC)

    approved = approve(a1.id, "cora@acme.test", {"to_address": "ap-team@big.test"},
                       now=datetime(2026, 4, 2, 6, tzinfo=UTC))
    assert (approved.status, approved.to_address, approved.decided_by) == ("approved", "ap-team@big.test",
                                                                         "cora@acme.test")
    log = AuditLog.get(AuditLog.object_id == str(a1.id))
    assert log.before["to_address"] == "ap@big.test" and log.after["status"] == "approved"
    with pytest.raises(ActionStateError, match="is approved"):
        approve(a1.id, "someone@acme.test")
    with pytest.raises(DunningError, match="cannot edit"):
        approve(a2.id, "cora@acme.test", {"template": "other"})

    rejected = reject(a2.id, "cora@acme.test", "paid by phone")
    assert (rejected.status, rejected.reason) == ("skipped", "rejected by cora@acme.test: paid by phone")

    assert expire_pending(datetime(2026, 4, 5, 6, 59, tzinfo=UTC)) == 0
    assert expire_pending(datetime(2026, 4, 5, 7, 0, tzinfo=UTC)) == 1
    assert DunningAction.get_by_id(a3.id).status == "expired"
    with pytest.raises(ActionStateError):
        approve(a3.id, "cora@acme.test")
    skipped = skip(s.id, "cora@acme.test", "customer called")
    assert (skipped.status, skipped.reason) == ("skipped", "skipped by cora@acme.test: customer called")


# ----------------------------------------------------------------------------------- A/B
def test_ab_assignment_is_stable_variant_steps_and_holdout(book):
    """Customers split between two variants by weight with a 20 % holdout; the assignment is a
    hash of (campaign, customer): the same on every run and in another process; variant steps
    go only to their variant; held-out customers get every step recorded as skipped
    "holdout"."""
    c = campaign("AB", [{"name": "reminder", "anchor": "due", "offset_days": 1}], holdout_percent=20)
    friendly = CampaignVariant.create(campaign=c, name="friendly", weight=1)
    firm = CampaignVariant.create(campaign=c, name="firm", weight=1)
    CampaignStep.create(campaign=c, variant=friendly, position=2, name="friendly note", anchor="due", offset_days=3)
    CampaignStep.create(campaign=c, variant=firm, position=2, name="firm note", anchor="due", offset_days=3)
    customers = [book.customer(f"Cust {n}") for n in range(200)]
    for cust in customers:
        book.invoice(cust)
    plan(DAY_AFTER)
    plan(date(2026, 4, 6))
    groups = {}
    for cust in customers:
        acts = actions(cust)
        steps = [CampaignStep.get_by_id(a.step_id).name for a in acts]
        if all(a.status == "skipped" and a.reason == "holdout" for a in acts):
            groups[cust.id] = "holdout"
            assert steps == ["reminder"]  # held out of the shared step; no variant step at all
        else:
            names = {a.variant_id for a in acts}
            assert len(names) == 1  # the same variant on both days
            groups[cust.id] = CampaignVariant.get_by_id(names.pop()).name
            assert steps == ["reminder", f"{groups[cust.id]} note"]
            assert all(a.status == "planned" for a in acts)
    share = {g: sum(1 for v in groups.values() if v == g) / len(customers) for g in ("holdout", "friendly", "firm")}
    assert 0.12 <= share["holdout"] <= 0.28 and 0.3 <= share["friendly"] <= 0.5 and 0.3 <= share["firm"] <= 0.5
    weights = [(friendly.id, 1), (firm.id, 1)]
    here = [assign_variant(cust.id, c.id, 20, weights) for cust in customers]
    code = ("import json,sys; from middleware.dunning import assign_variant; a=json.loads(sys.argv[1]); "
            "print(json.dumps([assign_variant(i, a['c'], 20, [tuple(w) for w in a['w']]) for i in a['ids']]))")
    args = json.dumps({"c": c.id, "w": weights, "ids": [cust.id for cust in customers]})
    out = subprocess.run([sys.executable, "-c", code, args], cwd=ROOT, capture_output=True, text=True, check=True)
    assert [tuple(x) for x in json.loads(out.stdout)] == here
    names = {friendly.id: "friendly", firm.id: "firm"}
    assert ["holdout" if held else names[v] for v, held in here] == [groups[cust.id] for cust in customers]


def test_variant_outcomes_with_confidence_intervals(book):
    """Per variant and holdout: customers, invoices, the share paid within 5 days of due, mean
    days to pay and mean days late, with 95 % intervals; payments come from applications dated on
    or before the as-of date; an unpaid invoice counts as late until the as-of date."""
    c = campaign("AB", [{"name": "reminder", "anchor": "due", "offset_days": 1}], holdout_percent=30)
    a = CampaignVariant.create(campaign=c, name="a", weight=1)
    b = CampaignVariant.create(campaign=c, name="b", weight=1)
    customers = [book.customer(f"Cust {n}") for n in range(40)]
    late = {}
    for cust in customers:
        inv = book.invoice(cust, issued=date(2026, 3, 2), due=DUE)
        variant, held = assign_variant(cust.id, c.id, 30, [(a.id, 1), (b.id, 1)])
        if held:
            continue
        late[cust.id] = 2 if variant == a.id else 10
        Application.create(source=book.source, doc_kind="payment", doc_external_id=f"P{inv.id}",
                           invoice_external_id=inv.external_id, invoice=inv, amount=inv.amount,
                           date=DUE + timedelta(days=late[cust.id]))
    plan(DAY_AFTER)
    out = {o.group: o for o in variant_outcomes(c.id, date(2026, 4, 21), within_days=5)}
    assert set(out) == {"a", "b", "holdout"}
    assert sum(o.customers for o in out.values()) == 40 and all(o.invoices == o.customers for o in out.values())
    assert out["a"].paid_within.value == 1.0 and out["b"].paid_within.value == 0.0
    assert out["holdout"].paid_within.value == 0.0 and out["holdout"].days_to_pay.n == 0
    assert out["a"].paid_within.low < 1.0 and out["b"].paid_within.high > 0.0  # Wilson never collapses to a point
    assert out["a"].days_to_pay.value == 32 and out["b"].days_to_pay.value == 40
    assert out["a"].days_late.value == 2 and out["b"].days_late.value == 10 and out["holdout"].days_late.value == 20
    early = {o.group: o for o in variant_outcomes(c.id, date(2026, 4, 5), within_days=5)}
    assert early["b"].paid_within.n == 0 and early["b"].days_to_pay.n == 0  # due + 5 not reached; nobody paid yet


def test_confidence_interval_formulas():
    """Wilson's interval for 8 of 10 is 0.490-0.943; the t interval for 1..5 is 3 ± 1.963."""
    w = wilson(8, 10)
    assert (round(w.low, 3), round(w.high, 3)) == (0.49, 0.943)
    m = mean_ci([1, 2, 3, 4, 5])
    assert m.value == 3 and (round(m.low, 3), round(m.high, 3)) == (1.037, 4.963)
    assert abs(dunning.t975(120) - 1.980) < 0.001 and dunning.t975(30) == 2.042
