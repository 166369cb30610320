"""Dunning emails through a real SMTP server (aiosmtpd on loopback) and real rq workers.

Every test runs on SQLite and PostgreSQL. The SMTP server is a real one in a thread of the
test process: it records what it accepts, and can be scripted to refuse (550), defer (451),
require AUTH, speak STARTTLS or implicit TLS (trustme certificates), or hold a command
until the test lets it go, so a worker can be killed in the middle of a send.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from email import message_from_bytes, policy
from types import SimpleNamespace

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from rq import Retry
from rq.job import JobStatus
from rq.registry import StartedJobRegistry

from jobs.dunning import enqueue_dunning_email, job_id_for, send_due_actions, send_dunning_email, send_test_email
from jobs.queues import get_queue
from middleware import mailer
from middleware.models import (
    ActionStatus, AuditLog, Campaign, CampaignStep, Company, Contact, Customer, DunningAction, Invoice, Message, Source,
    Template, User,
)
from middleware.settings import get_settings, reset_settings

UTC = timezone.utc


# -- a real SMTP server on loopback ---------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: object  # email.message.EmailMessage


@dataclass
class Sink:
    """aiosmtpd handler: accepts and records messages unless scripted otherwise.

    ``refuse``: address → RCPT reply; ``data_replies``: replies for successive messages
    (then 250); ``hold_rcpt``/``hold_data``: block that command (once) until ``gate`` opens.
    A message is recorded the moment the server decides to accept it, before its reply is
    written: a client that dies now has delivered it without hearing so."""

    refuse: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    hold_rcpt: bool = False
    hold_data: bool = False
    received: list[Received] = field(default_factory=list)
    data_commands: int = 0
    gate: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)

    async def _hold(self):
        self.holding.set()
        while not self.gate.is_set():
            await asyncio.sleep(0.02)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.hold_rcpt:
            self.hold_rcpt = False
            await self._hold()
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.data_commands += 1
        reply = self.data_replies.pop(0) if self.data_replies else "250 Message accepted for delivery"
        if reply.startswith("250"):
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          message_from_bytes(envelope.content, policy=policy.default)))
        if self.hold_data:
            self.hold_data = False
            await self._hold()
        return reply


class LoopbackController(Controller):
    """aiosmtpd's threaded controller on a port the kernel picks (no probing for a free one)."""

    def __init__(self, handler, **kwargs):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1], **kwargs)

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


@pytest.fixture
def smtp_server():
    """``smtp_server(sink=None, **aiosmtpd options) -> (controller, sink)``; stopped after the test."""
    running = []

    def start(sink: Sink | None = None, **kwargs):
        sink = sink or Sink()
        controller = LoopbackController(sink, **kwargs)
        controller.start()
        running.append((controller, sink))
        return controller, sink

    yield start
    for controller, sink in running:
        sink.gate.set()
        controller.stop()


@pytest.fixture
def use_smtp(settings, monkeypatch):
    """``use_smtp(controller, **ARHUB_SMTP_* values) -> env``: point this process's settings at
    the server; pass the returned env to ``start_rq_worker`` so workers do too."""

    def point(controller, **values):
        env = {"ARHUB_SMTP_HOST": "127.0.0.1", "ARHUB_SMTP_PORT": str(controller.port),
               "ARHUB_SMTP_SECURITY": "none", "ARHUB_SMTP_TIMEOUT_SECONDS": "10",
               "ARHUB_MAIL_FROM": "Forderungsmanagement <ar@example.com>", "ARHUB_REPLY_DOMAIN": "reply.example.com",
               **{f"ARHUB_SMTP_{k.upper()}": str(v) for k, v in values.items()}}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        return env

    return point


# -- a customer with an overdue invoice and a campaign step -------------------------------


TOTALS = "{% for t in totals %}{{ t.amount | money(t.currency) }}{% endfor %}"
DE_SUBJECT = "Zahlungserinnerung {{ customer.name }}: " + TOTALS + " offen"
DE_TEXT = """Guten Tag {{ contact.name }},

{% for inv in invoices %}Rechnung {{ inv.number }} vom {{ inv.issue_date | date }}, \
fällig am {{ inv.due_date | date }}: {{ inv.open_amount | money(inv.currency) }}
{% endfor %}
{% if statement_attached %}Ihren Kontoauszug finden Sie im Anhang.
{% endif %}
Ihr Ansprechpartner: {{ collector.name }} <{{ collector.email }}>
{{ company.name }}
"""
DE_HTML = "<p>Guten Tag {{ contact.name }},</p><p>offen: <b>" + TOTALS + "</b></p>"
EN_SUBJECT = "Payment reminder {{ customer.name }}: " + TOTALS + " due"
EN_TEXT = ("Dear {{ contact.name }},\n"
           "{% for inv in invoices %}{{ inv.number }}: {{ inv.open_amount | money(inv.currency) }}\n{% endfor %}")


