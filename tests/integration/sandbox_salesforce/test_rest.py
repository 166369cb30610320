"""The Salesforce emulator (connectors/sandbox/salesforce/): REST sObject calls (create, read,
update, delete, upsert by external id, lookups by external id), their field errors and typed
values, the updated/deleted replication endpoints, and sObject collections (composite/sobjects),
driven by simple-salesforce.

One small org per module, every call over real TLS on loopback (fixtures: conftest.py).
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from simple_salesforce.exceptions import (SalesforceMalformedRequest, SalesforceMoreThanOneRecord,
                                          SalesforceResourceNotFound)

from connectors.sandbox.salesforce import FieldDef
from tests.support.salesforce_emulator import V, live


# ------------------------------------------------------------------------------------------- CRUD
def test_crud_round_trip(server, sf):
    """Create (201), read, update (204), delete (204); values come back typed; system fields are set."""
    account_id = server.org.seed_truth["accounts"][server.org.seed_truth["with_external_id"][0]]
    created = sf.AR_Summary__c.create({"Name": "Acme AR", "ARHub_Key__c": "crud-1", "Account__c": account_id,
                                       "Open_Balance__c": "1234.567", "Paused__c": True,
                                       "Last_Payment_Date__c": "2026-01-31",
                                       "Last_Synced_At__c": "2026-02-01T12:30:00+01:00",
                                       "Collection_Status__c": "Overdue"})
    assert created["success"] is True and created["errors"] == [] and created["id"].startswith("a0X")
    rec = sf.AR_Summary__c.get(created["id"])
    assert rec["Open_Balance__c"] == 1234.57 and rec["Paused__c"] is True
    assert rec["Last_Payment_Date__c"] == "2026-01-31"
    assert rec["Last_Synced_At__c"] == "2026-02-01T11:30:00.000+0000"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", rec["CreatedDate"])
    assert rec["CreatedById"] == server.org.api_user_id == rec["OwnerId"] and rec["IsDeleted"] is False
    assert sf.AR_Summary__c.update(created["id"], {"Open_Balance__c": 10, "Tags__c": "vip"}) == 204
    rec = sf.AR_Summary__c.get(created["id"])
    assert (rec["Open_Balance__c"], rec["Tags__c"], rec["Name"]) == (10.0, "vip", "Acme AR")
    assert rec["LastModifiedDate"] >= rec["CreatedDate"]
    assert sf.AR_Summary__c.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.AR_Summary__c.update(created["id"], {"Tags__c": "x"})
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.AR_Summary__c.get("a0XDn0000000zzzAAA")
    assert exc.value.content[0]["errorCode"] == "NOT_FOUND"


def test_upsert_by_external_id_201_200_300_404(server, sf):
    """Upsert creates (201, created true), then updates (200, created false); a value that matches
    several records is 300 with their URLs; an unknown external-id field is 404."""
    first = sf.AR_Summary__c.upsert("ARHub_Key__c/upsert-1", {"Name": "U1", "Open_Balance__c": 1},
                                    raw_response=True)
    assert first.status_code == 201
    body = first.json()
    assert body == {"id": body["id"], "success": True, "errors": [], "created": True}
    second = sf.AR_Summary__c.upsert("ARHub_Key__c/upsert-1", {"Name": "U1", "Open_Balance__c": 2},
                                     raw_response=True)
    assert second.status_code == 200 and second.json() == {"id": body["id"], "success": True, "errors": [],
                                                           "created": False}
    assert sf.AR_Summary__c.get_by_custom_id("ARHub_Key__c", "upsert-1")["Open_Balance__c"] == 2.0
    assert sf.AR_Summary__c.get(body["id"])["ARHub_Key__c"] == "upsert-1"
    if server.org.sobject("Legacy_Ref__c") is None:
        server.org.deploy("Legacy_Ref__c", [FieldDef("Legacy_Code__c", "string", length=20, external_id=True)])
    for n in range(2):
        sf.Legacy_Ref__c.create({"Name": f"L{n}", "Legacy_Code__c": "SHARED"})
    with pytest.raises(SalesforceMoreThanOneRecord) as exc:
        sf.Legacy_Ref__c.upsert("Legacy_Code__c/SHARED", {"Name": "x"})
    assert exc.value.status == 300 and len(exc.value.content) == 2
    assert all(url.startswith(f"/services/data/v{V}/sobjects/Legacy_Ref__c/") for url in exc.value.content)
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.AR_Summary__c.upsert("No_Such_Key__c/1", {"Name": "x"})
    assert exc.value.content[0]["errorCode"] == "NOT_FOUND"
    with pytest.raises(SalesforceResourceNotFound):
        sf.AR_Summary__c.upsert("Name/whatever", {"Tags__c": "x"})  # Name is not an external id


def test_lookup_by_external_id_relationship(server, sf):
    """``Account__r: {ERP_Customer_Number__c: ...}`` sets the lookup; an unknown value fails with
    Salesforce's foreign-key message."""
    number = server.org.seed_truth["with_external_id"][3]
    rid = sf.AR_Summary__c.create({"Name": "FK", "ARHub_Key__c": "fk-1",
                                   "Account__r": {"ERP_Customer_Number__c": number}})["id"]
    assert sf.AR_Summary__c.get(rid)["Account__c"] == server.org.seed_truth["accounts"][number]
    row = sf.query("SELECT Account__r.ERP_Customer_Number__c FROM AR_Summary__c WHERE ARHub_Key__c = 'fk-1'")
    assert row["records"][0]["Account__r"]["ERP_Customer_Number__c"] == number
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.AR_Summary__c.create({"Name": "FK", "ARHub_Key__c": "fk-2",
                                 "Account__r": {"ERP_Customer_Number__c": "CUST-999999"}})
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert exc.value.content[0]["message"] == ("Foreign key external ID: cust-999999 not found for field "
                                               "ERP_Customer_Number__c in entity Account")


