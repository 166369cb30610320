"""FX rates: lookup, conversion to the reporting currency, imports from files.

Rates are units of the reporting currency per unit of a billing currency; the rate
for a date X is the one with the latest effective date on or before X. A missing
rate is never guessed and never 1: the document is flagged (``fx_missing``) and
listed until a rate arrives (``reconvert``).
"""
from __future__ import annotations

import bisect
import hashlib
import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Iterable

from lxml import etree

from .bulk import to_decimal, update_many, upsert
from .db import database
from .models import CreditMemo, FxRate, Invoice, Payment, utcnow
from .schemas import iso_currencies, minor_units


class FxImportError(ValueError):
    """A rate file that cannot be read: names the line or element and the field."""


@dataclass(frozen=True)
class Conversion:
    amount: Decimal
    rate: Decimal
    rate_date: date
    source: str


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half up to the currency's ISO 4217 minor unit."""
    return amount.quantize(Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_HALF_UP)


class RateBook:
    """All rates into one reporting currency, in memory, for fast lookups during a sync."""

    def __init__(self, reporting_currency: str, rows: Iterable[tuple[str, date, Decimal, str]] = ()):
        self.reporting = reporting_currency
        self._series: dict[str, tuple[list[date], list[tuple[Decimal, str]]]] = {}
        grouped: dict[str, list] = {}
        for currency, day, rate, source in rows:
            grouped.setdefault(currency, []).append((day, rate, source))
        for currency, items in grouped.items():
            items.sort(key=lambda item: item[0])
            self._series[currency] = ([d for d, _, _ in items], [(r, s) for _, r, s in items])

    @classmethod
    def load(cls, reporting_currency: str) -> "RateBook":
        query = (FxRate.select(FxRate.currency, FxRate.rate_date, FxRate.rate, FxRate.source_name)
                 .where(FxRate.base_currency == reporting_currency).tuples())
        return cls(reporting_currency, ((c, d, to_decimal(r), s) for c, d, r, s in query))

    def rate(self, currency: str, day: date) -> tuple[Decimal, date, str] | None:
        if currency == self.reporting:
            return Decimal(1), day, "identity"
        series = self._series.get(currency)
        if not series:
            return None
        pos = bisect.bisect_right(series[0], day) - 1
        if pos < 0:
            return None
        rate, source = series[1][pos]
        return rate, series[0][pos], source

    def fingerprint(self) -> str:
        """A digest of every rate in the book (currency, date, rate): equal digests, equal conversions."""
        digest = hashlib.md5(self.reporting.encode())
        for currency in sorted(self._series):
            days, values = self._series[currency]
            digest.update(f"|{currency}:".encode())
            digest.update(";".join(f"{day}={rate}" for day, (rate, _) in zip(days, values)).encode())
        return digest.hexdigest()

    def latest_date(self, currency: str) -> date | None:
        series = self._series.get(currency)
        return series[0][-1] if series else None

    def convert(self, amount: Decimal, currency: str, day: date) -> Conversion | None:
        found = self.rate(currency, day)
        if found is None:
            return None
        rate, rate_day, source = found
        return Conversion(round_money(amount * rate, self.reporting), rate, rate_day, source)


# ------------------------------------------------------------------ imports
def _check_currency(code: str, where: str) -> str:
    code = (code or "").strip().upper()
    if code not in iso_currencies():
        raise FxImportError(f"{where}: currency {code!r} is not an ISO 4217 code")
    return code


def _check_rate(text: str, where: str) -> Decimal:
    try:
        rate = Decimal(str(text).strip())
    except InvalidOperation:
        raise FxImportError(f"{where}: rate {text!r} is not a number") from None
    if not rate.is_finite() or rate <= 0:
        raise FxImportError(f"{where}: rate {text!r} must be a positive number")
    return rate


def parse_csv(text: str, reporting_currency: str) -> list[tuple[str, date, Decimal]]:
    """``date,currency,rate[,base]``: ``rate`` units of ``base`` (default: reporting) per unit of ``currency``."""
    rows = []
    reader = csv.DictReader(io.StringIO(text))
    missing = {"date", "currency", "rate"} - set(reader.fieldnames or [])
    if missing:
        raise FxImportError(f"header: missing column(s) {', '.join(sorted(missing))} (need date,currency,rate[,base])")
    for n, row in enumerate(reader, start=2):
        where = f"line {n}"
        try:
            day = date.fromisoformat((row["date"] or "").strip())
        except ValueError:
            raise FxImportError(f"{where}: date {row['date']!r} is not YYYY-MM-DD") from None
        currency = _check_currency(row["currency"], where)
        rate = _check_rate(row["rate"], where)
        base = _check_currency(row.get("base") or reporting_currency, where)
        if base != reporting_currency:
            raise FxImportError(f"{where}: base {base} differs from the reporting currency {reporting_currency}")
        rows.append((currency, day, rate))
    return rows


