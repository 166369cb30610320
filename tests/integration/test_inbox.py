"""Inbound replies (middleware.inbox) on SQLite and PostgreSQL: which customer a reply is about,
who gets it, what a collector records, and that an unhandled reply holds the customer's cadence."""
from __future__ import annotations

import itertools
from datetime import date, datetime, timezone
from decimal import Decimal
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from middleware import inbox
from middleware.inbox import InboxError, handle, paused_customer_ids, pending, receive
from middleware.models import Activity, Contact, Customer, Invoice, Message, Source, User

REPLY_DOMAIN = "reply.arhub.localhost"  # the default ARHUB_REPLY_DOMAIN
ON = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)  # a Friday
_ids = itertools.count(1)


@pytest.fixture
def erp(db):
    return Source.create(name="erp", kind="rest", config={})


def customer(erp, name, *, collector=None, contacts=(), invoices=()) -> Customer:
    n = next(_ids)
    c = Customer.create(source=erp, external_id=f"c-{n}", number=f"CUST-{n:05d}", name=name, billing_currency="EUR",
                        collector=collector, content_hash="x" * 32)
    for i, email in enumerate(contacts):
        Contact.create(source=erp, external_id=f"c-{n}:billing:{i}", customer=c, customer_external_id=c.external_id,
                       email=email, content_hash="x" * 32)
    for number in invoices:
        Invoice.create(source=erp, external_id=f"inv-{next(_ids)}", number=number, customer=c,
                       customer_external_id=c.external_id, currency="EUR", amount=Decimal("1200"),
                       open_amount=Decimal("1200"), issue_date=date(2026, 9, 1), due_date=date(2026, 10, 1),
                       content_hash="x" * 32)
    return c


def sent(c: Customer, *, token: str | None = None, key: str | None = None) -> Message:
    """The outbound row the dunning sender writes: Message-ID <arhub.<key>@reply domain>, thread token."""
    key = key or f"act-{next(_ids)}"
    return Message.create(direction="out", customer=c, message_id=f"arhub.{key}@{REPLY_DOMAIN}",
                          thread_token=token or f"tok{next(_ids)}x", subject="Invoice overdue",
                          to_addresses=["ap@example.test"], status="sent")


def email(*, frm="someone@nowhere.test", to="ar@arhub.localhost", subject="Re: your reminder",
          body="Hello, thanks.", message_id=None, html=None, headers=None, attachments=()) -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="mail.example.test")
    for name, value in (headers or {}).items():
        msg[name] = value
    if html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def reply_activities(c: Customer) -> list[Activity]:
    return list(Activity.select().where(Activity.customer == c.id, Activity.kind == "reply").order_by(Activity.id))


def paused(c: Customer) -> bool:
    return c.id in {row.customer_id for row in paused_customer_ids()}


# ------------------------------------------------------------------------------ matching


def test_reply_token_in_the_recipients_routes_to_the_collector_and_pauses_the_cadence(erp):
    """A reply to reply+<token>@ (even from an unknown gmail address) belongs to the customer we sent
    that thread to; it goes to the collector, unhandled, which holds the customer's cadence."""
    acme = customer(erp, "Acme", collector="Carla@AR.example.test")
    out = sent(acme, token="T0kenAbc123")
    message = receive(email(frm="Someone <someone@gmail.com>", to=f"AR <reply+T0kenAbc123@{REPLY_DOMAIN}>"),
                      received_at=ON)
    assert (message.customer_id, message.matched_by) == (acme.id, "token")
    assert (message.status, message.routed_to, message.handled_at) == ("routed", "carla@ar.example.test", None)
    assert message.direction == "in" and out.thread_token == "T0kenAbc123"
    assert paused(acme)
    assert [m.id for m in pending(collector="carla@ar.example.test")] == [message.id]


