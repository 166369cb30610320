"""Outbound email: a dunning action becomes one email over SMTP, and never two (docs/email.md).

:func:`compose_action` renders the step's :class:`Template` in the customer's language
(``de_DE``, ``de``, then ``en``) in the sandbox, amounts in the customer's locale, with
``Message-ID: <arhub.<action key>@<reply domain>>`` (the same on every attempt),
``Reply-To: reply+<thread token>@<reply domain>`` (one token per customer, stored on
``Message.thread_token``), ``Auto-Submitted: auto-generated`` and, when the step says so, the
statement PDF. A subject or text the collector typed when approving
(:func:`approve_with_wording`, ``DunningAction.subject_override``/``body_override``) replaces
the template's as plain text, never rendered; a typed text goes out without an HTML part.

:func:`send_action`, the never-twice protocol, each step committed before the next:

1. a per-action lock that dies with its holder (PostgreSQL advisory lock; SQLite ``lockf`` on
   one byte of a file beside the database); busy → return ``busy``, touch nothing;
2. ``UPDATE ... SET status='sending' WHERE id=? AND status IN (planned, approved, queued)``;
3. SMTP up to ``RCPT TO`` (nothing can be delivered yet);
4. the :class:`Message` row (unique ``message_id``) with status ``sending``;
5. ``DATA``; the server's ``250`` is followed at once by one transaction: message and action ``sent``.

Finding the action ``sending`` while holding its lock means the earlier attempt's process is
gone. Its message row decides: none (or an earlier attempt's ``deferred``/``failed``/
``unknown``): it never reached DATA, send; ``sent``: record ``sent``, send nothing;
``sending``: nobody knows whether the server took it, so the action is ``failed`` with
"outcome unknown after a worker crash: check the mailbox (Message-ID <...>) and resend by
hand" and nothing is sent (:func:`release_for_resend` is that resend). A retried job sends
only when the database proves no earlier attempt reached DATA.

Errors: no answer, ``4xx``, a dropped connection before the message went out:
:class:`TransientMailError` (action back to ``queued``; ``failed`` on the last attempt);
``5xx``, STARTTLS not offered, an untrusted certificate, a template that does not render:
:class:`PermanentMailError` (``failed`` with the reason). Both name the action, the
recipient and the server's reply.
"""
from __future__ import annotations

import contextlib
import email.policy
import fcntl
import logging
import os
import re
import secrets
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from enum import Enum
from hashlib import sha256

from .db import database, is_postgres
from .models import (UTC, ActionStatus, AuditLog, CampaignStep, Customer, DunningAction, Invoice, InvoiceStatus,
                     Message, Template, utcnow)
from .settings import Settings, get_settings
from .templating import TemplateRenderError, parse_locale, render_string

__all__ = ["MailError", "OutboundStatus", "PermanentMailError", "SendOutcome", "TransientMailError",
           "approve_with_wording", "compose_action", "keep_connections", "message_id_for", "release_for_resend", "send_action", "send_test",
           "template_wording", "thread_token_for"]

log = logging.getLogger(__name__)

#: Action states a send may start from.
SENDABLE = (ActionStatus.PLANNED.value, ActionStatus.APPROVED.value, ActionStatus.QUEUED.value)
#: PostgreSQL advisory lock class of the per-action send lock (the object id is the action id).
_PG_LOCK_CLASS = 0x61726D6C  # "arml"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SPACES = re.compile(r"[ \t\r\n]+")  # ASCII only: a formatted amount keeps its no-break spaces


class OutboundStatus(str, Enum):
    """``Message.status`` of an outbound message."""

    SENDING = "sending"  # committed before DATA: the server may have it
    SENT = "sent"  # the server answered 250 to the message
    DEFERRED = "deferred"  # the server refused it for now (4xx) or the connection failed before it went out
    FAILED = "failed"  # the server refused it for good (5xx)
    UNKNOWN = "unknown"  # it went out and no reply was recorded: a person checks the mailbox


# -- errors -------------------------------------------------------------------------------


class MailError(Exception):
    """An email that did not go out. ``subject`` names the action (or "test send"),
    ``recipient`` the address, ``reply`` the server's reply (``550 5.1.1 user unknown``)
    or the network error."""

    def __init__(self, message: str, *, subject: str | None = None, recipient: str | None = None,
                 reply: str | None = None, code: int | None = None):
        super().__init__(message)
        self.subject = subject
        self.recipient = recipient
        self.reply = reply
        self.code = code

    def __reduce__(self):
        return (_rebuild_error, (self.__class__, str(self), self.subject, self.recipient, self.reply, self.code))


class TransientMailError(MailError):
    """Worth trying again later: no answer, a 4xx reply, a dropped connection before DATA."""


class PermanentMailError(MailError):
    """Trying again will not help: a 5xx reply, a TLS or template problem, an unknown outcome."""


def _rebuild_error(cls, message, subject, recipient, reply, code):
    return cls(message, subject=subject, recipient=recipient, reply=reply, code=code)


