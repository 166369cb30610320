"""middleware/sf_schema.py: canonical values as Salesforce fields take them."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

from middleware.sf_schema import sf_value

ADD_FIELD = {"name": "Avg_Days_Delinquent__c", "type": "double", "precision": 6, "scale": 1}
MONEY_FIELD = {"name": "Open_Balance__c", "type": "currency", "precision": 16, "scale": 2}


def test_numbers_are_rounded_half_up_to_the_field_scale_as_exact_text():
    """12.345 into a 2-decimal currency field is '12.35' (half up, no float on the way)."""
    assert sf_value(Decimal("12.345"), MONEY_FIELD) == "12.35"
    assert sf_value(Decimal("41.25"), ADD_FIELD) == "41.3"


def test_a_number_too_big_for_the_field_is_sent_empty_instead_of_failing_the_record():
    """Days delinquent of 111,827.5 (a customer with a few cents of sales in the period) does not
    fit Number(6,1): the field is left empty and the rest of the summary still lands."""
    assert sf_value(Decimal("111827.5"), ADD_FIELD) is None
    assert sf_value(Decimal("99999.9"), ADD_FIELD) == "99999.9"
    assert sf_value(Decimal("-100000"), ADD_FIELD) is None


def test_dates_datetimes_and_text():
    """Dates ISO, datetimes in Salesforce's format in UTC, text cut to the field's length."""
    assert sf_value(date(2026, 11, 23), {"type": "date"}) == "2026-11-23"
    assert sf_value(datetime(2026, 11, 23, 10, 5, tzinfo=timezone.utc), {"type": "datetime"}) == \
        "2026-11-23T10:05:00.000+0000"
    assert sf_value("x" * 300, {"type": "string", "length": 255}) == "x" * 255
    assert sf_value(True, {"type": "boolean"}) is True
