"""middleware.fx: RateBook lookups and rounding, CSV and ECB XML rate files."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from middleware.fx import FxImportError, RateBook, parse_csv, parse_ecb_xml, round_money

D = Decimal


def book() -> RateBook:
    return RateBook("USD", [
        ("EUR", date(2026, 11, 2), D("1.10"), "ecb"),
        ("EUR", date(2026, 11, 20), D("1.05"), "ecb"),
        ("EUR", date(2026, 11, 10), D("1.08"), "csv"),  # out of order on purpose
        ("JPY", date(2026, 11, 2), D("0.0067"), "ecb"),
    ])


def test_the_rate_for_a_date_is_the_nearest_earlier_one():
    """A date between two rates uses the latest rate on or before it, with that rate's date and source."""
    rates = book()
    assert rates.rate("EUR", date(2026, 11, 10)) == (D("1.08"), date(2026, 11, 10), "csv")
    assert rates.rate("EUR", date(2026, 11, 19)) == (D("1.08"), date(2026, 11, 10), "csv")
    assert rates.rate("EUR", date(2026, 11, 9)) == (D("1.10"), date(2026, 11, 2), "ecb")
    assert rates.rate("EUR", date(2027, 1, 1)) == (D("1.05"), date(2026, 11, 20), "ecb")
    assert rates.latest_date("EUR") == date(2026, 11, 20)


def test_the_fingerprint_changes_with_any_rate_and_only_then():
    """Two books with the same rates (in any order, from any source) share a fingerprint; a changed or
    added rate changes it."""
    same = RateBook("USD", [("JPY", date(2026, 11, 2), D("0.0067"), "csv"),
                            ("EUR", date(2026, 11, 20), D("1.05"), "ecb"), ("EUR", date(2026, 11, 2), D("1.10"), "ecb"),
                            ("EUR", date(2026, 11, 10), D("1.08"), "ecb")])
    assert same.fingerprint() == book().fingerprint()
    moved = RateBook("USD", [("EUR", date(2026, 11, 2), D("1.10"), "ecb"), ("EUR", date(2026, 11, 20), D("1.06"), "ecb"),
                             ("EUR", date(2026, 11, 10), D("1.08"), "csv"), ("JPY", date(2026, 11, 2), D("0.0067"), "ecb")])
    assert moved.fingerprint() != book().fingerprint()
    added = RateBook("USD", [*[("EUR", d, r, s) for d, (r, s) in zip(*book()._series["EUR"])],
                             ("JPY", date(2026, 11, 2), D("0.0067"), "ecb"), ("JPY", date(2026, 11, 3), D("0.0068"), "ecb")])
    assert added.fingerprint() != book().fingerprint()


def test_a_missing_rate_is_none_never_one():
    """No rate for the currency, or none yet on that date, gives None: the amount is not converted at 1."""
    rates = book()
    assert rates.rate("GBP", date(2026, 11, 10)) is None
    assert rates.convert(D("100.00"), "GBP", date(2026, 11, 10)) is None
    assert rates.rate("EUR", date(2026, 11, 1)) is None
    assert rates.convert(D("100.00"), "EUR", date(2026, 11, 1)) is None


def test_the_reporting_currency_converts_at_one():
    """USD into a USD book is the identity, on any date, even with no rates at all."""
    conv = RateBook("USD").convert(D("123.45"), "USD", date(2001, 1, 1))
    assert (conv.amount, conv.rate, conv.rate_date, conv.source) == (D("123.45"), D(1), date(2001, 1, 1), "identity")


def test_conversions_round_half_up_to_the_reporting_currencys_minor_units():
    """USD results have 2 decimals, JPY results none, and a half rounds up (not to even)."""
    rates = book()
    # 1250 JPY * 0.0067 = 8.375 USD -> 8.38
    assert rates.convert(D("1250"), "JPY", date(2026, 11, 3)).amount == D("8.38")
    assert rates.convert(D("0.50"), "EUR", date(2026, 11, 20)).amount == D("0.53")  # 0.525 -> 0.53 (even: 0.52)
    yen = RateBook("JPY", [("USD", date(2026, 11, 2), D("150.5"), "csv")])
    conv = yen.convert(D("1.00"), "USD", date(2026, 11, 2))
    assert conv.amount == D("151") and conv.amount.as_tuple().exponent == 0  # 150.5 -> 151 (even: 150)
    assert round_money(D("2.5"), "JPY") == D("3")
    assert round_money(D("0.125"), "USD") == D("0.13")
    assert round_money(D("0.0005"), "BHD") == D("0.001")  # three minor units


# ----------------------------------------------------------------------- CSV
def test_csv_rates_are_read_as_decimals():
    """``date,currency,rate[,base]`` rows become (currency, date, Decimal rate); codes are upper-cased."""
    rows = parse_csv("date,currency,rate,base\n2026-11-20,eur,1.05,USD\n2026-11-20,JPY,0.0067,\n", "USD")
    assert rows == [("EUR", date(2026, 11, 20), D("1.05")), ("JPY", date(2026, 11, 20), D("0.0067"))]


