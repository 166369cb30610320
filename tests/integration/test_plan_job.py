"""jobs.dunning.plan_dunning, the daily cron job: rules, expiry, plan, then the due emails
enqueued on the dunning queue; a second run the same day plans and enqueues nothing new."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from jobs.dunning import plan_dunning
from jobs.queues import get_queue
from middleware.models import Contact, Customer, DunningAction, Invoice, Source
from middleware.settings import get_settings


def test_the_daily_job_plans_and_enqueues_once(db, redis_url):
    """A customer whose invoice went out six days ago gets the seeded campaign's check-in
    ('do you have everything you need to pay?'): planned, then enqueued for sending; running
    the job again the same day changes nothing."""
    from middleware.dunning import seed_default_campaign

    seed_default_campaign()
    today = date.today()
    source = Source.create(name="erp", kind="rest")
    customer = Customer.create(source=source, external_id="C1", number="C-1", name="Acme Labs", billing_currency="USD",
                               arr=Decimal("12000"), content_hash="x")
    Contact.create(source=source, external_id="C1:billing:1", customer=customer, customer_external_id="C1",
                   name="Pat Payables", email="ap@acme.example", role="billing", content_hash="x")
    Invoice.create(source=source, external_id="I1", number="INV-1", customer=customer, customer_external_id="C1",
                   currency="USD", amount=Decimal("500.00"), open_amount=Decimal("500.00"),
                   issue_date=today - timedelta(days=6), sent_date=today - timedelta(days=6),
                   due_date=today + timedelta(days=24), content_hash="x")

    first = plan_dunning(today.isoformat())
    actions = list(DunningAction.select().where(DunningAction.customer == customer.id))
    assert first["planned"] == len(actions) >= 1
    email = [a for a in actions if a.channel == "email"]
    assert email and email[0].to_address == "ap@acme.example"
    # the email waits for the sending window (09:00 in the recipient's zone), then goes on the queue once
    from jobs.dunning import send_due_actions

    opened = send_due_actions(now=email[0].send_after)
    # the plan job itself enqueues what is already due when it runs: after 09:00 UTC that is this
    # email, before it is not; either way it is enqueued exactly once
    assert first["emails"]["enqueued"] + opened["enqueued"] == len(email)
    assert get_queue("dunning", get_settings()).count == len(email)
    assert send_due_actions(now=email[0].send_after)["enqueued"] == 0, "already queued: not twice"

    second = plan_dunning(today.isoformat())
    assert second["planned"] == 0
    assert DunningAction.select().where(DunningAction.customer == customer.id).count() == len(actions)
    assert second["emails"]["enqueued"] == 0
