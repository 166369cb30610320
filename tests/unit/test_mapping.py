"""middleware.mapping: source paths, transforms, CompiledMapping.apply, preview(), broken definitions."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from middleware.mapping import (
    MISSING, CompiledMapping, FieldSpec, MappingError, compile_path, parse_ms_json_date, preview,
)
from middleware.sync import validate_record

UTC = timezone.utc

SOAP_CUSTOMER = {
    "internalId": "1042",
    "entityId": "CUST-001042",
    "companyName": "O'Brien & O'Neill",
    "currency": {"internalId": "2", "name": "EUR"},
    "addressbookList": {"addressbook": [
        {"defaultBilling": "false", "addressbookAddress": {"country": "_ireland", "city": "Cork"}},
        {"defaultBilling": "true", "addressbookAddress": {"country": "_germany", "city": "Köln"}},
    ]},
    "customFieldList": {"customField": [
        {"scriptId": "custentity_tier", "value": "gold"},
        {"scriptId": "custentity_arr", "value": "125000.50"},
    ]},
}


def convert(transform: str, value, **args):
    """Run one transform through a real one-field mapping; returns (value or MISSING, errors)."""
    mapping = CompiledMapping("x", [FieldSpec("f", "v", transform, args)])
    assert not mapping.errors, mapping.errors
    record, errors = mapping.apply({"v": value})
    return record.get("f", MISSING), errors


def value_of(transform: str, value, **args):
    result, errors = convert(transform, value, **args)
    assert not errors, [e.as_dict() for e in errors]
    return result


def error_of(transform: str, value, **args) -> str:
    result, errors = convert(transform, value, **args)
    assert result is MISSING and len(errors) == 1
    return errors[0].message


# ------------------------------------------------------------------------ paths
def test_nested_keys_reach_into_sub_records():
    """``currency.name`` reads a key of a nested record; a missing key is MISSING, not an exception."""
    assert compile_path("currency.name")(SOAP_CUSTOMER) == "EUR"
    assert compile_path("companyName")(SOAP_CUSTOMER) == "O'Brien & O'Neill"
    assert compile_path("currency.symbol")(SOAP_CUSTOMER) is MISSING
    assert compile_path("terms.name")(SOAP_CUSTOMER) is MISSING


def test_list_item_by_position():
    """``[0]`` picks the first list item, ``[-1]`` the last; an index past the end is MISSING."""
    assert compile_path("addressbookList.addressbook[0].addressbookAddress.city")(SOAP_CUSTOMER) == "Cork"
    assert compile_path("addressbookList.addressbook[-1].addressbookAddress.city")(SOAP_CUSTOMER) == "Köln"
    assert compile_path("addressbookList.addressbook[5].addressbookAddress.city")(SOAP_CUSTOMER) is MISSING


def test_list_item_by_key_value_filter():
    """``[key=value]`` picks the first item whose key has that value (string comparison)."""
    path = compile_path("addressbookList.addressbook[defaultBilling=true].addressbookAddress.country")
    assert path(SOAP_CUSTOMER) == "_germany"
    quoted = compile_path("addressbookList.addressbook[defaultBilling='false'].addressbookAddress.city")
    assert quoted(SOAP_CUSTOMER) == "Cork"
    assert compile_path("addressbookList.addressbook[defaultBilling=maybe].addressbookAddress")(SOAP_CUSTOMER) is MISSING


def test_custom_field_by_script_id():
    """A NetSuite custom field is found by its scriptId wherever it sits in the list."""
    assert compile_path("customFieldList.customField[scriptId=custentity_arr].value")(SOAP_CUSTOMER) == "125000.50"
    assert compile_path("customFieldList.customField[scriptId=custentity_tier].value")(SOAP_CUSTOMER) == "gold"
    assert compile_path("customFieldList.customField[scriptId=custentity_none].value")(SOAP_CUSTOMER) is MISSING


def test_a_single_dict_where_a_list_is_expected_counts_as_a_list_of_one():
    """SOAP collapses a one-element repeat into a dict: ``[0]`` and ``[key=value]`` still find it."""
    single = {"customFieldList": {"customField": {"scriptId": "custentity_arr", "value": "99"}},
              "addressbookList": {"addressbook": {"addressbookAddress": {"country": "_france"}}}}
    assert compile_path("customFieldList.customField[scriptId=custentity_arr].value")(single) == "99"
    assert compile_path("customFieldList.customField[0].value")(single) == "99"
    assert compile_path("addressbookList.addressbook[0].addressbookAddress.country")(single) == "_france"


def test_list_fields_read_every_item_of_a_list():
    """``applications[].amount`` from ``applyList.apply[].amount`` makes one application per list item."""
    specs = [
        FieldSpec("external_id", "internalId"),
        FieldSpec("applications[].invoice_external_id", "applyList.apply[].doc"),
        FieldSpec("applications[].amount", "applyList.apply[].amount", "decimal"),
        FieldSpec("applications[].kind", None, "constant", {"value": "payment"}),
    ]
    raw = {"internalId": "77", "applyList": {"apply": [
        {"doc": "501", "amount": "100.10"}, {"doc": "502", "amount": "0.05"}]}}
    record, errors = CompiledMapping("payment", specs).apply(raw)
    assert errors == []
    assert record == {"external_id": "77", "applications": [
        {"invoice_external_id": "501", "amount": Decimal("100.10"), "kind": "payment"},
        {"invoice_external_id": "502", "amount": Decimal("0.05"), "kind": "payment"}]}
    one, _ = CompiledMapping("payment", specs).apply({"internalId": "78", "applyList": {"apply": {"doc": "9", "amount": "1"}}})
    assert one["applications"] == [{"invoice_external_id": "9", "amount": Decimal("1"), "kind": "payment"}]
    none, _ = CompiledMapping("payment", specs).apply({"internalId": "79"})
    assert none["applications"] == []  # constants alone make no item


def test_empty_brackets_outside_a_list_field_and_bad_selectors_are_mapping_errors():
    """``[]`` in a scalar field and an unreadable selector are refused when the mapping is built."""
    with pytest.raises(MappingError, match=r"\[\] only in list fields"):
        compile_path("applyList.apply[].amount")
    with pytest.raises(MappingError, match="bad selector"):
        compile_path("items[abc]")
    mapping = CompiledMapping("invoice", [FieldSpec("amount", "lines[].amount", "decimal")])
    assert [(e.field, e.path) for e in mapping.errors] == [("amount", "lines[].amount")]


def test_object_fields_build_one_nested_object():
    """``billing_address.city`` fills one field of a nested object; the object is None when none of
    its fields found a value, and a conversion error names ``object.field``."""
    base = "addressbookList.addressbook[defaultBilling=true].addressbookAddress"
    specs = [
        FieldSpec("external_id", "internalId"),
        FieldSpec("billing_address.lines", None, "collect", {"paths": [f"{base}.addr1", f"{base}.addr2"]}),
        FieldSpec("billing_address.city", f"{base}.city"),
        FieldSpec("billing_address.country", f"{base}.country", "lookup", {"table": "country"}),
    ]
    mapping = CompiledMapping("customer", specs, {"country": {"_germany": "DE", "_ireland": "IE"}})
    assert mapping.errors == []
    record, errors = mapping.apply(SOAP_CUSTOMER)
    assert errors == []
    assert record == {"external_id": "1042", "billing_address": {"city": "Köln", "country": "DE"}}
    raw = {"internalId": "1", "addressbookList": {"addressbook": {
        "defaultBilling": "true", "addressbookAddress": {"addr1": " Hohe Str. 1 ", "addr2": "", "country": "_mars"}}}}
    record, errors = mapping.apply(raw)
    assert record["billing_address"] == {"lines": ["Hohe Str. 1"]}
    assert [(e.field, e.value) for e in errors] == [("billing_address.country", "_mars")]
    assert mapping.apply({"internalId": "2"})[0] == {"external_id": "2", "billing_address": None}
    assert mapping.unmatched([{"internalId": "2"}]) == [f"{base}.city", f"{base}.country"]
    bad = CompiledMapping("customer", [FieldSpec("billing_address.geo.lat", "lat")])
    assert [e.field for e in bad.errors] == ["billing_address.geo.lat"]


# ------------------------------------------------------------------- transforms
def test_collect_lists_the_non_blank_values():
    """collect reads several paths into a list of the non-blank values, stripped, in order; all
    blank means no value."""
    spec = FieldSpec("lines", None, "collect", {"paths": ["AddressLine1", "AddressLine2", "AddressLine3"]})
    mapping = CompiledMapping("x", [spec])
    assert mapping.apply({"AddressLine1": "Level 2", "AddressLine2": " ", "AddressLine3": "1 Queen St"})[0] == {
        "lines": ["Level 2", "1 Queen St"]}
    assert mapping.apply({"AddressLine2": ""})[0] == {}
    assert [e.field for e in CompiledMapping("x", [FieldSpec("lines", None, "collect")]).errors] == ["lines"]


def test_text_strips_and_enforces_max_length():
    """Text is stripped; a value longer than ``max_length`` is an error saying so."""
    assert value_of("text", "  Acme Inc.  ") == "Acme Inc."
    assert value_of("text", {"internalId": "5", "name": "EUR"}) == "EUR"
    assert error_of("text", "x" * 11, max_length=10) == "longer than 10 characters"
    assert value_of("text", "x" * 10, max_length=10) == "x" * 10


def test_decimal_from_strings_and_minor_units():
    """Amounts become exact Decimals; ``minor_units: 2`` turns 12345 cents into 123.45."""
    assert value_of("decimal", "1,234.56") == Decimal("1234.56")
    assert value_of("decimal", " 0.1 ") == Decimal("0.1")
    assert value_of("decimal", 0.1) == Decimal("0.1")  # a float is read by its repr, not its binary value
    assert value_of("decimal", "12345", minor_units=2) == Decimal("123.45")
    assert value_of("decimal", 12345, minor_units=2) == Decimal("123.45")
    assert value_of("decimal", "5", negate=True) == Decimal("-5")
    assert isinstance(value_of("decimal", "7"), Decimal)


def test_decimal_rejects_non_numbers_and_the_schema_rejects_negative_amounts():
    """'abc', booleans and infinities are conversion errors; a negative amount fails validation, naming ``amount``."""
    assert error_of("decimal", "abc") == "not a number"
    assert error_of("decimal", True) == "not a number"
    assert error_of("decimal", "Infinity") == "not a finite number"
    assert error_of("reciprocal", "0") == "rate is zero"
    out = preview([FieldSpec("external_id", "id"), FieldSpec("amount", "total", "decimal")], {"id": "1", "total": "-5.00"},
                  "invoice", validate=lambda rec: validate_record("invoice", rec)[1])
    negative = [e for e in out["errors"] if e["field"] == "amount"]
    assert negative and "negative" in negative[0]["message"]


def test_dates_with_a_format_and_in_a_time_zone():
    """A date with a format parses it; a timestamp names the business date in the given time zone."""
    assert value_of("date", "2019-02-21") == date(2019, 2, 21)
    assert value_of("date", "21/02/2019", format="%d/%m/%Y") == date(2019, 2, 21)
    # 02:30 UTC on the 22nd is still the 21st in New York
    assert value_of("date", "2019-02-22T02:30:00Z", timezone="America/New_York") == date(2019, 2, 21)
    assert value_of("date", "2019-02-22T02:30:00Z") == date(2019, 2, 22)
    assert "does not match format" in error_of("date", "2019-02-21", format="%d/%m/%Y")
    assert error_of("date", "yesterday")


def test_datetime_is_converted_to_utc():
    """Naive timestamps are read in the given zone (UTC by default); every result is aware UTC."""
    berlin = value_of("datetime", "2019-02-21 12:00:00", timezone="Europe/Berlin")
    assert berlin == datetime(2019, 2, 21, 11, 0, tzinfo=UTC) and berlin.tzinfo == UTC
    offset = value_of("datetime", "2019-02-21T12:00:00-05:00")
    assert offset == datetime(2019, 2, 21, 17, 0, tzinfo=UTC) and offset.utcoffset().total_seconds() == 0
    assert value_of("datetime", "21.02.2019 08:15", format="%d.%m.%Y %H:%M") == datetime(2019, 2, 21, 8, 15, tzinfo=UTC)
    assert value_of("datetime", "2019-02-21T12:00:00Z").tzinfo == UTC


def test_microsoft_json_dates():
    """``/Date(1550793549320+0000)/`` is 2019-02-21 23:59:09.320 UTC; as a date it is the 21st (or the 22nd in Tokyo)."""
    expected = datetime(2019, 2, 21, 23, 59, 9, 320000, tzinfo=UTC)
    assert parse_ms_json_date("/Date(1550793549320+0000)/") == expected
    assert value_of("ms_json_datetime", "/Date(1550793549320+0000)/") == expected
    assert value_of("ms_json_datetime", "/Date(1550793549320)/") == expected
    assert value_of("ms_json_date", "/Date(1550793549320+0000)/") == date(2019, 2, 21)
    assert value_of("ms_json_date", "/Date(1550793549320+0000)/", timezone="Asia/Tokyo") == date(2019, 2, 22)
    assert value_of("ms_json_date", "/Date(-86400000+0000)/") == date(1969, 12, 31)
    assert error_of("ms_json_date", "2019-02-21") == "not a /Date(ms+zone)/ value"


def test_boolean():
    """true/yes/1 and false/no/0 in any case are booleans; anything else is an error."""
    assert [value_of("boolean", v) for v in ("true", "YES", "1", "T", True)] == [True] * 5
    assert [value_of("boolean", v) for v in ("false", "No", "0", False)] == [False] * 4
    assert error_of("boolean", "perhaps") == "not a boolean"


def test_enum_maps_values_and_names_an_unknown_one():
    """An enum maps source values; an unknown value is an error listing the known ones, unless a default is set."""
    table = {"AUTHORISED": "open", "PAID": "paid"}
    assert value_of("enum", "PAID", map=table) == "paid"
    assert value_of("enum", "paid", map=table, ignore_case=True) == "paid"
    message = error_of("enum", "SUBMITTED", map=table)
    assert "'SUBMITTED'" in message and "AUTHORISED" in message and "PAID" in message
    assert value_of("enum", "SUBMITTED", map=table, default="draft") == "draft"


def test_constant_ignores_the_record():
    """A constant fills the field whatever the record holds."""
    record, errors = CompiledMapping("x", [FieldSpec("role", None, "constant", {"value": "escalation"})]).apply({})
    assert (record, errors) == ({"role": "escalation"}, [])


def test_concat_joins_the_non_blank_parts():
    """concat joins the given paths with a separator, skipping blank parts; all blank means no value."""
    spec = FieldSpec("name", None, "concat", {"paths": ["first", "last"], "separator": " "})
    mapping = CompiledMapping("contact", [spec])
    assert mapping.apply({"first": "Zoë", "last": "O'Brien"})[0] == {"name": "Zoë O'Brien"}
    assert mapping.apply({"first": "Zoë", "last": "  "})[0] == {"name": "Zoë"}
    assert mapping.apply({})[0] == {}


def test_lookup_maps_through_a_preset_table_and_names_a_missing_key():
    """lookup reads the preset's table (by the reference's internalId); a key not in it is an error naming the table."""
    lookups = {"currencies": {"1": "USD", "2": "EUR"}}
    mapping = CompiledMapping("customer", [FieldSpec("billing_currency", "currency", "lookup", {"table": "currencies"})],
                              lookups)
    assert mapping.apply(SOAP_CUSTOMER) == ({"billing_currency": "EUR"}, [])
    record, errors = mapping.apply({"currency": {"internalId": "9"}})
    assert record == {}
    assert errors[0].field == "billing_currency" and "'9' is not in lookup table 'currencies'" == errors[0].message
    broken = CompiledMapping("customer", [FieldSpec("billing_currency", "currency", "lookup", {"table": "nope"})], lookups)
    assert broken.errors[0].field == "billing_currency" and "'nope' is not defined" in broken.errors[0].message


# --------------------------------------------------------------- apply / preview
def test_apply_reports_each_failing_field_with_its_path_and_keeps_the_good_ones():
    """Conversion errors name the canonical field, the source path and the value; good fields still map."""
    specs = [
        FieldSpec("external_id", "internalId"),
        FieldSpec("amount", "total", "decimal"),
        FieldSpec("due_date", "dueDate", "date"),
        FieldSpec("applications[].amount", "applyList.apply[].amount", "decimal"),
    ]
    raw = {"internalId": "12", "total": "12,0x", "dueDate": "2026-02-30",
           "applyList": {"apply": [{"amount": "1.00"}, {"amount": "lots"}]}}
    record, errors = CompiledMapping("invoice", specs).apply(raw)
    assert record == {"external_id": "12", "applications": [{"amount": Decimal("1.00")}]}
    found = {e.field: e for e in errors}
    assert set(found) == {"amount", "due_date", "applications[1].amount"}
    assert (found["amount"].path, found["amount"].value) == ("total", "12,0x")
    assert found["due_date"].path == "dueDate" and found["due_date"].value == "2026-02-30"
    assert found["applications[1].amount"].path == "amount" and found["applications[1].amount"].value == "lots"
    assert found["amount"].as_dict() == {"field": "amount", "message": "not a number", "path": "total", "value": "12,0x"}


def test_defaults_fill_blank_values():
    """A blank or absent source value takes the field's default, which goes through the transform."""
    mapping = CompiledMapping("customer", [FieldSpec("terms_days", "terms", "integer", default="30")])
    assert mapping.apply({})[0] == {"terms_days": 30}
    assert mapping.apply({"terms": " "})[0] == {"terms_days": 30}
    assert mapping.apply({"terms": "45"})[0] == {"terms_days": 45}


