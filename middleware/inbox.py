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

import calendar
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from enum import Enum
from html.parser import HTMLParser

from babel.numbers import is_currency
from peewee import IntegrityError, fn

from .db import database
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

_MAX_ID = 255  # Message.message_id / in_reply_to are varchar(255)
_MAX_CANDIDATES = 2000  # invoice-number candidates looked up per message


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


# ---------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedEmail:
    message_id: str  # without <>; derived from the bytes when the header is missing
    subject: str
    from_address: str | None  # local part as sent, domain lower-cased
    to_addresses: list[str]
    cc_addresses: list[str]
    delivered_to: list[str]  # Delivered-To, X-Original-To, Envelope-To
    in_reply_to: str | None
    references: list[str]
    body_text: str
    attachments: list[dict]  # [{"filename", "content_type", "size"}]
    auto_reply: str | None  # why it is automatic mail (e.g. "Auto-Submitted: auto-replied"), or None

    @property
    def from_domain(self) -> str | None:
        return self.from_address.rpartition("@")[2] if self.from_address else None


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL."""
    return text.replace("\x00", "")


def _raw_values(msg: EmailMessage, name: str) -> list[str]:
    """Every value of header ``name``, RFC 2047 decoded, without the policy's structured parsing
    (which can raise on a malformed header)."""
    values = []
    for key, value in msg.raw_items():
        if key.lower() != name.lower():
            continue
        value = str(value)
        try:
            value = str(make_header(decode_header(value)))
        except (LookupError, UnicodeError, ValueError):
            pass  # undecodable encoded-word: keep the raw text
        values.append(" ".join(value.split()))
    return values


def _first(msg: EmailMessage, name: str) -> str | None:
    values = _raw_values(msg, name)
    return values[0] if values else None


def _addresses(msg: EmailMessage, *names: str) -> list[str]:
    found: list[str] = []
    for name in names:
        for _display, addr in getaddresses(_raw_values(msg, name)):
            addr = addr.strip().strip("<>")
            local, at, domain = addr.rpartition("@")
            if at and local and domain:
                addr = f"{local}@{domain.lower()}"
                if addr not in found:
                    found.append(addr)
    return found


def _message_ids(value: str | None) -> list[str]:
    if not value:
        return []
    ids = re.findall(r"<([^<>\s]+)>", value)
    if not ids and value.strip() and " " not in value.strip():
        ids = [value.strip()]
    return [_fit_id(i) for i in ids]


def _fit_id(message_id: str) -> str:
    """A Message-ID that fits the column: over 255 characters, a stable hash of it."""
    if len(message_id) <= _MAX_ID:
        return message_id
    return hashlib.sha256(message_id.encode()).hexdigest() + "@hashed.arhub.invalid"


class _TextFromHtml(HTMLParser):
    _SKIP = {"script", "style", "head", "title"}
    _PARAGRAPH = {"p", "table", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "pre", "blockquote",
                  "section", "article", "header", "footer"}
    _LINE = {"div", "br", "li", "tr", "dt", "dd"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.skip = 0
        self.quote = 0

    def _flush(self, *, blank: bool = False):
        text = " ".join("".join(self.line).split())
        if text:
            self.lines.append("> " * self.quote + text)
        elif blank and self.lines and self.lines[-1] != "":
            self.lines.append("")
        self.line = []

    def _tag(self, tag, opening):
        if tag in self._SKIP:
            self.skip = self.skip + 1 if opening else max(0, self.skip - 1)
        elif tag in self._PARAGRAPH:
            self._flush()
            self._flush(blank=True)
            if tag == "blockquote":
                self.quote = self.quote + 1 if opening else max(0, self.quote - 1)
        elif tag in self._LINE:
            self._flush(blank=tag == "br")
            if tag == "li" and opening:
                self.line.append("- ")

    def handle_starttag(self, tag, attrs):
        self._tag(tag, True)

    def handle_endtag(self, tag):
        self._tag(tag, False)

    def handle_startendtag(self, tag, attrs):
        self._tag(tag, True)
        if tag not in ("br", "hr"):
            self._tag(tag, False)

    def handle_data(self, data):
        if not self.skip:
            self.line.append(data)

    def text(self) -> str:
        self._flush()
        return "\n".join(self.lines).strip()


def html_to_text(markup: str) -> str:
    """Readable text of an HTML body: blocks and ``<br>`` become line breaks, ``<li>`` a "- "
    item, ``<blockquote>`` lines are prefixed with "> ", scripts and styles are dropped."""
    parser = _TextFromHtml()
    parser.feed(markup)
    parser.close()
    return parser.text()


def _part_text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, KeyError):
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", "replace")
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return content if isinstance(content, str) else ""


def _body(msg: EmailMessage) -> tuple[str, EmailMessage | None]:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return "", None
    text = _part_text(part)
    if part.get_content_subtype() == "html":
        text = html_to_text(text)
    return text.replace("\r\n", "\n").strip(), part


def _attachments(msg: EmailMessage, body_part: EmailMessage | None) -> list[dict]:
    found: list[dict] = []

    def visit(part: EmailMessage) -> None:
        if part is body_part:
            return
        ctype = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            for sub in part.iter_parts():
                visit(sub)
            return
        if ctype == "message/rfc822":  # a forwarded email: one attachment, not its parts
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            size = len(inner.as_bytes()) if hasattr(inner, "as_bytes") else 0
            found.append({"filename": part.get_filename() or "message.eml", "content_type": ctype, "size": size})
            return
        filename = part.get_filename()
        if filename or part.get_content_disposition() == "attachment":
            payload = part.get_payload(decode=True) or b""
            found.append({"filename": _clean(filename or ""), "content_type": ctype, "size": len(payload)})

    if msg.get_content_maintype() == "multipart":
        visit(msg)
    return found


_AUTO_SUBJECT = re.compile(
    r"^\s*(?:(?:re|aw|wg|fwd?)\s*:\s*)*"
    r"(?:out\s+of\s+(?:the\s+)?office|automatic\s+reply|auto(?:matic)?[-\s]?(?:reply|response)|autoreply|"
    r"abwesenheitsnotiz|abwesenheit|automatische\s+antwort|r[ée]ponse\s+automatique|absence\s+du\s+bureau)\b",
    re.IGNORECASE,
)


def _auto_reply_reason(msg: EmailMessage, subject: str) -> str | None:
    auto = _first(msg, "Auto-Submitted")
    if auto and auto.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autorespond-Type"):
        value = _first(msg, name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return f"{name}: {value}"
    precedence = (_first(msg, "Precedence") or "").strip().lower()
    if precedence in ("auto_reply", "bulk", "junk"):
        return f"Precedence: {precedence}"
    if _AUTO_SUBJECT.search(subject):
        return f"Subject: {subject}"
    return None


def parse(raw: bytes) -> ParsedEmail:
    """Parse an RFC 5322 message (stdlib ``email``, ``policy.default``): addresses, thread
    headers, the text body (plain preferred, HTML converted to text), attachments listed by
    filename, type and decoded size, and whether it is automatic mail."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    subject = _clean(_first(msg, "Subject") or "")
    ids = _message_ids(_first(msg, "Message-ID"))
    message_id = ids[0] if ids else hashlib.sha256(raw).hexdigest()[:40] + "@no-message-id.arhub.invalid"
    in_reply_to = _message_ids(_first(msg, "In-Reply-To"))
    references = _message_ids(" ".join(_raw_values(msg, "References")))
    from_addresses = _addresses(msg, "From") or _addresses(msg, "Sender")
    body, body_part = _body(msg)
    return ParsedEmail(
        message_id=message_id,
        subject=subject,
        from_address=from_addresses[0][:_MAX_ID] if from_addresses else None,
        to_addresses=_addresses(msg, "To"),
        cc_addresses=_addresses(msg, "Cc"),
        delivered_to=_addresses(msg, "Delivered-To", "X-Original-To", "Envelope-To"),
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=references,
        body_text=_clean(body),
        attachments=_attachments(msg, body_part),
        auto_reply=_auto_reply_reason(msg, subject),
    )


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
_WORDISH = re.compile(r"[\w\-/.#]+")


