"""Customer statements (middleware/statements.py, jobs/statements.py): what the PDF says, how it
pages, what it refuses to fetch, and the jobs on a real rq worker. Runs on SQLite and PostgreSQL.

The PDFs are read back with pypdf: the assertions are on the text a reader sees (Babel's
non-breaking spaces are folded into plain spaces first) and on the pay link's annotation.
"""
from __future__ import annotations

import io
import re
from datetime import date, timedelta
from decimal import Decimal

import pytest
from pypdf import PdfReader

AS_OF = date(2026, 11, 30)


def _text(pdf: bytes) -> list[str]:
    """The text of each page, with non-breaking and narrow spaces as plain spaces."""
    pages = PdfReader(io.BytesIO(pdf)).pages
    return [p.extract_text().replace("\xa0", " ").replace("\u202f", " ") for p in pages]


def _links(pdf: bytes) -> list[str]:
    out = []
    for page in PdfReader(io.BytesIO(pdf)).pages:
        for annot in page.get("/Annots") or []:
            action = annot.get_object().get("/A") or {}
            if action.get("/URI"):
                out.append(action["/URI"])
    return out


@pytest.fixture
def book(db):
    """A small AR book as of 2026-11-30 (reporting currency USD):

    * customer K-1001 "Nordwind Handels GmbH" (de_DE, EUR, DE), billing contact Erika Muster:
      open invoices in every aging bucket, one paid, one deleted, one issued after the as-of
      date, one unapplied credit memo of 100 EUR; EUR rates 1.05 (Oct 1), 1.08 (Nov 25) and
      1.20 (Dec 5, after the statement date);
    * customer J-2002 "Sakura Trading KK" (en_US, JPY): one invoice of 12,000 JPY; JPY rate
      0.0067 (Nov 28);
    * customer G-3003 "Thames Ltd" (en_GB, GBP): one invoice, no GBP rate at all;
    * customer Z-4004 "Quiet Corp" (USD) with nothing open.
    """
    from middleware.models import Company, Contact, CreditMemo, Customer, FxRate, Invoice, Source

    Company.create(name="Nordwind Receivables AG", reporting_currency="USD")
    src = Source.create(name="erp", kind="rest")

    def customer(ext, number, name, currency, locale, country):
        return Customer.create(source=src, external_id=ext, number=number, name=name, billing_currency=currency,
                               locale=locale, country=country, content_hash="x")

    de = customer("c1", "K-1001", "Nordwind Handels GmbH", "EUR", "de_DE", "DE")
    jp = customer("c2", "J-2002", "Sakura Trading KK", "JPY", "en_US", "JP")
    gb = customer("c3", "G-3003", "Thames Ltd", "GBP", "en_GB", "GB")
    quiet = customer("c4", "Z-4004", "Quiet Corp", "USD", "en_US", "US")
    Contact.create(source=src, external_id="c1:billing:0", customer=de, customer_external_id="c1",
                   name="Erika Muster", email="erika.muster@nordwind.example", role="billing", content_hash="x")
    Contact.create(source=src, external_id="c1:escalation:0", customer=de, customer_external_id="c1",
                   name="Boss Person", email="boss@nordwind.example", role="escalation", content_hash="x")

    def invoice(cust, number, amount, open_amount, due, issue=None, currency=None, status="open", po=None,
                deleted=False):
        return Invoice.create(source=src, external_id=number, number=number, customer=cust,
                              customer_external_id=cust.external_id, currency=currency or cust.billing_currency,
                              amount=Decimal(amount), open_amount=Decimal(open_amount), due_date=due,
                              issue_date=issue or due - timedelta(days=30), status=status, po_number=po,
                              deleted_at=AS_OF if deleted else None, content_hash="x")

    invoice(de, "RE-2026-001", "1234.50", "1234.50", date(2026, 10, 1), po="PO-4711")  # 60 days: 31-60
    invoice(de, "RE-2026-002", "2000.00", "500.25", date(2026, 12, 10))  # not yet due: current
    invoice(de, "RE-2026-003", "99.99", "99.99", date(2026, 11, 20))  # 10 days: 1-30
    invoice(de, "RE-2026-004", "300.00", "300.00", date(2026, 8, 1))  # 121 days: 91+
    invoice(de, "RE-2026-005", "45.10", "45.10", date(2026, 9, 15))  # 76 days: 61-90
    invoice(de, "RE-2026-PAID", "777.00", "0", date(2026, 10, 5), status="paid")
    invoice(de, "RE-2026-GONE", "888.00", "888.00", date(2026, 10, 6), deleted=True)
    invoice(de, "RE-2026-LATER", "999.00", "999.00", date(2027, 1, 15), issue=date(2026, 12, 15))
    CreditMemo.create(source=src, external_id="cm1", number="GS-2026-01", customer=de, customer_external_id="c1",
                      currency="EUR", amount=Decimal("100"), unapplied_amount=Decimal("100"), date=date(2026, 11, 15),
                      content_hash="x")
    invoice(jp, "JP-0001", "12000", "12000", date(2026, 11, 10))
    invoice(gb, "GB-0001", "250.00", "250.00", date(2026, 11, 10))
    for currency, day, rate in (("EUR", date(2026, 10, 1), "1.05"), ("EUR", date(2026, 11, 25), "1.08"),
                                ("EUR", date(2026, 12, 5), "1.20"), ("JPY", date(2026, 11, 28), "0.0067")):
        FxRate.create(base_currency="USD", currency=currency, rate_date=day, rate=Decimal(rate), source_name="test")
    return {"de": de.id, "jp": jp.id, "gb": gb.id, "quiet": quiet.id}


