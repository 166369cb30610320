"""The canonical schemas, and the fast loader that runs their validators on typed records."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from marshmallow import ValidationError

from middleware.schemas import FAST_LOADERS, SCHEMAS

INVOICE = {"external_id": "42", "number": "INV-42", "customer_external_id": "7", "currency": "JPY",
           "issue_date": date(2026, 1, 1), "due_date": date(2026, 1, 31), "amount": Decimal("120000"),
           "erp_open_amount": Decimal("0"), "status": "paid", "po_number": None,
           "erp_modified_at": datetime(2026, 2, 1, 9, 30, tzinfo=timezone.utc)}
PAYMENT = {"external_id": "p1", "customer_external_id": "7", "currency": "EUR", "date": date(2026, 2, 1),
           "amount": Decimal("150.00"), "applications": [
               {"invoice_external_id": "42", "amount": Decimal("100.00"), "date": date(2026, 2, 1)},
               {"invoice_external_id": "43", "amount": Decimal("50.00")}]}

CUSTOMER = {"external_id": "1", "name": "Müller & Söhne GmbH", "billing_currency": "EUR",
            "billing_address": {"lines": ["Leopoldstraße 12", "3. OG"], "city": "München", "region": "Bayern",
                                "postal_code": "80802", "country": "DE"}}

BAD = [
    ("customer", {**CUSTOMER, "billing_address": {**CUSTOMER["billing_address"], "country": "Germany"}},
     "billing_address"),
    ("customer", {**CUSTOMER, "billing_address": {"lines": ["x" * 501]}}, "billing_address"),
    ("customer", {**CUSTOMER, "billing_address": {"lines": [None]}}, "billing_address"),
    ("customer", {**CUSTOMER, "billing_address": "Leopoldstraße 12"}, "billing_address"),
    ("invoice", {**INVOICE, "currency": "XYZ"}, "currency"),
    ("invoice", {**INVOICE, "amount": Decimal("-1")}, "amount"),
    ("invoice", {**INVOICE, "due_date": date(2025, 12, 1)}, "due_date"),
    ("invoice", {k: v for k, v in INVOICE.items() if k != "customer_external_id"}, "customer_external_id"),
    ("invoice", {**INVOICE, "issue_date": "2026-01-01"}, None),  # a string is deserialized by marshmallow itself
    ("invoice", {**INVOICE, "status": "lost"}, "status"),
    ("payment", {**PAYMENT, "amount": Decimal("10")}, "applications"),
    ("payment", {**PAYMENT, "applications": [{"amount": Decimal("1")}]}, "applications"),
    ("fx_rate", {"currency": "GBP", "rate_date": date(2026, 1, 1), "rate": Decimal("0")}, "rate"),
    ("customer", {"external_id": "1", "name": "Zoë's Café", "billing_currency": "EUR", "email": "not-an-email"},
     "email"),
]


@pytest.mark.parametrize("name,record", [("invoice", INVOICE), ("payment", PAYMENT),
                                         ("customer", {"external_id": "1", "name": "O'Brien Ltd",
                                                       "billing_currency": "GBP", "arr": Decimal("1000"),
                                                       "contacts": [{"email": "cfo@x.example", "role": "escalation"}]}),
                                         ("customer", CUSTOMER),
                                         ("customer", {**CUSTOMER, "billing_address": None}),
                                         ("customer", {**CUSTOMER, "billing_address": {"city": "Wien"}})])
def test_fast_loader_gives_what_marshmallow_gives_on_good_records(name, record):
    """On a valid typed record the fast path returns exactly marshmallow's result (defaults included)."""
    assert FAST_LOADERS[name].load(record) == SCHEMAS[name].load(record)


def test_an_address_stays_on_the_fast_path():
    """A customer with a billing address (a nested object with a list of lines) is loaded by the
    fast path itself, not by the fallback to marshmallow (the sync's records/s depend on it)."""
    assert FAST_LOADERS["customer"]._fast(CUSTOMER) == SCHEMAS["customer"].load(CUSTOMER)


@pytest.mark.parametrize("name,record,field", BAD)
def test_fast_loader_reports_what_marshmallow_reports_on_bad_records(name, record, field):
    """A bad record fails with marshmallow's own messages, naming the field; a string date is still parsed."""
    try:
        expected = SCHEMAS[name].load(record)
    except ValidationError as exc:
        expected = exc.messages
    try:
        got = FAST_LOADERS[name].load(record)
    except ValidationError as exc:
        got = exc.messages
    assert got == expected
    if field is None:
        assert got["issue_date"] == date(2026, 1, 1)
    else:
        assert field in got
