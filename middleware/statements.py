"""Customer statements: what a customer owes on a date, as HTML and as a PDF (WeasyPrint).

:func:`render_statement_pdf` is what the email sender attaches and what the
``render_statement`` job stores; :func:`render_statement_html` is the same document as HTML
(it renders on its own with a bare ``weasyprint.HTML(string=...)``, which is how the bench
measures the floor). :func:`statement_context` is the data both render.

Content (see docs/statements.md): company name and remittance instructions, the customer
(name, number, country, billing contact), the statement date, open invoices in their own
billing currency sorted by due date, an aging summary (current, 1–30, 31–60, 61–90, 91+ days
past due), unapplied credits, totals per currency, their reporting-currency equivalent at the
closing rate (with the rate and its date; a missing rate is shown as missing, never guessed),
and a "pay now" link ``{public_url}/pay/{token}``.

Rules (the glossary's): a statement as of D lists the invoices issued on or before D that are
open in the store (status ``open``, open amount > 0), aged by due date as of D; unapplied
credit memos and payments dated on or before D reduce the balance, not a bucket; balances use
the closing rate (the latest rate dated on or before D), each document converted and rounded
half up on its own, totals are sums of the rounded figures.

Speed: the stylesheet is parsed into one ``weasyprint.CSS`` per process, the template is
compiled once for every locale (its filters read the render's locale), the logo is decoded once
(WeasyPrint's image cache), the font configuration is made once per thread, and the store is
read with four small indexed queries (customer with its billing contact and the company, open invoices,
unapplied credits, closing rates), and the cyclic garbage collector is paused while WeasyPrint
renders (:func:`gc_paused`).

Assets: WeasyPrint fetches through :class:`AssetFetcher`, which serves only the files under
``templates/statements/`` (and small ``data:`` URLs); every other URL stops the render with
:class:`AssetRefused` as the cause of :class:`StatementRenderError`.
"""
from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import mimetypes
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit
from urllib.request import url2pathname

from babel.core import Locale, UnknownLocaleError
from babel.numbers import format_decimal
from jinja2 import pass_context
from weasyprint import CSS, HTML
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from .ar import DEFAULT_EDGES, OPEN_STATUSES, bucket_labels
from .bulk import placeholders, to_decimal
from .db import database
from .fx import RateBook, round_money
from .settings import Settings, get_settings, templates_dir
from .templating import file_environment, format_day, format_money, parse_locale

__all__ = [
    "AssetFetcher",
    "AssetRefused",
    "DATA_URL_LIMIT",
    "StatementNotFound",
    "StatementRenderError",
    "assets_dir",
    "customer_token",
    "remittance_text",
    "render_statement_html",
    "render_statement_pdf",
    "statement_context",
    "verify_customer_token",
]

ZERO = Decimal(0)
TEMPLATE = "statement.html"
STYLESHEET = "statement.css"
LOGO = "logo.svg"
REMITTANCE = "remittance.txt"
#: Largest ``data:`` URL payload (decoded bytes) the fetcher serves.
DATA_URL_LIMIT = 64 * 1024
#: Images kept decoded between renders (the logo; a bound for HTML that brings its own images).
IMAGE_CACHE_LIMIT = 16


class StatementNotFound(LookupError):
    """No customer with that id."""


class StatementRenderError(RuntimeError):
    """WeasyPrint could not produce the PDF; the cause (e.g. :class:`AssetRefused`) is chained."""


class AssetRefused(ValueError):
    """A statement asked for a URL outside ``templates/statements/`` (or too big a ``data:`` URL)."""


def assets_dir() -> Path:
    """``templates/statements/``, resolved: the only directory statements may load files from."""
    return (templates_dir() / "statements").resolve()


# -- the URL fetcher ----------------------------------------------------------------------


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[:limit] + "..."