def _pdf(customer_id, **kwargs):
    from middleware.statements import render_statement_pdf

    return render_statement_pdf(customer_id, as_of=kwargs.pop("as_of", AS_OF), reporting_currency="USD", **kwargs)


def test_german_statement_shows_open_invoices_aging_totals_and_usd_at_closing_rate(book):
    """The de_DE customer's statement shows the company, the customer with number, country and
    billing contact, its five open invoices (not the paid, deleted or later-issued ones) with
    German-formatted EUR amounts and dates, the aging buckets, the unapplied credit memo, the
    EUR balance, and its USD equivalent at the closing rate 1.08 of 25.11.2026 (not the later
    1.20), each document converted on its own."""
    text = "\n".join(_text(_pdf(book["de"])))
    for expected in ("Nordwind Receivables AG", "Nordwind Handels GmbH", "K-1001", "Deutschland", "Erika Muster",
                     "erika.muster@nordwind.example", "Statement date 30.11.2026"):
        assert expected in text
    assert "Boss Person" not in text  # the escalation contact is not the billing contact
    for number in ("RE-2026-001", "RE-2026-002", "RE-2026-003", "RE-2026-004", "RE-2026-005"):
        assert number in text
    for number in ("RE-2026-PAID", "RE-2026-GONE", "RE-2026-LATER"):
        assert number not in text
    # number · PO number, issue date, due date · days past due, amount, open amount: the PO shares
    # the invoice's cell and the days past due the due date's; without a PO, or not yet due, the
    # number and the due date stand alone
    assert "RE-2026-001 · PO-4711 01.09.2026 01.10.2026 · 60 days past due 1.234,50 € 1.234,50 €" in text
    assert "RE-2026-003 21.10.2026 20.11.2026 · 10 days past due 99,99 € 99,99 €" in text
    assert "RE-2026-002 10.11.2026 10.12.2026 2.000,00 € 500,25 €" in text
    # sorted by due date: the 91+ invoice first, the not-yet-due one last
    order = [text.index(n) for n in ("RE-2026-004", "RE-2026-005", "RE-2026-001", "RE-2026-003", "RE-2026-002")]
    assert order == sorted(order)
    # aging: current, 1-30, 31-60, 61-90, 91+, total open
    assert "EUR 500,25 € 99,99 € 1.234,50 € 45,10 € 300,00 € 2.179,84 €" in text
    assert "Credit memo GS-2026-01 15.11.2026 100,00 €" in text
    # EUR: open 2.179,84, credits -100, balance 2.079,84; USD per line at 1.08:
    # 1333.26 + 540.27 + 107.99 + 324.00 + 48.71 = 2354.23, less 108.00 = 2246.23
    assert "EUR 2.179,84 € -100,00 € 2.079,84 € 2.246,23 $ 1,08 USD/EUR, 25.11.2026" in text
    assert "Total balance in USD 2.246,23 $" in text
    assert "1,20" not in text


