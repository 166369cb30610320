"""In a real browser: find a customer, open it, open one of its invoices, and add a note to its timeline."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from middleware.models import Company, Customer, Invoice, Source
from middleware.people import today
from tests.e2e.conftest import login

pytestmark = pytest.mark.e2e


@pytest.fixture
def customers(db):
    Company.create(name="Acme Cloud", reporting_currency="USD")
    source = Source.create(name="netsuite", kind="soap", config={})
    due = today() - timedelta(days=12)
    made = {}
    for n, name in enumerate(("Globex GmbH", "Initech Inc.", "Umbrella Corp"), start=1):
        c = Customer.create(source=source, external_id=f"C{n}", number=f"CUST-{n}", name=name,
                            billing_currency="USD", content_hash="x" * 32)
        Invoice.create(source=source, external_id=f"I{n}", number=f"INV-{n}00", customer=c, customer_external_id=f"C{n}",
                       currency="USD", amount=Decimal("800.00"), amount_reporting=Decimal("800.00"), fx_rate=Decimal(1),
                       fx_rate_date=due - timedelta(days=30), open_amount=Decimal("800.00"),
                       open_amount_reporting=Decimal("800.00"), content_hash="x" * 32, issue_date=due - timedelta(days=30),
                       due_date=due)
        made[name] = c
    return made


def test_search_open_customer_and_invoice_then_add_a_note(page, console_url, make_user, customers):
    """A collector searches "initech", opens the customer, opens its invoice, goes back, adds a note
    and sees it at the top of the timeline."""
    make_user("cora@example.com", "collector", "Cora Collector")
    login(page, console_url, "cora@example.com")
    page.goto(console_url + "/customers/")
    page.get_by_test_id("customer-search").fill("initech")
    page.get_by_test_id("customer-filter-submit").click()
    page.wait_for_url("**/customers/?*q=initech*")
    rows = page.get_by_test_id("customer-row")
    assert rows.count() == 1
    page.get_by_role("link", name="Initech Inc.").click()
    assert page.get_by_test_id("customer-name").inner_text().startswith("Initech Inc.")
    assert "$800.00" in page.get_by_test_id("balances").inner_text()
    page.get_by_role("link", name="INV-200").click()
    assert page.get_by_test_id("invoice-number").inner_text().startswith("Invoice INV-200")
    page.get_by_test_id("back-to-customer").click()
    page.get_by_label("Note").fill("Promised a call back on Friday")
    page.get_by_role("button", name="Add note").click()
    page.get_by_text("Note added.").wait_for()
    first = page.get_by_test_id("timeline").locator("li").first
    assert "Promised a call back on Friday" in first.inner_text()