def test_reply_token_in_cc_or_delivered_to_also_matches(erp):
    """The token counts in Cc and in the Delivered-To header a mail server adds."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    sent(acme, token="cc-token")
    sent(acme, token="dt-token")
    by_cc = receive(email(to="ap@acme.example.test", headers={"Cc": f"reply+cc-token@{REPLY_DOMAIN}"}))
    by_dt = receive(email(to="ar@arhub.localhost", headers={"Delivered-To": f"reply+dt-token@{REPLY_DOMAIN}"}))
    assert (by_cc.customer_id, by_cc.matched_by) == (acme.id, "token")
    assert (by_dt.customer_id, by_dt.matched_by) == (acme.id, "token")


def test_in_reply_to_or_references_naming_our_message_matches(erp):
    """A reply without our token but with In-Reply-To (or References) naming a Message-ID we sent
    belongs to that message's customer."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    globex = customer(erp, "Globex", collector="gus@ar.example.test")
    first = sent(acme, key="a1")
    later = sent(globex, key="g1")
    direct = receive(email(headers={"In-Reply-To": f"<{first.message_id}>"}))
    assert (direct.customer_id, direct.matched_by, direct.routed_to) == (acme.id, "in_reply_to", "carla@ar.example.test")
    assert direct.in_reply_to == first.message_id
    # References newest-last: the newest message we sent wins
    threaded = receive(email(headers={"References": f"<{first.message_id}> <other@x.test> <{later.message_id}>"}))
    assert (threaded.customer_id, threaded.matched_by) == (globex.id, "in_reply_to")


def test_invoice_numbers_of_one_customer_match_but_never_inside_longer_tokens(erp):
    """Invoice numbers standing alone in the subject or body match their customer; "PO-10042" is not
    invoice 10042; numbers of two different customers match nobody."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", invoices=["INV-2026-0042", "10042"])
    globex = customer(erp, "Globex", invoices=["INV-2026-0077"])
    by_subject = receive(email(subject="Question about invoice inv-2026-0042"))
    assert (by_subject.customer_id, by_subject.matched_by) == (acme.id, "invoice_number")
    by_body = receive(email(body="Regarding #10042 and INV-2026-0042: see attached."))
    assert (by_body.customer_id, by_body.matched_by) == (acme.id, "invoice_number")
    glued = receive(email(body="Our purchase order PO-10042 covers this."))
    assert (glued.customer_id, glued.status) == (None, "unmatched")
    two_customers = receive(email(body="We paid INV-2026-0042 and INV-2026-0077 yesterday."))
    assert (two_customers.customer_id, two_customers.status, two_customers.matched_by) == (None, "unmatched", None)
    assert globex.id not in {m.customer_id for m in Message.select()}


def test_sender_address_of_a_contact_matches_its_customer(erp):
    """The From address, in any letter case, is a contact's email: that contact's customer."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", contacts=["Pay.Ables@Acme.example.test"])
    message = receive(email(frm="Paula <pay.ables@acme.example.test>", subject="Hello"))
    assert (message.customer_id, message.matched_by, message.status) == (acme.id, "sender", "routed")


def test_sender_domain_matches_when_one_customer_has_contacts_there(erp):
    """A colleague writing from the customer's company domain matches by domain; a domain shared by
    two customers' contacts matches nobody."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", contacts=["ap@acme.example.test"])
    customer(erp, "Twin A", contacts=["ap@shared.example.test"])
    customer(erp, "Twin B", contacts=["billing@shared.example.test"])
    colleague = receive(email(frm="cfo@acme.example.test"))
    assert (colleague.customer_id, colleague.matched_by) == (acme.id, "domain")
    shared = receive(email(frm="cfo@shared.example.test"))
    assert (shared.customer_id, shared.status) == (None, "unmatched")


def test_a_free_mail_sender_never_matches_by_domain(erp):
    """gmail.com is not a company: a contact at gmail.com does not make every gmail sender that customer."""
    solo = customer(erp, "Solo Trader", collector="carla@ar.example.test", contacts=["solo.trader@gmail.com"])
    stranger = receive(email(frm="someone.else@gmail.com", subject="Hi"))
    assert (stranger.customer_id, stranger.status, stranger.matched_by, stranger.routed_to) == (None, "unmatched", None, None)
    assert not paused(solo)
    assert [m.id for m in pending(unmatched=True)] == [stranger.id]
    the_contact = receive(email(frm="solo.trader@gmail.com", subject="Hi"))
    assert (the_contact.customer_id, the_contact.matched_by) == (solo.id, "sender")


def test_token_wins_over_the_sender_address(erp):
    """Matching goes token, thread, invoice number, sender, domain: the first that finds a customer wins."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    globex = customer(erp, "Globex", contacts=["ap@globex.example.test"], invoices=["GX-5001"])
    sent(acme, token="acme-thread")
    message = receive(email(frm="ap@globex.example.test", to=f"reply+acme-thread@{REPLY_DOMAIN}", subject="GX-5001"))
    assert (message.customer_id, message.matched_by) == (acme.id, "token")
    assert globex.id != acme.id