@pytest.fixture
def world(db):
    """One German customer (de_DE, EUR) with a billing contact, a collector, an overdue
    invoice of 1,234.50 EUR, templates in de and en, and a campaign step using them."""
    source = Source.create(name="erp", kind="rest")
    Company.create(name="Beispiel AG", reporting_currency="EUR")
    User.create(email="clara@example.com", name="Clara Collector")
    Template.create(name="reminder-1", language="de", subject=DE_SUBJECT, body_text=DE_TEXT, body_html=DE_HTML)
    Template.create(name="reminder-1", language="en", subject=EN_SUBJECT, body_text=EN_TEXT)
    campaign = Campaign.create(name="standard")
    step = CampaignStep.create(campaign=campaign, position=1, name="first reminder", template="reminder-1")
    ns = SimpleNamespace(source=source, campaign=campaign, step=step, n=0)

    def customer(name="Müller GmbH", locale="de_DE", email="anna@mueller.example"):
        ns.n += 1
        cust = Customer.create(source=source, external_id=f"C{ns.n}", number=f"K-{ns.n}", name=name,
                               billing_currency="EUR", locale=locale, collector="clara@example.com",
                               content_hash="x")
        Contact.create(source=source, external_id=f"C{ns.n}:billing:1", customer=cust, customer_external_id=f"C{ns.n}",
                       name="Anna Schmidt", email=email, role="billing", content_hash="x")
        inv = Invoice.create(source=source, external_id=f"I{ns.n}", number=f"RE-2026-{ns.n:04d}", customer=cust,
                             customer_external_id=f"C{ns.n}", currency="EUR", amount=Decimal("1234.50"),
                             open_amount=Decimal("1234.50"), issue_date=date(2026, 9, 1), due_date=date(2026, 10, 1),
                             content_hash="x")
        return cust, inv

    def action(cust, inv, *, key=None, status=ActionStatus.PLANNED.value, step=step, send_after=None,
               cc=("clara@example.com",), channel="email"):
        ns.n += 1
        contact = Contact.get(Contact.customer == cust)
        return DunningAction.create(
            key=key or f"a{ns.n:04d}-{cust.id}-first-reminder", customer=cust, campaign=ns.campaign, step=step,
            planned_for=date(2026, 10, 8), status=status, channel=channel, invoice_ids=[inv.id],
            to_address=contact.email, cc=list(cc), send_after=send_after or datetime(2026, 10, 8, 7, tzinfo=UTC))

    ns.customer, ns.action = customer, action
    return ns


def reload(action) -> DunningAction:
    return DunningAction.get_by_id(action.id)


def out_messages(action) -> list[Message]:
    return list(Message.select().where(Message.action == action.id))


# -- building the email --------------------------------------------------------------------


def test_german_customer_gets_the_german_email_with_threading_headers(world, smtp_server, use_smtp):
    """A de_DE customer gets the German template: subject and text with 1.234,50 € and German
    dates, an HTML alternative; From is ARHUB_MAIL_FROM, To the contact, Cc the collector,
    Message-ID <arhub.<action key>@reply domain>, Reply-To reply+<token> with the token stored
    on the message, Auto-Submitted: auto-generated. Running the job again sends nothing."""
    controller, sink = smtp_server()
    use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)

    result = send_dunning_email(action.id)

    assert result["status"] == "sent"
    assert len(sink.received) == 1
    got = sink.received[0]
    assert got.mail_from == "ar@example.com"
    assert sorted(got.rcpt_tos) == ["anna@mueller.example", "clara@example.com"]
    msg = got.message
    assert msg["Subject"] == "Zahlungserinnerung Müller GmbH: 1.234,50\xa0€ offen"
    assert msg["From"] == "Forderungsmanagement <ar@example.com>"
    assert msg["To"] == "anna@mueller.example"
    assert msg["Cc"] == "clara@example.com"
    assert msg["Message-ID"] == f"<arhub.{action.key}@reply.example.com>"
    assert msg["Auto-Submitted"] == "auto-generated"
    stored = out_messages(action)
    assert [(m.status, m.message_id) for m in stored] == [("sent", f"arhub.{action.key}@reply.example.com")]
    token = stored[0].thread_token
    assert re.fullmatch(r"[0-9a-f]{20}", token)
    assert msg["Reply-To"] == f"Forderungsmanagement <reply+{token}@reply.example.com>"
    text = msg.get_body(("plain",)).get_content()
    assert "Guten Tag Anna Schmidt," in text
    assert "Rechnung RE-2026-0001 vom 01.09.2026, fällig am 01.10.2026: 1.234,50\xa0€" in text
    assert "Ihr Ansprechpartner: Clara Collector <clara@example.com>" in text
    assert "Beispiel AG" in text and "Kontoauszug" not in text
    assert "<b>1.234,50\xa0€</b>" in msg.get_body(("html",)).get_content()
    assert [p.get_content_type() for p in msg.walk()] == ["multipart/alternative", "text/plain", "text/html"]
    after = reload(action)
    assert (after.status, after.attempts, after.error) == ("sent", 1, None)

    again = send_dunning_email(action.id)
    assert again["status"] == "already_sent"
    assert len(sink.received) == 1


