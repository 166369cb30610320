"""marshmallow schemas of the canonical records the mapping produces.

Transforms already typed every value (``Decimal``, ``date``, aware ``datetime``);
these schemas say what is required and what is acceptable (ISO 4217 codes,
non-negative amounts, a due date on or after the issue date), and report every
problem by field so the rejected record names it.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache

from babel.numbers import get_currency_precision, list_currencies
from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, validate, validates_schema

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


class AddressSchema(Schema):
    """A postal address as the ERP holds it: street lines (blank ones dropped), city, region
    (state, province, county), postal code and an ISO 3166 country code."""

    class Meta:
        unknown = EXCLUDE

    lines = fields.List(fields.String(validate=validate.Length(max=500)), load_default=list)
    city = fields.String(allow_none=True, validate=validate.Length(max=255))
    region = fields.String(allow_none=True, validate=validate.Length(max=255))
    postal_code = fields.String(allow_none=True, validate=validate.Length(max=50))
    country = fields.String(allow_none=True, validate=validate.Length(equal=2))


class CustomerSchema(_Base):
    number = fields.String(allow_none=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=255))
    email = fields.String(allow_none=True, validate=validate.Email())
    billing_currency = Currency(required=True)
    country = fields.String(allow_none=True, validate=validate.Length(equal=2))
    billing_address = fields.Nested(AddressSchema, allow_none=True)
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


# --------------------------------------------------------------------- fast path
_TYPES = {
    fields.String: str, fields.Integer: int, fields.Decimal: Decimal, fields.Boolean: bool,
    fields.Date: date, fields.AwareDateTime: datetime,
}


class _ScalarList:
    """The fast path of ``fields.List(fields.String(...))``: every item of the exact type and valid."""

    scalar = True

    def __init__(self, expected: type, validators: tuple):
        self.expected, self.validators = expected, validators

    def _fast(self, item):
        if type(item) is not self.expected:
            return None
        for validate_fn in self.validators:
            if validate_fn(item) is False:
                return None
        return item


class FastLoader:
    """Runs a schema's own validators on a record whose values are already typed.

    The mapping's transforms hand over ``Decimal``, ``date``, aware ``datetime``,
    ``str``: marshmallow's per-field deserialization would only copy them, at a cost
    larger than the rest of the sync. This loader takes the schema's declared fields
    (required, allow_none, load_default, validators, nested schemas) and its
    ``@validates_schema`` methods and runs them directly. A value of an unexpected
    type, or any error, falls back to ``schema.load`` so results and messages are
    marshmallow's own (a test compares both on good and bad records).
    """

    scalar = False

    def __init__(self, schema: Schema):
        self.schema = schema
        self.fields = []
        for name, field in schema.load_fields.items():
            expected = next((t for cls, t in _TYPES.items() if type(field) is cls), None)
            nested = None
            if isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
                nested = FastLoader(field.inner.schema)
                expected = list
            elif isinstance(field, fields.List) and type(field.inner) in _TYPES:  # a list of plain values
                nested = _ScalarList(_TYPES[type(field.inner)], tuple(field.inner.validators))
                expected = list
            elif isinstance(field, fields.Nested) and not field.many:  # one nested object
                nested = FastLoader(field.schema)
                expected = dict
            default = field.load_default
            self.fields.append((name, expected, field.required, field.allow_none, default,
                                tuple(field.validators), nested))
        self.schema_validators = [getattr(schema, attr) for attr, _many, _kw in schema._hooks[("validates_schema")]]

    def _fast(self, record: dict) -> dict | None:
        out = {}
        for name, expected, required, allow_none, default, validators, nested in self.fields:
            value = record.get(name, missing)
            if value is missing:
                if required:
                    return None
                if default is not missing:
                    out[name] = default() if callable(default) else default
                continue
            if value is None:
                if not allow_none:
                    return None
                out[name] = None
                continue
            if type(value) is not expected:  # exact: a datetime is no date, a bool no int
                return None
            if nested is not None:
                if expected is dict:
                    value = nested._fast(value)
                    if value is None:
                        return None
                else:
                    items = []
                    for item in value:
                        loaded = nested._fast(item) if nested.scalar or isinstance(item, dict) else None
                        if loaded is None:
                            return None
                        items.append(loaded)
                    value = items
            if expected is datetime and value.tzinfo is None:
                return None
            for validate_fn in validators:
                if validate_fn(value) is False:
                    return None
            out[name] = value
        for validator in self.schema_validators:
            validator(out)
        return out

    def load(self, record: dict) -> dict:
        """Like ``schema.load``: the loaded record, or ``ValidationError``."""
        try:
            loaded = self._fast(record)
        except ValidationError:
            loaded = None
        return self.schema.load(record) if loaded is None else loaded


FAST_LOADERS: dict[str, FastLoader] = {name: FastLoader(schema) for name, schema in SCHEMAS.items()}
