"""In a real browser: the dashboard's totals, and the aging chart leading to the customers behind a bar."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from tests.e2e.conftest import login

pytestmark = pytest.mark.e2e


@pytest.fixture
def book(db):
    from middleware.models import Customer, Invoice, Source

    source = Source.create(name="erp", kind="rest")
    today = date.today()
    for n, (name, amount, due_in) in enumerate((("Acme", "1200.00", 15), ("Globex", "640.00", -70),
                                                  ("Initech", "80.00", -5))):
        customer = Customer.create(source=source, external_id=name, number=f"C-{n}", name=name,
                                   billing_currency="USD", content_hash="x")
        due = today + timedelta(days=due_in)
        Invoice.create(source=source, external_id=f"INV-{n}", number=f"N-{n}", customer=customer,
                       customer_external_id=name, currency="USD", amount=Decimal(amount), open_amount=Decimal(amount),
                       open_amount_reporting=Decimal(amount), amount_reporting=Decimal(amount),
                       issue_date=due - timedelta(days=30), due_date=due, content_hash="x")


def test_dashboard_totals_and_aging_bar_drill_down(page, console_url, make_user, book):
    """The dashboard shows open, overdue and current AR; clicking the 61–90 bar opens the customers in it."""
    make_user("ada@example.com", "admin", "Ada Admin")
    login(page, console_url, "ada@example.com")
    page.goto(console_url + "/")
    assert "$1,920.00" in page.get_by_test_id("total-open").inner_text()
    assert "$720.00" in page.get_by_test_id("total-overdue").inner_text()
    assert "$1,200.00" in page.get_by_test_id("total-current").inner_text()
    assert "Globex" in page.get_by_test_id("top-overdue").inner_text()
    page.get_by_test_id("aging-bar-61-90").click()
    page.wait_for_url("**/customers/?bucket=61-90")
    assert page.url == console_url + "/customers/?bucket=61-90"


def test_drill_from_the_dashboard_to_a_customer_and_one_of_its_invoices(page, console_url, make_user, book):
    """A manager goes dashboard → the 61–90 bar → the customers in it → Globex → its overdue invoice."""
    make_user("mia@example.com", "viewer", "Mia Manager")
    login(page, console_url, "mia@example.com")
    page.goto(console_url + "/")
    page.get_by_test_id("aging-bar-61-90").click()
    page.wait_for_url("**/customers/?bucket=61-90")
    listing = page.locator("table").first.inner_text()
    assert "Globex" in listing and "Acme" not in listing and "Initech" not in listing
    page.get_by_role("link", name="Globex").first.click()
    page.wait_for_url("**/customers/*")
    assert "$640.00" in page.content()
    page.get_by_role("link", name="N-1").first.click()
    page.wait_for_url("**/customers/invoice/*")
    body = page.content()
    assert "N-1" in body and "$640.00" in body and "Globex" in body
