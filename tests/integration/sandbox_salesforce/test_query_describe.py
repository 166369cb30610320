"""The Salesforce emulator (connectors/sandbox/salesforce/): SOQL (paging, batch size, queryAll,
relationship fields, operators, literals, ORDER BY/LIMIT/OFFSET/COUNT(), error codes, 15-character
ids), describe, a dropped field, and the seeded org, driven by simple-salesforce.

One small org per module, every call over real TLS on loopback (fixtures: conftest.py).
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from simple_salesforce.exceptions import (SalesforceMalformedRequest, SalesforceOperationError,
                                          SalesforceResourceNotFound)

from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as CREDS
from connectors.sandbox.salesforce import Org
from connectors.sandbox.soql import to18
from tests.support.salesforce_emulator import V, ids_of, live


# ------------------------------------------------------------------------------------------- query
def test_query_pages_at_2000_records_with_next_records_url(server, sf):
    """More than 2,000 rows come in pages: done False and a nextRecordsUrl until the last page;
    query_all follows them and returns every row exactly once."""
    first = sf.query("SELECT Id, Name FROM AR_Invoice__c WHERE ARHub_Key__c LIKE 'page-%'")
    assert first["totalSize"] == 2500 and first["done"] is False and len(first["records"]) == 2000
    assert re.fullmatch(rf"/services/data/v{V}/query/01g\w{{15}}-2000", first["nextRecordsUrl"])
    second = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert second["done"] is True and "nextRecordsUrl" not in second and len(second["records"]) == 500
    everything = sf.query_all("SELECT Id FROM AR_Invoice__c WHERE ARHub_Key__c LIKE 'page-%'")
    assert everything["totalSize"] == 2500 == len(set(ids_of(everything)))
    assert set(ids_of(first)) | set(ids_of(second)) == set(ids_of(everything))
    record = first["records"][0]
    assert record["attributes"] == {"type": "AR_Invoice__c",
                                    "url": f"/services/data/v{V}/sobjects/AR_Invoice__c/{record['Id']}"}
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query_more("01gDn0000000000AAA-2000")
    assert exc.value.content[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_batch_size_option_changes_the_page_size(server, sf):
    """Sforce-Query-Options: batchSize=N pages by N (200 at least)."""
    q = "SELECT Id FROM AR_Invoice__c WHERE ARHub_Key__c LIKE 'page-%'"
    assert len(sf.query(q, headers={"Sforce-Query-Options": "batchSize=500"})["records"]) == 500
    assert len(sf.query(q, headers={"Sforce-Query-Options": "batchSize=50"})["records"]) == 200
    pages = list(sf.query_all_iter(q, headers={"Sforce-Query-Options": "batchSize=1000"}))
    assert len(pages) == 2500


def test_query_all_sees_deleted_rows(server, sf):
    """A deleted record leaves query results but queryAll still returns it, with IsDeleted true."""
    rid = sf.AR_Summary__c.create({"Name": "to delete", "ARHub_Key__c": "deleted-1"})["id"]
    sf.AR_Summary__c.delete(rid)
    q = "SELECT Id, IsDeleted FROM AR_Summary__c WHERE ARHub_Key__c = 'deleted-1'"
    assert sf.query(q)["totalSize"] == 0
    rows = sf.query_all(q, include_deleted=True)["records"]
    assert [(r["Id"], r["IsDeleted"]) for r in rows] == [(rid, True)]
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.AR_Summary__c.get(rid)
    assert exc.value.content[0]["errorCode"] == "ENTITY_IS_DELETED"


def test_parent_relationship_fields(server, sf):
    """Owner.Name, Owner.Email, Parent.Name and Account.ERP_Customer_Number__c come back as nested
    records with their own attributes, or null when the lookup is empty."""
    rows = sf.query_all("SELECT Id, Name, Owner.Name, Owner.Email, Parent.Name FROM Account "
                        "WHERE ParentId != null")["records"]
    assert rows
    org = server.org
    for row in rows:
        rec = org.tables["Account"][row["Id"]]
        owner = org.tables["User"][rec["OwnerId"]]
        url = f"/services/data/v{V}/sobjects/User/{owner['Id']}"
        assert row["Owner"] == {"attributes": {"type": "User", "url": url}, "Name": owner["Name"],
                                "Email": owner["Email"]}
        assert row["Parent"]["Name"] == org.tables["Account"][rec["ParentId"]]["Name"]
    orphan = sf.query("SELECT Id, Parent.Name FROM Account WHERE ParentId = null LIMIT 1")["records"][0]
    assert orphan["Parent"] is None
    contacts = sf.query("SELECT Id, Email, Account.ERP_Customer_Number__c, Account.Owner.Name FROM Contact "
                        "WHERE Account.ERP_Customer_Number__c = 'CUST-000001'")["records"]
    expected = server.org.seed_truth["accounts"]["CUST-000001"]
    if expected and "CUST-000001" in server.org.seed_truth["with_external_id"]:
        assert contacts and all(c["Account"]["ERP_Customer_Number__c"] == "CUST-000001" for c in contacts)
        assert all(c["Account"]["Owner"]["Name"] for c in contacts)


def _pred_like(pattern):
    regex = re.compile("".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern) + r"\Z",
                       re.I | re.S)
    return lambda value: value is not None and regex.match(value) is not None


OPERATOR_CASES = [
    ("Type = 'Strategic'", lambda r: r["Type"] == "Strategic"),
    ("Type = 'strategic'", lambda r: r["Type"] == "Strategic"),
    ("Type != 'Customer'", lambda r: r["Type"] != "Customer"),
    ("Type <> 'Customer'", lambda r: r["Type"] != "Customer"),
    ("AnnualRevenue > 50000", lambda r: r["AnnualRevenue"] is not None and r["AnnualRevenue"] > 50000),
    ("AnnualRevenue < 5000", lambda r: r["AnnualRevenue"] is not None and r["AnnualRevenue"] < 5000),
    ("AnnualRevenue >= 12000", lambda r: r["AnnualRevenue"] is not None and r["AnnualRevenue"] >= 12000),
    ("AnnualRevenue <= 12000.5", lambda r: r["AnnualRevenue"] is not None and r["AnnualRevenue"] <= 12000.5),
    ("Type IN ('Partner', 'Reseller')", lambda r: r["Type"] in ("Partner", "Reseller")),
    ("Type NOT IN ('Customer', 'Prospect')", lambda r: r["Type"] not in ("Customer", "Prospect")),
    ("Name LIKE 'acme%'", lambda r: _pred_like("acme%")(r["Name"])),
    ("Name LIKE '%Labs _nc%'", lambda r: _pred_like("%Labs _nc%")(r["Name"])),
    ("Name LIKE '%O\\'Brien%'", lambda r: "o'brien" in r["Name"].lower()),
    ("ERP_Customer_Number__c = null", lambda r: r["ERP_Customer_Number__c"] is None),
    ("ERP_Customer_Number__c != null", lambda r: r["ERP_Customer_Number__c"] is not None),
    ("(Type = 'Strategic' OR Type = 'Partner') AND AnnualRevenue > 10000",
     lambda r: r["Type"] in ("Strategic", "Partner") and r["AnnualRevenue"] > 10000),
    ("NOT Type = 'Customer'", lambda r: r["Type"] != "Customer"),
    ("NOT (Type = 'Customer' OR Type = 'Prospect')", lambda r: r["Type"] not in ("Customer", "Prospect")),
    ("ParentId != null AND BillingCountryCode IN ('US', 'GB')",
     lambda r: r["ParentId"] is not None and r["BillingCountryCode"] in ("US", "GB")),
    ("Customer_Tier__c = 'Enterprise' OR (Customer_Tier__c = 'SMB' AND Type = 'Strategic')",
     lambda r: r["Customer_Tier__c"] == "Enterprise" or (r["Customer_Tier__c"] == "SMB" and r["Type"] == "Strategic")),
]


@pytest.mark.parametrize("where,pred", OPERATOR_CASES, ids=[c[0] for c in OPERATOR_CASES])
def test_soql_operators_filter_like_salesforce(server, sf, where, pred):
    """Each WHERE operator returns exactly the rows the same condition selects in Python
    (text compared case-insensitively, != and NOT IN matching nulls)."""
    result = sf.query_all(f"SELECT Id FROM Account WHERE {where}")
    expected = sorted(r["Id"] for r in live(server, "Account") if pred(r))
    assert sorted(ids_of(result)) == expected


def test_soql_date_datetime_boolean_literals_order_limit_offset_and_count(server, sf):
    """Date and datetime literals (Z and offsets), TRUE/FALSE, multi-key ORDER BY with NULLS LAST,
    LIMIT/OFFSET and COUNT() behave as in Salesforce."""
    opps = live(server, "Opportunity")
    day = sorted(o["CloseDate"] for o in opps)[len(opps) // 2]
    got = sf.query_all(f"SELECT Id FROM Opportunity WHERE CloseDate >= {day} AND IsClosed = FALSE")
    assert sorted(ids_of(got)) == sorted(o["Id"] for o in opps if o["CloseDate"] >= day and not o["IsClosed"])
    got = sf.query_all("SELECT Id FROM Opportunity WHERE IsWon = TRUE")
    assert sorted(ids_of(got)) == sorted(o["Id"] for o in opps if o["IsWon"])
    accounts = live(server, "Account")
    stamp = sorted(a["CreatedDate"] for a in accounts)[len(accounts) // 2]  # 2025-06-01T10:15:00.000+0000
    utc = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    expected = sorted(a["Id"] for a in accounts if a["CreatedDate"] < stamp)
    for literal in (utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    (utc + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"),
                    (utc - timedelta(hours=5, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S-05:30")):
        assert sorted(ids_of(sf.query_all(f"SELECT Id FROM Account WHERE CreatedDate < {literal}"))) == expected
    rows = sf.query("SELECT Id, Name, AnnualRevenue FROM Account ORDER BY AnnualRevenue DESC, Name ASC "
                    "LIMIT 20 OFFSET 10")["records"]
    ordered = sorted(accounts, key=lambda a: (-(a["AnnualRevenue"] or 0), a["Name"].lower()))
    assert [r["Id"] for r in rows] == [a["Id"] for a in ordered[10:30]]
    rows = sf.query_all("SELECT Id, ParentId FROM Account ORDER BY ParentId NULLS LAST, Name")["records"]
    parents = [r["ParentId"] for r in rows]
    first_null = parents.index(None)
    assert all(p is not None for p in parents[:first_null]) and all(p is None for p in parents[first_null:])
    assert parents[:first_null] == sorted(parents[:first_null])
    count = sf.query("SELECT COUNT() FROM Account WHERE Type = 'Prospect'")
    assert count == {"totalSize": sum(a["Type"] == "Prospect" for a in accounts), "done": True, "records": []}


@pytest.mark.parametrize("soql,code,fragment", [
    ("SELECT Id FROM Account WHERE", "MALFORMED_QUERY", "unexpected token: <EOF>"),
    ("SELECT Id, Name FROM Account GROUP BY Name", "MALFORMED_QUERY", "unexpected token: 'GROUP'"),
    ("SELECT Id FROM Account WHERE Type = 'A' AND Type = 'B' OR Type = 'C'", "MALFORMED_QUERY",
     "unexpected token: 'OR'"),
    ("SELECT Id FROM Opportunity WHERE CloseDate = '2026-01-01'", "MALFORMED_QUERY",
     "must be of type date and should not be enclosed in quotes"),
    ("SELECT Id FROM Account WHERE Name = 5", "MALFORMED_QUERY", "must be of type string"),
    ("SELECT Id FROM Account WHERE Name = 'unterminated", "MALFORMED_QUERY", "unexpected token"),
    ("SELECT Id FROM Account LIMIT 5 OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset"),
    ("SELECT Id, Foo__c FROM Account", "INVALID_FIELD", "No such column 'Foo__c' on entity 'Account'"),
    ("SELECT Id, Ownr.Name FROM Account", "INVALID_FIELD", "Didn't understand relationship 'Ownr'"),
    ("SELECT Id FROM Invoice__c", "INVALID_TYPE", "sObject type 'Invoice__c' is not supported"),
    ("SELECT Id FROM Account WHERE Id = 'nope'", "INVALID_QUERY_FILTER_OPERATOR", "invalid ID field: nope"),
])
def test_bad_soql_is_refused_with_salesforce_error_codes(sf, soql, code, fragment):
    """Queries outside the subset, or naming unknown fields and objects, are 400 with Salesforce's code."""
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query(soql)
    error = exc.value.content[0]
    assert error["errorCode"] == code
    assert fragment in error["message"]