def test_no_template_in_the_language_falls_back_to_english_with_local_amounts(world, smtp_server, use_smtp):
    """A French customer (no French template) gets the English text with amounts formatted the
    French way; two actions of one customer share the reply token, each has its own Message-ID."""
    controller, sink = smtp_server()
    use_smtp(controller)
    cust, inv = world.customer(name="Dupont SA", locale="fr_FR", email="compta@dupont.example")
    first, second = world.action(cust, inv), world.action(cust, inv)

    assert send_dunning_email(first.id)["status"] == "sent"
    assert send_dunning_email(second.id)["status"] == "sent"

    a, b = (r.message for r in sink.received)
    assert a["Subject"] == "Payment reminder Dupont SA: 1\u202f234,50\xa0€ due"
    assert "RE-2026-0001: 1\u202f234,50\xa0€" in a.get_body(("plain",)).get_content()
    assert a.get_content_type() == "text/plain"  # the English template has no HTML part
    assert a["Reply-To"] == b["Reply-To"]
    assert a["Message-ID"] == f"<arhub.{first.key}@reply.example.com>"
    assert b["Message-ID"] == f"<arhub.{second.key}@reply.example.com>"
    assert mailer.message_id_for(reload(first), get_settings()) == f"arhub.{first.key}@reply.example.com"


def test_shipped_default_templates_render_and_send(world, smtp_server, use_smtp):
    """The default campaign's seeded templates (English only) go out for a German customer with
    German amounts and dates, the invoice list, the total and the signed pay link."""
    from middleware.dunning import seed_default_campaign

    controller, sink = smtp_server()
    use_smtp(controller)
    seed_default_campaign()
    step = CampaignStep.get(CampaignStep.template == "overdue-7")
    cust, inv = world.customer()
    action = world.action(cust, inv, step=step)

    assert send_dunning_email(action.id)["status"] == "sent"

    msg = sink.received[0].message
    assert msg["Subject"] == "Overdue: invoice from Beispiel AG"
    text = msg.get_body(("plain",)).get_content()
    assert "Hello Anna Schmidt," in text
    assert "- RE-2026-0001: 1.234,50\xa0€, due 01.10.2026" in text
    assert "Total: 1.234,50\xa0€" in text
    assert re.search(rf"Pay online: http://127\.0\.0\.1:5000/pay/{cust.id}\.[A-Za-z0-9_-]+\r?\n", text)
    assert "Clara Collector" in text


def test_statement_is_attached_when_the_step_asks(world, smtp_server, use_smtp):
    """attach_statement: the email carries the statement PDF (named after the customer number
    and date) after the text/HTML alternative, and the template knows it is attached."""
    controller, sink = smtp_server()
    use_smtp(controller)
    world.step.attach_statement = True
    world.step.save()
    cust, inv = world.customer()
    action = world.action(cust, inv)
    calls = []

    def renderer(customer_id, *, as_of, reporting_currency):
        calls.append((customer_id, as_of, reporting_currency))
        return b"%PDF-1.7 statement of " + str(customer_id).encode()

    outcome = mailer.send_action(action.id, settings=get_settings(), statement_renderer=renderer)

    assert outcome.status == "sent"
    msg = sink.received[0].message
    assert calls == [(cust.id, datetime.now(UTC).date(), "USD")]
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "application/pdf"]
    pdf = next(msg.iter_attachments())
    assert pdf.get_filename() == f"statement-K-1-{datetime.now(UTC).date().isoformat()}.pdf"
    assert pdf.get_content() == f"%PDF-1.7 statement of {cust.id}".encode()
    assert "Ihren Kontoauszug finden Sie im Anhang." in msg.get_body(("plain",)).get_content()
    assert out_messages(action)[0].attachments == [
        {"filename": pdf.get_filename(), "content_type": "application/pdf", "size": len(pdf.get_content())}]


