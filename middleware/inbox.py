"""Inbound replies: parse an email, find the customer it is about, route it to the collector.

:func:`receive` stores one RFC 5322 message as an inbound :class:`Message`. The customer is
found (``matched_by``) by our ``reply+<token>@`` address in the recipients (``token``), by
``In-Reply-To``/``References`` naming a message we sent (``in_reply_to``), by invoice numbers
that all belong to one customer (``invoice_number``), by the sender being a contact of one
customer (``sender``), or by the sender's company domain (``domain``; never free mail).
Automatic mail is kept as ``auto_reply``, never routed and handled on arrival; other replies
go to the collector or whoever covers while they are away (``routed``), to the team queue
(``queued``), or stay ``unmatched``. A routed or queued reply arrives unhandled, which pauses
the customer's cadence (:func:`paused_customer_ids`) until a collector records what they did
with :func:`handle`. Promise-to-pay and dispute language is *suggested* on the customer's
timeline (an ``Activity(kind="reply")``), never acted on. A Message-ID is stored once.

docs/replies.md describes every rule; the docstrings below state each function's part.
"""
from __future__ import annotations

import logging
import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import Enum

from peewee import IntegrityError, fn

from .db import database
from .inbox_text import (_MAX_ID, ParsedEmail, Suggestion, _clean, invoice_number_candidates, new_text, parse,
                         suggest)
from .inbox_text import html_to_text  # noqa: F401  (re-exported: importers use middleware.inbox)
from .models import UTC, Activity, AuditLog, Contact, Customer, Invoice, Message, User, utcnow
from .settings import get_settings

__all__ = [
    "FREE_MAIL_DOMAINS",
    "InboundStatus",
    "InboxError",
    "MatchedBy",
    "ParsedEmail",
    "Suggestion",
    "assign",
    "effective_collector",
    "handle",
    "html_to_text",
    "ingest",
    "invoice_number_candidates",
    "parse",
    "paused_customer_ids",
    "pending",
    "reassign",
    "receive",
    "suggest",
    "suggestions_for",
]

log = logging.getLogger(__name__)


class InboundStatus(str, Enum):
    ROUTED = "routed"
    QUEUED = "queued"
    AUTO_REPLY = "auto_reply"
    UNMATCHED = "unmatched"


class MatchedBy(str, Enum):
    TOKEN = "token"
    IN_REPLY_TO = "in_reply_to"
    INVOICE_NUMBER = "invoice_number"
    SENDER = "sender"
    DOMAIN = "domain"
    MANUAL = "manual"  # assigned by a person (:func:`assign`)


class InboxError(ValueError):
    """A request about an inbound message that cannot be carried out; the message says why."""


# ---------------------------------------------------------------------------- matching

#: Domains of free mail providers: a sender there says nothing about the company.
FREE_MAIL_DOMAINS = frozenset("""
gmail.com googlemail.com yahoo.com ymail.com rocketmail.com hotmail.com outlook.com live.com msn.com
aol.com aim.com icloud.com me.com mac.com mail.com email.com gmx.com gmx.net gmx.de gmx.at gmx.ch web.de
t-online.de freenet.de arcor.de online.de posteo.de mailbox.org protonmail.com protonmail.ch proton.me
pm.me tutanota.com tutanota.de tuta.io zoho.com zohomail.com yandex.com yandex.ru mail.ru inbox.ru
bk.ru list.ru qq.com 163.com 126.com sina.com naver.com hanmail.net orange.fr wanadoo.fr free.fr
laposte.net sfr.fr libero.it virgilio.it tiscali.it btinternet.com sky.com comcast.net verizon.net
att.net sbcglobal.net cox.net charter.net bellsouth.net earthlink.net hey.com fastmail.com fastmail.fm
seznam.cz wp.pl o2.pl interia.pl onet.pl bluewin.ch rediffmail.com
""".split())
#: Providers with one domain per country (yahoo.co.uk, hotmail.de, ...): the first label decides.
_FREE_MAIL_FAMILIES = frozenset({"yahoo", "hotmail", "outlook", "live", "gmx", "yandex", "aol", "msn", "windowslive"})