# ------------------------------------------------------------------------------------------- errors
FIELD_ERRORS = [
    ("AR_Summary__c", {"Name": "x", "Foo__c": 1}, "INVALID_FIELD",
     "No such column 'Foo__c' on sobject of type AR_Summary__c", None),
    ("Opportunity", {"Name": "x", "StageName": "Prospecting", "CloseDate": "2026-01-01", "IsClosed": True},
     "INVALID_FIELD_FOR_INSERT_UPDATE", "Unable to create/update fields: IsClosed.", ["IsClosed"]),
    ("AR_Summary__c", {"Name": "x", "CreatedDate": "2026-01-01T00:00:00Z"}, "INVALID_FIELD_FOR_INSERT_UPDATE",
     "Unable to create/update fields: CreatedDate.", ["CreatedDate"]),
    ("Account", {"Type": "Customer"}, "REQUIRED_FIELD_MISSING", "Required fields are missing: [Name]", ["Name"]),
    ("Contact", {"FirstName": "Ann"}, "REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]",
     ["LastName"]),
    ("AR_Summary__c", {"Name": "x" * 81}, "STRING_TOO_LONG", "data value too large", ["Name"]),
    ("AR_Summary__c", {"Name": "x", "Reporting_Currency__c": "EURO"}, "STRING_TOO_LONG", "(max length=3)",
     ["Reporting_Currency__c"]),
    ("AR_Summary__c", {"Name": "x", "Open_Balance__c": "12abc"}, "INVALID_TYPE_ON_FIELD_IN_RECORD",
     "Open Balance: value not of required type: 12abc", ["Open_Balance__c"]),
    ("AR_Summary__c", {"Name": "x", "Last_Payment_Date__c": "31/01/2026"}, "INVALID_TYPE_ON_FIELD_IN_RECORD",
     "value not of required type: 31/01/2026", ["Last_Payment_Date__c"]),
    ("AR_Summary__c", {"Name": "x", "Last_Synced_At__c": "yesterday"}, "INVALID_TYPE_ON_FIELD_IN_RECORD",
     "value not of required type", ["Last_Synced_At__c"]),
    ("AR_Summary__c", {"Name": "x", "Paused__c": "maybe"}, "INVALID_TYPE_ON_FIELD_IN_RECORD",
     "value not of required type: maybe", ["Paused__c"]),
    ("AR_Summary__c", {"Name": "x", "Open_Balance__c": 1e15}, "NUMBER_OUTSIDE_VALID_RANGE",
     "value outside of valid range on numeric field", ["Open_Balance__c"]),
    ("AR_Summary__c", {"Name": "x", "Oldest_Overdue_Days__c": 1234567}, "NUMBER_OUTSIDE_VALID_RANGE",
     "value outside of valid range", ["Oldest_Overdue_Days__c"]),
    ("AR_Summary__c", {"Name": "x", "Account__c": "not-an-id"}, "MALFORMED_ID",
     "id value of incorrect type: not-an-id", ["Account__c"]),
    ("AR_Summary__c", {"Name": "x", "Account__c": "003Dn0000000001IAA"}, "MALFORMED_ID",
     "id value of incorrect type", ["Account__c"]),
    ("AR_Summary__c", {"Name": "x", "Collection_Status__c": "Late"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
     "Collection Status: bad value for restricted picklist field: Late", ["Collection_Status__c"]),
    ("Contact", {"LastName": "x", "AR_Role__c": "Billing Contact"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
     "bad value for restricted picklist field: Billing Contact", ["AR_Role__c"]),
    ("Contact", {"LastName": "x", "Email": "not an email"}, "INVALID_EMAIL_ADDRESS", "invalid email address",
     ["Email"]),
]


@pytest.mark.parametrize("obj,data,code,fragment,fields", FIELD_ERRORS, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in
                                                                               enumerate(FIELD_ERRORS)])
def test_single_record_field_errors(sf, obj, data, code, fragment, fields):
    """A bad value fails the single-record call with 400 and Salesforce's error code, message and fields."""
    with pytest.raises(SalesforceMalformedRequest) as exc:
        getattr(sf, obj).create(data)
    error = exc.value.content[0]
    assert error["errorCode"] == code
    assert fragment in error["message"]
    if fields is not None:
        assert error["fields"] == fields


def test_int_percent_and_multi_select_values(server, sf):
    """int and percent fields round to their scale and keep to their precision; a restricted
    multi-select picklist takes ';'-separated listed values only."""
    aid = sf.Account.create({"Name": "Typed", "NumberOfEmployees": "120.4"})["id"]
    assert sf.Account.get(aid)["NumberOfEmployees"] == 120
    cid = sf.Contact.create({"LastName": "Typed", "AccountId": aid, "Preferred_Channels__c": "Email; Portal"})["id"]
    assert sf.Contact.get(cid)["Preferred_Channels__c"] == "Email;Portal"
    oid = sf.Opportunity.create({"Name": "Typed", "StageName": "Closed Won", "CloseDate": "2026-01-31",
                                 "Probability": 100, "AccountId": aid})["id"]
    opp = sf.Opportunity.get(oid)
    assert (opp["Probability"], opp["IsClosed"], opp["IsWon"]) == (100.0, True, True)
    for obj, data, code in (("Account", {"Name": "x", "NumberOfEmployees": 123456789}, "NUMBER_OUTSIDE_VALID_RANGE"),
                            ("Opportunity", {"Name": "x", "StageName": "Prospecting", "CloseDate": "2026-01-01",
                                             "Probability": 1000}, "NUMBER_OUTSIDE_VALID_RANGE"),
                            ("Contact", {"LastName": "x", "Preferred_Channels__c": "Email;Fax"},
                             "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")):
        with pytest.raises(SalesforceMalformedRequest) as exc:
            getattr(sf, obj).create(data)
        assert exc.value.content[0]["errorCode"] == code


def test_updated_and_deleted_replication_endpoints(server, sf):
    """sobjects/<Object>/updated and /deleted list the ids changed or deleted in a time window."""
    start = datetime.now(timezone.utc) - timedelta(seconds=5)
    rid = sf.AR_Summary__c.create({"Name": "repl", "ARHub_Key__c": "repl-1"})["id"]
    gone = sf.AR_Summary__c.create({"Name": "repl", "ARHub_Key__c": "repl-2"})["id"]
    sf.AR_Summary__c.delete(gone)
    end = datetime.now(timezone.utc) + timedelta(seconds=5)
    updated = sf.AR_Summary__c.updated(start, end)
    assert rid in updated["ids"] and gone not in updated["ids"]
    deleted = sf.AR_Summary__c.deleted(start, end)
    dates = {d["id"]: d["deletedDate"] for d in deleted["deletedRecords"]}
    assert gone in dates and rid not in dates  # (other tests delete summaries in the same window)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", dates[gone])


def test_duplicate_external_id_value_is_duplicate_value(server, sf):
    """Creating a second record with a unique external id already used is DUPLICATE_VALUE naming the holder."""
    number = server.org.seed_truth["with_external_id"][0]
    holder = server.org.seed_truth["accounts"][number]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.create({"Name": "Copy", "ERP_Customer_Number__c": number.lower()})
    error = exc.value.content[0]
    assert error["errorCode"] == "DUPLICATE_VALUE"
    assert error["message"] == ("duplicate value found: ERP_Customer_Number__c duplicates value on record with id: "
                                f"{holder}")


def test_inactive_owner_is_refused(server, sf):
    """Assigning a record to an inactive user is INACTIVE_OWNER_OR_USER."""
    inactive = [u["Id"] for u in live(server, "User") if not u["IsActive"]]
    assert len(inactive) == 1
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.create({"Name": "Orphan", "OwnerId": inactive[0]})
    assert exc.value.content[0]["errorCode"] == "INACTIVE_OWNER_OR_USER"


# ------------------------------------------------------------------------------------------- composite
def _records(n, prefix, **extra):
    return [{"attributes": {"type": "AR_Summary__c"}, "Name": f"{prefix}{i}", "ARHub_Key__c": f"{prefix}{i}",
             **extra} for i in range(n)]


def test_composite_refuses_more_than_200_records(sf):
    """sObject collections take at most 200 records: 201 is 400 EXCEEDED_ID_LIMIT."""
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful("composite/sobjects", method="POST", json={"records": _records(201, "big-")})
    assert exc.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    ids = ",".join(["a0XDn0000000001MAA"] * 201)
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite/sobjects", method="DELETE", params={"ids": ids})
    assert len(sf.restful("composite/sobjects", method="POST", json={"records": _records(200, "ok200-")})) == 200


def test_composite_all_or_none_rolls_everything_back(server, sf):
    """allOrNone true: one bad record fails the call; the others report ALL_OR_NONE_OPERATION_ROLLED_BACK
    and nothing is stored."""
    records = _records(5, "aon-")
    records[3]["Collection_Status__c"] = "Nope"
    results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    assert [r["success"] for r in results] == [False] * 5
    assert results[3]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    for i in (0, 1, 2, 4):
        assert results[i]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        assert "id" not in results[i]
    assert sf.query("SELECT COUNT() FROM AR_Summary__c WHERE ARHub_Key__c LIKE 'aon-%'")["totalSize"] == 0
    # an update rolled back restores the previous values and indexes
    rid = sf.AR_Summary__c.create({"Name": "keep", "ARHub_Key__c": "aon-keep", "Tags__c": "before"})["id"]
    results = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": True, "records": [
        {"attributes": {"type": "AR_Summary__c"}, "Id": rid, "Tags__c": "after", "ARHub_Key__c": "aon-moved"},
        {"attributes": {"type": "AR_Summary__c"}, "Id": rid, "Name": None}]})
    assert [r["success"] for r in results] == [False, False]
    assert sf.AR_Summary__c.get(rid)["Tags__c"] == "before"
    assert sf.AR_Summary__c.get_by_custom_id("ARHub_Key__c", "aon-keep")["Id"] == rid
    with pytest.raises(SalesforceResourceNotFound):
        sf.AR_Summary__c.get_by_custom_id("ARHub_Key__c", "aon-moved")