def test_statement_pdf_from_the_statements_module(world, smtp_server, use_smtp):
    """Without an injected renderer the job attaches middleware.statements' real PDF."""
    pytest.importorskip("middleware.statements")
    controller, sink = smtp_server()
    use_smtp(controller)
    world.step.attach_statement = True
    world.step.save()
    cust, inv = world.customer()
    action = world.action(cust, inv)

    assert send_dunning_email(action.id)["status"] == "sent"

    pdf = next(sink.received[0].message.iter_attachments())
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content().startswith(b"%PDF-")


def test_paid_before_sending_is_skipped_not_sent(world, smtp_server, use_smtp):
    """An action whose invoices were all paid after planning is skipped with the reason."""
    controller, sink = smtp_server()
    use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)
    Invoice.update(status="paid", open_amount=Decimal(0)).where(Invoice.id == inv.id).execute()

    assert send_dunning_email(action.id)["status"] == "skipped"

    assert sink.received == []
    after = reload(action)
    assert after.status == "skipped" and "paid" in after.reason
    assert after.attempts == 0


def test_customer_made_inactive_after_planning_is_skipped_not_sent(world, smtp_server, use_smtp):
    """The planner skips inactive customers; one marked inactive in the ERP between planning and
    sending is caught at send time (the safety net) and skipped with the reason."""
    controller, sink = smtp_server()
    use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)
    Customer.update(inactive=True).where(Customer.id == cust.id).execute()

    assert send_dunning_email(action.id)["status"] == "skipped"

    assert sink.received == []
    assert reload(action).reason == "the customer is deleted or inactive"


# -- errors ------------------------------------------------------------------------------------


def test_refused_recipient_fails_the_action_with_the_servers_reply(world, smtp_server, use_smtp):
    """A 550 to RCPT TO is permanent: the job does not raise (no RQ retry), the action is
    failed with the recipient and the server's reply, and nothing was delivered."""
    refusal = "550 5.1.1 <anna@mueller.example>: user unknown"
    controller, sink = smtp_server(Sink(refuse={"anna@mueller.example": refusal}))
    use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)

    result = send_dunning_email(action.id)

    assert result["status"] == "failed"
    after = reload(action)
    assert after.status == "failed"
    assert "to anna@mueller.example" in after.reason and refusal in after.reason
    assert action.key in after.reason
    assert sink.received == [] and sink.data_commands == 0
    assert out_messages(action) == []  # it never got as far as DATA


def test_refused_cc_still_sends_to_the_customer(world, smtp_server, use_smtp):
    """A refused Cc does not stop the email to the customer; the refusal is noted on the action."""
    controller, sink = smtp_server(Sink(refuse={"clara@example.com": "550 5.1.1 no such user"}))
    use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)

    assert send_dunning_email(action.id)["status"] == "sent"

    assert sink.received[0].rcpt_tos == ["anna@mueller.example"]
    after = reload(action)
    assert after.status == "sent" and "cc clara@example.com refused: 550 5.1.1 no such user" in after.error


def test_451_defers_then_the_last_attempt_fails(world, smtp_server, use_smtp):
    """451 after DATA is transient: the attempt raises TransientMailError and puts the action
    back to queued (message row deferred); on the last attempt the action is failed with
    'gave up after N attempts' and the server's reply."""
    controller, sink = smtp_server(Sink(data_replies=["451 4.3.0 try again later"] * 2))
    use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)

    with pytest.raises(mailer.TransientMailError, match="451 4.3.0 try again later") as caught:
        mailer.send_action(action.id, settings=get_settings())
    assert caught.value.recipient == "anna@mueller.example" and caught.value.code == 451
    after = reload(action)
    assert (after.status, after.attempts) == ("queued", 1) and "451" in after.error
    assert [m.status for m in out_messages(action)] == ["deferred"]

    with pytest.raises(mailer.TransientMailError):
        mailer.send_action(action.id, settings=get_settings(), final_attempt=True)
    after = reload(action)
    assert after.status == "failed" and after.reason.startswith("gave up after 2 attempts:") and "451" in after.reason
    assert sink.received == []