_TOKEN_RE = re.compile(r"^reply\+([^@\s]+)@", re.IGNORECASE)


def is_free_mail(domain: str) -> bool:
    domain = domain.lower().strip(".")
    return domain in FREE_MAIL_DOMAINS or domain.split(".", 1)[0] in _FREE_MAIL_FAMILIES


def _invoices_named(text: str) -> list[Invoice]:
    """Live invoices whose number appears in ``text`` (exact, upper- or lower-case variant)."""
    candidates = invoice_number_candidates(text)
    variants = list(dict.fromkeys(v for c in candidates for v in (c, c.upper(), c.lower())))
    found: list[Invoice] = []
    for start in range(0, len(variants), 300):
        chunk = variants[start:start + 300]
        found.extend(Invoice.select(Invoice.id, Invoice.number, Invoice.customer)
                     .where(Invoice.number.in_(chunk), Invoice.deleted_at.is_null(), Invoice.customer.is_null(False)))
    return found


def _one_customer(customer_ids) -> Customer | None:
    ids = set(customer_ids)
    if len(ids) != 1:
        return None
    return Customer.get_or_none(Customer.id == ids.pop())


def _live_contacts():
    return (Contact.select(Contact.customer).join(Customer, on=(Contact.customer == Customer.id))
            .where(Contact.deleted_at.is_null(), Customer.deleted_at.is_null()))


def _match(parsed: ParsedEmail) -> tuple[Customer | None, MatchedBy | None]:
    # 1. our reply token in the recipients
    tokens = [m.group(1) for addr in (*parsed.to_addresses, *parsed.cc_addresses, *parsed.delivered_to)
              if (m := _TOKEN_RE.match(addr))]
    if tokens:
        outbound = Message.select().where(Message.direction == "out", Message.customer.is_null(False))
        sent = (outbound.where(Message.thread_token.in_(tokens)).order_by(Message.id.desc()).first()
                or outbound.where(fn.LOWER(Message.thread_token).in_([t.lower() for t in tokens]))
                .order_by(Message.id.desc()).first())
        if sent is not None:
            return sent.customer, MatchedBy.TOKEN
    # 2. the thread headers name a message we sent
    thread = ([parsed.in_reply_to] if parsed.in_reply_to else []) + list(reversed(parsed.references))
    if thread:
        sent = {m.message_id: m for m in Message.select().where(
            Message.direction == "out", Message.customer.is_null(False), Message.message_id.in_(thread))}
        for message_id in thread:
            if message_id in sent:
                return sent[message_id].customer, MatchedBy.IN_REPLY_TO
    # 3. invoice numbers, all of one customer
    customer = _one_customer(inv.customer_id for inv in _invoices_named(f"{parsed.subject}\n{parsed.body_text}"))
    if customer is not None:
        return customer, MatchedBy.INVOICE_NUMBER
    if not parsed.from_address:
        return None, None
    # 4. the sender is a contact of one customer
    sender = parsed.from_address.lower()
    customer = _one_customer(c.customer_id for c in _live_contacts().where(fn.LOWER(Contact.email) == sender))
    if customer is not None:
        return customer, MatchedBy.SENDER
    # 5. the sender's company domain is the domain of one customer's contacts
    domain = parsed.from_domain
    settings = get_settings()
    own = {settings.reply_domain.lower(), settings.mail_from.rpartition("@")[2].strip(" >").lower()}
    if domain and not is_free_mail(domain) and domain not in own:
        customer = _one_customer(c.customer_id for c in _live_contacts().where(Contact.email.endswith("@" + domain)))
        if customer is not None:
            return customer, MatchedBy.DOMAIN
    return None, None


# ---------------------------------------------------------------------------- routing