class AssetFetcher(URLFetcher):
    """WeasyPrint URL fetcher that serves only ``root``'s files and small ``data:`` URLs.

    ``file://`` URLs must name a regular file inside ``root`` (default :func:`assets_dir`)
    once ``..`` and symlinks are resolved; ``data:`` URLs may carry at most ``data_limit``
    bytes; everything else (``http(s)``, ``ftp``, any other file) raises
    :class:`AssetRefused` naming the URL. It is built with ``fail_on_errors=True``, so a
    refusal stops the render instead of leaving a hole in the document.
    """

    def __init__(self, root: str | Path | None = None, data_limit: int = DATA_URL_LIMIT):
        super().__init__(fail_on_errors=True, allow_redirects=False, allowed_protocols=("file", "data"))
        self.root = Path(root).resolve() if root is not None else assets_dir()
        self.data_limit = data_limit

    def fetch(self, url: str, headers=None) -> URLFetcherResponse:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "file":
            return self._file(url)
        if scheme == "data":
            return self._data(url)
        raise AssetRefused(f"statement asset refused: {_short(url)} (only files under {self.root} "
                           f"and data: URLs up to {self.data_limit} bytes are served)")

    def _file(self, url: str) -> URLFetcherResponse:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise AssetRefused(f"statement asset refused: {_short(url)} (a file on another host)")
        try:
            resolved = Path(url2pathname(unquote(parts.path))).resolve(strict=True)
        except (OSError, RuntimeError):
            resolved = None
        if resolved is None or not resolved.is_relative_to(self.root) or not resolved.is_file():
            raise AssetRefused(f"statement asset refused: {_short(url)} (not a file under {self.root})")
        content_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        return URLFetcherResponse(resolved.as_uri(), resolved.read_bytes(), {"Content-Type": content_type})

    def _data(self, url: str) -> URLFetcherResponse:
        header, sep, payload = url[len("data:"):].partition(",")
        if not sep:
            raise AssetRefused(f"statement asset refused: {_short(url)} (malformed data: URL)")
        is_base64 = header.lower().endswith(";base64")
        # a bound before decoding anything: base64 is 4/3 of the bytes, %XX escapes at most 3x
        if len(payload) > (self.data_limit * 4 // 3 + 4 if is_base64 else self.data_limit * 3):
            raise AssetRefused(f"statement asset refused: a data: URL larger than {self.data_limit} bytes")
        try:
            raw = unquote_to_bytes(payload)
            body = base64.b64decode(raw) if is_base64 else raw
        except ValueError as exc:
            raise AssetRefused(f"statement asset refused: an undecodable data: URL ({exc})") from exc
        if len(body) > self.data_limit:
            raise AssetRefused(f"statement asset refused: a data: URL of {len(body)} bytes "
                               f"(limit {self.data_limit})")
        media = header[: -len(";base64")] if is_base64 else header
        return URLFetcherResponse(_short(url, 64), body, {"Content-Type": media or "text/plain;charset=US-ASCII"})


# -- per-process and per-thread rendering state ---------------------------------------------

_lock = threading.Lock()
_css: CSS | None = None
_compiled: Any = None  # the statement template, compiled once for every locale
_image_cache: dict = {}  # WeasyPrint's image cache: the logo is decoded once per process
_remittance: dict[Path, tuple[int, str]] = {}
_local = threading.local()  # FontConfiguration and fetcher: not shared between threads
_gc_lock = threading.Lock()
_gc_pauses = 0  # renders in progress in this process with the cyclic collector paused
_gc_resume = False  # whether the collector was on when the first of them paused it


def _thread_state() -> tuple[FontConfiguration, AssetFetcher]:
    state = getattr(_local, "state", None)
    if state is None:
        state = _local.state = (FontConfiguration(), AssetFetcher())
    return state


def stylesheet() -> CSS:
    """``templates/statements/statement.css`` parsed once per process."""
    global _css
    if _css is None:
        with _lock:
            if _css is None:
                root = assets_dir()
                _css = CSS(filename=str(root / STYLESHEET), base_url=root.as_uri() + "/",
                           url_fetcher=AssetFetcher(root))
    return _css


#: Characters Babel writes that the statement's font (DejaVu Sans) has no glyph for, and the
#: glyph it has for the same thing: CLDR's ja/zh formats put the full-width yen/yuan sign
#: before JPY and CNY amounts, which printed as an empty box.
FONT_SUBSTITUTES = str.maketrans({"\uffe5": "\u00a5", "\uffe6": "\u20a9", "\uffe0": "\u00a2",
                                  "\uffe1": "\u00a3", "\uff04": "$"})


def _statement_money(amount, currency: str, locale: str) -> str:
    return format_money(amount, currency, locale).translate(FONT_SUBSTITUTES)


def _template():
    """The statement template, compiled once per process for every locale: its ``money``,
    ``date`` and ``number`` filters format for the ``locale`` of the render's context (a forked
    work horse inherits the compiled template from a warmed parent, whatever the customer's
    language)."""
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                env = file_environment(assets_dir(), "en")
                env.auto_reload = False  # shipped files: compiled once, never re-read
                env.filters["money"] = pass_context(
                    lambda ctx, amount, currency: _statement_money(amount, currency, ctx["locale"]))
                env.filters["date"] = pass_context(
                    lambda ctx, value, fmt="medium": format_day(value, fmt, ctx["locale"]))
                env.filters["number"] = pass_context(
                    lambda ctx, value, fmt=None: "" if value is None else format_decimal(
                        value if isinstance(value, Decimal) else Decimal(str(value)), format=fmt,
                        locale=ctx["locale"]))
                _compiled = env.get_template(TEMPLATE)
    return _compiled


def remittance_text(settings: Settings | None = None) -> str:
    """The company's remittance instructions: ``<var_dir>/statements/remittance.txt`` when it
    exists, else the shipped ``templates/statements/remittance.txt``. Re-read only when the
    file changes (mtime)."""
    s = settings or get_settings()
    for path in (s.var_dir / "statements" / REMITTANCE, assets_dir() / REMITTANCE):
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        cached = _remittance.get(path)
        if cached is None or cached[0] != mtime:
            cached = _remittance[path] = (mtime, path.read_text(encoding="utf-8").strip())
        return cached[1]
    return ""


# -- the pay link ----------------------------------------------------------------------------


def _mac(customer_id: int, key: str) -> str:
    digest = hmac.new(key.encode(), f"arhub.pay:{customer_id}".encode(), hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def customer_token(customer_id: int, settings: Settings | None = None) -> str:
    """``<customer id>.<HMAC>``: the customer's part of the pay link, signed with the secret key."""
    s = settings or get_settings()
    return f"{customer_id}.{_mac(customer_id, s.secret_key)}"


def verify_customer_token(token: str, settings: Settings | None = None) -> int | None:
    """The customer id in ``token`` when its signature holds (current or previous key), else None."""
    s = settings or get_settings()
    head, sep, mac = (token or "").partition(".")
    if not sep or not head.isdigit():
        return None
    customer_id = int(head)
    for key in (s.secret_key, *s.secret_key_previous):
        if hmac.compare_digest(mac, _mac(customer_id, key)):
            return customer_id
    return None


# -- the data ----------------------------------------------------------------------------------


def _day(value) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _bucket(days_past_due: int, edges) -> int:
    if days_past_due <= 0:
        return 0
    for k, edge in enumerate(edges, start=1):
        if days_past_due <= edge:
            return k
    return len(edges) + 1


#: countries whose addresses put the postal code before the city ("80331 München"), the region
#: left out; elsewhere "City, Region Postal" (US, CA, AU, ...), and in GB and IE the postcode on
#: its own line after the town
POSTAL_CODE_FIRST = frozenset({"AT", "BE", "CH", "CZ", "DE", "DK", "ES", "FI", "FR", "IT", "LU", "MX", "NL", "NO",
                               "PL", "PT", "SE"})
POSTCODE_LAST_LINE = frozenset({"GB", "IE"})


def address_lines(address: dict | str | None, country: str | None, locale: str) -> list[str]:
    """The lines to print under the customer's name: the street lines, the locality in the
    country's usual order, and the country's name in ``locale`` (the address's country, else the
    customer's). Without an address: the country alone."""
    if isinstance(address, str):
        address = json.loads(address)
    address = address or {}
    code = (address.get("country") or country or "").upper() or None
    out = [line.strip() for line in address.get("lines") or [] if line and line.strip()]
    city, region, postal = (str(address.get(k) or "").strip() for k in ("city", "region", "postal_code"))
    if region == city:
        region = ""
    if code in POSTAL_CODE_FIRST:
        out.append(" ".join(p for p in (postal, city) if p))
    elif code in POSTCODE_LAST_LINE:
        out += [city, region, postal]
    else:
        out.append(", ".join(p for p in (city, " ".join(p for p in (region, postal) if p)) if p))
    name = _country_name(code, locale)
    return [line for line in out if line] + ([name] if name else [])


def _country_name(country: str | None, locale: str) -> str | None:
    if not country:
        return None
    try:
        return Locale.parse(locale).territories.get(country.upper(), country)
    except (ValueError, UnknownLocaleError):
        return country


@dataclass
class _Total:
    currency: str
    open: Decimal = ZERO
    unapplied: Decimal = ZERO
    open_reporting: Decimal = ZERO
    unapplied_reporting: Decimal = ZERO
    rate: Decimal | None = None
    rate_date: date | None = None
    rate_source: str | None = None

    @property
    def balance(self) -> Decimal:
        return self.open - self.unapplied

    @property
    def balance_reporting(self) -> Decimal | None:
        return None if self.rate is None else self.open_reporting - self.unapplied_reporting


def _closing_rates(currencies: set[str], as_of: date, reporting_currency: str) -> RateBook:
    """One query: per currency, the latest rate dated on or before ``as_of``."""
    wanted = sorted(c for c in currencies if c != reporting_currency)
    if not wanted:
        return RateBook(reporting_currency)
    ph = placeholders(1)
    sql = (f'SELECT f."currency", f."rate_date", f."rate", f."source_name" FROM "fx_rate" f JOIN '
           f'(SELECT "currency", MAX("rate_date") AS d FROM "fx_rate" WHERE "base_currency" = {ph} '
           f'AND "rate_date" <= {ph} AND "currency" IN ({placeholders(len(wanted))}) GROUP BY "currency") m '
           f'ON f."currency" = m."currency" AND f."rate_date" = m.d WHERE f."base_currency" = {ph}')
    rows = database.execute_sql(sql, (reporting_currency, as_of, *wanted, reporting_currency)).fetchall()
    return RateBook(reporting_currency, ((c, _day(d), to_decimal(r), s) for c, d, r, s in rows))


def statement_context(customer_id: int, *, as_of: date, reporting_currency: str, locale: str | None = None,
                      settings: Settings | None = None, edges=DEFAULT_EDGES) -> dict:
    """Everything the statement template shows, read in four queries (see docs/statements.md)."""
    s = settings or get_settings()
    ph = placeholders(1)
    row = database.execute_sql(
        f'SELECT c."name", c."number", c."email", c."country", c."locale", c."billing_currency", '
        f'b."name", b."email", b."phone", (SELECT "name" FROM "company" ORDER BY "id" LIMIT 1), '
        f'c."billing_address" '
        f'FROM "customer" c LEFT JOIN "contact" b ON b."id" = (SELECT MIN(x."id") FROM "contact" x '
        f'WHERE x."customer_id" = c."id" AND x."role" = \'billing\' AND x."deleted_at" IS NULL) '
        f'WHERE c."id" = {ph}', (customer_id,)).fetchone()
    if row is None:
        raise StatementNotFound(f"no customer with id {customer_id}")
    (name, number, email, country, customer_locale, billing_currency, c_name, c_email, c_phone, company,
     billing_address) = row
    loc = parse_locale(locale or customer_locale, "en")

    invoices = database.execute_sql(
        f'SELECT "number", "external_id", "issue_date", "due_date", "currency", "amount", "open_amount", '
        f'"po_number" FROM "invoice" WHERE "customer_id" = {ph} AND "status" IN ({placeholders(len(OPEN_STATUSES))}) '
        f'AND "open_amount" > 0 AND "deleted_at" IS NULL AND "issue_date" <= {ph} '
        f'ORDER BY "due_date", "number", "id"', (customer_id, *OPEN_STATUSES, as_of)).fetchall()
    credits_rows = database.execute_sql(
        f'SELECT \'credit_memo\', COALESCE("number", "external_id"), "date", "currency", "unapplied_amount" '
        f'FROM "credit_memo" WHERE "customer_id" = {ph} AND "unapplied_amount" > 0 AND "deleted_at" IS NULL '
        f"AND \"status\" NOT IN ('voided', 'deleted') AND \"date\" <= {ph} "
        f'UNION ALL SELECT \'payment\', COALESCE("reference", "number", "external_id"), "date", "currency", '
        f'"unapplied_amount" FROM "payment" WHERE "customer_id" = {ph} AND "unapplied_amount" > 0 '
        f'AND "deleted_at" IS NULL AND "date" <= {ph} ORDER BY 3, 2',
        (customer_id, as_of, customer_id, as_of)).fetchall()

    currencies = {r[4] for r in invoices} | {r[3] for r in credits_rows}
    book = _closing_rates(currencies, as_of, reporting_currency)
    totals: dict[str, _Total] = {}
    aging: dict[str, list[Decimal]] = {}
    n_buckets = len(edges) + 2

    def total_for(currency: str) -> _Total:
        total = totals.get(currency)
        if total is None:
            total = totals[currency] = _Total(currency)
            found = book.rate(currency, as_of)
            if found is not None:
                total.rate, total.rate_date, total.rate_source = found
        return total

    lines = []
    for inv_number, external_id, issue_date, due_date, currency, amount, open_amount, po_number in invoices:
        due_date = _day(due_date)
        open_amount = to_decimal(open_amount)
        days = (as_of - due_date).days
        lines.append({"number": inv_number or external_id, "issue_date": _day(issue_date), "due_date": due_date,
                      "days_past_due": days, "currency": currency, "amount": to_decimal(amount),
                      "open_amount": open_amount, "po_number": po_number})
        buckets = aging.get(currency)
        if buckets is None:
            buckets = aging[currency] = [ZERO] * n_buckets
        buckets[_bucket(days, edges)] += open_amount
        total = total_for(currency)
        total.open += open_amount
        if total.rate is not None:
            total.open_reporting += round_money(open_amount * total.rate, reporting_currency)

    labels = {"credit_memo": "Credit memo", "payment": "Payment"}
    credits = []
    for kind, doc_number, day, currency, amount in credits_rows:
        amount = to_decimal(amount)
        credits.append({"label": labels[kind], "number": doc_number, "date": _day(day), "currency": currency,
                        "amount": amount})
        total = total_for(currency)
        total.unapplied += amount
        if total.rate is not None:
            total.unapplied_reporting += round_money(amount * total.rate, reporting_currency)

    order = sorted(totals, key=lambda c: (c != billing_currency, c))
    total_rows = []
    for currency in order:
        t = totals[currency]
        total_rows.append({"currency": currency, "open": t.open, "unapplied": t.unapplied, "balance": t.balance,
                           "rate": t.rate, "rate_date": t.rate_date, "rate_source": t.rate_source,
                           "open_reporting": t.open_reporting if t.rate is not None else None,
                           "balance_reporting": t.balance_reporting})
    converted = [t for t in totals.values() if t.rate is not None]
    return {
        "locale": loc,
        "as_of": as_of,
        "company": {"name": company or "", "remittance": remittance_text(s)},
        "customer": {"id": customer_id, "name": name, "number": number, "email": email,
                     "billing_currency": billing_currency,
                     "address_lines": address_lines(billing_address, country, loc),
                     "contact": {"name": c_name, "email": c_email, "phone": c_phone} if (c_name or c_email) else None},
        "lines": lines,
        "credits": credits,
        "bucket_labels": bucket_labels(edges),
        "aging": [{"currency": c, "buckets": aging[c], "total": sum(aging[c], ZERO)} for c in order if c in aging],
        "totals": total_rows,
        "reporting": {"currency": reporting_currency,
                      "open": sum((t.open_reporting for t in converted), ZERO),
                      "balance": sum((t.balance_reporting for t in converted), ZERO),
                      "complete": len(converted) == len(totals)},
        "pay_url": f"{s.public_url}/pay/{customer_token(customer_id, s)}",
    }


# -- rendering ---------------------------------------------------------------------------------


def _html(context: dict, *, standalone: bool) -> str:
    root = assets_dir()
    if standalone:  # the CSS inline and the logo as a data: URL: renders anywhere, fetches nothing
        extra = {"stylesheet": (root / STYLESHEET).read_text(encoding="utf-8"),
                 "logo_src": "data:image/svg+xml;base64," + base64.b64encode((root / LOGO).read_bytes()).decode()}
    else:  # the parsed stylesheet is passed to WeasyPrint; the logo resolves against base_url
        extra = {"stylesheet": None, "logo_src": LOGO}
    return _template().render(**context, **extra)


def render_statement_html(customer_id: int, *, as_of: date, reporting_currency: str,
                          locale: str | None = None) -> str:
    """The statement as a standalone HTML document (stylesheet inline, logo as a data: URL)."""
    context = statement_context(customer_id, as_of=as_of, reporting_currency=reporting_currency, locale=locale)
    return _html(context, standalone=True)


@contextmanager
def gc_paused():
    """Python's cyclic garbage collector off for the block (and back on after the last of
    several overlapping blocks, if it was on before the first).

    A render builds tens of thousands of objects (boxes, styles, copies of boxes per page) that
    stay alive until it ends, so the collector's full passes, triggered by those allocations,
    walk them, and the whole process's heap, again and again without freeing anything: a fifth
    of a two-page statement's CPU time on this machine, more for longer ones (docs/benchmarks.md,
    "Statements"). Paused, the render's cyclic garbage waits for the next collection after it;
    the price is memory while the render runs (about +10 MiB for two pages, +180 MiB for a
    40-page statement of 1,500 lines). In a forked work horse it also spares the copy-on-write
    of every page of the parent's heap that a full pass would touch."""
    global _gc_pauses, _gc_resume
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()


def html_to_pdf(html: str) -> bytes:
    """PDF bytes of a statement ``html`` (as :func:`statement_context` + the template make it),
    with the per-process stylesheet, the restricted fetcher and the shared caches, and the
    cyclic garbage collector paused (:func:`gc_paused`)."""
    font_config, fetcher = _thread_state()
    css = stylesheet()
    if len(_image_cache) > IMAGE_CACHE_LIMIT:  # only the logo belongs here; other HTML may bring more
        _image_cache.clear()
    try:
        with gc_paused():
            document = HTML(string=html, base_url=assets_dir().as_uri() + "/", url_fetcher=fetcher)
            return document.write_pdf(stylesheets=[css], font_config=font_config, cache=_image_cache)
    except FatalURLFetchingError as exc:
        cause = exc.__cause__ or exc
        raise StatementRenderError(f"{exc}: {cause}") from cause


def warm_up(locales: tuple[str, ...] = ("en",)) -> None:
    """Do once what every first render pays: parse the stylesheet, compile the template, load
    Babel's data for ``locales`` (any other loads on first use, a few ms), make this thread's
    font configuration, decode the logo and load the fonts (a one-line document through
    WeasyPrint). Needs no database.

    Call it in a forking worker's parent process (rq forks a work horse per job, and a horse
    starts with the parent's memory): every statement job then starts warm instead of paying
    the first render's extra second or so again."""
    stylesheet()
    _template()
    for locale in locales:
        loc = parse_locale(locale)
        format_money(Decimal("1234.5"), "EUR", loc)
        format_day(date(2026, 1, 31), "medium", loc)
    html_to_pdf(f'<html><body><img src="{LOGO}" alt=""><p>Statement 0123456789 €$¥£</p>'
                f'<p><b>Statement</b></p></body></html>')


def render_statement_pdf(customer_id: int, *, as_of: date, reporting_currency: str,
                         locale: str | None = None) -> bytes:
    """The statement of ``customer_id`` on ``as_of`` as PDF bytes (``locale``: the customer's when None)."""
    context = statement_context(customer_id, as_of=as_of, reporting_currency=reporting_currency, locale=locale)
    return html_to_pdf(_html(context, standalone=False))