def test_no_smtp_server_is_transient(world, use_smtp, settings):
    """Connection refused: transient, the action stays queued for the retry."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    use_smtp(SimpleNamespace(port=port))
    cust, inv = world.customer()
    action = world.action(cust, inv)

    with pytest.raises(mailer.TransientMailError, match="ConnectionRefusedError"):
        send_dunning_email(action.id)
    assert reload(action).status == "queued"


def test_no_reply_after_the_message_went_out_is_an_unknown_outcome(world, smtp_server, use_smtp):
    """The server takes the message but its reply does not arrive within the timeout: the
    action is failed as 'outcome unknown ... check the mailbox (Message-ID <...>) and resend by
    hand', not retried; a resend by hand sends it again with the same Message-ID."""
    controller, sink = smtp_server(Sink(hold_data=True))
    use_smtp(controller, timeout_seconds=1)
    cust, inv = world.customer()
    action = world.action(cust, inv)

    result = send_dunning_email(action.id)

    assert result["status"] == "failed"
    message_id = f"arhub.{action.key}@reply.example.com"
    after = reload(action)
    assert after.status == "failed"
    assert after.reason.startswith("outcome unknown after the connection failed")
    assert f"check the mailbox (Message-ID <{message_id}>) and resend by hand" in after.reason
    assert [m.status for m in out_messages(action)] == ["unknown"]
    sink.gate.set()
    assert len(sink.received) == 1  # it did arrive: a person would find it in the mailbox
    assert send_dunning_email(action.id)["status"] == "not_sendable"
    assert len(sink.received) == 1

    assert mailer.release_for_resend(action.id, actor="clara@example.com")
    assert send_dunning_email(action.id)["status"] == "sent"
    assert [r.message["Message-ID"] for r in sink.received] == [f"<{message_id}>"] * 2
    assert reload(action).status == "sent"


# -- AUTH and TLS ------------------------------------------------------------------------------


def _check_login(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"ar-mailer", b"s3cret")
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.fixture
def tls_files(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return server_ctx, ca_path


def test_smtp_auth_over_starttls_good_and_bad_password(world, smtp_server, use_smtp, tls_files, monkeypatch):
    """A server requiring AUTH after STARTTLS takes the configured login; a wrong password is a
    permanent failure naming the server's 535 reply."""
    server_ctx, ca_path = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))
    controller, sink = smtp_server(tls_context=server_ctx, require_starttls=True, auth_required=True,
                                   authenticator=_check_login)
    cust, inv = world.customer()
    good, bad = world.action(cust, inv), world.action(cust, inv)

    use_smtp(controller, security="starttls", username="ar-mailer", password="s3cret")
    assert send_dunning_email(good.id)["status"] == "sent"
    use_smtp(controller, security="starttls", username="ar-mailer", password="wrong")
    assert send_dunning_email(bad.id)["status"] == "failed"

    assert len(sink.received) == 1
    failed = reload(bad)
    assert failed.status == "failed" and "SMTP authentication failed: 535" in failed.reason


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_starttls_and_implicit_tls_verify_the_server(world, smtp_server, use_smtp, tls_files, monkeypatch, security):
    """STARTTLS and implicit TLS connect with certificate and host name verification: a server
    whose CA is trusted (SSL_CERT_FILE) gets the email; an untrusted one is a permanent failure."""
    server_ctx, ca_path = tls_files
    options = {"tls_context": server_ctx, "require_starttls": True} if security == "starttls" else {
        "ssl_context": server_ctx}
    controller, sink = smtp_server(**options)
    use_smtp(controller, security=security)
    cust, inv = world.customer()
    trusted, untrusted = world.action(cust, inv), world.action(cust, inv)

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))
    assert send_dunning_email(trusted.id)["status"] == "sent"
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path.parent / "no-such-ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(ca_path.parent / "no-such-dir"))
    assert send_dunning_email(untrusted.id)["status"] == "failed"

    assert len(sink.received) == 1
    assert "TLS certificate is not trusted" in reload(untrusted).reason


# -- the console's test send -------------------------------------------------------------------