@pytest.mark.parametrize("text, expected", [
    ("date,currency,rate\n2026-11-20,EUR,1.05\n20/11/2026,GBP,1.27\n", "line 3: date '20/11/2026' is not YYYY-MM-DD"),
    ("date,currency,rate\n2026-11-20,XYZ,1.05\n", "line 2: currency 'XYZ' is not an ISO 4217 code"),
    ("date,currency,rate\n2026-11-20,EUR,1.05\n2026-11-20,GBP,1.27\n2026-11-21,GBP,-1.27\n",
     "line 4: rate '-1.27' must be a positive number"),
    ("date,currency,rate\n2026-11-20,EUR,abc\n", "line 2: rate 'abc' is not a number"),
    ("date,currency,rate,base\n2026-11-20,EUR,0.95,GBP\n", "line 2: base GBP differs from the reporting currency USD"),
    ("date,rate\n2026-11-20,1.05\n", "header: missing column(s) currency"),
])
def test_csv_errors_name_the_line_and_the_field(text, expected):
    """A bad date, an unknown currency, a negative rate or a missing column names the line (or header) and field."""
    with pytest.raises(FxImportError) as info:
        parse_csv(text, "USD")
    assert str(info.value).startswith(expected), str(info.value)


# ------------------------------------------------------------------- ECB XML
ECB = b"""<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <gesmes:Sender><gesmes:name>European Central Bank</gesmes:name></gesmes:Sender>
  <Cube>
    <Cube time="2026-11-20">
      <Cube currency="USD" rate="1.05"/>
      <Cube currency="JPY" rate="157.50"/>
      <Cube currency="GBP" rate="0.84"/>
    </Cube>
    <Cube time="2026-11-19">
      <Cube currency="USD" rate="1.0800"/>
      <Cube currency="GBP" rate="0.8640"/>
    </Cube>
  </Cube>
</gesmes:Envelope>
"""


def test_ecb_rates_per_euro_are_crossed_into_the_reporting_currency():
    """USD per GBP = USD-per-EUR / GBP-per-EUR; EUR itself is USD-per-EUR; every day in the file is read."""
    rows = {(c, d): r for c, d, r in parse_ecb_xml(ECB, "USD")}
    assert set(rows) == {("EUR", date(2026, 11, 20)), ("JPY", date(2026, 11, 20)), ("GBP", date(2026, 11, 20)),
                         ("EUR", date(2026, 11, 19)), ("GBP", date(2026, 11, 19))}
    assert rows["EUR", date(2026, 11, 20)] == D("1.05")
    assert rows["GBP", date(2026, 11, 20)] == D("1.25")  # 1.05 / 0.84
    assert rows["JPY", date(2026, 11, 20)] == D("1.05") / D("157.50")
    assert rows["GBP", date(2026, 11, 19)] == D("1.25")  # 1.08 / 0.864
    assert all(isinstance(r, Decimal) for r in rows.values())


def test_ecb_into_another_reporting_currency():
    """With GBP as reporting currency, EUR is GBP-per-EUR and USD is GBP-per-EUR / USD-per-EUR."""
    rows = {(c, d): r for c, d, r in parse_ecb_xml(ECB, "GBP")}
    assert rows["EUR", date(2026, 11, 20)] == D("0.84")
    assert rows["USD", date(2026, 11, 20)] == D("0.84") / D("1.05")
    assert ("GBP", date(2026, 11, 20)) not in rows


def test_ecb_xml_with_a_doctype_is_refused():
    """A DOCTYPE (the door to entity expansion and external entities) is refused outright."""
    evil = (b'<?xml version="1.0"?>\n<!DOCTYPE gesmes:Envelope [<!ENTITY x "1.05">]>\n'
            + ECB.split(b"?>", 1)[1].replace(b'rate="1.05"', b'rate="&x;"'))
    with pytest.raises(FxImportError, match="DOCTYPE"):
        parse_ecb_xml(evil, "USD")


@pytest.mark.parametrize("data, expected", [
    (ECB.replace(b'currency="JPY"', b'currency="XYZ"'), "Cube time=2026-11-20 currency=XYZ: currency 'XYZ' is not"),
    (ECB.replace(b'rate="0.84"', b'rate="-0.84"'), "Cube time=2026-11-20 currency=GBP: rate '-0.84' must be"),
    (ECB.replace(b'time="2026-11-19"', b'time="19.11.2026"'), "Cube time='19.11.2026' is not YYYY-MM-DD"),
    (ECB.replace(b'<Cube currency="USD" rate="1.0800"/>', b""), "Cube time=2026-11-19: no USD rate to cross through"),
    (b"<rates><rate/></rates>", "no <Cube time=...> elements"),
    (ECB[:200], "not well-formed XML"),
])
def test_ecb_errors_name_the_element_and_the_field(data, expected):
    """Bad currency, rate or date, a day without the reporting currency, or not ECB at all: named in the error."""
    with pytest.raises(FxImportError) as info:
        parse_ecb_xml(data, "USD")
    assert str(info.value).startswith(expected), str(info.value)