def is_free_mail(domain: str) -> bool:
    domain = domain.lower().strip(".")
    return domain in FREE_MAIL_DOMAINS or domain.split(".", 1)[0] in _FREE_MAIL_FAMILIES


def invoice_number_candidates(text: str) -> list[str]:
    """Tokens of ``text`` that could be invoice numbers, as they stand (in order, unique).

    A token is a run of letters, digits, ``-``, ``_``, ``/``, ``.`` and ``#``; it counts whole
    and split at ``/``, ``.`` and ``#`` ("Nr.10042" gives "10042", "10041/10042" both), with
    punctuation trimmed from its ends. Kept when at least 4 characters long with a digit. So
    "PO-10042" is never read as invoice "10042", but "#10042" and "10042." are."""
    seen: dict[str, None] = {}
    for token in _WORDISH.findall(text):
        for piece in (token, *re.split(r"[/.#]", token)):
            piece = piece.strip("-_/.#")
            if len(piece) >= 4 and any(ch.isdigit() for ch in piece):
                seen.setdefault(piece, None)
                if len(seen) >= _MAX_CANDIDATES:
                    return list(seen)
    return list(seen)


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


@dataclass(frozen=True)
class Suggestion:
    """Something the reply seems to say; a collector confirms it with :func:`handle`."""

    kind: str  # "promise" | "dispute"
    phrase: str  # the sentence it was read from
    until: date | None = None  # promise: the date found (None: no unambiguous date)
    amount: Decimal | None = None  # promise: an amount found in the sentence
    currency: str | None = None
    invoice: str | None = None  # dispute: the invoice number it names

    def describe(self) -> str:
        if self.kind == "promise":
            text = f"promise until {self.until.isoformat()}" if self.until else "promise (no date found)"
            if self.amount is not None:
                text += f" amount {self.amount}" + (f" {self.currency}" if self.currency else "")
            return text
        return f"dispute on {self.invoice}" if self.invoice else "dispute"