def parse_ecb_xml(data: bytes, reporting_currency: str) -> list[tuple[str, date, Decimal]]:
    """The ECB eurofxref XML (daily, 90-day or historical): rates per 1 EUR, crossed into the reporting currency."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise FxImportError(f"not well-formed XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise FxImportError("XML with a DOCTYPE is refused")
    rows = []
    days = [el for el in root.iter() if isinstance(el.tag, str) and el.tag.endswith("Cube") and el.get("time")]
    if not days:
        raise FxImportError("no <Cube time=...> elements: not an ECB eurofxref file")
    for day_el in days:
        try:
            day = date.fromisoformat(day_el.get("time"))
        except ValueError:
            raise FxImportError(f"Cube time={day_el.get('time')!r} is not YYYY-MM-DD") from None
        per_eur = {"EUR": Decimal(1)}
        for cube in day_el:
            if isinstance(cube.tag, str) and cube.get("currency"):
                where = f"Cube time={day} currency={cube.get('currency')}"
                per_eur[_check_currency(cube.get("currency"), where)] = _check_rate(cube.get("rate"), where)
        if reporting_currency not in per_eur:
            raise FxImportError(f"Cube time={day}: no {reporting_currency} rate to cross through")
        base_per_eur = per_eur[reporting_currency]
        for currency, rate in per_eur.items():
            if currency != reporting_currency:
                rows.append((currency, day, base_per_eur / rate))
    return rows


def store_rates(rows: Iterable[tuple[str, date, Decimal]], reporting_currency: str, source_name: str) -> int:
    now = utcnow()
    data = [(reporting_currency, c, d, r.quantize(Decimal("1e-12")), source_name, now) for c, d, r in rows]
    with database.atomic():
        count = upsert(FxRate, ("base_currency", "currency", "rate_date", "rate", "source_name", "created_at"), data,
                       ("base_currency", "currency", "rate_date"), ("rate", "source_name"))
    return count


def import_file(path: str, reporting_currency: str) -> tuple[int, set[str]]:
    """Import a CSV or ECB XML rate file; then reconvert what those currencies touch. Returns (rates, currencies)."""
    with open(path, "rb") as fh:
        data = fh.read()
    name = path.rsplit("/", 1)[-1]
    if data.lstrip()[:1] == b"<":
        rows = parse_ecb_xml(data, reporting_currency)
    else:
        rows = parse_csv(data.decode("utf-8-sig"), reporting_currency)
    count = store_rates(rows, reporting_currency, f"file:{name}")
    currencies = {c for c, _, _ in rows}
    reconvert(reporting_currency, currencies)
    return count, currencies


# ----------------------------------------------------------------- reconvert
_DOCS = ((Invoice, Invoice.issue_date), (CreditMemo, CreditMemo.date), (Payment, Payment.date))


def reconvert(reporting_currency: str, currencies: Iterable[str] | None = None, chunk: int = 5000) -> int:
    """Recompute stored reporting amounts (flows at their own date's rate) for ``currencies``."""
    book = RateBook.load(reporting_currency)
    changed = 0
    for model, date_field in _DOCS:
        query = model.select(model.id, model.amount, model.currency, date_field).where(model.deleted_at.is_null())
        if currencies is not None:
            query = query.where(model.currency.in_(list(currencies)))
        rows = []
        for doc_id, amount, currency, day in query.tuples().iterator():
            conv = book.convert(to_decimal(amount), currency, day)
            if conv is None:
                rows.append((None, None, None, None, True, doc_id))
            else:
                rows.append((conv.amount, conv.rate, conv.rate_date, conv.source, False, doc_id))
        with database.atomic():
            for start in range(0, len(rows), chunk):
                changed += update_many(model, ("id",), ("amount_reporting", "fx_rate", "fx_rate_date",
                                                        "fx_rate_source", "fx_missing"), rows[start:start + chunk])
    revalue_open_amounts(reporting_currency, currencies, book=book)
    return changed


def revalue_open_amounts(reporting_currency: str, currencies: Iterable[str] | None = None, as_of: date | None = None,
                         book: RateBook | None = None, invoice_ids: Iterable[int] | None = None) -> int:
    """Balances use the closing rate: open amount × the rate for ``as_of`` (default: today)."""
    book = book or RateBook.load(reporting_currency)
    as_of = as_of or utcnow().date()
    query = Invoice.select(Invoice.id, Invoice.open_amount, Invoice.currency)
    if currencies is not None:
        query = query.where(Invoice.currency.in_(list(currencies)))
    if invoice_ids is not None:
        query = query.where(Invoice.id.in_(list(invoice_ids)))
    rows = []
    for inv_id, open_amount, currency in query.tuples().iterator():
        conv = book.convert(to_decimal(open_amount), currency, as_of)
        rows.append((conv.amount if conv else None, as_of, inv_id))
    with database.atomic():
        changed = update_many(Invoice, ("id",), ("open_amount_reporting", "revalued_at"), rows)
    from . import balances  # the console's per-customer balances follow the new amounts

    balances.refresh()
    return changed
