"""Composing outbound email (used by :mod:`middleware.mailer`): a dunning action's Message-ID and
reply thread token, its template rendered in the customer's language (with the statement PDF),
the MIME message (:func:`compose_action`), and the wording a collector types when approving
(:func:`approve_with_wording`)."""
from __future__ import annotations

import email.policy
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from hashlib import sha256

from .db import database
from .mail_transport import _SPACES, MailError, PermanentMailError
from .models import (UTC, ActionStatus, AuditLog, CampaignStep, Customer, DunningAction, Invoice, InvoiceStatus,
                     Message, Template)
from .settings import Settings, get_settings
from .templating import TemplateRenderError, parse_locale, render_string

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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