def test_test_send_goes_only_to_the_tester(world, smtp_server, use_smtp):
    """"Test send to me": the template rendered with the customer's open invoices, subject
    prefixed [TEST], sent to the tester alone, recorded without customer or action."""
    controller, sink = smtp_server()
    use_smtp(controller)
    cust, _ = world.customer()

    result = send_test_email("reminder-1", "de", "me@example.com", cust.id)

    got = sink.received[0]
    assert got.rcpt_tos == ["me@example.com"]
    assert got.message["Subject"] == "[TEST] Zahlungserinnerung Müller GmbH: 1.234,50\xa0€ offen"
    assert got.message["Cc"] is None
    assert "Guten Tag Anna Schmidt," in got.message.get_body(("plain",)).get_content()
    row = Message.get(Message.message_id == result["message_id"])
    assert (row.customer_id, row.action_id, row.status) == (None, None, "sent")
    assert DunningAction.select().count() == 0


# -- wording typed by the collector at approval ----------------------------------------------------


def test_edited_wording_is_sent_as_typed_with_the_statement_and_threading(world, smtp_server, use_smtp):
    """Approved with the collector's own subject and text: the customer gets exactly that text
    (placeholders stay literal: no template engine), no HTML part, still the statement PDF, the
    action's Message-ID and a reply token; the audit row keeps the template's wording and the
    typed one; a second run sends nothing."""
    controller, sink = smtp_server()
    use_smtp(controller)
    world.step.attach_statement = True
    world.step.save()
    cust, inv = world.customer()
    action = world.action(cust, inv, status=ActionStatus.PENDING_APPROVAL.value)
    typed = "Liebe Frau Schmidt,\r\nwie besprochen: bitte bis Freitag. {{ customer.name }} bleibt so.\r\n"

    approved = mailer.approve_with_wording(action.id, "clara@example.com", subject="  Wie besprochen:\n Rechnung ",
                                           body=typed)
    assert approved.status == "approved" and approved.decided_by == "clara@example.com"
    assert approved.subject_override == "Wie besprochen: Rechnung"
    outcome = mailer.send_action(action.id, settings=get_settings(),
                                 statement_renderer=lambda customer_id, **kw: b"%PDF-1.7 statement")

    assert outcome.status == "sent"
    [got] = sink.received
    msg = got.message
    assert msg["Subject"] == "Wie besprochen: Rechnung"
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == (
        "Liebe Frau Schmidt,\nwie besprochen: bitte bis Freitag. {{ customer.name }} bleibt so.\n")
    assert [p.get_content_type() for p in msg.walk()] == ["multipart/mixed", "text/plain", "application/pdf"]
    assert msg["Message-ID"] == f"<arhub.{action.key}@reply.example.com>"
    [row] = out_messages(action)
    assert msg["Reply-To"] == f"Forderungsmanagement <reply+{row.thread_token}@reply.example.com>"
    assert row.subject == "Wie besprochen: Rechnung" and "{{ customer.name }} bleibt so." in row.body_text
    audit = AuditLog.get(AuditLog.action == "dunning.wording")
    assert audit.actor == "clara@example.com" and audit.object_id == str(action.id)
    assert audit.before["subject"] == "Zahlungserinnerung Müller GmbH: 1.234,50\xa0€ offen"
    assert "Guten Tag Anna Schmidt," in audit.before["body_text"]
    assert audit.after == {"subject": "Wie besprochen: Rechnung", "body_text": approved.body_override}
    assert mailer.send_action(action.id, settings=get_settings()).status == "already_sent"
    assert len(sink.received) == 1


def test_an_empty_or_unchanged_edit_keeps_the_template(world, smtp_server, use_smtp):
    """An emptied subject and a text left as the template rendered it store no wording and
    write no wording audit: the email is the template's (German, with its HTML part). A typed
    subject alone keeps the template's text and HTML."""
    controller, sink = smtp_server()
    use_smtp(controller)
    cust, inv = world.customer()
    plain = world.action(cust, inv, status=ActionStatus.PENDING_APPROVAL.value)
    _, rendered = mailer.template_wording(plain)
    mailer.approve_with_wording(plain.id, "clara@example.com", subject="   ", body=rendered.replace("\n", "\r\n"))
    cust2, inv2 = world.customer(name="Schulz KG", email="ap@schulz.example")
    subject_only = world.action(cust2, inv2, status=ActionStatus.PENDING_APPROVAL.value)
    mailer.approve_with_wording(subject_only.id, "clara@example.com", subject="Kurze Erinnerung", body="")

    assert (reload(plain).subject_override, reload(plain).body_override) == (None, None)
    assert reload(plain).status == "approved"
    assert mailer.send_action(plain.id, settings=get_settings()).status == "sent"
    assert mailer.send_action(subject_only.id, settings=get_settings()).status == "sent"
    first, second = (r.message for r in sink.received)
    assert first["Subject"] == "Zahlungserinnerung Müller GmbH: 1.234,50\xa0€ offen"
    assert first.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip() == rendered.rstrip()
    assert second["Subject"] == "Kurze Erinnerung"
    assert "Guten Tag Anna Schmidt," in second.get_body(("plain",)).get_content()
    assert second.get_body(("html",)) is not None
    assert [a.object_id for a in AuditLog.select().where(AuditLog.action == "dunning.wording")] == [
        str(subject_only.id)]


