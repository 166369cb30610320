"""The collector workspace: my accounts by priority, my approvals, my inbox, cover while away,
bulk reassignment, and who may act (SQLite and PostgreSQL, through the Flask test client)."""
from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest

from console import create_app
from console.views.workspace import queries
from middleware.models import (
    Activity, AuditLog, Campaign, CampaignStep, Contact, Customer, DunningAction, Invoice, Message, Source, Template,
)
from middleware.mailer import send_action
from middleware.people import create_user, set_away, today
from tests.integration.test_mailer import smtp_server, use_smtp  # noqa: F401  (fixtures: aiosmtpd on loopback)
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf

UTC = timezone.utc


def _client(app, email):
    client = app.test_client()
    token = _csrf(client.get("/login").get_data(as_text=True))
    resp = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    client.token = _csrf(client.get("/workspace/").get_data(as_text=True))
    return client


@pytest.fixture
def world(db, redis_url):
    """Users (admin Ada, collectors Bob, Carl and Dana, viewer Vic), a source, a template and a
    campaign step that needs approval; ``customer(...)``, ``invoice(...)``, ``action(...)`` and
    ``reply(...)`` build the rest."""
    for email, name, role in (("ada@example.com", "Ada Admin", "admin"), ("bob@example.com", "Bob", "collector"),
                              ("carl@example.com", "Carl", "collector"), ("dana@example.com", "Dana", "collector"),
                              ("vic@example.com", "Vic Viewer", "viewer")):
        create_user(email, name, role, PASSWORD, actor="test")
    source = Source.create(name="erp", kind="rest")
    Template.create(name="overdue-1", language="en", subject="Overdue: {{ customer.name }}",
                    body_text="Dear {{ contact.name }},\n{% for i in invoices %}{{ i.number }} "
                              "{{ i.open_amount|money(i.currency) }}\n{% endfor %}")
    Template.create(name="overdue-1", language="de", subject="Überfällig: {{ customer.name }}",
                    body_text="Guten Tag {{ contact.name }},\n{% for i in invoices %}{{ i.number }} "
                              "{{ i.open_amount|money(i.currency) }}\n{% endfor %}")
    campaign = Campaign.create(name="Default")
    step = CampaignStep.create(campaign=campaign, position=1, name="overdue 1", template="overdue-1",
                               approval={"expires_days": 3}, window_start="00:00", window_end="23:59")
    ns = SimpleNamespace(source=source, campaign=campaign, step=step, n=0, today=today())

    def customer(name, collector="bob@example.com", currency="USD", locale="en"):
        ns.n += 1
        cust = Customer.create(source=source, external_id=f"C{ns.n}", number=f"K-{ns.n}", name=name,
                               billing_currency=currency, locale=locale, collector=collector, content_hash="x")
        Contact.create(source=source, external_id=f"C{ns.n}:billing:1", customer=cust, customer_external_id=f"C{ns.n}",
                       name="Pat Payer", email=f"ap{ns.n}@customer.example", role="billing", content_hash="x")
        return cust

    def invoice(cust, open_amount, days_late, *, reporting=None, currency=None):
        ns.n += 1
        amount = Decimal(open_amount)
        return Invoice.create(
            source=source, external_id=f"I{ns.n}", number=f"INV-{ns.n:04d}", customer=cust,
            customer_external_id=cust.external_id, currency=currency or cust.billing_currency, amount=amount,
            open_amount=amount, open_amount_reporting=Decimal(reporting) if reporting is not None else amount,
            issue_date=ns.today - timedelta(days=days_late + 30), due_date=ns.today - timedelta(days=days_late),
            content_hash="x")

    def action(cust, invoices, *, send_after=None, expires_in=timedelta(days=3)):
        ns.n += 1
        send_after = send_after or datetime.now(UTC) + timedelta(hours=6)
        return DunningAction.create(
            key=f"act-{ns.n}", customer=cust, campaign=campaign, step=step, planned_for=ns.today,
            status="pending_approval", reason="needs approval", invoice_ids=sorted(i.id for i in invoices),
            to_address=Contact.get(Contact.customer == cust).email, cc=[], send_after=send_after,
            expires_at=send_after + expires_in)

    def reply(cust, routed_to, body="Thanks, we will pay by 2099-12-04.", subject="Re: overdue"):
        ns.n += 1
        return Message.create(direction="in", customer=cust, message_id=f"reply-{ns.n}@customer.example",
                              subject=subject, from_address="ap@customer.example", body_text=body,
                              status="routed" if routed_to else "queued", routed_to=routed_to, matched_by="sender")

    ns.customer, ns.invoice, ns.action, ns.reply = customer, invoice, action, reply
    ns.app = create_app()
    return ns


