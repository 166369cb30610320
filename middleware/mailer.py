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
import fcntl
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from email.utils import parseaddr
from enum import Enum

from .db import database, is_postgres
from .mail_compose import Composed, _domain, _pay_url, _render, _today, build_message, compose_action, open_invoices
from .mail_compose import (  # noqa: F401  (re-exported: importers use middleware.mailer)
    approve_with_wording, message_id_for, template_wording, thread_token_for)
from .mail_transport import MailError, PermanentMailError, SmtpSession, TransientMailError, _serialize
from .mail_transport import (  # noqa: F401  (re-exported: importers use middleware.mailer)
    _kept, keep_connections)
from .models import ActionStatus, AuditLog, Customer, DunningAction, Message, Template, utcnow
from .settings import Settings, get_settings
from .templating import TemplateRenderError, parse_locale

__all__ = ["MailError", "OutboundStatus", "PermanentMailError", "SendOutcome", "TransientMailError",
           "approve_with_wording", "compose_action", "keep_connections", "message_id_for", "release_for_resend", "send_action", "send_test",
           "template_wording", "thread_token_for"]

log = logging.getLogger(__name__)

#: Action states a send may start from.
SENDABLE = (ActionStatus.PLANNED.value, ActionStatus.APPROVED.value, ActionStatus.QUEUED.value)
#: PostgreSQL advisory lock class of the per-action send lock (the object id is the action id).
_PG_LOCK_CLASS = 0x61726D6C  # "arml"


class OutboundStatus(str, Enum):
    """``Message.status`` of an outbound message."""

    SENDING = "sending"  # committed before DATA: the server may have it
    SENT = "sent"  # the server answered 250 to the message
    DEFERRED = "deferred"  # the server refused it for now (4xx) or the connection failed before it went out
    FAILED = "failed"  # the server refused it for good (5xx)
    UNKNOWN = "unknown"  # it went out and no reply was recorded: a person checks the mailbox


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