def effective_collector(email: str | None, on: date) -> str | None:
    """Who works ``email``'s customers on ``on``: the collector when active and not away, else
    (away through ``away_until`` inclusive, or inactive) their ``cover``, followed while covers
    are unavailable too. None (the team queue) when there is no collector, or the chain ends at
    someone unavailable without cover, or loops. An email with no ``User`` row stands as is.

    The same rule as ``middleware.people.effective_collector``, which was not committed yet
    when this module was written; routing should call that one once it is."""
    if not email:
        return None
    current = email.strip().lower()
    seen: set[str] = set()
    while True:
        user = User.get_or_none(fn.LOWER(User.email) == current)
        if user is None:
            return current  # not an arhub user: the assignment stands as it is
        if user.active and (user.away_until is None or on > user.away_until):
            return current
        seen.add(current)
        cover = User.get_or_none(User.id == user.cover_id) if user.cover_id else None
        if cover is None or cover.email.lower() in seen:
            return None
        current = cover.email.lower()


def _local_date(at: datetime) -> date:
    return at.astimezone(get_settings().tzinfo).date()


def _route(customer: Customer, at: datetime) -> tuple[InboundStatus, str | None]:
    collector = effective_collector(customer.collector, _local_date(at))
    return (InboundStatus.ROUTED, collector) if collector else (InboundStatus.QUEUED, None)


# ---------------------------------------------------------------------------- suggestions


def _customer_invoice_numbers(customer_id: int, text: str) -> list[str]:
    return list(dict.fromkeys(inv.number for inv in _invoices_named(text) if inv.customer_id == customer_id))


def suggestions_for(message: Message) -> list[Suggestion]:
    """The suggestions :func:`receive` recorded for ``message`` (recomputed from its text)."""
    if message.customer_id is None or message.status == InboundStatus.AUTO_REPLY.value:
        return []
    body = message.body_text or ""
    numbers = _customer_invoice_numbers(message.customer_id, f"{message.subject or ''}\n{body}")
    return suggest(f"{message.subject or ''}\n\n{new_text(body)}", today=_local_date(message.at),
                   invoice_numbers=numbers)


def _reply_activity(message: Message, actor: str = "system") -> Activity:
    lines = [f"reply {message.message_id} from {message.from_address or '(unknown sender)'}: {message.subject or ''}"]
    for s in suggestions_for(message):
        lines.append(f'suggested: {s.describe()} ("{s.phrase}")')
    return Activity.create(customer=message.customer_id, kind="reply", body="\n".join(lines), actor=actor,
                           created_at=message.at)


# ---------------------------------------------------------------------------- receive


def ingest(raw: bytes, *, received_at: datetime | None = None) -> tuple[Message, bool]:
    """:func:`receive`, also telling whether the message was stored now (False: a Message-ID
    already stored; the stored row is returned, unchanged)."""
    if not raw or not raw.strip():
        raise InboxError("empty message")
    parsed = parse(raw)
    existing = Message.get_or_none(Message.message_id == parsed.message_id)
    if existing is not None:
        return existing, False
    at = received_at or utcnow()
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    customer, matched_by = _match(parsed)
    routed_to = None
    handled_at = None
    if parsed.auto_reply:
        status, handled_at = InboundStatus.AUTO_REPLY, at
        log.info("auto-reply %s (%s): not routed", parsed.message_id, parsed.auto_reply)
    elif customer is None:
        status = InboundStatus.UNMATCHED
    else:
        status, routed_to = _route(customer, at)
    try:
        with database.atomic():
            message = Message.create(
                direction="in", customer=customer, message_id=parsed.message_id, thread_token=None,
                in_reply_to=parsed.in_reply_to[:_MAX_ID] if parsed.in_reply_to else None,
                subject=parsed.subject, from_address=parsed.from_address, to_addresses=parsed.to_addresses,
                cc_addresses=parsed.cc_addresses, body_text=parsed.body_text,
                raw=_clean(raw.decode("utf-8", "replace")), attachments=parsed.attachments, status=status.value,
                routed_to=routed_to, matched_by=matched_by.value if matched_by else None, handled_at=handled_at,
                at=at)
            if status in (InboundStatus.ROUTED, InboundStatus.QUEUED):
                _reply_activity(message)
    except IntegrityError:
        existing = Message.get_or_none(Message.message_id == parsed.message_id)
        if existing is None:
            raise
        return existing, False  # stored meanwhile by another process (webhook and poller at once)
    log.info("inbound %s from %s: %s%s (matched by %s)", message.message_id, message.from_address, status.value,
             f" to {routed_to}" if routed_to else "", message.matched_by)
    return message, True