# ------------------------------------------------------------------------------ auto-replies


@pytest.mark.parametrize("headers, subject", [
    ({"Auto-Submitted": "auto-replied"}, "Re: Invoice overdue"),
    ({"X-Autoreply": "yes"}, "Re: Invoice overdue"),
    ({"X-Autorespond": "Out of office"}, "Re: Invoice overdue"),
    ({"Precedence": "bulk"}, "Re: Invoice overdue"),
    ({}, "Automatic reply: Invoice overdue"),
    ({}, "Out of Office: back on Monday"),
    ({}, "Abwesenheitsnotiz: Zahlungserinnerung"),
])
def test_auto_replies_are_kept_but_never_routed_and_never_pause(erp, headers, subject):
    """Out-of-office and other automatic mail is stored on the customer as auto_reply, goes to nobody,
    and does not hold the cadence."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    sent(acme, token="ooo")
    message = receive(email(to=f"reply+ooo@{REPLY_DOMAIN}", subject=subject, headers=headers), received_at=ON)
    assert (message.customer_id, message.status, message.routed_to) == (acme.id, "auto_reply", None)
    assert message.handled_at == ON
    assert not paused(acme)
    assert list(pending()) == [] and reply_activities(acme) == []


def test_auto_submitted_no_is_a_person_writing(erp):
    """``Auto-Submitted: no`` is what a person's mail client may send: routed like any reply."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    sent(acme, token="human")
    message = receive(email(to=f"reply+human@{REPLY_DOMAIN}", headers={"Auto-Submitted": "no"}))
    assert message.status == "routed"


# ------------------------------------------------------------------------------ routing


def test_a_collector_away_has_the_reply_routed_to_their_cover_until_they_are_back(erp):
    """While the collector is away (through away_until inclusive) the reply goes to their cover, and to
    the cover's cover when the cover is away too; from the day after, to the collector again."""
    dora = User.create(email="dora@ar.example.test", name="Dora")
    bob = User.create(email="bob@ar.example.test", name="Bob", away_until=date(2026, 11, 22), cover=dora)
    User.create(email="carla@ar.example.test", name="Carla", away_until=date(2026, 11, 25), cover=bob)
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    sent(acme, token="away")

    def routed(day: int, n: int) -> str | None:
        at = datetime(2026, 11, day, 9, 0, tzinfo=timezone.utc)
        return receive(email(to=f"reply+away@{REPLY_DOMAIN}", message_id=f"<m{n}@x.test>"), received_at=at).routed_to

    assert routed(20, 1) == "dora@ar.example.test"  # Carla and Bob both away
    assert routed(23, 2) == "bob@ar.example.test"  # Bob is back, Carla still away
    assert routed(25, 3) == "bob@ar.example.test"  # Carla's last day away
    assert routed(26, 4) == "carla@ar.example.test"


def test_a_collector_away_without_cover_or_no_collector_sends_the_reply_to_the_team_queue(erp):
    """No collector on the account, or one away with nobody covering: the team queue (queued, routed_to
    None), and the reply still holds the cadence until someone acts."""
    User.create(email="carla@ar.example.test", name="Carla", away_until=date(2026, 12, 31))
    nobody = customer(erp, "Nobody's", contacts=["ap@nobody.example.test"])
    away = customer(erp, "Away", collector="carla@ar.example.test", contacts=["ap@away.example.test"])
    a = receive(email(frm="ap@nobody.example.test"), received_at=ON)
    b = receive(email(frm="ap@away.example.test"), received_at=ON)
    assert [(m.status, m.routed_to) for m in (a, b)] == [("queued", None), ("queued", None)]
    assert paused(nobody) and paused(away)
    assert [m.id for m in pending(queue=True)] == [a.id, b.id]
    assert list(pending(collector="carla@ar.example.test")) == []