def test_preview_returns_the_record_the_errors_and_the_unmatched_paths():
    """preview shows what a mapping makes of a sample: record, per-field errors and paths that matched nothing."""
    specs = [
        FieldSpec("external_id", "internalId"),
        FieldSpec("name", "companyName"),
        FieldSpec("email", "emailTypo"),
        FieldSpec("arr", "customFieldList.customField[scriptId=custentity_tier].value", "decimal"),
        FieldSpec("billing_currency", "currency.name", "upper"),
    ]
    out = preview(specs, SOAP_CUSTOMER, "customer", validate=lambda rec: validate_record("customer", rec)[1])
    assert out["object"] == "customer" and out["ok"] is False
    assert out["record"] == {"external_id": "1042", "name": "O'Brien & O'Neill", "billing_currency": "EUR"}
    assert out["errors"] == [{"field": "arr", "message": "not a number",
                              "path": "customFieldList.customField[scriptId=custentity_tier].value", "value": "gold"}]
    assert out["unmatched_paths"] == ["emailTypo"]
    fine = preview(specs[:2] + specs[4:], SOAP_CUSTOMER, "customer",
                   validate=lambda rec: validate_record("customer", rec)[1])
    assert fine["ok"] is True and fine["errors"] == [] and fine["unmatched_paths"] == []