def test_the_billing_address_is_printed_under_the_name_in_the_countrys_order(book):
    """The customer's billing address from the ERP sits under its name on the statement: the
    street lines, then the locality in the country's order ("80331 München" in Germany, "San
    Francisco, CA 94105" in the US, the postcode on its own line in the UK), then the country's
    name in the statement's language; a customer with no address shows its country alone."""
    from middleware.models import Customer

    Customer.update(billing_address={"lines": ["Leopoldstraße 12", "3. OG"], "city": "München", "region": "Bayern",
                                     "postal_code": "80331", "country": "DE"}).where(Customer.id == book["de"]).execute()
    Customer.update(billing_address={"lines": ["1 Market Street", "Suite 300"], "city": "San Francisco",
                                     "region": "CA", "postal_code": "94105", "country": "US"}
                    ).where(Customer.id == book["quiet"]).execute()
    Customer.update(billing_address={"lines": ["10 Old Street"], "city": "London", "postal_code": "EC1A 1BB",
                                     "country": "GB"}).where(Customer.id == book["gb"]).execute()
    for key, expected in (
            ("de", ["Nordwind Handels GmbH", "Leopoldstraße 12", "3. OG", "80331 München", "Deutschland",
                    "Attn. Erika Muster"]),
            ("quiet", ["Quiet Corp", "1 Market Street", "Suite 300", "San Francisco, CA 94105", "United States"]),
            ("gb", ["Thames Ltd", "10 Old Street", "London", "EC1A 1BB", "United Kingdom"])):
        lines = [line.strip() for line in _text(_pdf(book[key]))[0].splitlines()]
        start = lines.index(expected[0])
        assert lines[start:start + len(expected)] == expected, lines[:12]
    assert "Bayern" not in _text(_pdf(book["de"]))[0]  # a German address names no region
    lines = [line.strip() for line in _text(_pdf(book["jp"]))[0].splitlines()]
    after = lines[lines.index("Sakura Trading KK") + 1]  # pypdf joins it with the facts column's first line
    assert after.startswith("Japan ") and "Statement" in after  # no address: the country alone


def test_jpy_statement_has_no_minor_units_and_english_formatting(book):
    """A JPY invoice shows as ¥12,000 (no decimals) for an en_US customer, and its USD equivalent
    at the closing rate 0.0067 of Nov 28, 2026 is $80.40."""
    text = "\n".join(_text(_pdf(book["jp"])))
    assert "JP-0001" in text
    assert "¥12,000" in text and "¥12,000.00" not in text
    assert "$80.40" in text
    assert "0.0067 USD/JPY, Nov 28, 2026" in text
    assert "Total balance in USD $80.40" in text


def _printable_chars(pdf: bytes) -> set[str]:
    """Every character a reader sees on ``pdf`` (spaces left out)."""
    return {ch for page in _text(pdf) for ch in page if not ch.isspace()}