_MONTHS = {
    "january": 1, "jan": 1, "januar": 1, "jänner": 1, "jän": 1, "february": 2, "feb": 2, "februar": 2,
    "march": 3, "mar": 3, "märz": 3, "maerz": 3, "mrz": 3, "april": 4, "apr": 4, "may": 5, "mai": 5,
    "june": 6, "jun": 6, "juni": 6, "july": 7, "jul": 7, "juli": 7, "august": 8, "aug": 8,
    "september": 9, "sep": 9, "sept": 9, "october": 10, "oct": 10, "oktober": 10, "okt": 10,
    "november": 11, "nov": 11, "december": 12, "dec": 12, "dezember": 12, "dez": 12,
}
_WEEKDAYS = {
    "monday": 0, "tuesday": 1, "wednesday": 2, "thursday": 3, "friday": 4, "saturday": 5, "sunday": 6,
    "montag": 0, "dienstag": 1, "mittwoch": 2, "donnerstag": 3, "freitag": 4, "samstag": 5, "sonntag": 6,
}
_MONTH_RE = "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True))
_DATE_RE = re.compile(
    r"(?P<iso>\b(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2})\b)"
    r"|(?P<dot>\b(?P<dd>\d{1,2})\.(?P<dm>\d{1,2})\.(?P<dy>\d{4}|\d{2}(?!\d))?)"
    r"|(?P<slash>\b(?P<s1>\d{1,2})/(?P<s2>\d{1,2})(?:/(?P<sy>\d{4}|\d{2}))?\b)"
    rf"|(?P<dmy>\b(?P<nd>\d{{1,2}})(?:st|nd|rd|th|\.)?\s+(?:of\s+)?(?P<nm>{_MONTH_RE})\b\.?(?:,?\s+(?P<ny>\d{{4}}))?)"
    rf"|(?P<mdy>\b(?P<mm>{_MONTH_RE})\b\.?\s+(?P<md>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<my>\d{{4}}))?)"
    r"|(?P<eom>\bend\s+of\s+(?:the\s+|this\s+)?month\b|\bende\s+(?:des|dieses)\s+monats\b|\bmonatsende\b)"
    r"|(?P<rel>\b(?:today|tomorrow|heute|morgen)\b)"
    r"|(?P<wd>\b(?:" + "|".join(_WEEKDAYS) + r")\b)",
    re.IGNORECASE,
)
_PROMISE_RE = re.compile(
    r"\b(?:we|i)(?:'ll|\s+will|\s+shall|\s+are\s+going\s+to|\s+plan\s+to|\s+intend\s+to|\s+expect\s+to|\s+can)"
    r"\s+(?:be\s+able\s+to\s+)?(?:pay|settle|transfer|remit|wire"
    r"|(?:make|send|process|release|initiate|schedule)\s+(?:the\s+|a\s+|our\s+)?(?:payment|transfer|wire))\b"
    r"|\bpayment\s+(?:will|shall|should|is\s+going\s+to)\s+be\s+(?:made|sent|processed|released|executed|"
    r"transferred|issued|initiated|done)\b"
    r"|\b(?:will|shall)\s+be\s+(?:paid|settled|transferred|remitted|wired)\b"
    r"|\bpayment\s+(?:is|has\s+been)\s+(?:scheduled|planned)\b|\bscheduled\s+(?:for\s+)?payment\b"
    r"|\b(?:we|i)\s+promise\s+to\s+pay\b"
    r"|\bwir\s+(?:zahlen|überweisen|begleichen|bezahlen)\b"
    r"|\bwir\s+werden\b[^!?\n]{0,80}?\b(?:zahlen|bezahlen|überweisen|begleichen|ausgleichen|anweisen)\b"
    r"|\b(?:zahlung|überweisung)\s+(?:erfolgt|ist\s+für\b|wird\b[^!?\n]{0,60}?\b(?:erfolgen|ausgeführt|"
    r"veranlasst|angewiesen|durchgeführt)\b)"
    r"|\bwird\s+(?:bis|am|zum|spätestens)\b[^!?\n]{0,60}?\b(?:bezahlt|überwiesen|beglichen|gezahlt|ausgeglichen)\b",
    re.IGNORECASE,
)
_NEGATION_RE = re.compile(r"\b(?:not|cannot|can't|won't|unable|never|nicht|kein|keine|keinen)\b", re.IGNORECASE)
_DISPUTE_RE = re.compile(
    r"\bwe\s+(?:hereby\s+|must\s+|have\s+to\s+)?dispute\b|\b(?<!not\s)(?<!n't\s)disputing\b|\bin\s+dispute\b"
    r"|(?<!not\s)(?<!n't\s)\bdispute\s+(?:of\s+|on\s+|regarding\s+|about\s+|for\s+)?(?:the\s+|this\s+|your\s+)?invoice\b"
    r"|\bincorrect\s+invoice\b|\binvoice\s+(?:is|was|seems|appears)\s+(?:to\s+be\s+)?"
    r"(?:incorrect|wrong|erroneous|not\s+correct|inaccurate)\b"
    r"|\bwrong\s+(?:amount|invoice|price|quantity|rate)\b|\bover-?charged\b|\b(?:double|twice)[-\s]?(?:billed|charged)\b"
    r"|\b(?:billed|charged)\s+twice\b|\bwe\s+(?:do\s+not|don't)\s+agree\b|\bnever\s+(?:ordered|received)\b"
    r"|\b(?:did\s+not|didn't)\s+(?:order|receive)\b"
    r"|\bwiderspruch\b|\bwidersprechen\b|\bfehlerhaften?\s+rechnung\b|\brechnung\s+(?:ist|war)\s+"
    r"(?:falsch|fehlerhaft|nicht\s+korrekt|unrichtig)\b|\breklam(?:ieren|ation)\b|\bbeanstand\w*\b"
    r"|\bnicht\s+(?:bestellt|erhalten|geliefert)\b|\bfalsche[nr]?\s+(?:betrag|rechnung|preis|menge)\b",
    re.IGNORECASE,
)
_AMOUNT_RE = re.compile(
    r"(?:(?P<c1>\b[A-Z]{3}\b|[€$£])\s?(?P<n1>\d[\d.,' ]*\d|\d))|(?:(?P<n2>\d[\d.,']*\d|\d)\s?(?P<c2>[A-Z]{3}\b|[€$£]))"
)
_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP"}
_QUOTE_START = re.compile(
    r"^(?:On\b[^\n]{0,250}(?:\n[^\n]{0,250})?\bwrote:\s*$|Am\b[^\n]{0,250}(?:\n[^\n]{0,250})?\bschrieb\b[^\n]{0,120}:\s*$"
    r"|-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Forwarded message|Weitergeleitete Nachricht)\s*-{2,}"
    r"|(?:From|Von):\s[^\n]+\n(?:(?:Sent|Gesendet|Date|Datum|To|An):\s))",
    re.IGNORECASE | re.MULTILINE,
)
_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s+[A-ZÄÖÜ])|\n\s*\n|\n(?=\s*[-*•])")