def test_fifteen_character_ids_match_in_filters(server, sf):
    """An id written with 15 characters matches the same record as its 18-character form."""
    rid = live(server, "Account")[0]["Id"]
    assert ids_of(sf.query(f"SELECT Id FROM Account WHERE Id = '{rid[:15]}'")) == [rid]
    assert ids_of(sf.query(f"SELECT Id FROM Account WHERE Id IN ('{rid}', '001000000000000')")) == [rid]


# ------------------------------------------------------------------------------------------- describe
def test_describe_global_and_object_shapes(server, sf):
    """describeGlobal lists the objects; describe gives typed fields with Salesforce's keys."""
    names = {o["name"]: o for o in sf.describe()["sobjects"]}
    assert {"User", "Account", "Contact", "Opportunity", "AR_Summary__c", "AR_Invoice__c"} <= set(names)
    assert names["Account"]["keyPrefix"] == "001" and names["AR_Summary__c"]["custom"] is True
    desc = sf.AR_Summary__c.describe()
    fields = {f["name"]: f for f in desc["fields"]}
    key = fields["ARHub_Key__c"]
    assert (key["type"], key["length"], key["externalId"], key["unique"], key["custom"]) == ("string", 64, True,
                                                                                              True, True)
    money = fields["Open_Balance__c"]
    assert (money["type"], money["precision"], money["scale"]) == ("currency", 16, 2)
    assert fields["Avg_Days_Delinquent__c"]["type"] == "double" and fields["Avg_Days_Delinquent__c"]["scale"] == 1
    status = fields["Collection_Status__c"]
    assert status["restrictedPicklist"] is True
    assert [p["value"] for p in status["picklistValues"]] == ["Current", "Overdue", "Paused", "Disputed",
                                                                "Promised", "Credit"]
    assert {"value", "label", "active"} <= set(status["picklistValues"][0])
    lookup = fields["Account__c"]
    assert (lookup["type"], lookup["referenceTo"], lookup["relationshipName"]) == ("reference", ["Account"],
                                                                                   "Account__r")
    assert fields["Id"]["type"] == "id" and fields["Id"]["createable"] is False
    assert fields["Last_Synced_At__c"]["type"] == "datetime" and fields["Paused__c"]["type"] == "boolean"
    assert fields["Console_URL__c"]["type"] == "url" and fields["Last_Payment_Date__c"]["type"] == "date"
    assert fields["Name"]["nillable"] is False and fields["Name"]["nameField"] is True
    invoice = {f["name"]: f for f in sf.AR_Invoice__c.describe()["fields"]}
    assert [p["value"] for p in invoice["Status__c"]["picklistValues"]] == ["Open", "Overdue", "Disputed", "Paid",
                                                                             "Void"]
    account = sf.Account.describe()
    afields = {f["name"]: f for f in account["fields"]}
    assert afields["ERP_Customer_Number__c"]["externalId"] is True and afields["ERP_Customer_Number__c"]["length"] == 40
    assert afields["OwnerId"]["relationshipName"] == "Owner" and afields["OwnerId"]["referenceTo"] == ["User"]
    assert [p["value"] for p in afields["Type"]["picklistValues"]] == ["Customer", "Prospect", "Partner", "Strategic",
                                                                        "Reseller"]
    children = {c["relationshipName"]: c["childSObject"] for c in account["childRelationships"]}
    assert children["AR_Summaries__r"] == "AR_Summary__c" and children["Contacts"] == "Contact"
    every = desc["fields"] + account["fields"] + sf.Contact.describe()["fields"] + sf.Opportunity.describe()["fields"]
    assert {f["type"] for f in every} >= {
        "id", "string", "textarea", "email", "url", "phone", "picklist", "multipicklist", "boolean", "date",
        "datetime", "currency", "double", "int", "percent", "reference"}
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Nope__c.describe()
    assert exc.value.content[0]["errorCode"] == "NOT_FOUND"