def _order(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-customer-id="(\d+)"', html)]


# ------------------------------------------------------------------------------- accounts


def test_my_accounts_are_ordered_by_overdue_money_times_days(world):
    """Bob sees his accounts, and only his, highest priority first: priority is the sum of
    (overdue amount in reporting currency × days late): 10,000 × 60 = 600,000 comes before
    50,000 × 5 = 250,000, then 1,000 × 100 + 3,000 × 10 = 130,000 (weighted age 32.5 days), then
    a EUR customer at 1,100 USD × 20 = 22,000, then an account with nothing overdue."""
    w = world
    a, b, c = w.customer("Alpha"), w.customer("Beta"), w.customer("Gamma")
    eur, d = w.customer("Euro GmbH", currency="EUR", locale="de_DE"), w.customer("Delta")
    other = w.customer("Carl's own", collector="carl@example.com")
    w.invoice(a, "10000", 60)
    w.invoice(b, "50000", 5)
    w.invoice(c, "1000", 100)
    w.invoice(c, "3000", 10)
    w.invoice(c, "500", -10)  # not due yet: open, not overdue
    w.invoice(eur, "1000", 20, reporting="1100")
    w.invoice(d, "99999", -5)
    w.invoice(other, "1000000", 300)

    rows = queries.accounts(["bob@example.com"], w.today)
    assert [r.name for r in rows] == ["Alpha", "Beta", "Gamma", "Euro GmbH", "Delta"]
    assert [r.priority for r in rows] == [Decimal("600000.00"), Decimal("250000.00"), Decimal("130000.00"),
                                          Decimal("22000.00"), Decimal("0.00")]
    gamma = rows[2]
    assert gamma.overdue_reporting == Decimal("4000.00") and gamma.oldest_days == 100
    assert gamma.weighted_age == Decimal("32.5")
    assert gamma.open_reporting == Decimal("4500.00") and gamma.open_billing == {"USD": Decimal("4500")}
    assert rows[3].open_billing == {"EUR": Decimal("1000")} and rows[3].overdue_reporting == Decimal("1100.00")
    assert queries.count_accounts(["bob@example.com"]) == 5

    client = _client(w.app, "bob@example.com")
    html = client.get("/workspace/").get_data(as_text=True)
    assert _order(html) == [a.id, b.id, c.id, eur.id, d.id]
    assert "600,000" in html and "$10,000.00" in html and "€1,000.00" in html and "$1,100.00" in html
    assert f'href="/customers/{a.id}"' in html and "Carl&#39;s own" not in html
    # paging: the second page of one row each
    assert _order(client.get("/workspace/?page=2").get_data(as_text=True)) == []


def test_flags_last_contact_and_next_step_show_on_the_account(world):
    """An account shows it is paused, has a promise and a dispute, a reply waiting, when it was
    last contacted and its next planned step."""
    w = world
    cust = w.customer("Flagged")
    inv = w.invoice(cust, "100", 3)
    Customer.update(paused_until=w.today + timedelta(days=5), paused_reason="CFO on leave").where(
        Customer.id == cust.id).execute()
    Activity.create(customer=cust, kind="promise", until=w.today + timedelta(days=9), actor="bob@example.com")
    Activity.create(customer=cust, kind="dispute", invoice=inv, actor="bob@example.com")
    w.reply(cust, "bob@example.com")
    w.action(cust, [inv])
    row = queries.accounts(["bob@example.com"], w.today)[0]
    assert row.paused_until == w.today + timedelta(days=5) and row.promise_until == w.today + timedelta(days=9)
    assert row.disputes == 1 and row.waiting_replies == 1
    assert row.last_contact is not None and row.last_contact_direction == "in"
    assert row.next_step == "overdue 1" and row.next_status == "pending_approval"
    html = _client(w.app, "bob@example.com").get("/workspace/").get_data(as_text=True)
    assert "paused until" in html and "1 dispute" in html and "promise" in html and "1 reply waiting" in html


# ------------------------------------------------------------------------------- approvals


def test_approving_an_email_makes_it_approved_and_it_leaves_the_list(world):
    """Bob opens the email waiting for approval, sees it rendered in the customer's language
    (German here), approves it, and it leaves his approvals with status approved by him."""
    w = world
    cust = w.customer("Müller GmbH", currency="EUR", locale="de_DE")
    inv = w.invoice(cust, "1234.50", 2)
    act = w.action(cust, [inv])
    client = _client(w.app, "bob@example.com")
    listing = client.get("/workspace/approvals").get_data(as_text=True)
    assert f'data-action-id="{act.id}"' in listing
    page = client.get(f"/workspace/approvals/{act.id}").get_data(as_text=True)
    assert "Überfällig: Müller GmbH" in page and "1.234,50" in page
    resp = client.post(f"/workspace/approvals/{act.id}/approve",
                       data={"csrf_token": client.token, "to_address": act.to_address, "cc": "",
                             "invoices_shown": "1", "invoice_ids": [str(inv.id)]})
    assert resp.status_code == 302
    stored = DunningAction.get_by_id(act.id)
    assert stored.status == "approved" and stored.decided_by == "bob@example.com"
    assert f'data-action-id="{act.id}"' not in client.get("/workspace/approvals").get_data(as_text=True)


def test_approving_with_edits_changes_the_recipient_and_narrows_the_invoices(world):
    """The approval form can send the email to another address and leave an invoice out."""
    w = world
    cust = w.customer("Edit Inc")
    one, two = w.invoice(cust, "100", 3), w.invoice(cust, "200", 3)
    act = w.action(cust, [one, two])
    client = _client(w.app, "bob@example.com")
    client.post(f"/workspace/approvals/{act.id}/approve",
                data={"csrf_token": client.token, "to_address": "cfo@customer.example", "cc": "x@customer.example",
                      "invoices_shown": "1", "invoice_ids": [str(two.id)]})
    stored = DunningAction.get_by_id(act.id)
    assert stored.status == "approved" and stored.to_address == "cfo@customer.example"
    assert stored.cc == ["x@customer.example"] and stored.invoice_ids == [two.id]
    audit = AuditLog.get(AuditLog.action == "dunning.approved")
    assert audit.actor == "bob@example.com" and audit.before["to_address"] != "cfo@customer.example"


def _shown(page: str) -> dict:
    """The wording the review page showed (its hidden ``*_shown`` fields), as the browser posts it."""
    subject = re.search(r'name="subject_shown" value="([^"]*)"', page).group(1)
    body = re.search(r'<textarea name="body_shown" hidden>(.*?)</textarea>', page, re.S).group(1)
    return {"subject_shown": html.unescape(subject), "body_shown": html.unescape(body).replace("\n", "\r\n")}


def test_edit_and_approve_sends_the_typed_wording_and_an_empty_edit_keeps_the_template(
        world, smtp_server, use_smtp):
    """Bob opens "Edit the wording" on the review page, types his own subject and text (with
    a literal {{ ... }} that must stay as typed) and approves: the email the SMTP server gets
    carries exactly his words, the audit keeps the template's text and his; the page then says
    the wording was edited. On a second email he empties both fields: it goes out with the
    template's subject and text."""
    controller, sink = smtp_server()
    use_smtp(controller)
    w = world
    cust = w.customer("Wording AG")
    inv = w.invoice(cust, "250", 9)
    act = w.action(cust, [inv])
    other = w.action(cust, [inv])
    client = _client(w.app, "bob@example.com")
    page = client.get(f"/workspace/approvals/{act.id}").get_data(as_text=True)
    assert "Edit and approve" in page and 'value="Overdue: Wording AG"' in page
    typed = "Hi Pat,\r\nas agreed on the phone: {{ invoices }} by Friday, please.\r\nBob"
    resp = client.post(f"/workspace/approvals/{act.id}/approve",
                       data={"csrf_token": client.token, "subject": "As agreed: INV due Friday", "body": typed,
                             "edited": "1", **_shown(page)})
    assert resp.status_code == 302
    stored = DunningAction.get_by_id(act.id)
    assert stored.status == "approved" and stored.subject_override == "As agreed: INV due Friday"
    audit = AuditLog.get(AuditLog.action == "dunning.wording")
    assert audit.actor == "bob@example.com" and audit.before["subject"] == "Overdue: Wording AG"
    assert audit.before["body_text"].startswith("Dear Pat Payer,") and "{{ invoices }}" in audit.after["body_text"]
    assert "wording edited" in client.get(f"/workspace/approvals/{act.id}").get_data(as_text=True)

    page = client.get(f"/workspace/approvals/{other.id}").get_data(as_text=True)
    client.post(f"/workspace/approvals/{other.id}/approve",
                data={"csrf_token": client.token, "subject": "", "body": "  ", **_shown(page)})
    untouched = DunningAction.get_by_id(other.id)
    assert untouched.status == "approved" and (untouched.subject_override, untouched.body_override) == (None, None)

    assert send_action(act.id).status == "sent" and send_action(other.id).status == "sent"
    edited, template = (r.message for r in sink.received)
    assert edited["Subject"] == "As agreed: INV due Friday"
    assert edited.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip() == (
        "Hi Pat,\nas agreed on the phone: {{ invoices }} by Friday, please.\nBob")
    assert template["Subject"] == "Overdue: Wording AG"
    assert "Dear Pat Payer," in template.get_body(("plain",)).get_content() and inv.number in str(template)
    assert AuditLog.select().where(AuditLog.action == "dunning.wording").count() == 1


def test_skipping_an_email_records_the_reason(world):
    """Skip with a reason: the action becomes skipped "skipped by bob@…: <reason>"; no reason, no skip."""
    w = world
    cust = w.customer("Skip Ltd")
    act = w.action(cust, [w.invoice(cust, "100", 3)])
    client = _client(w.app, "bob@example.com")
    client.post(f"/workspace/approvals/{act.id}/skip", data={"csrf_token": client.token, "reason": ""})
    assert DunningAction.get_by_id(act.id).status == "pending_approval"
    client.post(f"/workspace/approvals/{act.id}/skip",
                data={"csrf_token": client.token, "reason": "spoke to the CFO, paying Friday"})
    stored = DunningAction.get_by_id(act.id)
    assert stored.status == "skipped"
    assert stored.reason == "skipped by bob@example.com: spoke to the CFO, paying Friday"


def test_an_expired_approval_cannot_be_approved(world):
    """An email whose approval window passed is refused with the reason, and stays as it was."""
    w = world
    cust = w.customer("Late Co")
    act = w.action(cust, [w.invoice(cust, "100", 3)], send_after=datetime.now(UTC) - timedelta(days=4),
                   expires_in=timedelta(days=3))
    client = _client(w.app, "bob@example.com")
    resp = client.post(f"/workspace/approvals/{act.id}/approve", data={"csrf_token": client.token},
                       follow_redirects=True)
    assert "Not approved" in resp.get_data(as_text=True) and "expired" in resp.get_data(as_text=True)
    assert DunningAction.get_by_id(act.id).status == "pending_approval"


# ------------------------------------------------------------------------------- inbox


def test_handling_a_reply_records_the_promise_and_lifts_the_pause(world):
    """Bob's inbox shows the reply with its suggested promise; marking it handled with the
    promise date records the promise on the customer and the reply leaves the inbox."""
    w = world
    cust = w.customer("Reply AG")
    w.invoice(cust, "100", 3)
    msg = w.reply(cust, "bob@example.com")
    client = _client(w.app, "bob@example.com")
    page = client.get("/workspace/inbox").get_data(as_text=True)
    assert f'data-message-id="{msg.id}"' in page and "promise until 2099-12-04" in page
    client.post(f"/workspace/inbox/{msg.id}/handle",
                data={"csrf_token": client.token, "promise_until": "2099-12-04", "promise_amount": "100"})
    assert Message.get_by_id(msg.id).handled_at is not None
    promise = Activity.get(Activity.customer == cust, Activity.kind == "promise")
    assert promise.until.isoformat() == "2099-12-04" and promise.amount == Decimal("100")
    assert f'data-message-id="{msg.id}"' not in client.get("/workspace/inbox").get_data(as_text=True)


def test_a_reply_handed_to_a_colleague_moves_to_their_inbox(world):
    """Bob hands a reply to Dana: it leaves his inbox, appears in hers, and the move is audited."""
    w = world
    cust = w.customer("Handover BV")
    msg = w.reply(cust, "bob@example.com")
    bob = _client(w.app, "bob@example.com")
    bob.post(f"/workspace/inbox/{msg.id}/reassign", data={"csrf_token": bob.token, "to": "dana@example.com"})
    assert Message.get_by_id(msg.id).routed_to == "dana@example.com"
    assert f'data-message-id="{msg.id}"' not in bob.get("/workspace/inbox").get_data(as_text=True)
    dana = _client(w.app, "dana@example.com")
    assert f'data-message-id="{msg.id}"' in dana.get("/workspace/inbox").get_data(as_text=True)
    assert AuditLog.get(AuditLog.action == "reply.reassign").actor == "bob@example.com"


def test_an_unmatched_reply_assigned_to_a_customer_is_routed_to_its_collector(world):
    """In the team queue, an unmatched reply assigned to Bob's customer goes to Bob's inbox."""
    w = world
    cust = w.customer("Found Later")
    msg = Message.create(direction="in", message_id="lost@x.example", subject="payment", body_text="hi",
                         status="unmatched", from_address="someone@x.example")
    carl = _client(w.app, "carl@example.com")
    assert f'data-message-id="{msg.id}"' in carl.get("/workspace/queue").get_data(as_text=True)
    carl.post(f"/workspace/inbox/{msg.id}/assign", data={"csrf_token": carl.token, "customer": cust.number})
    stored = Message.get_by_id(msg.id)
    assert stored.customer_id == cust.id and stored.status == "routed" and stored.routed_to == "bob@example.com"


# ------------------------------------------------------------------------------- cover while away


def test_the_cover_sees_the_away_colleagues_work_until_the_date_and_not_after(world):
    """Bob is away through the day after tomorrow with Carl covering: Carl's workspace shows
    the banner, Bob's accounts, approvals and replies; the day after Bob's last day (and once
    the absence has ended) they are Bob's again and Carl's workspace no longer has them."""
    w = world
    bobs = w.customer("Bob's Big Account")
    act = w.action(bobs, [w.invoice(bobs, "5000", 40)])
    msg = w.reply(bobs, "bob@example.com")
    last_day = w.today + timedelta(days=2)
    ada = _client(w.app, "ada@example.com")
    ada.post("/workspace/away", data={"csrf_token": ada.token, "email": "bob@example.com",
                                      "until": last_day.isoformat(), "cover": "carl@example.com"})
    assert AuditLog.get(AuditLog.action == "user.away").actor == "ada@example.com"

    carl = _client(w.app, "carl@example.com")
    page = carl.get("/workspace/").get_data(as_text=True)
    assert "You cover for Bob" in page and last_day.isoformat() in page and bobs.id in _order(page)
    assert f'data-action-id="{act.id}"' in carl.get("/workspace/approvals").get_data(as_text=True)
    assert f'data-message-id="{msg.id}"' in carl.get("/workspace/inbox").get_data(as_text=True)
    bob = _client(w.app, "bob@example.com")
    assert "You are away through" in bob.get("/workspace/").get_data(as_text=True)
    # by date: through the last day Carl has the work, the day after Bob has it back
    assert queries.scope_for("carl@example.com", last_day).emails == ["carl@example.com", "bob@example.com"]
    assert queries.scope_for("carl@example.com", last_day + timedelta(days=1)).emails == ["carl@example.com"]
    assert queries.scope_for("bob@example.com", last_day + timedelta(days=1)).emails == ["bob@example.com"]
    assert [m.id for m in queries.replies_for("carl@example.com", last_day)] == [msg.id]
    assert list(queries.replies_for("carl@example.com", last_day + timedelta(days=1))) == []
    # Carl approves while covering
    carl.post(f"/workspace/approvals/{act.id}/approve", data={"csrf_token": carl.token})
    assert DunningAction.get_by_id(act.id).decided_by == "carl@example.com"

    # the absence is over (its last day was yesterday): everything is Bob's again
    set_away("bob@example.com", w.today - timedelta(days=1), "carl@example.com", actor="test")
    page = carl.get("/workspace/").get_data(as_text=True)
    assert "You cover for" not in page and bobs.id not in _order(page)
    assert f'data-message-id="{msg.id}"' not in carl.get("/workspace/inbox").get_data(as_text=True)
    assert f'data-message-id="{msg.id}"' in bob.get("/workspace/inbox").get_data(as_text=True)
    assert bobs.id in _order(bob.get("/workspace/").get_data(as_text=True))


def test_a_collector_sets_only_their_own_absence(world):
    """Bob may say he is away (and come back early); setting Dana away needs an admin (403)."""
    w = world
    bob = _client(w.app, "bob@example.com")
    until = (w.today + timedelta(days=3)).isoformat()
    bob.post("/workspace/away", data={"csrf_token": bob.token, "email": "bob@example.com", "until": until,
                                      "cover": "carl@example.com"})
    assert queries.scope_for("carl@example.com", w.today).emails == ["carl@example.com", "bob@example.com"]
    absences = bob.get("/workspace/away").get_data(as_text=True)
    assert "bob@example.com" in absences and until in absences and "Back now" in absences
    resp = bob.post("/workspace/away", data={"csrf_token": bob.token, "email": "dana@example.com", "until": until,
                                             "cover": "carl@example.com"})
    assert resp.status_code == 403
    bob.post("/workspace/away", data={"csrf_token": bob.token, "email": "bob@example.com", "back": "1"})
    assert queries.scope_for("carl@example.com", w.today).emails == ["carl@example.com"]


# ------------------------------------------------------------------------------- bulk reassignment


def test_an_admin_moves_picked_customers_to_another_collector_with_an_audit_row_each(world):
    """Ada ticks two of Bob's three customers and moves them to Dana: they are Dana's, the third
    stays Bob's, and each move is in the audit log with Ada as the actor."""
    w = world
    one, two, three = w.customer("One"), w.customer("Two"), w.customer("Three")
    ada = _client(w.app, "ada@example.com")
    page = ada.get("/workspace/reassign?from=bob@example.com").get_data(as_text=True)
    assert 'value="%d"' % one.id in page and 'value="%d"' % three.id in page
    resp = ada.post("/workspace/reassign", data={"csrf_token": ada.token, "from": "bob@example.com",
                                                 "to": "dana@example.com", "scope": "picked",
                                                 "customer_ids": [str(one.id), str(two.id)]})
    assert resp.status_code == 302
    assert [Customer.get_by_id(c.id).collector for c in (one, two, three)] == [
        "dana@example.com", "dana@example.com", "bob@example.com"]
    rows = list(AuditLog.select().where(AuditLog.action == "collector.reassign").order_by(AuditLog.object_id))
    assert sorted(int(r.object_id) for r in rows) == sorted([one.id, two.id])
    assert all(r.actor == "ada@example.com" and r.after["collector"] == "dana@example.com" for r in rows)


def test_an_admin_moves_a_whole_book(world):
    """The whole-book option moves every customer of Bob's to Carl."""
    w = world
    ids = [w.customer(f"Book {i}").id for i in range(3)]
    ada = _client(w.app, "ada@example.com")
    ada.post("/workspace/reassign", data={"csrf_token": ada.token, "from": "bob@example.com",
                                          "to": "carl@example.com", "scope": "all"})
    assert {Customer.get_by_id(i).collector for i in ids} == {"carl@example.com"}
    assert AuditLog.get(AuditLog.action == "collectors.reassign").after["moved"] == 3


# ------------------------------------------------------------------------------- who may act


def test_a_viewer_reads_but_gets_403_on_every_action(world):
    """Vic (viewer) can open Bob's workspace, but approving, skipping, handling, handing a reply
    on, reassigning customers and setting an absence all answer 403 and change nothing."""
    w = world
    cust = w.customer("Guarded")
    act = w.action(cust, [w.invoice(cust, "100", 3)])
    msg = w.reply(cust, "bob@example.com")
    vic = _client(w.app, "vic@example.com")
    assert vic.get("/workspace/?collector=bob@example.com").status_code == 200
    assert vic.get(f"/workspace/approvals/{act.id}").status_code == 200
    t = vic.token
    for url, data in ((f"/workspace/approvals/{act.id}/approve", {}),
                      (f"/workspace/approvals/{act.id}/skip", {"reason": "no"}),
                      (f"/workspace/inbox/{msg.id}/handle", {"note": "x"}),
                      (f"/workspace/inbox/{msg.id}/reassign", {"to": "dana@example.com"}),
                      ("/workspace/reassign", {"from": "bob@example.com", "to": "dana@example.com", "scope": "all"}),
                      ("/workspace/away", {"email": "vic@example.com", "until": "2099-01-01"})):
        assert vic.post(url, data={"csrf_token": t, **data}).status_code == 403, url
    assert DunningAction.get_by_id(act.id).status == "pending_approval"
    assert Message.get_by_id(msg.id).handled_at is None and Customer.get_by_id(cust.id).collector == "bob@example.com"


def test_a_collector_cannot_act_on_another_collectors_work(world):
    """Dana cannot approve Bob's email or handle Bob's reply (403), nor move books (admins only)."""
    w = world
    cust = w.customer("Bob's")
    act = w.action(cust, [w.invoice(cust, "100", 3)])
    msg = w.reply(cust, "bob@example.com")
    dana = _client(w.app, "dana@example.com")
    assert dana.post(f"/workspace/approvals/{act.id}/approve", data={"csrf_token": dana.token}).status_code == 403
    assert dana.post(f"/workspace/inbox/{msg.id}/handle", data={"csrf_token": dana.token}).status_code == 403
    assert dana.post("/workspace/reassign", data={"csrf_token": dana.token, "from": "bob@example.com",
                                                  "to": "dana@example.com", "scope": "all"}).status_code == 403
    assert DunningAction.get_by_id(act.id).status == "pending_approval"