def receive(raw: bytes, *, received_at: datetime | None = None) -> Message:
    """Store the RFC 5322 message ``raw`` as an inbound :class:`Message`, matched, routed and
    with its suggestions on the customer's timeline (see the module docstring). Returns the
    stored row; the same Message-ID received again returns the first row untouched."""
    return ingest(raw, received_at=received_at)[0]


# ---------------------------------------------------------------------------- people act


def _inbound(message_id: int | str) -> Message:
    """By row id (int, or a string of digits) or by RFC 5322 Message-ID (with or without <>)."""
    if isinstance(message_id, int) or (isinstance(message_id, str) and message_id.isdigit()):
        message = Message.get_or_none(Message.id == int(message_id), Message.direction == "in")
    else:
        message = Message.get_or_none(Message.message_id == str(message_id).strip().strip("<>"),
                                      Message.direction == "in")
    if message is None:
        raise LookupError(f"no inbound message {message_id!r}")
    return message


def _invoice_of(customer_id: int, invoice: Invoice | int | str) -> Invoice:
    if isinstance(invoice, Invoice):
        found = invoice if invoice.customer_id == customer_id else None
    elif isinstance(invoice, int):
        found = Invoice.get_or_none(Invoice.id == invoice, Invoice.customer == customer_id)
    else:
        found = (Invoice.select().where(Invoice.customer == customer_id, Invoice.deleted_at.is_null(),
                                        fn.LOWER(Invoice.number) == str(invoice).strip().lower()).first())
    if found is None:
        raise InboxError(f"invoice {invoice!r} is not an invoice of this customer")
    return found


def handle(message_id: int | str, actor: str, *, promise_until: date | None = None,
           promise_amount: Decimal | str | None = None, dispute_invoice: Invoice | int | str | None = None,
           note: str | None = None) -> list[Activity]:
    """Record what ``actor`` (a collector's email) did about an inbound reply, and mark it
    handled, which lifts the pause the reply put on the customer's cadence.

    ``promise_until`` (and ``promise_amount``, in the customer's billing currency) records an
    ``Activity(kind="promise")``; ``dispute_invoice`` (an Invoice, its id or its number) a
    ``dispute`` on that invoice of the customer; ``note`` a ``note``. With none of them it only
    marks the reply handled (a "thanks, noted" reply, or dismissing an unmatched one).
    ``message_id`` is the row id or the RFC 5322 Message-ID. Handling twice adds the new
    activities and keeps the first ``handled_at``. Returns the activities created."""
    message = _inbound(message_id)
    if promise_amount is not None and promise_until is None:
        raise InboxError("a promise amount needs a promise date (promise_until)")
    wants_activity = promise_until is not None or dispute_invoice is not None or note
    if wants_activity and message.customer_id is None:
        raise InboxError(f"message {message.id} is not matched to a customer: assign one first")
    invoice = _invoice_of(message.customer_id, dispute_invoice) if dispute_invoice is not None else None
    amount = None
    if promise_amount is not None:
        try:
            amount = Decimal(str(promise_amount))
        except InvalidOperation:
            raise InboxError(f"promise amount {promise_amount!r} is not a number") from None
    now = utcnow()
    source = f"reply {message.message_id}"
    created: list[Activity] = []
    with database.atomic():
        if promise_until is not None:
            created.append(Activity.create(customer=message.customer_id, kind="promise", until=promise_until,
                                           amount=amount, body=f"promised in {source}", actor=actor, created_at=now))
        if invoice is not None:
            created.append(Activity.create(customer=message.customer_id, kind="dispute", invoice=invoice,
                                           body=f"disputed in {source}", actor=actor, created_at=now))
        if note:
            created.append(Activity.create(customer=message.customer_id, kind="note", body=note, actor=actor,
                                           created_at=now))
        Message.update(handled_at=now).where(Message.id == message.id, Message.handled_at.is_null()).execute()
        AuditLog.create(at=now, actor=actor, action="reply.handle", object_type="message", object_id=str(message.id),
                        after={"promise_until": promise_until, "promise_amount": amount,
                               "dispute_invoice": invoice.number if invoice else None, "note": note})
    return created


