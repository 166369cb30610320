"""jobs.balances.refresh_balances, the cron's after-midnight rebuild of customer_balance (SQLite and PostgreSQL)."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from jobs.balances import refresh_balances
from middleware import balances
from middleware.models import Customer, CustomerBalance, Invoice, Source
from middleware.settings import get_settings


def test_the_nightly_job_moves_the_balances_to_the_new_day_once(db):
    """The table was written yesterday, when the invoice was not yet due. The job run after
    midnight rewrites it for today (in ARHUB_TIMEZONE), so the invoice is now overdue in the
    table without any web request rebuilding it; a second run the same day changes nothing."""
    today = datetime.now(get_settings().tzinfo).date()
    yesterday = today - timedelta(days=1)
    source = Source.create(name="erp", kind="rest")
    cust = Customer.create(source=source, external_id="C1", name="Night Owl", billing_currency="USD",
                           content_hash="x")
    Invoice.create(source=source, external_id="I1", number="INV-1", customer=cust, customer_external_id="C1",
                   currency="USD", amount=Decimal("500"), open_amount=Decimal("500"),
                   open_amount_reporting=Decimal("500"), issue_date=today - timedelta(days=30), due_date=yesterday,
                   content_hash="x")
    balances.refresh(today=yesterday)
    row = CustomerBalance.get_by_id(cust.id)
    assert (row.as_of, row.overdue_reporting, row.n_current) == (yesterday, Decimal("0"), 1)

    first = refresh_balances()

    assert first["as_of"] == today.isoformat() and first["refreshed"] is True
    row = CustomerBalance.get_by_id(cust.id)
    assert (row.as_of, row.overdue_reporting, row.oldest_due, row.n_current, row.n_1_30) == (
        today, Decimal("500"), yesterday, 0, 1)
    assert balances.stored_day() == today and isinstance(balances.stored_day(), date)
    assert refresh_balances()["refreshed"] is False
