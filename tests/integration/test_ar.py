"""AR metrics as of a date (middleware/ar.py) on small hand-computed books, SQLite and PostgreSQL.

Each book is written row by row as a sync would leave it; the expected figures are worked
out in the test itself. Reporting currency: USD.
"""
from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal

from click.testing import CliRunner

from jobs.cli import main
from middleware.ar import (bucket_labels, countback, customer_fingerprints, customer_metrics, customer_snapshots,
                           invoice_aging, portfolio, trend)
from middleware.fx import round_money
from middleware.models import Application, CreditMemo, Customer, FxRate, Invoice, Payment, Source

USD = "USD"
D = Decimal


class Book:
    """A tiny AR store: customers, invoices, payments and credit memos with their applications, rates."""

    def __init__(self):
        self.source = Source.create(name="erp", kind="rest")
        self.rates: dict[str, list[tuple[date, Decimal]]] = {}
        self.n = 0

    def _ext(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    def rate(self, currency: str, day: date, value: str) -> None:
        FxRate.create(base_currency=USD, currency=currency, rate_date=day, rate=D(value), source_name="test")
        self.rates.setdefault(currency, []).append((day, D(value)))

    def _reporting(self, amount: Decimal, currency: str, day: date) -> Decimal | None:
        """The flow at its own date's rate, as the sync stores it (None: no rate)."""
        if currency == USD:
            return amount
        known = [r for d, r in sorted(self.rates.get(currency, [])) if d <= day]
        return round_money(amount * known[-1], USD) if known else None

    def customer(self, name: str = "C1", currency: str = USD) -> Customer:
        return Customer.create(source=self.source, external_id=name, name=name, billing_currency=currency,
                               content_hash="x")

    def invoice(self, customer: Customer, amount, issue: date, due: date, currency: str = USD,
                status: str = "open", **extra) -> Invoice:
        amount = D(amount)
        reporting = self._reporting(amount, currency, issue)
        return Invoice.create(source=self.source, external_id=self._ext("INV"), number=self._ext("N"),
                              customer=customer, customer_external_id=customer.external_id, currency=currency,
                              amount=amount, open_amount=amount, issue_date=issue, due_date=due, status=status,
                              amount_reporting=reporting, fx_missing=reporting is None, content_hash="x", **extra)

    def _settle(self, model, kind: str, customer: Customer, amount, day: date, applied, currency: str, **extra):
        amount = D(amount)
        applied = [(item[0], D(item[1]), item[2] if len(item) > 2 else day) for item in applied]
        reporting = self._reporting(amount, currency, day)
        doc = model.create(source=self.source, external_id=self._ext(kind), customer=customer,
                           customer_external_id=customer.external_id, currency=currency, amount=amount, date=day,
                           unapplied_amount=amount - sum((v for _, v, _ in applied), D(0)),
                           amount_reporting=reporting, fx_missing=reporting is None, content_hash="x", **extra)
        for inv, value, on in applied:
            Application.create(source=self.source, doc_kind=kind, doc_external_id=doc.external_id,
                               invoice_external_id=inv.external_id, invoice=inv, amount=value, date=on)
            # the store as it is today: every application so far reduces the stored open amount
            Invoice.update(open_amount=Invoice.open_amount - value).where(Invoice.id == inv.id).execute()
        return doc

    def pay(self, customer: Customer, amount, day: date, *applied, currency: str = USD) -> Payment:
        """A payment dated ``day``; ``applied``: (invoice, amount[, application date]) tuples."""
        return self._settle(Payment, "payment", customer, amount, day, applied, currency)

    def credit(self, customer: Customer, amount, day: date, *applied, currency: str = USD) -> CreditMemo:
        return self._settle(CreditMemo, "credit_memo", customer, amount, day, applied, currency)


def three_month_book() -> tuple[Book, Customer]:
    """Dec invoice 2000 paid late, Jan 3000 paid in two parts on time, Feb 6000 half paid, Mar 9000 open."""
    book = Book()
    c = book.customer()
    dec = book.invoice(c, 2000, date(2024, 12, 1), date(2024, 12, 31))
    book.pay(c, 2000, date(2025, 1, 20), (dec, 2000))  # 20 days late
    jan = book.invoice(c, 3000, date(2025, 1, 10), date(2025, 2, 9))
    book.pay(c, 1000, date(2025, 1, 25), (jan, 1000))
    book.pay(c, 2000, date(2025, 2, 5), (jan, 2000))  # closes it, 4 days before its due date
    feb = book.invoice(c, 6000, date(2025, 2, 10), date(2025, 3, 12))
    book.pay(c, 3000, date(2025, 3, 20), (feb, 3000))
    book.invoice(c, 9000, date(2025, 3, 15), date(2025, 4, 14))
    return book, c


# ----------------------------------------------------------------------------- open amounts
def test_open_amount_as_of_a_past_date_ignores_later_payments(db):
    """An invoice paid 400 in February and 600 in March is open 600 as of 28 Feb (the March payment
    does not exist yet), closed as of 31 Mar, and absent before its issue date, whatever the store
    holds today."""
    book = Book()
    c = book.customer()
    inv = book.invoice(c, 1000, date(2025, 1, 10), date(2025, 2, 9))
    book.pay(c, 400, date(2025, 2, 1), (inv, 400))
    book.pay(c, 600, date(2025, 3, 15), (inv, 600))
    assert Invoice.get_by_id(inv.id).open_amount == 0  # today's store: fully paid

    [row] = invoice_aging(date(2025, 2, 28))
    assert invoice_aging(date(2025, 2, 28), [c.id]) == [row]  # the same for one customer
    assert row.applied == D(400)
    assert row.open_amount == D(1000) - D(400)
    assert row.days_past_due == (date(2025, 2, 28) - date(2025, 2, 9)).days == 19
    assert row.bucket == "1-30"
    feb = portfolio(date(2025, 2, 28), reporting_currency=USD)
    assert feb.totals.open == feb.totals.overdue == D(600)

    assert invoice_aging(date(2025, 3, 31)) == []  # 1000 − 400 − 600 = 0
    assert portfolio(date(2025, 3, 31), reporting_currency=USD).totals.open == 0
    assert invoice_aging(date(2025, 1, 9)) == []  # issued on 10 Jan: not there yet

    snap = customer_snapshots([c.id], as_of=date(2025, 2, 28), reporting_currency=USD)[c.id]
    assert snap.open_reporting == D(600) and snap.overdue_reporting == D(600)
    assert snap.last_payment_date == date(2025, 2, 1) and snap.last_payment_reporting == D(400)
    assert snap.unapplied_reporting == 0  # the March payment is not there yet


def test_an_applied_credit_memo_reduces_the_invoice_an_unapplied_one_the_balance_only(db):
    """A 300 credit memo with 200 applied to a 1000 invoice leaves the invoice open 800 (in its
    bucket); its unapplied 100 and an unapplied 50 payment reduce the balance (800 − 150 = 650),
    not the buckets; the memo also nets against sales (1000 − 300)."""
    book = Book()
    c = book.customer()
    inv = book.invoice(c, 1000, date(2025, 3, 1), date(2025, 3, 31))
    book.credit(c, 300, date(2025, 3, 10), (inv, 200))
    book.pay(c, 50, date(2025, 3, 12))

    m = customer_metrics(c.id, date(2025, 3, 20), reporting_currency=USD)
    assert m.totals.open == D(1000) - D(200)
    assert m.totals.buckets == [D(800), 0, 0, 0, 0]  # due 31 Mar: current on 20 Mar
    assert m.totals.unapplied == (D(300) - D(200)) + D(50)
    assert m.totals.balance == D(800) - D(150) == D(650)
    assert m.net_sales == D(1000) - D(300)
    assert m.by_currency["USD"].balance == D(650)

    snap = customer_snapshots([c.id], as_of=date(2025, 3, 20), reporting_currency=USD)[c.id]
    assert (snap.open_reporting, snap.unapplied_reporting, snap.balance_reporting) == (D(800), D(150), D(650))
    assert snap.buckets == [D(800), 0, 0, 0, 0]
    assert snap.balance_in("USD") == D(650)

    before = customer_metrics(c.id, date(2025, 3, 5), reporting_currency=USD)  # before the memo
    assert (before.totals.open, before.totals.unapplied) == (D(1000), 0)


def test_voided_deleted_and_draft_invoices_are_out_on_every_date(db):
    """Only the open invoice counts: a voided one, a deleted one and a draft are not receivables,
    neither in AR nor in sales, even as of a date before they were voided."""
    book = Book()
    c = book.customer()
    book.invoice(c, 100, date(2025, 1, 5), date(2025, 2, 4))
    book.invoice(c, 1000, date(2025, 1, 5), date(2025, 2, 4), status="voided")
    book.invoice(c, 2000, date(2025, 1, 5), date(2025, 2, 4), status="deleted")
    book.invoice(c, 4000, date(2025, 1, 5), date(2025, 2, 4), status="draft")
    m = portfolio(date(2025, 1, 31), reporting_currency=USD)
    assert m.totals.open == D(100) and m.totals.open_count == 1
    assert m.net_sales == D(100)
    assert [r.amount for r in invoice_aging(date(2025, 1, 31))] == [D(100)]


# ------------------------------------------------------------------------------- aging
def test_aging_edges_due_today_is_current_and_30_31_split(db):
    """Days past due = as-of date − due date: due on the day (0) and not yet due are current;
    1 and 30 fall in 1–30, 31 and 60 in 31–60, 61 and 90 in 61–90, 91 in 91+; other edges regroup them."""
    book = Book()
    c = book.customer()
    as_of = date(2025, 6, 30)
    amounts = {0: 1, -15: 2, 1: 10, 30: 20, 31: 100, 60: 200, 61: 1000, 90: 2000, 91: 10000}  # days past due → amount
    for days, amount in amounts.items():
        book.invoice(c, amount, date(2025, 1, 1), as_of - timedelta(days=days))

    m = portfolio(as_of, reporting_currency=USD)
    assert m.bucket_labels == ["current", "1-30", "31-60", "61-90", "91+"]
    assert m.totals.buckets == [D(1 + 2), D(10 + 20), D(100 + 200), D(1000 + 2000), D(10000)]
    assert m.totals.overdue == D(30 + 300 + 3000 + 10000)
    assert m.totals.overdue_count == 7 and m.totals.oldest_overdue_days == 91
    assert {r.days_past_due: r.bucket for r in invoice_aging(as_of)} == {
        0: "current", -15: "current", 1: "1-30", 30: "1-30", 31: "31-60", 60: "31-60", 61: "61-90", 90: "61-90",
        91: "91+"}

    other = portfolio(as_of, reporting_currency=USD, edges=(15, 45))
    assert other.bucket_labels == bucket_labels((15, 45)) == ["current", "1-15", "16-45", "46+"]
    assert other.totals.buckets == [D(1 + 2), D(10), D(20 + 100), D(200 + 1000 + 2000 + 10000)]
    snap = customer_snapshots(None, as_of=as_of, reporting_currency=USD)[c.id]
    assert snap.buckets == m.totals.buckets and snap.oldest_due == date(2025, 3, 31)


# --------------------------------------------------------------------------- currencies
def test_a_jpy_invoice_converts_line_by_line_at_the_closing_rate(db):
    """¥150,000 half-paid ¥50,000 and two ¥1,001 invoices: the JPY breakdown shows ¥102,002 open; in
    USD each line is converted at 31 Mar's rate 0.0065 and rounded half up (6.5065 → 6.51), so the
    total is 650.00 + 6.51 + 6.51 = 663.02, not round(102002 × 0.0065) = 663.01. Sales use the
    invoice-date rate 0.0067."""
    book = Book()
    book.rate("JPY", date(2025, 3, 1), "0.0067")
    book.rate("JPY", date(2025, 3, 31), "0.0065")
    c = book.customer("J1", "JPY")
    big = book.invoice(c, 150000, date(2025, 3, 5), date(2025, 4, 4), currency="JPY")
    book.invoice(c, 1001, date(2025, 3, 5), date(2025, 4, 4), currency="JPY")
    book.invoice(c, 1001, date(2025, 3, 5), date(2025, 4, 4), currency="JPY")
    book.pay(c, 50000, date(2025, 3, 20), (big, 50000), currency="JPY")

    m = portfolio(date(2025, 3, 31), reporting_currency=USD)
    assert m.by_currency["JPY"].open == D(150000) - D(50000) + 2 * D(1001)
    assert m.by_currency["JPY"].buckets[0] == D(102002)
    assert m.totals.open == D("650.00") + D("6.51") + D("6.51") == D("663.02")
    assert m.net_sales == D("1005.00") + D("6.71") + D("6.71")  # 150000 × 0.0067; 1001 × 0.0067 = 6.7067
    assert m.fx_missing == []
    rows = invoice_aging(date(2025, 3, 31), reporting_currency=USD)
    assert sorted(r.open_reporting for r in rows) == [D("6.51"), D("6.51"), D("650.00")]
    assert {(r.rate, r.rate_date) for r in rows} == {(D("0.0065"), date(2025, 3, 31))}


def test_balances_at_the_closing_rate_flows_at_the_invoice_date_rate(db):
    """A €1,000 invoice booked at 1.10 (1,100.00 of sales) is worth 1,050.00 of AR on 31 Mar (the
    latest rate on or before it, 1.05 of 1 Mar; 1 Apr's 1.20 is not known yet) and 1,200.00 on 30 Apr;
    the breakdown keeps it in EUR beside the USD invoice."""
    book = Book()
    book.rate("EUR", date(2025, 1, 15), "1.10")
    book.rate("EUR", date(2025, 3, 1), "1.05")
    book.rate("EUR", date(2025, 4, 1), "1.20")
    c = book.customer("E1", "EUR")
    book.invoice(c, 1000, date(2025, 1, 15), date(2025, 2, 14), currency="EUR")
    book.invoice(book.customer("U1"), 500, date(2025, 3, 10), date(2025, 4, 9))

    march = portfolio(date(2025, 3, 31), reporting_currency=USD)
    assert march.by_currency["EUR"].open == march.by_currency["EUR"].overdue == D(1000)
    assert march.by_currency["USD"].open == march.by_currency["USD"].current == D(500)
    assert march.totals.open == D(1000) * D("1.05") + D(500) == D("1550.00")
    assert march.totals.overdue == D("1050.00")
    assert march.net_sales == D(1000) * D("1.10") + D(500)  # flows at their own date's rate
    assert march.customers == 2
    [eur] = [r for r in invoice_aging(date(2025, 3, 31), reporting_currency=USD) if r.currency == "EUR"]
    assert (eur.open_reporting, eur.rate, eur.rate_date) == (D("1050.00"), D("1.05"), date(2025, 3, 1))
    assert portfolio(date(2025, 4, 30), reporting_currency=USD).totals.open == D(1000) * D("1.20") + D(500)


def test_a_missing_rate_is_flagged_and_excluded_never_one(db):
    """A £500 invoice with no GBP rate on or before the as-of date (one dated after it does not
    count) stays in the GBP breakdown but out of the USD totals and sales (1000, never 1500), and is
    listed in fx_missing for the balance and for the sales."""
    book = Book()
    book.rate("GBP", date(2025, 4, 1), "1.25")  # after the as-of date
    c = book.customer()
    book.invoice(c, 1000, date(2025, 3, 1), date(2025, 3, 31))
    book.invoice(c, 500, date(2025, 3, 1), date(2025, 3, 31), currency="GBP")

    as_of = date(2025, 3, 20)
    m = portfolio(as_of, reporting_currency=USD)
    assert m.totals.open == D(1000)
    assert m.by_currency["GBP"].open == D(500)
    assert m.net_sales == D(1000)
    gaps = {(g.kind, g.currency): (g.documents, g.amount, g.first_date) for g in m.fx_missing}
    assert gaps == {("open", "GBP"): (1, D(500), as_of), ("sales", "GBP"): (1, D(500), date(2025, 3, 1))}
    assert m.fx_missing_count == 2
    [gbp] = [r for r in invoice_aging(as_of, reporting_currency=USD) if r.currency == "GBP"]
    assert gbp.open_reporting is None and gbp.rate is None
    assert customer_snapshots([c.id], as_of=as_of, reporting_currency=USD)[c.id].fx_missing == 1


# ------------------------------------------------------------------------ period metrics
def test_dso_standard_and_countback_over_three_months(db):
    """Sales Jan 3000, Feb 6000, Mar 9000 (S = 18000 over the 90 days 1 Jan–31 Mar); AR on 31 Mar is
    Feb's unpaid 3000 + Mar's 9000 = 12000. DSO = 12000 ÷ 18000 × 90 = 60. Countback: March's sales
    (9000) are covered, 31 days; the remaining 3000 cover half of February's 6000: 3000 ÷ 6000 × 28 = 14;
    45 days."""
    _, c = three_month_book()
    m = portfolio(date(2025, 3, 31), reporting_currency=USD, period_days=90)
    assert m.period_start == date(2025, 1, 1)
    assert m.net_sales == D(3000) + D(6000) + D(9000)
    assert m.totals.open == D(6000) - D(3000) + D(9000)
    assert m.dso == D(12000) / D(18000) * 90 == 60
    assert m.dso_countback == 31 + D(3000) / D(6000) * 28 == 45
    assert customer_metrics(c.id, date(2025, 3, 31), reporting_currency=USD).dso == m.dso


def test_countback_counts_the_as_of_month_up_to_the_as_of_date(db):
    """On 15 Mar the current month counts 15 days: with 1500 of March sales and 3000 in February,
    AR of 3000 covers March (15 days) and half of February (1500 ÷ 3000 × 28 = 14): 29 days; AR
    beyond every month walked gives no figure."""
    daily = {date(2025, 3, 10): D(1500), date(2025, 2, 10): D(3000)}
    assert countback(D(3000), date(2025, 3, 15), daily) == 15 + D(1500) / D(3000) * 28 == 29
    assert countback(D(10000), date(2025, 3, 15), daily, months=3) is None
    assert countback(D(0), date(2025, 3, 15), daily) == 0


def test_bpdso_add_and_cei(db):
    """Current AR on 31 Mar is March's 9000 (due 14 Apr): BPDSO = 9000 ÷ 18000 × 90 = 45 and
    ADD = 60 − 45 = 15. CEI: B = 2000 (December's invoice, open on 31 Dec), S = 18000, E = 12000,
    C = 9000: (2000 + 18000 − 12000) ÷ (2000 + 18000 − 9000) × 100 = 8000 ÷ 11000 × 100 ≈ 72.73."""
    three_month_book()
    m = portfolio(date(2025, 3, 31), reporting_currency=USD)
    assert m.totals.current == D(9000)
    assert m.bpdso == D(9000) / D(18000) * 90 == 45
    assert m.add == m.dso - m.bpdso == 15
    assert m.opening_ar == D(2000)
    assert m.cei == (D(2000) + D(18000) - D(12000)) * 100 / (D(2000) + D(18000) - D(9000))
    assert round(m.cei, 2) == D("72.73")


def test_days_to_pay_and_share_paid_on_time(db):
    """Closed in Jan–Mar: December's invoice, closed 20 Jan (50 days after 1 Dec, 20 days late), and
    January's, closed by its second payment on 5 Feb (26 days after 10 Jan, before its 9 Feb due
    date). February's, half paid, is not closed. Average days to pay (50 + 26) ÷ 2 = 38, days late
    (20 + 0) ÷ 2 = 10, on time 1 of 2."""
    three_month_book()
    m = portfolio(date(2025, 3, 31), reporting_currency=USD)
    assert m.paid_count == 2 and m.paid_on_time == 1
    assert m.avg_days_to_pay == D((date(2025, 1, 20) - date(2024, 12, 1)).days
                                  + (date(2025, 2, 5) - date(2025, 1, 10)).days) / 2 == 38
    assert m.avg_days_late == D(20 + 0) / 2
    assert m.share_on_time == D(1) / 2
    # as of 31 Jan (period 2 Nov–31 Jan) only December's invoice had closed, late
    early = portfolio(date(2025, 1, 31), reporting_currency=USD)
    assert (early.paid_count, early.paid_on_time, early.avg_days_to_pay) == (1, 0, 50)


def test_trend_points_are_the_portfolio_on_their_dates(db):
    """Each trend point (31 Mar, 1 Mar, 30 Jan) carries the DSO, BPDSO, ADD, CEI and AR that the
    portfolio reports as of its own date; the last one is the 60/45/15 of the three-month book."""
    three_month_book()
    points = trend(date(2025, 3, 31), points=3, step_days=30, reporting_currency=USD)
    assert [p.as_of for p in points] == [date(2025, 1, 30), date(2025, 3, 1), date(2025, 3, 31)]
    for p in points:
        m = portfolio(p.as_of, reporting_currency=USD)
        assert (p.total_ar, p.current_ar, p.net_sales) == (m.totals.open, m.totals.current, m.net_sales)
        assert (p.dso, p.dso_countback, p.bpdso, p.add, p.cei) == (m.dso, m.dso_countback, m.bpdso, m.add, m.cei)
    assert (points[-1].dso, points[-1].bpdso, points[-1].add) == (60, 45, 15)


# ----------------------------------------------------------------------------------- CLI
def test_cli_ar_report_prints_the_figures_and_the_currency_breakdown(db, settings):
    """``arhub ar report --as-of 2025-03-31`` shows DSO 60.00 and the billing-currency table; with
    ``--json`` the same figures come as data."""
    book, c = three_month_book()
    book.rate("EUR", date(2025, 3, 1), "1.05")
    book.invoice(book.customer("E1", "EUR"), 1000, date(2024, 11, 1), date(2024, 12, 1), currency="EUR")

    result = CliRunner().invoke(main, ["ar", "report", "--as-of", "2025-03-31"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Portfolio as of 2025-03-31" in text
    assert "By billing currency" in text and "EUR" in text
    assert "Missing rates" in text and "opening" in text  # no EUR rate yet on 31 Dec, the day before the period

    result = CliRunner().invoke(main, ["ar", "report", "--as-of", "2025-03-31", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # EUR 1000 × 1.05 joins the 12000 of USD AR; sales are unchanged (the EUR invoice is from November)
    assert D(data["totals"]["open"]) == D(12000) + D("1050.00")
    assert D(data["net_sales"]) == D(18000)
    assert D(data["dso"]) == D("13050.00") * 90 / D(18000)
    assert D(data["by_currency"]["EUR"]["buckets"][4]) == D(1000)  # 120 days past due: 91+
    assert D(data["by_currency"]["USD"]["open"]) == D(12000)
    assert [g["kind"] for g in data["fx_missing"]] == ["opening"]


def test_customer_fingerprints_follow_every_input_of_the_snapshot(db):
    """The digest of a customer's documents changes when one of its invoices is written again, when
    another customer's payment is applied to its invoice, when an invoice moves to another customer
    (both digests change) and when a payment is deleted; it stays when nothing of the customer's
    changed, whatever happens to other customers."""
    from middleware.models import utcnow

    book = Book()
    a, b, c = book.customer("A"), book.customer("B"), book.customer("C")
    inv_a = book.invoice(a, 1000, date(2026, 1, 1), date(2026, 1, 31))
    inv_b = book.invoice(b, 500, date(2026, 1, 5), date(2026, 2, 4))
    book.invoice(c, 700, date(2026, 1, 5), date(2026, 2, 4))
    start = customer_fingerprints()
    assert set(start) == {a.id, b.id, c.id} and customer_fingerprints([a.id]) == {a.id: start[a.id]}

    Invoice.update(po_number="PO-9", updated_at=utcnow()).where(Invoice.id == inv_a.id).execute()
    after_write = customer_fingerprints()
    assert after_write[a.id] != start[a.id] and after_write[b.id] == start[b.id]

    payment = book.pay(b, 200, date(2026, 2, 1), (inv_a, 200))  # B pays part of A's invoice
    after_payment = customer_fingerprints()
    assert after_payment[a.id] != after_write[a.id] and after_payment[b.id] != after_write[b.id]
    assert after_payment[c.id] == start[c.id]

    Application.update(amount=D(150)).where(Application.doc_external_id == payment.external_id).execute()
    assert customer_fingerprints()[a.id] != after_payment[a.id], "a changed application amount"

    before_move = customer_fingerprints()
    Invoice.update(customer=c.id, updated_at=utcnow()).where(Invoice.id == inv_b.id).execute()
    moved = customer_fingerprints()
    assert moved[b.id] != before_move[b.id] and moved[c.id] != before_move[c.id]

    Payment.update(deleted_at=utcnow()).where(Payment.id == payment.id).execute()
    assert customer_fingerprints()[b.id] != moved[b.id]