def assign(message_id: int | str, customer: Customer | int, actor: str) -> Message:
    """Put an inbound message on ``customer`` (``matched_by="manual"``) and route it as if it had
    matched: to the collector or their cover, or the team queue; unhandled again, so it pauses
    the customer's cadence until someone acts."""
    message = _inbound(message_id)
    customer = customer if isinstance(customer, Customer) else Customer.get_by_id(customer)
    status, routed_to = _route(customer, utcnow())
    with database.atomic():
        Message.update(customer=customer.id, matched_by=MatchedBy.MANUAL.value, status=status.value,
                       routed_to=routed_to, handled_at=None).where(Message.id == message.id).execute()
        message = Message.get_by_id(message.id)
        _reply_activity(message, actor=actor)
        AuditLog.create(actor=actor, action="reply.assign", object_type="message", object_id=str(message.id),
                        after={"customer": customer.id, "status": status.value, "routed_to": routed_to})
    return message


def reassign(message_id: int | str, to_email: str | None, actor: str) -> Message:
    """Hand an inbound reply to another collector (``to_email``; None: the team queue) without
    changing its customer or the customer's collector. It stays unhandled (the cadence stays
    paused) until that person acts. Audited as ``reply.reassign``."""
    message = _inbound(message_id)
    if message.customer_id is None and to_email:
        raise InboxError(f"message {message.id} is not matched to a customer: assign one first")
    target = to_email.strip().lower() if to_email else None
    if target and User.get_or_none(fn.LOWER(User.email) == target, User.active == True) is None:  # noqa: E712
        raise InboxError(f"{to_email!r} is not an active user")
    status = InboundStatus.ROUTED if target else InboundStatus.QUEUED
    if message.status == InboundStatus.UNMATCHED.value and target is None:
        status = InboundStatus.UNMATCHED
    with database.atomic():
        before = {"status": message.status, "routed_to": message.routed_to}
        Message.update(status=status.value, routed_to=target).where(Message.id == message.id).execute()
        AuditLog.create(actor=actor, action="reply.reassign", object_type="message", object_id=str(message.id),
                        before=before, after={"status": status.value, "routed_to": target})
    return Message.get_by_id(message.id)


def pending(*, collector: str | None = None, queue: bool = False, unmatched: bool = False):
    """Inbound messages waiting for someone (``handled_at`` None), oldest first: routed to
    ``collector``, or the team ``queue``, or ``unmatched`` ones; by default routed and queued."""
    query = Message.select().where(Message.direction == "in", Message.handled_at.is_null())
    if unmatched:
        query = query.where(Message.status == InboundStatus.UNMATCHED.value)
    elif queue:
        query = query.where(Message.status == InboundStatus.QUEUED.value)
    elif collector:
        query = query.where(Message.status == InboundStatus.ROUTED.value,
                            fn.LOWER(Message.routed_to) == collector.strip().lower())
    else:
        query = query.where(Message.status.in_([InboundStatus.ROUTED.value, InboundStatus.QUEUED.value]))
    return query.order_by(Message.at, Message.id)


def paused_customer_ids():
    """Ids of customers whose cadence waits for a collector: they have an inbound message not
    yet handled (routed, queued, or assigned). A subquery, for the dunning planner's filter:
    ``Customer.id.not_in(paused_customer_ids())``."""
    return (Message.select(Message.customer).distinct()
            .where(Message.direction == "in", Message.handled_at.is_null(), Message.customer.is_null(False)))