def test_preview_validation_names_a_bad_currency():
    """After mapping, validation errors (an unknown currency) name the canonical field."""
    out = preview([FieldSpec("external_id", "id"), FieldSpec("name", "n"), FieldSpec("billing_currency", "c")],
                  {"id": "1", "n": "Acme", "c": "XYZ"}, "customer",
                  validate=lambda rec: validate_record("customer", rec)[1])
    assert [e["field"] for e in out["errors"]] == ["billing_currency"]
    assert "ISO 4217" in out["errors"][0]["message"]


def test_unknown_transform_is_a_mapping_error_naming_the_field():
    """A mapping row with an unknown transform is reported against its field, with the known transforms listed."""
    mapping = CompiledMapping("credit_memo", [FieldSpec("reason", "memo", "no_such_transform"),
                                              FieldSpec("external_id", "internalId")])
    assert len(mapping.errors) == 1
    error = mapping.errors[0]
    assert error.field == "reason" and error.path == "memo"
    assert "unknown transform 'no_such_transform'" in error.message and "decimal" in error.message
    out = preview([FieldSpec("reason", "memo", "no_such_transform")], {"memo": "x"}, "credit_memo")
    assert out["ok"] is False and out["errors"][0]["field"] == "reason"


def test_bad_transform_arguments_are_mapping_errors():
    """An enum without a map, a constant without a value and a field with no source are refused up front."""
    mapping = CompiledMapping("invoice", [FieldSpec("status", "s", "enum", {}), FieldSpec("kind", None, "constant", {}),
                                          FieldSpec("memo", None, "text")])
    assert [e.field for e in mapping.errors] == ["status", "kind", "memo"]
    assert "args.map" in mapping.errors[0].message and "args.value" in mapping.errors[1].message