def _fonts_cover(pdf: bytes) -> set[int]:
    """The code points the PDF's embedded fonts have a real glyph for (their cmap tables)."""
    from fontTools.ttLib import TTFont

    covered: set[int] = set()

    def fonts(resources, seen=set()):
        resources = resources.get_object() if resources is not None else {}
        for font in (resources.get("/Font") or {}).values():
            yield font.get_object()
        for xobject in (resources.get("/XObject") or {}).values():  # forms (repeated headers, footers)
            xobject = xobject.get_object()
            if id(xobject) not in seen and xobject.get("/Resources") is not None:
                seen.add(id(xobject))
                yield from fonts(xobject["/Resources"], seen)

    for page in PdfReader(io.BytesIO(pdf)).pages:
        for font in fonts(page.get("/Resources")):
            has_glyphs = False
            for descendant in font.get("/DescendantFonts") or [font]:
                descriptor = descendant.get_object().get("/FontDescriptor")
                data = descriptor and descriptor.get_object().get("/FontFile2")
                if data is not None:
                    tt = TTFont(io.BytesIO(data.get_object().get_data()))
                    has_glyphs = any(g != ".notdef" for g in tt.getGlyphOrder())
                    if "cmap" in tt:
                        covered.update(tt.getBestCmap())
            # glyphs the subset keeps without a cmap entry (conjuncts, ligatures) are in ToUnicode
            unicode_map = font.get("/ToUnicode")
            if has_glyphs and unicode_map is not None:
                text = unicode_map.get_object().get_data().decode("latin-1")
                for glyph, target in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", text):
                    if int(glyph, 16) != 0:  # glyph 0 is .notdef: the empty box
                        covered.update(int(target[i:i + 4], 16) for i in range(0, len(target), 4))
    return covered


@pytest.mark.parametrize("locale,currency", [("ja_JP", "JPY"), ("zh_CN", "CNY"), ("ko_KR", "KRW"), ("de_DE", "EUR"),
                                             ("fr_FR", "EUR"), ("en_GB", "GBP"), ("hi_IN", "INR")])
def test_every_character_on_a_statement_has_a_glyph_in_its_font(book, locale, currency):
    """Babel writes ￥12,000 for ja_JP; the statement's font has no full-width yen sign and the
    customer saw an empty box. Every character printed, in every locale's format, must be in the
    embedded font."""
    from middleware.models import Customer, Invoice

    cust = Customer.get_by_id(book["quiet"])
    cust.billing_currency, cust.locale = currency, locale
    cust.save()
    Invoice.create(source=cust.source, external_id="L-1", number="L-1", customer=cust,
                   customer_external_id=cust.external_id, currency=currency, amount=Decimal("12000"),
                   open_amount=Decimal("12000"), due_date=date(2026, 11, 10), issue_date=date(2026, 10, 10),
                   status="open", content_hash="x")
    pdf = _pdf(book["quiet"])
    missing = {ch for ch in _printable_chars(pdf) if ord(ch) not in _fonts_cover(pdf)}
    assert not missing, f"no glyph for {sorted(missing)} on a {locale} statement"
    assert "12" in "".join(_text(pdf))


def test_days_past_due_read_in_words_next_to_the_due_date(book):
    """An invoice due the day before the statement date reads "1 day past due" after its due date;
    one due on the statement date is current: its due date stands alone, with no days."""
    from middleware.models import Customer, Invoice

    quiet = Customer.get_by_id(book["quiet"])
    for number, due in (("Q-1", date(2026, 11, 29)), ("Q-2", AS_OF)):
        Invoice.create(source=quiet.source, external_id=number, number=number, customer=quiet,
                       customer_external_id=quiet.external_id, currency="USD", amount=Decimal(10),
                       open_amount=Decimal(10), due_date=due, issue_date=due - timedelta(days=30), status="open",
                       content_hash="x")
    text = "\n".join(_text(_pdf(book["quiet"])))
    assert "Q-1 Oct 30, 2026 Nov 29, 2026 · 1 day past due $10.00 $10.00" in text
    assert "Q-2 Oct 31, 2026 Nov 30, 2026 $10.00 $10.00" in text
    assert "0 days" not in text