# ------------------------------------------------------------------------------ idempotency and parsing


def test_the_same_message_id_received_twice_is_stored_once(erp):
    """A second delivery of the same Message-ID (a retry, a re-read mailbox) returns the stored row and
    adds nothing: one message, one timeline entry."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    sent(acme, token="twice")
    raw = email(to=f"reply+twice@{REPLY_DOMAIN}", message_id="<once@mail.example.test>")
    first = receive(raw, received_at=ON)
    again, created = inbox.ingest(raw)
    assert (again.id, created) == (first.id, False)
    assert Message.select().where(Message.direction == "in").count() == 1
    assert len(reply_activities(acme)) == 1


def test_a_message_without_message_id_is_stored_once_by_its_bytes(erp):
    """No Message-ID header: the same bytes get the same derived id, so a retry is still stored once."""
    raw = b"From: x@nowhere.test\r\nTo: ar@arhub.localhost\r\nSubject: no id\r\n\r\nhello\r\n"
    assert receive(raw).id == receive(raw).id
    assert Message.select().count() == 1


def test_html_only_bodies_encoded_headers_and_attachments_are_read(erp):
    """An HTML-only reply is stored as text, RFC 2047 headers decoded, attachments listed with name,
    type and size (not their bytes in the list)."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", contacts=["jürgen@acme.example.test"])
    raw = email(frm="=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jürgen@acme.example.test>",
                subject="=?utf-8?b?WmFobHVuZ3NlcmlubmVydW5nIMOcYmVyc2ljaHQ=?=",
                html="<html><body><p>Guten Tag,</p><p>anbei der <b>Zahlungsnachweis</b>.</p>"
                     "<style>p {color: red}</style></body></html>",
                attachments=[("Überweisung.pdf", "application/pdf", b"%PDF-1.4 " + b"x" * 991)])
    message = receive(raw)
    assert message.subject == "Zahlungserinnerung Übersicht"
    assert message.from_address == "jürgen@acme.example.test"
    assert message.customer_id == acme.id
    assert message.body_text == "Guten Tag,\n\nanbei der Zahlungsnachweis."  # no markup, no <style>
    assert message.attachments == [{"filename": "Überweisung.pdf", "content_type": "application/pdf", "size": 1000}]
    assert message.raw == raw.decode()  # the RFC 5322 source, kept as received


def test_promise_and_dispute_language_become_suggestions_on_the_timeline_not_actions(erp):
    """"We will pay by 4 December" and "we dispute INV-..." are suggested on the customer's timeline (a
    reply activity); nothing is recorded as a promise or dispute until a collector confirms."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", invoices=["INV-1001", "INV-1002"])
    sent(acme, token="sugg")
    body = ("Hello,\n\nwe will pay INV-1002 (EUR 1,200.00) by 4 December.\n"
            "However we dispute invoice INV-1001, the quantity is wrong.\n\n"
            "On Mon, 16 Nov 2026 at 09:00, AR <ar@arhub.localhost> wrote:\n"
            "> Please pay INV-1001 and INV-1002. Payment will be made on 2026-11-01 we hope.\n")
    message = receive(email(to=f"reply+sugg@{REPLY_DOMAIN}", body=body), received_at=ON)
    [activity] = reply_activities(acme)
    lines = activity.body.splitlines()
    assert lines[0] == f"reply {message.message_id} from someone@nowhere.test: Re: your reminder"
    assert lines[1].startswith('suggested: promise until 2026-12-04 amount 1200.00 EUR ("we will pay INV-1002')
    assert lines[2].startswith('suggested: dispute on INV-1001 ("However we dispute invoice INV-1001')
    assert len(lines) == 3  # the quoted reminder suggests nothing
    assert [s.describe() for s in inbox.suggestions_for(message)] == [
        "promise until 2026-12-04 amount 1200.00 EUR", "dispute on INV-1001"]
    assert Activity.select().where(Activity.kind.in_(["promise", "dispute"])).count() == 0


def test_german_promise_is_suggested(erp):
    """German replies: "Wir werden bis zum 04.12.2026 überweisen" suggests a promise until that date."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", contacts=["buchhaltung@acme.example.de"])
    receive(email(frm="buchhaltung@acme.example.de", subject="AW: Zahlungserinnerung",
                  body="Sehr geehrte Damen und Herren,\n\nwir werden den Betrag bis zum 04.12.2026 überweisen.\n"),
            received_at=ON)
    [activity] = reply_activities(acme)
    assert "suggested: promise until 2026-12-04" in activity.body


