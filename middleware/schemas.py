"""marshmallow schemas of the canonical records the mapping produces.

Transforms already typed every value (``Decimal``, ``date``, aware ``datetime``);
these schemas say what is required and what is acceptable (ISO 4217 codes,
non-negative amounts, a due date on or after the issue date), and report every
problem by field so the rejected record names it.
"""
from __future__ import annotations

from functools import lru_cache

from babel.numbers import get_currency_precision, list_currencies
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

STATUSES = ("draft", "open", "paid", "voided", "deleted")


@lru_cache(maxsize=1)
def iso_currencies() -> frozenset[str]:
    return frozenset(list_currencies())


@lru_cache(maxsize=None)
def minor_units(currency: str) -> int:
    """ISO 4217 minor units (JPY 0, USD 2, BHD 3)."""
    return get_currency_precision(currency)


def _currency(value: str) -> None:
    if value not in iso_currencies():
        raise ValidationError(f"{value!r} is not an ISO 4217 currency code")


def _non_negative(value) -> None:
    if value < 0:
        raise ValidationError(f"must not be negative (got {value})")


def _positive(value) -> None:
    if value <= 0:
        raise ValidationError(f"must be greater than zero (got {value})")


Money = lambda **kw: fields.Decimal(validate=_non_negative, **kw)  # noqa: E731
Currency = lambda **kw: fields.String(validate=_currency, **kw)  # noqa: E731


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE

    external_id = fields.String(required=True, validate=validate.Length(min=1, max=255))


class ContactSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    external_id = fields.String()
    name = fields.String(allow_none=True)
    email = fields.String(allow_none=True, validate=validate.Email())
    phone = fields.String(allow_none=True)
    role = fields.String(load_default="billing", validate=validate.OneOf(("billing", "escalation", "other")))


class CustomerSchema(_Base):
    number = fields.String(allow_none=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=255))
    email = fields.String(allow_none=True, validate=validate.Email())
    billing_currency = Currency(required=True)
    country = fields.String(allow_none=True, validate=validate.Length(equal=2))
    parent_external_id = fields.String(allow_none=True)
    arr = Money(allow_none=True)
    terms_days = fields.Integer(allow_none=True, validate=validate.Range(0, 3650))
    locale = fields.String(allow_none=True)
    inactive = fields.Boolean(load_default=False)
    erp_modified_at = fields.AwareDateTime(allow_none=True)
    contacts = fields.List(fields.Nested(ContactSchema), load_default=list)


class ApplicationSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    invoice_external_id = fields.String(required=True)
    amount = fields.Decimal(required=True, validate=_non_negative)
    date = fields.Date(allow_none=True)


class InvoiceSchema(_Base):
    number = fields.String(allow_none=True)
    customer_external_id = fields.String(required=True)
    currency = Currency(required=True)
    issue_date = fields.Date(required=True)
    sent_date = fields.Date(allow_none=True)
    due_date = fields.Date(required=True)
    amount = Money(required=True)
    erp_open_amount = Money(allow_none=True)
    status = fields.String(load_default="open", validate=validate.OneOf(STATUSES))
    po_number = fields.String(allow_none=True)
    memo = fields.String(allow_none=True)
    erp_modified_at = fields.AwareDateTime(allow_none=True)

    @validates_schema
    def _dates(self, data, **kwargs):
        issue, due = data.get("issue_date"), data.get("due_date")
        if issue and due and due < issue:
            raise ValidationError(f"due date {due} is before the issue date {issue}", "due_date")


class _Settlement(_Base):
    number = fields.String(allow_none=True)
    customer_external_id = fields.String(required=True)
    currency = Currency(required=True)
    date = fields.Date(required=True)
    amount = Money(required=True)
    status = fields.String(load_default="open")
    erp_modified_at = fields.AwareDateTime(allow_none=True)
    applications = fields.List(fields.Nested(ApplicationSchema), load_default=list)

    @validates_schema
    def _applied(self, data, **kwargs):
        apps = data.get("applications") or []
        if apps and data.get("amount") is not None and data.get("status") not in ("voided", "deleted"):
            total = sum(a["amount"] for a in apps)
            if total > data["amount"]:
                raise ValidationError(f"applications total {total} exceeds the amount {data['amount']}",
                                      "applications")


class CreditMemoSchema(_Settlement):
    reason = fields.String(allow_none=True)


class PaymentSchema(_Settlement):
    reference = fields.String(allow_none=True)


class FxRateSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    currency = Currency(required=True)
    base_currency = Currency(allow_none=True)
    rate_date = fields.Date(required=True)
    rate = fields.Decimal(required=True, validate=_positive)


class CurrencySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    code = Currency(required=True)
    name = fields.String(allow_none=True)


SCHEMAS: dict[str, Schema] = {
    "customer": CustomerSchema(),
    "invoice": InvoiceSchema(),
    "credit_memo": CreditMemoSchema(),
    "payment": PaymentSchema(),
    "fx_rate": FxRateSchema(),
    "currency": CurrencySchema(),
}


def flatten_messages(messages, prefix: str = "") -> list[tuple[str, str]]:
    """marshmallow's nested error dict → [(field path, message)]."""
    out: list[tuple[str, str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = key if key != "_schema" else ""
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            else:
                path = f"{prefix}.{name}" if prefix and name else (name or prefix)
            out.extend(flatten_messages(value, path))
    elif isinstance(messages, list):
        for item in messages:
            if isinstance(item, (dict, list)):
                out.extend(flatten_messages(item, prefix))
            else:
                out.append((prefix or "record", str(item)))
    else:
        out.append((prefix or "record", str(messages)))
    return out