def test_locale_argument_overrides_the_customers_locale(book):
    """``locale="en_US"`` renders the German customer's figures the English way (€1,234.50)."""
    text = "\n".join(_text(_pdf(book["de"], locale="en_US")))
    assert "€1,234.50" in text
    assert "1.234,50 €" not in text


def test_missing_rate_is_flagged_never_guessed(book):
    """With no GBP rate on file, the GBP balance is shown but its USD equivalent reads "rate
    missing" and the USD total is marked incomplete: never converted at 1."""
    text = "\n".join(_text(_pdf(book["gb"])))
    assert "GB-0001" in text and "£250.00" in text
    assert "rate missing" in text
    assert "no GBP rate on or before 30 Nov 2026" in text
    assert "Total balance in USD (incomplete: rate missing)" in text


def test_pay_link_and_remittance_override(book, settings):
    """The statement carries a clickable pay link ``{public_url}/pay/{token}`` whose token verifies
    back to the customer, and the remittance text comes from ``<var_dir>/statements/remittance.txt``
    when that file exists (the shipped default otherwise)."""
    from middleware.statements import customer_token, verify_customer_token

    default = "\n".join(_text(_pdf(book["jp"])))
    assert "Please pay by bank transfer" in default
    (settings.var_dir / "statements").mkdir(parents=True, exist_ok=True)
    (settings.var_dir / "statements" / "remittance.txt").write_text(
        "Überweisung an Nordwind AG\nIBAN DE02 1203 0000 0000 2020 51\n", encoding="utf-8")
    pdf = _pdf(book["jp"])
    text = "\n".join(_text(pdf))
    assert "IBAN DE02 1203 0000 0000 2020 51" in text and "Überweisung an Nordwind AG" in text
    assert "Please pay by bank transfer" not in text
    token = customer_token(book["jp"])
    url = f"http://127.0.0.1:5000/pay/{token}"
    assert url in text
    assert url in _links(pdf)
    assert verify_customer_token(token) == book["jp"]
    assert verify_customer_token(token[:-2] + "xx") is None
    assert verify_customer_token(f"{book['de']}.{token.split('.')[1]}") is None


def test_sixty_lines_lay_out_on_two_pages_with_header_and_page_numbers(book, db):
    """60 open invoices make exactly two A4 pages: every invoice appears once with its PO number
    and (when overdue) its days past due, the table header is repeated at the top of page 2, and
    each footer says "Page n of 2"."""
    from middleware.models import Customer, Invoice, Source

    src = Source.get(Source.name == "erp")
    cust = Customer.create(source=src, external_id="c60", number="L-6000", name="Long List SARL",
                           billing_currency="EUR", locale="fr_FR", country="FR", content_hash="x")
    Invoice.insert_many([
        {"source": src, "external_id": f"F-{n:03d}", "number": f"FA-2026-{n:03d}", "customer": cust,
         "customer_external_id": "c60", "currency": "EUR", "amount": Decimal(1000 + n * 37) / 10,
         "open_amount": Decimal(1000 + n * 37) / 10, "due_date": AS_OF - timedelta(days=100 - 2 * n),
         "issue_date": AS_OF - timedelta(days=130 - 2 * n), "po_number": f"BC-{n:04d}", "content_hash": "x"}
        for n in range(60)]).execute()
    pages = _text(_pdf(cust.id))
    assert len(pages) == 2
    both = "\n".join(pages)
    for n in range(60):
        assert both.count(f"FA-2026-{n:03d}") == 1
    header = "Invoice · PO number Issue date Due date Amount Open amount"
    for page in pages:
        assert header in page
    assert pages[1].lstrip().startswith(header)  # the header, repeated
    for n in range(60):  # every line with its PO number and, when overdue, its days past due
        days = 100 - 2 * n
        assert f"FA-2026-{n:03d} · BC-{n:04d}" in both
        assert (f" · {days} day{'s' if days != 1 else ''} past due" in both) == (days > 0)
    assert "Page 1 of 2" in pages[0] and "Page 2 of 2" in pages[1]
    assert "Aging summary" in pages[1] and "Total balance in USD" in pages[1]