# ------------------------------------------------------------------------------------------- control
def test_dropped_field_disappears_everywhere(server, session, sf, token):
    """After an admin deletes Tags__c: describe lacks it, SOQL and writes naming it fail with
    INVALID_FIELD, and a bulk job with it in the header fails."""
    dropped = session.post(server.url + "/_sandbox/drop_field", json={"object": "AR_Summary__c", "field": "Tags__c"})
    assert dropped.json() == {"dropped": "AR_Summary__c.Tags__c"}
    try:
        assert "Tags__c" not in {f["name"] for f in sf.AR_Summary__c.describe()["fields"]}
        with pytest.raises(SalesforceMalformedRequest) as exc:
            sf.query("SELECT Id, Tags__c FROM AR_Summary__c")
        assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"
        with pytest.raises(SalesforceMalformedRequest) as exc:
            sf.AR_Summary__c.upsert("ARHub_Key__c/drop-1", {"Name": "x", "Tags__c": "vip"})
        assert exc.value.content[0] == {"message": "No such column 'Tags__c' on sobject of type AR_Summary__c",
                                        "errorCode": "INVALID_FIELD", "fields": []}
        with pytest.raises(SalesforceOperationError, match="Field name not found : Tags__c"):
            sf.bulk2.AR_Summary__c.upsert(records=[{"ARHub_Key__c": "drop-2", "Name": "x", "Tags__c": "a"}],
                                          external_id_field="ARHub_Key__c", wait=0.05)
    finally:
        session.post(server.url + "/_sandbox/restore_field", json={"object": "AR_Summary__c", "field": "Tags__c"})
    assert "Tags__c" in {f["name"] for f in sf.AR_Summary__c.describe()["fields"]}