def _reply_text(code: int | None, text: bytes | str | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _SPACES.sub(" ", text or "").strip()
    return f"{code} {text}".strip() if code and code > 0 else text


def _error(kind: type[MailError], subject: str, recipient: str | None, what: str, reply: str,
           code: int | None = None) -> MailError:
    to = f" to {recipient}" if recipient else ""
    return kind(f"{subject}{to}: {what}: {reply}", subject=subject, recipient=recipient, reply=reply, code=code)


def _by_code(code: int | None) -> type[MailError]:
    return PermanentMailError if code is not None and 500 <= code < 600 else TransientMailError


def classify(exc: BaseException, *, subject: str, recipient: str | None, stage: str) -> MailError | None:
    """The :class:`MailError` an SMTP or network exception stands for (None: not a mail error).

    5xx replies are permanent, 4xx replies, timeouts, refused or dropped connections transient.
    """
    if isinstance(exc, MailError):
        return exc
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        reply = _reply_text(exc.smtp_code, exc.smtp_error)
        return _error(_by_code(exc.smtp_code), subject, recipient, "SMTP authentication failed", reply, exc.smtp_code)
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code if exc.smtp_code and exc.smtp_code > 0 else None
        return _error(_by_code(code), subject, recipient, f"refused at {stage}", _reply_text(code, exc.smtp_error),
                      code)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return _error(PermanentMailError, subject, recipient, f"the server does not support {stage}", str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _error(PermanentMailError, subject, recipient, "the SMTP server's TLS certificate is not trusted",
                      str(exc))
    if isinstance(exc, (smtplib.SMTPException, OSError)):  # disconnects, timeouts, refused connections, TLS
        return _error(TransientMailError, subject, recipient, f"no answer at {stage}",
                      f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return None


# -- identifiers ----------------------------------------------------------------------------


def _domain(settings: Settings) -> str:
    return settings.reply_domain.strip().strip("@") or "arhub.localhost"


def message_id_for(action: DunningAction, settings: Settings | None = None) -> str:
    """``arhub.<action key>@<reply domain>`` (no ``<>``): the same for every attempt of one action.

    A key with characters a Message-ID may not hold (or longer than 100) is replaced by its
    SHA-256 (first 32 hex digits)."""
    s = settings or get_settings()
    key = action.key if _SAFE_ID.fullmatch(action.key) else sha256(action.key.encode()).hexdigest()[:32]
    return f"arhub.{key}@{_domain(s)}"


def thread_token_for(customer_id: int | None) -> str:
    """The customer's reply thread token: the one of its latest outbound message, or a new
    random one (20 lower-case hex digits; mail systems may lower-case the local part)."""
    if customer_id is not None:
        row = (Message.select(Message.thread_token)
               .where(Message.customer == customer_id, Message.direction == "out", Message.thread_token.is_null(False))
               .order_by(Message.id.desc()).first())
        if row is not None:
            return row.thread_token
    return secrets.token_hex(10)


def reply_address(token: str, settings: Settings | None = None) -> str:
    return f"reply+{token}@{_domain(settings or get_settings())}"


# -- rendering ------------------------------------------------------------------------------


@dataclass
class Attachment:
    filename: str
    content_type: str
    content: bytes = field(repr=False)

    def describe(self) -> dict:
        return {"filename": self.filename, "content_type": self.content_type, "size": len(self.content)}


@dataclass
class Composed:
    """An email ready to go: the MIME message and what the :class:`Message` row records."""

    message: EmailMessage
    message_id: str
    thread_token: str
    subject: str
    body_text: str
    to: str
    cc: list[str]
    language: str
    attachments: list[Attachment]

    @property
    def recipients(self) -> list[str]:
        return list(dict.fromkeys([self.to, *self.cc]))


def _languages(locale: str) -> list[str]:
    language = locale.split("_")[0]
    return list(dict.fromkeys([locale, language, "en"]))


def find_template(name: str, locale: str) -> Template | None:
    """The template ``name`` in ``locale`` (``de_CH``), its language (``de``), else English."""
    candidates = _languages(locale)
    found = {t.language: t for t in Template.select().where(Template.name == name, Template.language.in_(candidates))}
    return next((found[lang] for lang in candidates if lang in found), None)


def _render(template: Template, context: dict, locale: str) -> tuple[str, str, str | None]:
    label = f"template {template.name}/{template.language}"
    subject = render_string(template.subject, context, locale=locale, name=f"{label} subject")
    text = render_string(template.body_text, context, locale=locale, name=f"{label} text")
    html = (render_string(template.body_html, context, locale=locale, html=True, name=f"{label} html")
            if template.body_html else None)
    return _SPACES.sub(" ", subject).strip(), text, html


def _today(settings: Settings) -> date:
    return datetime.now(settings.tzinfo).date()


def _display_name(settings: Settings) -> str:
    name, address = parseaddr(settings.mail_from)
    return name or address


def _pay_url(customer_id: int, settings: Settings) -> str | None:
    try:
        from .statements import customer_token
    except ImportError:
        return None
    return f"{settings.public_url}/pay/{customer_token(customer_id, settings)}"


def open_invoices(invoice_ids: list[int] | None, customer_id: int) -> list[Invoice]:
    """The customer's invoices among ``invoice_ids`` (all when None) that are still open."""
    query = Invoice.select().where(Invoice.customer == customer_id, Invoice.status == InvoiceStatus.OPEN.value,
                                   Invoice.open_amount > 0, Invoice.deleted_at.is_null())
    if invoice_ids is not None:
        query = query.where(Invoice.id.in_([int(i) for i in invoice_ids] or [0]))
    return list(query.order_by(Invoice.due_date, Invoice.number, Invoice.id))


def build_message(*, settings: Settings, subject: str, text: str, html: str | None, to: str, cc: list[str],
                  message_id: str, thread_token: str, attachments: list[Attachment] = ()) -> EmailMessage:
    """The MIME message: text with an optional HTML alternative, then the attachments."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = settings.mail_from
    msg["To"] = to
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<{message_id}>"
    msg["Reply-To"] = formataddr((_display_name(settings), reply_address(thread_token, settings)))
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    for att in attachments:
        maintype, _, subtype = att.content_type.partition("/")
        msg.add_attachment(att.content, maintype=maintype, subtype=subtype, filename=att.filename)
    return msg


def _statement(customer: Customer, settings: Settings, renderer: Callable[..., bytes] | None) -> Attachment:
    if renderer is None:
        from .statements import render_statement_pdf as renderer
    as_of = _today(settings)
    pdf = renderer(customer.id, as_of=as_of, reporting_currency=settings.reporting_currency)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", customer.number or str(customer.id)).strip("-") or str(customer.id)
    return Attachment(f"statement-{name}-{as_of.isoformat()}.pdf", "application/pdf", pdf)


def compose_action(action: DunningAction, *, settings: Settings | None = None,
                   statement_renderer: Callable[..., bytes] | None = None) -> Composed:
    """Render the action's email (no I/O besides the database and the statement renderer).

    Raises :class:`PermanentMailError` when the step, its template or the recipient is missing
    or the template does not render; ``statement_renderer`` (default
    ``middleware.statements.render_statement_pdf``) makes the attached PDF."""
    from .dunning import template_context

    s = settings or get_settings()
    subject = f"action {action.key}"
    customer = Customer.get_by_id(action.customer_id)
    step = CampaignStep.get_or_none(CampaignStep.id == action.step_id) if action.step_id else None
    if not action.to_address:
        raise PermanentMailError(f"{subject}: no recipient address", subject=subject)
    if step is None or not step.template:
        raise PermanentMailError(f"{subject}: the campaign step or its template name is gone", subject=subject,
                                 recipient=action.to_address)
    locale = parse_locale(customer.locale)
    template = find_template(step.template, locale)
    if template is None:
        raise PermanentMailError(f"{subject}: no template {step.template!r} in {', '.join(_languages(locale))}",
                                 subject=subject, recipient=action.to_address)
    attachments = [_statement(customer, s, statement_renderer)] if step.attach_statement else []
    context = template_context(action, pay_url=_pay_url(customer.id, s))  # docs/dunning.md lists its keys
    subject_override = _SPACES.sub(" ", action.subject_override or "").strip() or None
    body_override = action.body_override if (action.body_override or "").strip() else None
    try:
        title, text, html = _render(template, context, locale)
    except TemplateRenderError as exc:
        if not (subject_override and body_override):  # the collector's own wording needs no template
            raise PermanentMailError(f"{subject}: {exc}", subject=subject, recipient=action.to_address) from exc
        title, text, html = "", "", None
    # the collector's wording (approve_with_wording): plain text as typed, never through Jinja;
    # a typed body replaces the template's HTML too (it would still say the template's words)
    if subject_override:
        title = subject_override
    if body_override:
        text, html = body_override, None
    existing = Message.get_or_none(Message.action == action.id, Message.direction == "out")
    token = existing.thread_token if existing and existing.thread_token else thread_token_for(customer.id)
    message_id = existing.message_id if existing else message_id_for(action, s)
    cc = [a for a in dict.fromkeys(action.cc or []) if a and a.lower() != action.to_address.lower()]
    msg = build_message(settings=s, subject=title, text=text, html=html, to=action.to_address, cc=cc,
                        message_id=message_id, thread_token=token, attachments=attachments)
    return Composed(msg, message_id, token, title, text, action.to_address, cc, template.language, attachments)


#: The longest subject a collector may type (an email header line stops at 998 characters).
MAX_SUBJECT = 300
#: The longest text a collector may type.
MAX_BODY = 100_000


def template_wording(action: DunningAction, *, settings: Settings | None = None) -> tuple[str, str]:
    """The subject and text the step's template renders for ``action``, ignoring any wording a
    collector typed (the statement PDF is not rendered). Raises :class:`MailError` like
    :func:`compose_action`."""
    plain = DunningAction(**{**action.__data__, "subject_override": None, "body_override": None})
    composed = compose_action(plain, settings=settings, statement_renderer=lambda *a, **k: b"")
    return composed.subject, composed.body_text


def _typed(subject: str | None, body: str | None) -> tuple[str | None, str | None]:
    subject = _SPACES.sub(" ", subject or "").strip() or None  # one line: no header injection
    body = (body or "").replace("\r\n", "\n").replace("\r", "\n")
    body = body if body.strip() else None
    if subject and len(subject) > MAX_SUBJECT:
        raise ValueError(f"the subject is longer than {MAX_SUBJECT} characters")
    if body and len(body) > MAX_BODY:
        raise ValueError(f"the text is longer than {MAX_BODY:,} characters")
    return subject, body


def approve_with_wording(action_id: int, actor: str, *, subject: str | None = None, body: str | None = None,
                         edits: dict | None = None, now: datetime | None = None,
                         settings: Settings | None = None) -> DunningAction:
    """Approve a pending action (``middleware.dunning.approve`` with ``edits``) with the
    collector's own ``subject`` and/or ``body``: plain text, sent as typed (no Jinja), stored on
    ``subject_override``/``body_override`` in the same transaction as the approval, so every
    attempt of the send composes the same email (same Message-ID, reply token, statement).

    An empty ``subject``/``body``, or one equal to what the template renders, keeps the
    template's. An edit is audited (``dunning.wording``: before = the template's rendering,
    after = what will be sent) beside the approval's own ``dunning.approved`` row. Raises
    ``DunningError`` (not pending, expired, bad edits) or ``ValueError`` (too long); nothing is
    stored then."""
    from .dunning import approve

    subject, body = _typed(subject, body)
    action = DunningAction.get_or_none(DunningAction.id == action_id)
    if action is None or not (subject or body):
        return approve(action_id, actor, edits, now=now)
    try:
        original_subject, original_body = template_wording(action, settings=settings)
    except MailError:
        original_subject = original_body = None  # the template does not render: only typed wording can go out
    if subject == original_subject:
        subject = None
    if body is not None and original_body is not None and body.rstrip() == original_body.replace(
            "\r\n", "\n").rstrip():
        body = None
    if not (subject or body):
        return approve(action_id, actor, edits, now=now)
    with database.atomic():
        DunningAction.update(subject_override=subject, body_override=body).where(
            DunningAction.id == action_id, DunningAction.status == ActionStatus.PENDING_APPROVAL.value).execute()
        approved = approve(action_id, actor, edits, now=now)  # refuses (and so rolls back) a non-pending one
        AuditLog.create(actor=actor, action="dunning.wording", object_type="dunning_action",
                        object_id=str(action_id),
                        before={"subject": original_subject, "body_text": original_body},
                        after={"subject": subject or original_subject, "body_text": body or original_body})
    return approved


# -- SMTP ---------------------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    # the system's trust store (or $SSL_CERT_FILE / $SSL_CERT_DIR), hostname checked, TLS >= 1.2
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


#: One SMTP connection kept between messages by a non-forking mail worker (jobs.queues.MailWorker
#: turns it on): ``(server key, connection, last used, pid)``. Off (the default), every message
#: has its own connection.
_kept: dict = {"on": False, "entry": None}
#: A kept connection idle longer than this is closed rather than reused (servers drop idle ones).
KEEP_IDLE_SECONDS = 30.0


def keep_connections(on: bool = True) -> None:
    """Keep one SMTP connection open between messages in this process (``on``), or stop and
    close it. Only for a process that sends one message after another (a forked work horse
    gains nothing: it exits after its message)."""
    _kept["on"] = on
    if not on:
        entry, _kept["entry"] = _kept["entry"], None
        if entry is not None:
            _quit(entry[1])


def _server_key(settings: Settings) -> tuple:
    return (settings.smtp_host, settings.smtp_port, settings.smtp_security, settings.smtp_username)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        with contextlib.suppress(OSError):
            smtp.close()


def _keep(smtp: smtplib.SMTP, settings: Settings) -> bool:
    if not _kept["on"]:
        return False
    old, _kept["entry"] = _kept["entry"], (_server_key(settings), smtp, time.monotonic(), os.getpid())
    if old is not None and old[1] is not smtp:
        _quit(old[1])
    return True


def _take_kept(settings: Settings) -> smtplib.SMTP | None:
    """The kept connection when it is to the same server, of this process, recently used and
    still answering ``NOOP`` with 250; else None (and it is closed)."""
    entry, _kept["entry"] = _kept["entry"], None
    if entry is None:
        return None
    key, smtp, used, pid = entry
    if pid != os.getpid():  # inherited through a fork: the parent's socket, not ours to use
        return None
    if not _kept["on"] or key != _server_key(settings) or time.monotonic() - used > KEEP_IDLE_SECONDS:
        _quit(smtp)
        return None
    try:
        code, _ = smtp.noop()
    except (smtplib.SMTPException, OSError):
        with contextlib.suppress(OSError):
            smtp.close()
        return None
    if code != 250:
        _quit(smtp)
        return None
    return smtp


class SmtpSession:
    """One SMTP connection for one message, tracking how far the conversation got.

    ``phase``: ``connect`` → ``envelope`` → ``data`` (DATA sent, no content yet) →
    ``content`` (the message is on the wire: only the reply tells whether it was taken) →
    ``replied``. A failure before ``content`` means the server cannot have the message.
    """

    def __init__(self, settings: Settings, subject: str):
        self.settings = settings
        self.subject = subject
        self.phase = "connect"
        self.smtp: smtplib.SMTP | None = None

    @contextlib.contextmanager
    def _stage(self, stage: str, recipient: str | None) -> Iterator[None]:
        """SMTP and network exceptions inside become :class:`MailError` naming ``stage``."""
        try:
            yield
        except MailError:
            raise
        except Exception as exc:
            mail_error = classify(exc, subject=self.subject, recipient=recipient, stage=stage)
            if mail_error is None:
                raise
            raise mail_error from exc

    def _refused(self, code: int, text: bytes, recipient: str, what: str) -> MailError:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            self.smtp.rset()  # type: ignore[union-attr]
        return _error(_by_code(code), self.subject, recipient, what, _reply_text(code, text), code)

    def connect(self, recipient: str | None = None) -> None:
        s = self.settings
        self.smtp = _take_kept(s)
        if self.smtp is not None:  # the previous message's connection, still answering NOOP
            self.phase = "envelope"
            return
        with self._stage("connect", recipient):
            if s.smtp_security == "tls":
                self.smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds,
                                             context=_tls_context())
            else:
                self.smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
            self.smtp.ehlo()
        if s.smtp_security == "starttls":
            with self._stage("STARTTLS", recipient):
                if not self.smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("STARTTLS is not offered (ARHUB_SMTP_SECURITY=starttls)")
                self.smtp.starttls(context=_tls_context())
                self.smtp.ehlo()
        if s.smtp_username:
            with self._stage("AUTH", recipient):
                self.smtp.login(s.smtp_username, s.smtp_password or "")
        self.phase = "envelope"

    def deliver(self, envelope_from: str, to: str, cc: list[str], data: bytes, *,
                before_data: Callable[[], None] = lambda: None) -> dict[str, str]:
        """MAIL, RCPT for ``to`` and ``cc``, ``before_data()``, DATA. Returns the Cc addresses
        the server refused (address → reply); a refused ``to`` stops before DATA."""
        smtp = self.smtp
        assert smtp is not None and self.phase == "envelope"
        recipients = list(dict.fromkeys([to, *cc]))
        options = [f"SIZE={len(data)}"] if smtp.has_extn("size") else []
        if any(not a.isascii() for a in (envelope_from, *recipients)):
            if not smtp.has_extn("smtputf8"):
                raise _error(PermanentMailError, self.subject, to, "refused at MAIL FROM",
                             "the server does not support SMTPUTF8 (non-ASCII address)")
            options += ["SMTPUTF8", "BODY=8BITMIME"]
        with self._stage("MAIL FROM", to):
            code, text = smtp.mail(envelope_from, options)
        if code != 250:
            raise self._refused(code, text, to, "sender refused at MAIL FROM")
        refused: dict[str, str] = {}
        for rcpt in recipients:
            with self._stage("RCPT TO", rcpt):
                code, text = smtp.rcpt(rcpt)
            if code not in (250, 251):
                if rcpt == to:
                    raise self._refused(code, text, to, "recipient refused at RCPT TO")
                refused[rcpt] = _reply_text(code, text)
        before_data()
        self.phase = "data"
        with self._stage("DATA", to):
            code, text = smtp.docmd("data")
        if code != 354:
            raise self._refused(code, text, to, "refused at DATA")
        payload = re.sub(rb"(?m)^\.", b"..", data)
        payload += b"" if payload.endswith(b"\r\n") else b"\r\n"
        self.phase = "content"
        smtp.send(payload + b".\r\n")
        code, text = smtp.getreply()
        self.phase = "replied"
        if code != 250:
            raise _error(_by_code(code), self.subject, to, "message refused after DATA", _reply_text(code, text),
                         code)
        return refused

    def close(self) -> None:
        """QUIT politely (its failure changes nothing: the outcome is already known); with
        :func:`keep_connections` on, a connection whose last message got its reply is kept for
        the next one instead."""
        if self.smtp is None:
            return
        if self.phase == "replied" and _keep(self.smtp, self.settings):
            self.smtp = None
            return
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            with contextlib.suppress(OSError):
                self.smtp.close()
        self.smtp = None


def _serialize(msg: EmailMessage, recipients: list[str], envelope_from: str) -> bytes:
    if any(not a.isascii() for a in (envelope_from, *recipients)):
        return msg.as_bytes(policy=email.policy.SMTPUTF8)
    return msg.as_bytes(policy=email.policy.SMTP)


# -- the never-twice protocol -------------------------------------------------------------------


@dataclass
class SendOutcome:
    """What one call of :func:`send_action` did. ``status``: ``sent`` (this call sent it),
    ``already_sent``, ``busy`` (another worker holds the action), ``skipped`` (nothing left to
    ask for), ``not_sendable`` (the action's state forbids it), ``unknown`` (an earlier attempt
    died mid-send: failed, a person checks)."""

    action_id: int
    status: str
    message_id: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _send_lock(action_id: int) -> Iterator[bool]:
    """Yield True while this process holds the action's send lock (False: someone else does).
    The lock is released when the holder exits, however it exits."""
    db = database.obj
    if is_postgres(db):
        got = bool(db.execute_sql("SELECT pg_try_advisory_lock(%s, %s)", (_PG_LOCK_CLASS, action_id)).fetchone()[0])
        try:
            yield got
        finally:
            if got:
                db.execute_sql("SELECT pg_advisory_unlock(%s, %s)", (_PG_LOCK_CLASS, action_id))
        return
    path = getattr(db, "database", None)
    if not path or path == ":memory:":
        yield True
        return
    # one file, one byte per action: POSIX record locks are per process and die with it
    fd = os.open(f"{os.path.abspath(path)}.mail-send.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, action_id)
            got = True
        except OSError:  # EAGAIN / EACCES: held by another process
            got = False
        yield got
    finally:
        os.close(fd)


def _set_action(action_id: int, expected: tuple[str, ...], **values) -> bool:
    """Conditional update: ``values`` only when the action is still in ``expected``."""
    values.setdefault("updated_at", utcnow())
    fields = {getattr(DunningAction, k): v for k, v in values.items()}
    return DunningAction.update(fields).where(
        DunningAction.id == action_id, DunningAction.status.in_(list(expected))).execute() == 1


def _unknown_reason(message_id: str, why: str) -> str:
    return f"outcome unknown {why}: check the mailbox (Message-ID <{message_id}>) and resend by hand"


def _resolve_abandoned(action: DunningAction) -> SendOutcome | None:
    """The action is ``sending`` and we hold its lock, so the attempt that set it is dead.
    Returns the final outcome, or None when that attempt never reached DATA (send again)."""
    msg = Message.get_or_none(Message.action == action.id, Message.direction == "out")
    # deferred/failed/unknown rows are an earlier attempt's verdict: this one never set ``sending``
    if msg is None or msg.status in (OutboundStatus.DEFERRED.value, OutboundStatus.FAILED.value,
                                     OutboundStatus.UNKNOWN.value):
        _set_action(action.id, (ActionStatus.SENDING.value,), status=ActionStatus.QUEUED.value,
                    error="an earlier attempt stopped before DATA (worker gone); sending again")
        log.warning("action %s: earlier attempt died before DATA; sending again", action.key)
        return None
    if msg.status == OutboundStatus.SENT.value:
        _set_action(action.id, (ActionStatus.SENDING.value,), status=ActionStatus.SENT.value, reason=None)
        return SendOutcome(action.id, "already_sent", msg.message_id, "the server had accepted it")
    reason = _unknown_reason(msg.message_id, "after a worker crash")
    with database.atomic():
        Message.update(status=OutboundStatus.UNKNOWN.value).where(Message.id == msg.id).execute()
        _set_action(action.id, (ActionStatus.SENDING.value,), status=ActionStatus.FAILED.value, reason=reason,
                    error=reason)
    log.error("action %s: %s", action.key, reason)
    return SendOutcome(action.id, "unknown", msg.message_id, reason)


def _stale_reason(action: DunningAction, settings: Settings) -> str | None:
    """Why sending this action now would be wrong (its invoices got paid, the customer paused)."""
    customer = Customer.get_by_id(action.customer_id)
    today = _today(settings)
    if customer.deleted_at is not None or customer.inactive:
        return "the customer is deleted or inactive"
    if customer.paused_until and customer.paused_until >= today:
        why = f": {customer.paused_reason}" if customer.paused_reason else ""
        return f"the customer is paused until {customer.paused_until.isoformat()}{why}"
    if action.invoice_ids and not open_invoices(action.invoice_ids, customer.id):
        return "every invoice of the action was paid, credited or closed before sending"
    return None


def _store_sending(action: DunningAction, composed: Composed, settings: Settings) -> None:
    """Commit the message row (status ``sending``) before DATA. Refuses to touch a row that
    says the message is, or may be, out already."""
    values = dict(direction="out", customer=action.customer_id, action=action.id, thread_token=composed.thread_token,
                  subject=composed.subject, from_address=settings.mail_from, to_addresses=[composed.to],
                  cc_addresses=composed.cc, body_text=composed.body_text,
                  attachments=[a.describe() for a in composed.attachments], status=OutboundStatus.SENDING.value,
                  at=utcnow())
    # reads then writes: on SQLite take the write lock at BEGIN (IMMEDIATE), so a concurrent writer
    # makes this wait (busy_timeout) instead of failing with "database is locked" on a stale snapshot
    with (database.atomic() if is_postgres(database.obj) else database.atomic("IMMEDIATE")):
        existing = Message.get_or_none(Message.message_id == composed.message_id)
        if existing is None:
            Message.insert(message_id=composed.message_id, **values).execute()
            return
        if existing.action_id != action.id or existing.status in (OutboundStatus.SENDING.value,
                                                                   OutboundStatus.SENT.value):
            raise RuntimeError(f"refusing to send {composed.message_id} again: its message row is {existing.status}")
        Message.update(**values).where(Message.id == existing.id).execute()


def send_action(action_id: int, *, settings: Settings | None = None, final_attempt: bool = False,
                statement_renderer: Callable[..., bytes] | None = None) -> SendOutcome:
    """Send the dunning email of ``action_id`` at most once (see the module docstring).

    Returns a :class:`SendOutcome`; raises :class:`TransientMailError` (the action is back
    in ``queued`` for a retry, or ``failed`` when ``final_attempt``) or
    :class:`PermanentMailError` (the action is ``failed`` with the reason). Any other
    exception propagates after the action has been put back where a retry can take it.
    """
    s = settings or get_settings()
    action = DunningAction.get_or_none(DunningAction.id == action_id)
    if action is None:
        return SendOutcome(action_id, "not_sendable", detail="no such action")
    if action.channel != "email":
        return SendOutcome(action_id, "not_sendable", detail=f"channel {action.channel}")
    with _send_lock(action_id) as mine:
        if not mine:
            return SendOutcome(action_id, "busy", detail="another worker is sending it")
        action = DunningAction.get_by_id(action_id)
        if action.status == ActionStatus.SENDING.value:
            outcome = _resolve_abandoned(action)
            if outcome is not None:
                return outcome
            action = DunningAction.get_by_id(action_id)
        if action.status == ActionStatus.SENT.value:
            return SendOutcome(action_id, "already_sent")
        if action.status not in SENDABLE:
            return SendOutcome(action_id, "not_sendable", detail=f"status {action.status}: {action.reason or ''}".strip(
                ": "))
        stale = _stale_reason(action, s)
        if stale:
            _set_action(action_id, SENDABLE, status=ActionStatus.SKIPPED.value, reason=stale)
            return SendOutcome(action_id, "skipped", detail=stale)
        if not _set_action(action_id, SENDABLE, status=ActionStatus.SENDING.value,
                           attempts=DunningAction.attempts + 1):
            return SendOutcome(action_id, "not_sendable", detail="the action changed state meanwhile")
        return _send_claimed(action, s, final_attempt, statement_renderer)


def _send_claimed(action: DunningAction, s: Settings, final_attempt: bool,
                  statement_renderer: Callable[..., bytes] | None) -> SendOutcome:
    label = f"action {action.key}"
    stored = False
    composed: Composed | None = None
    session = SmtpSession(s, label)

    def before_data() -> None:
        nonlocal stored
        _store_sending(action, composed, s)  # type: ignore[arg-type]
        stored = True

    try:
        try:
            composed = compose_action(action, settings=s, statement_renderer=statement_renderer)
            envelope_from = parseaddr(s.mail_from)[1]
            data = _serialize(composed.message, composed.recipients, envelope_from)
            session.connect(action.to_address)
            refused_cc = session.deliver(envelope_from, composed.to, composed.cc, data, before_data=before_data)
        except BaseException as exc:
            _record_not_sent(action, composed, session, stored, exc, final_attempt)
            raise
        note = _record_sent(action, composed, refused_cc)
    finally:
        session.close()
    log.info("action %s: sent to %s (Message-ID <%s>)", action.key, composed.to, composed.message_id)
    return SendOutcome(action.id, "sent", composed.message_id, note)


def _record_sent(action: DunningAction, composed: Composed, refused_cc: dict[str, str]) -> str | None:
    """The first thing after the server's 250: message and action ``sent``, in one transaction."""
    note = "; ".join(f"cc {a} refused: {r}" for a, r in refused_cc.items()) or None
    with database.atomic():
        Message.update(status=OutboundStatus.SENT.value, at=utcnow()).where(
            Message.message_id == composed.message_id).execute()
        if not _set_action(action.id, (ActionStatus.SENDING.value,), status=ActionStatus.SENT.value, error=note,
                           reason=None):
            log.error("action %s: sent, but the action was no longer 'sending'", action.key)
    return note


def _record_not_sent(action: DunningAction, composed: Composed | None, session: SmtpSession, stored: bool,
                     exc: BaseException, final_attempt: bool) -> None:
    """Put the action where the truth is after a failed attempt (the exception then propagates)."""
    sending = (ActionStatus.SENDING.value,)
    if session.phase == "content":
        # the message went out and no reply came back: maybe delivered, maybe not
        reason = _unknown_reason(composed.message_id, f"after the connection failed while waiting for the server's "
                                                      f"reply ({type(exc).__name__}: {exc})")
        with database.atomic():
            Message.update(status=OutboundStatus.UNKNOWN.value).where(
                Message.message_id == composed.message_id).execute()
            _set_action(action.id, sending, status=ActionStatus.FAILED.value, reason=reason, error=reason)
        log.error("action %s: %s", action.key, reason)
        if isinstance(exc, Exception):
            raise PermanentMailError(f"action {action.key}: {reason}", subject=f"action {action.key}",
                                     recipient=action.to_address, reply=str(exc)) from exc
        return
    mail_error = exc if isinstance(exc, MailError) else None
    text = str(exc) if mail_error else f"{type(exc).__name__}: {exc}"
    status, reason = ActionStatus.FAILED.value, text
    if mail_error is None or (isinstance(mail_error, TransientMailError) and not final_attempt):
        status, reason = ActionStatus.QUEUED.value, action.reason  # the next attempt may send it
    elif isinstance(mail_error, TransientMailError):
        reason = f"gave up after {action.attempts + 1} attempts: {text}"
    with database.atomic():
        if stored:
            failed = status == ActionStatus.FAILED.value
            Message.update(status=(OutboundStatus.FAILED if failed else OutboundStatus.DEFERRED).value).where(
                Message.message_id == composed.message_id).execute()
        _set_action(action.id, sending, status=status, reason=reason, error=text)
    (log.warning if mail_error else log.exception)("action %s: not sent: %s", action.key, text)


def release_for_resend(action_id: int, *, actor: str) -> bool:
    """"Resend by hand": a person has checked the mailbox; a ``failed`` action goes back to
    ``approved`` (attempts reset, an audit row kept) so the next job sends it with the same
    Message-ID. Returns False when the action was not ``failed``."""
    action = DunningAction.get_or_none(DunningAction.id == action_id)
    if action is None:
        return False
    with database.atomic():
        done = _set_action(action_id, (ActionStatus.FAILED.value,), status=ActionStatus.APPROVED.value,
                           reason=f"resend requested by {actor}", error=None, attempts=0, decided_by=actor,
                           decided_at=utcnow())
        if done:
            AuditLog.insert(actor=actor, action="resend", object_type="dunning_action", object_id=str(action_id),
                            before={"status": action.status, "reason": action.reason, "attempts": action.attempts},
                            after={"status": ActionStatus.APPROVED.value}).execute()
    return done


# -- test sends ------------------------------------------------------------------------------------


def send_test(template_name: str, language: str, to: str, customer_id: int, *,
              settings: Settings | None = None) -> dict:
    """Render ``template_name`` in ``language`` with ``customer_id``'s open invoices and send it
    to ``to`` only (no Cc), subject prefixed ``[TEST]``. Recorded as an outbound
    :class:`Message` without customer or action (a reply to it routes to nobody's thread).
    Raises :class:`MailError` when it does not go out."""
    from .dunning import template_context
    from .sf_pull import merged_contacts

    s = settings or get_settings()
    label = "test send"
    template = Template.get_or_none(Template.name == template_name, Template.language == language)
    if template is None:
        raise PermanentMailError(f"{label}: no template {template_name!r} in {language!r}", subject=label,
                                 recipient=to)
    customer = Customer.get_by_id(customer_id)
    locale = parse_locale(customer.locale)
    if locale.split("_")[0] != language.split("_")[0]:
        locale = parse_locale(language)
    contacts = [c for c in merged_contacts(customer) if c.get("email")]
    probe = DunningAction(customer=customer.id, invoice_ids=[i.id for i in open_invoices(None, customer.id)],
                          to_address=contacts[0]["email"] if contacts else to, planned_for=_today(s))
    context = template_context(probe, pay_url=_pay_url(customer.id, s))  # as the customer's next reminder
    try:
        subject, text, html = _render(template, context, locale)
    except TemplateRenderError as exc:
        raise PermanentMailError(f"{label}: {exc}", subject=label, recipient=to) from exc
    subject = f"[TEST] {subject}"
    message_id = f"arhub.test.{secrets.token_hex(12)}@{_domain(s)}"
    token = secrets.token_hex(10)
    msg = build_message(settings=s, subject=subject, text=text, html=html, to=to, cc=[], message_id=message_id,
                        thread_token=token)
    envelope_from = parseaddr(s.mail_from)[1]
    session = SmtpSession(s, label)
    try:
        session.connect(to)
        session.deliver(envelope_from, to, [], _serialize(msg, [to], envelope_from))
        Message.insert(direction="out", message_id=message_id, thread_token=token, subject=subject,
                       from_address=s.mail_from, to_addresses=[to], body_text=text,
                       status=OutboundStatus.SENT.value).execute()
    finally:
        session.close()
    return {"message_id": message_id, "to": to, "subject": subject, "language": template.language}