def test_standalone_html_renders_the_same_statement_with_bare_weasyprint(book):
    """``render_statement_html`` is a self-contained document (stylesheet inline, logo as a data:
    URL, no file or network reference): a bare ``weasyprint.HTML(string=html).write_pdf()`` gives
    the same pages and text as ``render_statement_pdf``; this is the bench's floor."""
    import weasyprint

    from middleware.statements import render_statement_html

    html = render_statement_html(book["de"], as_of=AS_OF, reporting_currency="USD")
    assert "<style>" in html and 'src="data:image/svg+xml;base64,' in html
    assert "file:" not in html and "http://" not in html.replace("http://127.0.0.1:5000/pay/", "")
    assert _text(weasyprint.HTML(string=html).write_pdf()) == _text(_pdf(book["de"]))


def test_url_fetcher_serves_only_the_statement_assets(tmp_path):
    """The fetcher serves files under templates/statements/ and small data: URLs, and refuses
    http(s), file:///etc/passwd, a path escaping the directory with "..", and an oversized
    data: URL, each with an error that names what was refused; a refused asset in a statement
    stops the render with StatementRenderError (no silent hole in the document)."""
    import base64

    from middleware.statements import AssetFetcher, AssetRefused, StatementRenderError, assets_dir, html_to_pdf

    fetcher = AssetFetcher()
    served = fetcher.fetch((assets_dir() / "statement.css").as_uri())
    assert b"@page" in served.read()
    assert fetcher.fetch("data:text/plain;base64," + base64.b64encode(b"hello").decode()).read() == b"hello"
    refused = {
        "http://example.com/logo.png": "http://example.com/logo.png",
        "https://example.com/font.woff2": "https://example.com/font.woff2",
        "file:///etc/passwd": "not a file under",
        (assets_dir() / ".." / ".." / "pyproject.toml").as_uri(): "not a file under",
        "data:application/octet-stream;base64," + base64.b64encode(b"x" * 100_000).decode(): "larger than",
    }
    for url, message in refused.items():
        with pytest.raises(AssetRefused, match="statement asset refused") as info:
            fetcher.fetch(url)
        assert message in str(info.value)
    for src in ("http://127.0.0.1:9/tracker.png", "file:///etc/passwd"):
        with pytest.raises(StatementRenderError, match="statement asset refused") as info:
            html_to_pdf(f'<html><body><p>x</p><img src="{src}"></body></html>')
        assert isinstance(info.value.__cause__, AssetRefused)