# ------------------------------------------------------------------------------------------- seed
def test_seed_has_the_mismatches_real_orgs_have(server, book):
    """Accounts mirror the ERP book with ~70% external ids, renamed variants keeping the number,
    duplicates, customers without accounts, prospects, ERP parents, websites from email domains,
    billing and Salesforce-only escalation contacts, open renewals and expansions within 90 days."""
    org, truth = server.org, server.org.seed_truth
    accounts = org.tables["Account"]
    assert set(truth["accounts"]) == {c.number for c in book.customers.values()}
    mapped = {n: a for n, a in truth["accounts"].items() if a}
    assert 0.6 <= len(truth["with_external_id"]) / len(mapped) <= 0.8
    assert truth["without_account"] and all(truth["accounts"][n] is None for n in truth["without_account"])
    assert truth["duplicates"] and truth["prospects"]
    for number in truth["with_external_id"]:
        assert accounts[mapped[number]]["ERP_Customer_Number__c"] == number
    by_number = {c.number: c for c in book.customers.values()}
    for number, name in truth["renamed"].items():
        original = by_number[number].name
        assert name != original and name.split()[-1] == original.split()[-1]
        assert accounts[mapped[number]]["Name"] == name
    for original, duplicate in truth["duplicates"]:
        assert accounts[duplicate]["ERP_Customer_Number__c"] is None
        assert accounts[duplicate]["Name"].split()[-1] == accounts[original]["Name"].split()[-1]
    for aid in truth["prospects"]:
        assert accounts[aid]["Type"] == "Prospect" and accounts[aid]["ERP_Customer_Number__c"] is None
    for number, aid in mapped.items():
        cust = by_number[number]
        assert accounts[aid]["Website"] == "https://www." + cust.email.split("@")[1]
        assert accounts[aid]["BillingCountryCode"] == cust.country
        if cust.parent_id and mapped.get(by_number_id(book, cust.parent_id)):
            assert accounts[aid]["ParentId"] == mapped[by_number_id(book, cust.parent_id)]
    types = [a["Type"] for a in accounts.values()]
    assert types.count("Strategic") and types.count("Customer") > len(types) / 2
    assert len({a["OwnerId"] for a in accounts.values()}) >= 10
    contacts = org.tables["Contact"].values()
    erp_emails = {c.email for cust in book.customers.values() for c in cust.contacts if c.role == "billing"}
    billing = [c for c in contacts if c["AR_Role__c"] == "Billing"]
    assert billing and sum(c["Email"] in erp_emails for c in billing) / len(billing) > 0.8
    assert any(c["AR_Role__c"] == "Escalation" and c["Email"].startswith("finance.director@") for c in contacts)
    assert any(c["AR_Role__c"] is None for c in contacts)
    opps = org.tables["Opportunity"].values()
    as_of = book.as_of.isoformat()
    horizon = (book.as_of + timedelta(days=90)).isoformat()
    open_opps = [o for o in opps if not o["IsClosed"] and o["Type"] in ("Renewal", "Expansion")]
    assert open_opps and all(as_of <= o["CloseDate"] <= horizon for o in open_opps)
    assert sum(o["IsClosed"] for o in opps) > len(open_opps)
    again = Org.from_book(book, seed=11)
    assert again.seed_truth == truth  # deterministic from the seed


def by_number_id(book, customer_id):
    return book.customers[customer_id].number


def test_ids_are_18_characters_with_key_prefixes(server):
    """Ids carry the object's key prefix and a valid case-insensitivity checksum."""
    for obj, prefix in (("Account", "001"), ("Contact", "003"), ("Opportunity", "006"), ("User", "005"),
                        ("AR_Invoice__c", "a0Y")):
        rid = next(iter(server.org.tables[obj]))
        assert len(rid) == 18 and rid.startswith(prefix) and to18(rid[:15]) == rid
    assert to18(CREDS["organization_id"]) == CREDS["organization_id"]
    assert json.dumps(server.org.seed_truth)  # serialisable for /_sandbox/seed_truth
