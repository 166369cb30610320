"""``arhub fx import FILE`` (click CliRunner on jobs.cli.main) on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

from click.testing import CliRunner

from jobs.cli import main
from middleware.models import FxRate, Invoice, Source

ECB = """<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <Cube>
    <Cube time="2026-11-20">
      <Cube currency="USD" rate="1.05"/>
      <Cube currency="GBP" rate="0.84"/>
      <Cube currency="JPY" rate="157.50"/>
    </Cube>
  </Cube>
</gesmes:Envelope>
"""


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def rates() -> dict[tuple[str, date], Decimal]:
    return {(r.currency, r.rate_date): Decimal(r.rate) for r in FxRate.select().where(FxRate.base_currency == "USD")}


def test_import_a_csv_prints_the_count_and_stores_the_rates(db, settings, tmp_path):
    """A CSV of three rates is imported into the reporting currency; the command says how many and which."""
    path = tmp_path / "rates.csv"
    path.write_text("date,currency,rate\n2026-11-19,EUR,1.08\n2026-11-20,EUR,1.05\n2026-11-20,JPY,0.0067\n")
    result = invoke("fx", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "imported 3 rates for EUR, JPY into USD" in " ".join(result.output.split())
    assert rates() == {("EUR", date(2026, 11, 19)): Decimal("1.08"), ("EUR", date(2026, 11, 20)): Decimal("1.05"),
                       ("JPY", date(2026, 11, 20)): Decimal("0.0067")}
    assert {r.source_name for r in FxRate.select()} == {"file:rates.csv"}


def test_import_an_ecb_file_crosses_rates_and_reconverts_documents(db, settings, tmp_path):
    """An ECB XML file lands as USD-based rates (EUR, GBP, JPY), and a GBP invoice waiting for a rate is converted."""
    source = Source.create(name="erp", kind="rest")
    Invoice.create(source=source, external_id="INV-1", customer_external_id="C-1", currency="GBP",
                   amount=Decimal("100.00"), open_amount=Decimal("100.00"), issue_date=date(2026, 11, 20),
                   due_date=date(2026, 12, 20), fx_missing=True, content_hash="x")
    path = tmp_path / "eurofxref-hist.xml"
    path.write_text(ECB)
    result = invoke("fx", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "imported 3 rates for EUR, GBP, JPY into USD" in " ".join(result.output.split())
    stored = rates()
    assert stored[("EUR", date(2026, 11, 20))] == Decimal("1.05")
    assert stored[("GBP", date(2026, 11, 20))] == Decimal("1.25")
    assert stored[("JPY", date(2026, 11, 20))] == (Decimal("1.05") / Decimal("157.50")).quantize(Decimal("1e-12"))
    invoice = Invoice.get(Invoice.external_id == "INV-1")
    assert not invoice.fx_missing
    assert invoice.amount_reporting == Decimal("125.00")
    assert invoice.fx_rate_source == "file:eurofxref-hist.xml"


def test_a_bad_file_exits_non_zero_naming_the_line_and_imports_nothing(db, settings, tmp_path):
    """A CSV with a bad date on line 3 fails with that line and field named, and no rate of it is stored."""
    path = tmp_path / "bad.csv"
    path.write_text("date,currency,rate\n2026-11-20,EUR,1.05\n20/11/2026,GBP,1.27\n")
    result = CliRunner().invoke(main, ["fx", "import", str(path)])
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert "line 3: date '20/11/2026' is not YYYY-MM-DD" in message
    assert str(path.name) in message
    assert FxRate.select().count() == 0


def test_a_bad_ecb_file_names_the_element(db, settings, tmp_path):
    """An ECB file with an unknown currency code fails naming the Cube and the code."""
    path = tmp_path / "ecb.xml"
    path.write_text(ECB.replace('currency="JPY"', 'currency="XYZ"'))
    result = CliRunner().invoke(main, ["fx", "import", str(path)])
    assert result.exit_code != 0
    assert "Cube time=2026-11-20 currency=XYZ: currency 'XYZ' is not an ISO 4217 code" in " ".join(result.output.split())
    assert FxRate.select().count() == 0