def new_text(body: str) -> str:
    """The part of a reply its sender wrote: quoted lines ("> ...") and everything from the
    first quote header ("On ... wrote:", "Am ... schrieb ...:", "-----Original Message-----",
    an Outlook "From:/Sent:" block) on are dropped."""
    cut = _QUOTE_START.search(body)
    if cut:
        body = body[:cut.start()]
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith(">"))


def _year_for(month: int, day: int, today: date) -> date | None:
    """The date ``day.month`` in the year that puts it on or after 30 days before ``today``."""
    for year in (today.year, today.year + 1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            return None
        if candidate >= today - timedelta(days=30):
            return candidate
    return None


def _full_year(text: str | None) -> int | None:
    if not text:
        return None
    year = int(text)
    return year + 2000 if year < 100 else year


def _make_date(year: int | None, month: int, day: int, today: date) -> date | None:
    if year is None:
        return _year_for(month, day, today)
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _date_in(m: re.Match, today: date) -> date | None:
    g = m.groupdict()
    if g["iso"]:
        return _make_date(int(g["iy"]), int(g["im"]), int(g["id"]), today)
    if g["dot"]:
        return _make_date(_full_year(g["dy"]), int(g["dm"]), int(g["dd"]), today)
    if g["slash"]:
        first, second = int(g["s1"]), int(g["s2"])
        if first > 12 >= second:
            day, month = first, second
        elif second > 12 >= first:
            month, day = first, second
        else:
            return None  # 04/12: April 12th or 4 December? Not guessed.
        return _make_date(_full_year(g["sy"]), month, day, today)
    if g["dmy"]:
        return _make_date(_full_year(g["ny"]), _MONTHS[g["nm"].lower()], int(g["nd"]), today)
    if g["mdy"]:
        return _make_date(_full_year(g["my"]), _MONTHS[g["mm"].lower()], int(g["md"]), today)
    if g["eom"]:
        return date(today.year, today.month, calendar.monthrange(today.year, today.month)[1])
    if g["rel"]:
        return today + timedelta(days=1 if g["rel"].lower() in ("tomorrow", "morgen") else 0)
    if g["wd"]:
        return today + timedelta(days=(_WEEKDAYS[g["wd"].lower()] - today.weekday()) % 7)
    return None


def _number(text: str) -> Decimal | None:
    s = text.replace("'", "").replace(" ", "")
    if "," in s and "." in s:
        decimal_sep = "," if s.rfind(",") > s.rfind(".") else "."
        s = s.replace("." if decimal_sep == "," else ",", "").replace(decimal_sep, ".")
    elif "," in s:
        s = s.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+", s) else s.replace(",", ".")
    elif re.fullmatch(r"\d{1,3}(?:\.\d{3})+", s):
        s = s.replace(".", "")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def _amount_in(sentence: str) -> tuple[Decimal | None, str | None]:
    for m in _AMOUNT_RE.finditer(sentence):
        code = m.group("c1") or m.group("c2")
        currency = _SYMBOLS.get(code, code)
        if currency not in _SYMBOLS.values() and not is_currency(currency):
            continue
        amount = _number(m.group("n1") or m.group("n2"))
        if amount is not None:
            return amount, currency
    return None, None


def _sentences(text: str) -> list[str]:
    out = []
    for chunk in _SENTENCE_END.split(text):
        sentence = " ".join(chunk.split())
        if sentence:
            out.append(sentence)
    return out


def suggest(text: str, *, today: date, invoice_numbers: list[str] = ()) -> list[Suggestion]:
    """Promise-to-pay and dispute suggestions read from ``text`` (English and German).

    At most one promise (the first sentence with a date, else the first promise sentence);
    one dispute per invoice named in a dispute sentence (only numbers in ``invoice_numbers``,
    the customer's own, count), or one without an invoice. Sentences with a negation ("not",
    "nicht", "kein", ...) never make a promise. Dates: ISO, 04.12.2026, 4.12., 4 December,
    December 4th, 4. Dezember, weekdays, "end of the month", "Monatsende", today/tomorrow;
    slashed dates only when unambiguous (13/12 but not 04/12). ``today`` anchors dates
    without a year and relative ones."""
    known = {n.lower(): n for n in invoice_numbers}
    promises: list[Suggestion] = []
    disputes: dict[str | None, Suggestion] = {}
    for sentence in _sentences(text):
        phrase = sentence[:200]
        m = _PROMISE_RE.search(sentence)
        if m and not _NEGATION_RE.search(sentence):
            dates = [d for dm in _DATE_RE.finditer(sentence[m.end():]) if (d := _date_in(dm, today))] or \
                    [d for dm in _DATE_RE.finditer(sentence) if (d := _date_in(dm, today))]
            amount, currency = _amount_in(sentence)
            promises.append(Suggestion("promise", phrase, until=dates[0] if dates else None,
                                       amount=amount, currency=currency))
        if _DISPUTE_RE.search(sentence):
            named = [known[c.lower()] for c in invoice_number_candidates(sentence) if c.lower() in known]
            for number in (named or [None]):
                disputes.setdefault(number, Suggestion("dispute", phrase, invoice=number))
    if None in disputes and len(known) == 1 and len(disputes) == 1:
        only = next(iter(known.values()))  # "we dispute this invoice" in a reply naming one invoice
        disputes = {only: Suggestion("dispute", disputes[None].phrase, invoice=only)}
    elif None in disputes and len(disputes) > 1:
        del disputes[None]
    promise = next((p for p in promises if p.until), promises[0] if promises else None)
    return ([promise] if promise else []) + list(disputes.values())


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