def test_wording_on_an_action_not_waiting_for_approval_is_refused_and_not_stored(world):
    """Editing the wording of an email already approved (or sent) is refused and changes nothing."""
    from middleware.dunning.base import DunningError

    cust, inv = world.customer()
    action = world.action(cust, inv, status=ActionStatus.APPROVED.value)
    with pytest.raises(DunningError):
        mailer.approve_with_wording(action.id, "clara@example.com", subject="Neu", body="Neuer Text")
    assert (reload(action).subject_override, reload(action).body_override) == (None, None)
    assert AuditLog.select().where(AuditLog.action == "dunning.wording").count() == 0


# -- queueing -------------------------------------------------------------------------------------


def test_send_due_actions_enqueues_each_due_action_once(world, redis_url, settings):
    """Only email actions that are planned/approved and due are enqueued, on the dunning queue
    under job id email-<key>; a second run (or a concurrent one) enqueues nothing new."""
    cust, inv = world.customer()
    now = datetime(2026, 10, 8, 9, tzinfo=UTC)
    due = [world.action(cust, inv, send_after=now - timedelta(hours=2)),
           world.action(cust, inv, status="approved", send_after=now)]
    world.action(cust, inv, send_after=now + timedelta(hours=1))  # not yet
    world.action(cust, inv, status="pending_approval", send_after=now)
    world.action(cust, inv, status="sent", send_after=now)
    world.action(cust, inv, channel="task", send_after=now)
    reset_settings()

    first = send_due_actions(now)
    second = send_due_actions(now)

    assert first == {"due": 2, "enqueued": 2, "in_flight": 0, "gave_up": 0}
    assert second == {"due": 2, "enqueued": 0, "in_flight": 2, "gave_up": 0}
    queue = get_queue("dunning", get_settings())
    assert sorted(queue.get_job_ids()) == sorted(job_id_for(a.key) for a in due)
    assert [reload(a).status for a in due] == ["queued", "queued"]
    job = queue.fetch_job(job_id_for(due[0].key))
    assert job.args == (due[0].id,) and job.retries_left == 5 and job.retry_intervals == [30, 120, 600, 1800, 3600]


# -- real workers: retries, races, crashes --------------------------------------------------------


def test_transient_failure_is_retried_later_and_sent_once(world, redis_url, smtp_server, use_smtp, start_rq_worker,
                                                           wait_until):
    """A 451 on the first try: the action waits in queued with the server's reply, RQ's
    scheduler runs the job again after the retry interval, and the customer gets one email."""
    controller, sink = smtp_server(Sink(data_replies=["451 4.7.1 greylisted, come back later"]))
    env = use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)
    start_rq_worker(queues=["dunning"], env=env, extra_args=["--with-scheduler"])

    job = enqueue_dunning_email(action, queue=get_queue("dunning", get_settings()), retry=Retry(max=5, interval=2))
    wait_until(lambda: reload(action).status == "queued" and "greylisted" in (reload(action).error or ""),
               message="the first attempt to be deferred")
    wait_until(lambda: reload(action).status == "sent", timeout=30, message="the retry to send it")

    assert len(sink.received) == 1 and sink.data_commands == 2
    assert reload(action).attempts == 2
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, message="the job to finish")
    job.refresh()
    assert job.retries_left == 4  # one RQ retry was spent
    assert [m.status for m in out_messages(action)] == ["sent"]