def test_composite_partial_failures_and_mixed_types(server, sf):
    """allOrNone false: each record succeeds or fails on its own, results in request order."""
    records = _records(4, "part-")
    records[1]["Open_Balance__c"] = "lots"
    records[2] = {"attributes": {"type": "Contact"}, "LastName": "Mixed", "AR_Role__c": "Billing"}
    records.append({"Name": "no type"})
    records.append({"attributes": {"type": "AR_Summary__c"}, "Name": "x", "Bogus__c": 1})
    results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": records})
    assert [r["success"] for r in results] == [True, False, True, True, False, False]
    assert results[1]["errors"] == [{"statusCode": "INVALID_TYPE_ON_FIELD_IN_RECORD",
                                     "message": "Open Balance: value not of required type: lots",
                                     "fields": ["Open_Balance__c"]}]
    assert results[2]["id"].startswith("003")
    assert results[4]["errors"][0]["statusCode"] == "INVALID_TYPE"
    assert results[5]["errors"][0]["statusCode"] == "INVALID_FIELD"
    assert sf.query("SELECT COUNT() FROM AR_Summary__c WHERE ARHub_Key__c LIKE 'part-%'")["totalSize"] == 2


def test_composite_upsert_and_delete(server, sf):
    """PATCH composite/sobjects/<Object>/<ExtId> upserts with created flags; DELETE ?ids= deletes."""
    first = sf.restful("composite/sobjects/AR_Summary__c/ARHub_Key__c", method="PATCH",
                       json={"allOrNone": False, "records": _records(3, "cup-")})
    assert [r["created"] for r in first] == [True, True, True]
    again = _records(4, "cup-", Open_Balance__c=5)
    again[3]["Collection_Status__c"] = "Bad"
    second = sf.restful("composite/sobjects/AR_Summary__c/ARHub_Key__c", method="PATCH",
                        json={"allOrNone": False, "records": again})
    assert [(r["success"], r.get("created")) for r in second] == [(True, False)] * 3 + [(False, None)]
    assert [r["id"] for r in second[:3]] == [r["id"] for r in first]
    ids = [r["id"] for r in first] + ["a0XDn00000000zzMAA"]
    deleted = sf.restful("composite/sobjects", method="DELETE", params={"ids": ",".join(ids)})
    assert [r["success"] for r in deleted] == [True, True, True, False]
    assert deleted[3]["errors"][0]["statusCode"] in ("INVALID_CROSS_REFERENCE_KEY", "MALFORMED_ID")
    fetched = sf.restful("composite/sobjects/AR_Summary__c", params={"ids": ids[0], "fields": "Id,Name"})
    assert fetched == [None]