def test_a_render_leaves_the_garbage_collector_as_it_found_it():
    """html_to_pdf pauses Python's cyclic garbage collector while WeasyPrint runs (a fifth of a
    render's time otherwise): afterwards it is on again, also when the render failed, and a
    caller that had turned it off finds it still off."""
    import gc

    from middleware.statements import StatementRenderError, html_to_pdf

    assert gc.isenabled()
    assert html_to_pdf("<html><body><p>x</p></body></html>").startswith(b"%PDF")
    assert gc.isenabled()
    with pytest.raises(StatementRenderError):
        html_to_pdf('<html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    assert gc.isenabled()
    gc.disable()
    try:
        html_to_pdf("<html><body><p>x</p></body></html>")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cli_render_writes_the_pdf(book, settings, tmp_path):
    """``arhub statements render K-1001 --as-of 2026-11-30 --out FILE`` writes the customer's
    statement to FILE; without --out it lands in <var_dir>/statements/<date>/<id>.pdf."""
    from click.testing import CliRunner

    from jobs.cli import main

    out = tmp_path / "k1001.pdf"
    result = CliRunner().invoke(main, ["statements", "render", "K-1001", "--as-of", "2026-11-30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "RE-2026-001" in "\n".join(_text(out.read_bytes()))
    result = CliRunner().invoke(main, ["statements", "render", str(book["jp"]), "--as-of", "2026-11-30"])
    assert result.exit_code == 0, result.output
    assert "JP-0001" in "\n".join(_text((settings.var_dir / "statements" / "2026-11-30" / f"{book['jp']}.pdf")
                                        .read_bytes()))
    result = CliRunner().invoke(main, ["statements", "render", "NOPE-1"])
    assert result.exit_code != 0 and "no customer with the number or id 'NOPE-1'" in result.output


def test_statement_run_on_a_real_worker_writes_pdfs_and_a_rerun_adds_nothing(book, settings, redis_url, rq_worker,
                                                                             wait_until):
    """``statement_run`` enqueues one job per customer with open invoices (not the one with
    nothing open) on the statements queue; a real rq worker renders each PDF into
    <var_dir>/statements/2026-11-30/; running it again for the same date enqueues nothing."""
    from rq import Queue

    from jobs.queues import get_redis
    from jobs.statements import job_id, statement_run

    first = statement_run(as_of="2026-11-30")
    assert first == {"as_of": "2026-11-30", "customers": 3, "enqueued": 3, "requeued": 0, "skipped": 0}
    folder = settings.var_dir / "statements" / "2026-11-30"
    paths = [folder / f"{book[k]}.pdf" for k in ("de", "jp", "gb")]
    wait_until(lambda: all(p.exists() for p in paths), timeout=120, message="three statement PDFs")
    assert not (folder / f"{book['quiet']}.pdf").exists()
    assert "RE-2026-001" in "\n".join(_text(paths[0].read_bytes()))
    queue = Queue("statements", connection=get_redis(settings))
    wait_until(lambda: queue.finished_job_registry.get_job_count() == 3, timeout=60, message="jobs finished")
    assert queue.fetch_job(job_id(book["de"], AS_OF)).return_value() == str(paths[0])

    again = statement_run(as_of=AS_OF)
    assert again == {"as_of": "2026-11-30", "customers": 3, "enqueued": 0, "requeued": 0, "skipped": 3}
    assert queue.count == 0


def test_statement_run_twice_before_any_worker_queues_each_customer_once(book, settings, redis_url):
    """Two runs for the same date before any worker picks them up leave one job per customer in
    the queue; a run for another date queues its own jobs."""
    from rq import Queue

    from jobs.queues import get_redis
    from jobs.statements import statement_run

    assert statement_run(customer_ids=[book["de"], book["jp"]], as_of=AS_OF)["enqueued"] == 2
    assert statement_run(customer_ids=[book["jp"], book["de"], book["de"]], as_of=AS_OF)["skipped"] == 2
    queue = Queue("statements", connection=get_redis(settings))
    assert queue.count == 2
    assert statement_run(customer_ids=[book["de"]], as_of=AS_OF + timedelta(days=1))["enqueued"] == 1
    assert queue.count == 3


def test_bench_statements_prints_rates_and_ratios_as_json(tmp_path):
    """``arhub bench statements --count 2 --json`` (a subprocess, its own scratch database) prints
    statements/s, the bare-WeasyPrint floor/s and their ratio, and both statements took two pages."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update({"ARHUB_ENV_FILE": "", "ARHUB_VAR_DIR": str(tmp_path / "var")})
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "bench", "statements", "--count", "2", "--json"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pages"] == {"2": 2} and result["floor_pages"] == {"2": 2}
    for key in ("statements_per_s", "floor_per_s", "ratio", "layout_floor_per_s", "forked_warm_per_s"):
        assert result[key] > 0
    # the ratio is computed from unrounded rates; the printed rates are rounded to 0.01
    assert result["ratio"] == pytest.approx(result["floor_per_s"] / result["statements_per_s"], rel=0.05)
