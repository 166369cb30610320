"""In a real browser: a collector approves a queued dunning email from the workspace; when it
is due, a real rq worker sends it through a real SMTP server on loopback."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from middleware.models import Campaign, CampaignStep, Contact, Customer, DunningAction, Invoice, Source, Template
from middleware.people import today
from middleware.settings import reset_settings
from tests.e2e.conftest import login
from tests.integration.test_mailer import LoopbackController, Sink

pytestmark = pytest.mark.e2e
UTC = timezone.utc


def _waiting_email(send_after: datetime) -> DunningAction:
    """Bob's customer Müller GmbH (German) with an overdue invoice of 1,234.50 EUR and a
    reminder waiting for approval, due to go out after ``send_after``."""
    source = Source.create(name="erp", kind="rest")
    Template.create(name="overdue-1", language="de", subject="Zahlungserinnerung {{ customer.name }}",
                    body_text="Guten Tag {{ contact.name }},\n{% for i in invoices %}{{ i.number }}: "
                              "{{ i.open_amount|money(i.currency) }}\n{% endfor %}")
    campaign = Campaign.create(name="Default")
    step = CampaignStep.create(campaign=campaign, position=1, name="overdue 1", template="overdue-1",
                               approval={"expires_days": 3}, window_start="00:00", window_end="23:59")
    cust = Customer.create(source=source, external_id="C1", number="K-1", name="Müller GmbH", billing_currency="EUR",
                           locale="de_DE", collector="bob@example.com", content_hash="x")
    Contact.create(source=source, external_id="C1:billing:1", customer=cust, customer_external_id="C1",
                   name="Anna Schmidt", email="anna@mueller.example", role="billing", content_hash="x")
    day = today()
    inv = Invoice.create(source=source, external_id="I1", number="RE-0001", customer=cust, customer_external_id="C1",
                         currency="EUR", amount=Decimal("1234.50"), open_amount=Decimal("1234.50"),
                         open_amount_reporting=Decimal("1350.00"), issue_date=day - timedelta(days=40),
                         due_date=day - timedelta(days=10), content_hash="x")
    return DunningAction.create(key="e2e-approval-1", customer=cust, campaign=campaign, step=step, planned_for=day,
                                status="pending_approval", reason="needs approval: ARR 150000 ≥ 100000",
                                invoice_ids=[inv.id], to_address="anna@mueller.example", cc=[],
                                send_after=send_after, expires_at=send_after + timedelta(days=3))


def _approve_in_browser(page, console_url, action):
    login(page, console_url, "bob@example.com")
    page.get_by_role("link", name="My work").click()
    page.get_by_role("link", name="Approvals").click()
    row = page.locator(f'tr[data-action-id="{action.id}"]')
    row.get_by_role("link", name="Review").click()
    assert page.get_by_test_id("email-subject").inner_text() == "Zahlungserinnerung Müller GmbH"
    assert "1.234,50" in page.get_by_test_id("email-body").inner_text()
    page.get_by_role("button", name="Approve", exact=True).click()
    page.get_by_text("Approved: the email to anna@mueller.example").wait_for()
    assert page.locator(f'tr[data-action-id="{action.id}"]').count() == 0
    assert "Nothing waits for approval." in page.get_by_test_id("approvals").inner_text()


def test_a_collector_approves_a_queued_email_and_it_leaves_the_list(page, console_url, make_user):
    """Bob opens My work → Approvals, reviews the German email as the customer will get it,
    approves it: it leaves his list, and it is approved by him, waiting for its sending time."""
    make_user("bob@example.com", "collector", "Bob Collector")
    action = _waiting_email(datetime.now(UTC) + timedelta(hours=5))
    _approve_in_browser(page, console_url, action)
    page.get_by_text("It goes out at").wait_for()
    stored = DunningAction.get_by_id(action.id)
    assert stored.status == "approved" and stored.decided_by == "bob@example.com"


def test_a_collector_edits_the_wording_before_approving(page, console_url, make_user):
    """On the review page Bob opens "Edit the wording", sees the template's German text in the
    fields, replaces the subject and the text and clicks "Edit and approve": the list says it
    was approved with his wording, and the review page now shows his words as the email."""
    make_user("bob@example.com", "collector", "Bob Collector")
    action = _waiting_email(datetime.now(UTC) + timedelta(hours=5))
    login(page, console_url, "bob@example.com")
    page.goto(f"{console_url}/workspace/approvals/{action.id}")
    page.get_by_test_id("edit-wording").get_by_text("Edit the wording").click()
    assert page.get_by_label("Subject").input_value() == "Zahlungserinnerung Müller GmbH"
    assert "Guten Tag Anna Schmidt," in page.get_by_label("Text").input_value()
    page.get_by_label("Subject").fill("Wie besprochen: RE-0001")
    page.get_by_label("Text").fill("Liebe Frau Schmidt,\nwie telefonisch besprochen bis Freitag.\nBob")
    page.get_by_role("button", name="Edit and approve").click()
    page.get_by_text("Approved with your wording: the email to anna@mueller.example").wait_for()
    stored = DunningAction.get_by_id(action.id)
    assert stored.status == "approved" and stored.subject_override == "Wie besprochen: RE-0001"
    page.goto(f"{console_url}/workspace/approvals/{action.id}")
    assert page.get_by_test_id("email-subject").inner_text() == "Wie besprochen: RE-0001"
    assert "wie telefonisch besprochen bis Freitag." in page.get_by_test_id("email-body").inner_text()
    assert page.get_by_test_id("wording-edited").is_visible()


def test_an_approved_email_that_is_due_is_sent_by_the_worker(page, console_url, make_user, monkeypatch,
                                                               start_rq_worker, wait_until):
    """Approving an email that is due now queues it; a real worker sends it through the SMTP
    server to the customer's contact, and the action ends sent."""
    sink = Sink()
    controller = LoopbackController(sink)
    controller.start()
    try:
        env = {"ARHUB_SMTP_HOST": "127.0.0.1", "ARHUB_SMTP_PORT": str(controller.port),
               "ARHUB_SMTP_SECURITY": "none", "ARHUB_SMTP_TIMEOUT_SECONDS": "10",
               "ARHUB_MAIL_FROM": "Forderungen <ar@example.com>", "ARHUB_REPLY_DOMAIN": "reply.example.com"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        make_user("bob@example.com", "collector", "Bob Collector")
        action = _waiting_email(datetime.now(UTC) - timedelta(minutes=1))
        start_rq_worker(queues=["dunning"], env=env, with_scheduler=False)
        _approve_in_browser(page, console_url, action)
        page.get_by_text("It is queued for sending now.").wait_for()
        wait_until(lambda: DunningAction.get_by_id(action.id).status == "sent", timeout=30,
                   message="the worker to send the approved email")
        assert len(sink.received) == 1
        got = sink.received[0]
        assert got.rcpt_tos == ["anna@mueller.example"]
        assert got.message["Subject"] == "Zahlungserinnerung Müller GmbH"
        assert DunningAction.get_by_id(action.id).decided_by == "bob@example.com"
    finally:
        controller.stop()
