"""Reading an inbound reply without the database (used by :mod:`middleware.inbox`): an RFC 5322
message parsed into a :class:`ParsedEmail` (addresses, thread headers, text body, attachments,
whether it is automatic mail), HTML to text, the tokens of a text that could be invoice numbers,
and the promise-to-pay and dispute suggestions read from a reply's text (:func:`suggest`)."""
from __future__ import annotations

import calendar
import hashlib
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser

from babel.numbers import is_currency

_MAX_ID = 255  # Message.message_id / in_reply_to are varchar(255)
_MAX_CANDIDATES = 2000  # invoice-number candidates looked up per message


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


_WORDISH = re.compile(r"[\w\-/.#]+")


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