def test_two_workers_racing_for_one_action_send_once(world, redis_url, smtp_server, use_smtp, start_rq_worker,
                                                      wait_until):
    """Two jobs for the same action in two workers at once: one sends, the other finds the
    action taken and touches nothing; the customer gets one email."""
    controller, sink = smtp_server(Sink(hold_data=True))
    env = use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)
    start_rq_worker(queues=["dunning"], env=env)
    start_rq_worker(queues=["dunning"], env=env)
    queue = get_queue("dunning", get_settings())

    jobs = [queue.enqueue(send_dunning_email, action.id), queue.enqueue(send_dunning_email, action.id)]
    wait_until(sink.holding.is_set, message="one worker to reach DATA")
    loser = wait_until(lambda: next((j for j in jobs if j.get_status(refresh=True) == JobStatus.FINISHED), None),
                       message="the other worker to give way")
    assert loser.return_value()["status"] == "busy"
    sink.gate.set()
    winner = next(j for j in jobs if j is not loser)
    wait_until(lambda: winner.get_status(refresh=True) == JobStatus.FINISHED, message="the sender to finish")

    assert winner.return_value()["status"] == "sent"
    assert len(sink.received) == 1
    assert reload(action).status == "sent" and reload(action).attempts == 1


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _kill_worker_and_horse(worker, wait_until) -> None:
    """SIGKILL the worker, then its work horse (the machine died): no process is left to
    record anything, and the job stays 'started' in RQ until the abandoned-job cleanup."""
    horse = wait_until(lambda: _children(worker.pid), message="the work horse")[0]
    worker.kill()
    worker.wait(timeout=10)
    os.kill(horse, signal.SIGKILL)
    wait_until(lambda: _gone(horse), message="the work horse to die")


def _rerun_abandoned(queue, job, start_rq_worker, env, wait_until):
    """A second worker, then RQ's abandoned-job cleanup as its maintenance pass runs it once the
    dead worker's heartbeat has expired (about 90 s; the cleanup is run with that time)."""
    assert job.get_status(refresh=True) == JobStatus.STARTED
    start_rq_worker(queues=["dunning"], env=env)
    StartedJobRegistry(queue=queue).cleanup(timestamp=time.time() + 3600)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, timeout=30,
               message="the retried job to finish")
    return job.return_value()


def test_worker_killed_during_data_never_sends_twice(world, redis_url, smtp_server, use_smtp, start_rq_worker,
                                                     wait_until):
    """The worker dies after the message reached the server but before the reply was recorded.
    The retried job does not send again: the action is failed as 'outcome unknown after a
    worker crash: check the mailbox (Message-ID <...>) and resend by hand', and the mailbox
    holds exactly one copy."""
    controller, sink = smtp_server(Sink(hold_data=True))
    env = use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)
    # no scheduler process: the worker's only child is the work horse we kill
    worker = start_rq_worker(queues=["dunning"], env=env, with_scheduler=False)
    queue = get_queue("dunning", get_settings())
    job = enqueue_dunning_email(action, queue=queue, retry=Retry(max=2))

    wait_until(sink.holding.is_set, message="the worker to reach DATA")
    _kill_worker_and_horse(worker, wait_until)
    sink.gate.set()  # the server accepts what it has; nobody hears the 250
    assert reload(action).status == "sending"

    result = _rerun_abandoned(queue, job, start_rq_worker, env, wait_until)

    assert result["status"] == "unknown"
    assert len(sink.received) == 1 and sink.data_commands == 1
    after = reload(action)
    assert after.status == "failed"
    assert after.reason == ("outcome unknown after a worker crash: check the mailbox "
                            f"(Message-ID <arhub.{action.key}@reply.example.com>) and resend by hand")
    assert [m.status for m in out_messages(action)] == ["unknown"]


def test_worker_killed_before_data_sends_once_on_retry(world, redis_url, smtp_server, use_smtp, start_rq_worker,
                                                       wait_until):
    """The worker dies during RCPT TO, before the message row and DATA: the server cannot have
    the message, so the retried job sends it, once."""
    controller, sink = smtp_server(Sink(hold_rcpt=True))
    env = use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)
    # no scheduler process: the worker's only child is the work horse we kill
    worker = start_rq_worker(queues=["dunning"], env=env, with_scheduler=False)
    queue = get_queue("dunning", get_settings())
    job = enqueue_dunning_email(action, queue=queue, retry=Retry(max=2))

    wait_until(sink.holding.is_set, message="the worker to reach RCPT TO")
    _kill_worker_and_horse(worker, wait_until)
    sink.gate.set()
    assert reload(action).status == "sending" and out_messages(action) == []

    result = _rerun_abandoned(queue, job, start_rq_worker, env, wait_until)

    assert result["status"] == "sent"
    assert len(sink.received) == 1
    after = reload(action)
    assert (after.status, after.attempts) == ("sent", 2)