def test_country_transform_reads_codes_and_names_in_several_languages():
    """Xero keeps countries as free text: codes, English and other names and common aliases all
    become ISO 3166 alpha-2; an unknown name is a field error, or no value where the preset says so."""
    from middleware.mapping import TRANSFORMS

    strict = TRANSFORMS["country"]({})
    assert [strict(v) for v in ("nz", "New Zealand", " new  zealand ", "Deutschland", "USA", "Royaume-Uni",
                                "Japan", "España")] == ["NZ", "NZ", "NZ", "DE", "US", "GB", "JP", "ES"]
    with pytest.raises(ValueError, match="'Narnia' is not an ISO 3166 country code or a country name"):
        strict("Narnia")
    assert TRANSFORMS["country"]({"unknown": None})("Narnia") is None


def test_a_free_text_country_in_an_address_does_not_reject_the_customer():
    """With the Xero preset's rows, "New Zealand" lands as NZ and an unknown country leaves the address without one."""
    mapping = CompiledMapping("customer", [
        FieldSpec("billing_address.city", "Addresses[AddressType=POBOX].City"),
        FieldSpec("billing_address.country", "Addresses[AddressType=POBOX].Country", "country", {"unknown": None}),
    ])
    raw = {"Addresses": [{"AddressType": "POBOX", "City": "Wellington", "Country": "New Zealand"}]}
    record, errors = mapping.apply(raw)
    assert errors == [] and record["billing_address"] == {"city": "Wellington", "country": "NZ"}
    raw["Addresses"][0]["Country"] = "Middle Earth"
    record, errors = mapping.apply(raw)
    assert errors == [] and record["billing_address"]["city"] == "Wellington"
    assert record["billing_address"].get("country") is None