# ------------------------------------------------------------------------------ handle


def test_handle_records_a_promise_and_lifts_the_pause(erp):
    """The collector confirms the promise: a promise activity (until, amount), the reply handled, the
    customer's cadence no longer held by it."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    sent(acme, token="p")
    message = receive(email(to=f"reply+p@{REPLY_DOMAIN}"))
    assert paused(acme)
    [promise] = handle(message.id, "carla@ar.example.test", promise_until=date(2026, 12, 4), promise_amount="1200.00")
    assert (promise.kind, promise.until, promise.amount, promise.actor) == (
        "promise", date(2026, 12, 4), Decimal("1200.00"), "carla@ar.example.test")
    assert Message.get_by_id(message.id).handled_at is not None
    assert not paused(acme)
    assert list(pending(collector="carla@ar.example.test")) == []


def test_handle_records_a_dispute_on_an_invoice_and_a_note(erp):
    """A dispute names an invoice of the customer (by number here); a note is kept as a note; both by the
    RFC Message-ID as well as the row id."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", contacts=["ap@acme.example.test"],
                    invoices=["INV-1001"])
    message = receive(email(frm="ap@acme.example.test", message_id="<dispute-1@acme.example.test>"))
    created = handle("<dispute-1@acme.example.test>", "carla@ar.example.test", dispute_invoice="inv-1001",
                     note="Customer says 3 licences, not 5; asked sales.")
    assert [(a.kind, a.invoice_id, a.body) for a in created] == [
        ("dispute", Invoice.get(Invoice.number == "INV-1001").id, "disputed in reply dispute-1@acme.example.test"),
        ("note", None, "Customer says 3 licences, not 5; asked sales.")]
    assert not paused(acme)
    assert Message.get_by_id(message.id).handled_at is not None


def test_handle_refuses_what_it_cannot_record(erp):
    """A dispute on another customer's invoice, or a promise on a reply that matched no customer, is
    refused; an unmatched reply can still be dismissed (handled with nothing recorded)."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test", contacts=["ap@acme.example.test"])
    customer(erp, "Globex", invoices=["GX-1"])
    mine = receive(email(frm="ap@acme.example.test"))
    with pytest.raises(InboxError, match="not an invoice of this customer"):
        handle(mine.id, "carla@ar.example.test", dispute_invoice="GX-1")
    stray = receive(email(frm="who@unknown.example.test"))
    with pytest.raises(InboxError, match="not matched to a customer"):
        handle(stray.id, "carla@ar.example.test", promise_until=date(2026, 12, 1))
    assert handle(stray.id, "carla@ar.example.test") == []
    assert Message.get_by_id(stray.id).handled_at is not None
    assert Message.get_by_id(mine.id).handled_at is None and paused(acme)


def test_assign_puts_an_unmatched_reply_on_a_customer_and_routes_it(erp):
    """Someone assigns an unmatched reply: it is routed to that customer's collector and holds the cadence."""
    acme = customer(erp, "Acme", collector="carla@ar.example.test")
    stray = receive(email(frm="new.person@gmail.com"))
    assigned = inbox.assign(stray.id, acme, "lead@ar.example.test")
    assert (assigned.customer_id, assigned.matched_by, assigned.status, assigned.routed_to) == (
        acme.id, "manual", "routed", "carla@ar.example.test")
    assert paused(acme) and len(reply_activities(acme)) == 1
