"""The Salesforce emulator (connectors/sandbox/salesforce/) driven by simple-salesforce over HTTPS.

One small org per module (300 ERP customers); every call goes over real TLS on loopback. The
environment may set REQUESTS_CA_BUNDLE, which requests lets override ``session.verify``; the
sessions here set ``trust_env = False`` so the sandbox CA is the one used.
"""
from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (SalesforceAuthenticationFailed, SalesforceExpiredSession,
                                          SalesforceGeneralError, SalesforceMalformedRequest,
                                          SalesforceMoreThanOneRecord, SalesforceOperationError,
                                          SalesforceRefusedRequest, SalesforceResourceNotFound)
from simple_salesforce.login import SalesforceLogin

from connectors.sandbox.book import Book
from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as CREDS
from connectors.sandbox.salesforce import FieldDef, Org, SalesforceServer
from connectors.sandbox.soql import to18

V = "59.0"


class ToSandbox(requests.adapters.HTTPAdapter):
    """Sends requests addressed to ``https://<anything>.salesforce.com`` to the sandbox instead:
    simple-salesforce's login helpers hard-code that host. The request still travels over real HTTPS."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        if parts.hostname and parts.hostname.endswith(".salesforce.com"):
            request.url = self.base + request.url[len(f"{parts.scheme}://{parts.netloc}"):]
        return super().send(request, **kwargs)


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def book():
    return Book(customers=300, invoices=1000, seed=11)


@pytest.fixture(scope="module")
def server(book, rsa_key):
    public = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    org = Org.from_book(book, seed=11)
    now = "2026-01-01T00:00:00.000+0000"
    for i in range(2500):  # enough rows to page through
        org._insert_raw("AR_Invoice__c", {"Name": f"INV-{i:05d}", "ARHub_Key__c": f"page-{i:05d}",
                                           "Amount__c": float(i), "Status__c": "Open"}, None, now)
    with SalesforceServer(org, jwt_public_key=public) as srv:
        yield srv


@pytest.fixture
def session(server):
    s = requests.Session()
    s.verify = server.ca_file
    s.trust_env = False
    s.mount("https://", ToSandbox(server.url))
    yield s
    s.close()


@pytest.fixture(autouse=True)
def calm(server):
    """No faults and a fresh API budget around every test."""
    server.clear_faults()
    server.set_budget(max=100_000, used=0)
    yield
    server.clear_faults()
    server.set_budget(max=100_000, used=0)


def password_login(session, server, password=None) -> requests.Response:
    return session.post(server.url + "/services/oauth2/token", data={
        "grant_type": "password", "client_id": CREDS["client_id"], "client_secret": CREDS["client_secret"],
        "username": CREDS["username"],
        "password": password if password is not None else CREDS["password"] + CREDS["security_token"]})


@pytest.fixture
def token(session, server) -> str:
    response = password_login(session, server)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture
def sf(server, session, token) -> Salesforce:
    return Salesforce(instance_url=server.url, session_id=token, session=session)


def api(session, server, token, method, path, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    headers["Authorization"] = f"Bearer {token}"
    return session.request(method, f"{server.url}/services/data/v{V}/{path}", headers=headers, **kwargs)


def ids_of(result) -> list[str]:
    return [r["Id"] for r in result["records"]]


def live(server, obj):
    return [r for r in server.org.tables[obj].values() if not r["IsDeleted"]]


# ------------------------------------------------------------------------------------------- login
def test_password_grant_returns_a_bearer_token_for_the_instance(server, session):
    """The OAuth password grant answers with Salesforce's token shape; the token opens the REST API."""
    response = password_login(session, server)
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"access_token", "instance_url", "id", "token_type", "issued_at", "signature"}
    assert body["instance_url"] == server.url and body["token_type"] == "Bearer"
    assert body["access_token"].startswith(CREDS["organization_id"][:15] + "!")
    assert body["id"].endswith(f"/id/{CREDS['organization_id']}/{server.org.api_user_id}")
    sf = Salesforce(instance_url=body["instance_url"], session_id=body["access_token"], session=session)
    assert sf.query("SELECT Id FROM User WHERE Username = '%s'" % CREDS["username"])["totalSize"] == 1
    assert sf.is_sandbox() is True  # SELECT IsSandbox FROM Organization


def test_bad_password_is_invalid_grant(server, session):
    """A wrong password (or a missing security token) is 400 invalid_grant / authentication failure."""
    for password in ("wrong", CREDS["password"]):
        response = password_login(session, server, password=password)
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_grant", "error_description": "authentication failure"}
    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        Salesforce(username=CREDS["username"], password="wrong", consumer_key=CREDS["client_id"],
                   consumer_secret=CREDS["client_secret"], session=session)
    assert exc.value.code == "invalid_grant"


def test_simple_salesforce_password_and_client_credentials_flows(server, session):
    """simple-salesforce's own OAuth flows (password; client credentials with HTTP Basic) log in."""
    sf = Salesforce(username=CREDS["username"], password=CREDS["password"] + CREDS["security_token"],
                    consumer_key=CREDS["client_id"], consumer_secret=CREDS["client_secret"], session=session)
    assert sf.sf_instance == urlsplit(server.url).netloc
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] > 0
    sf = Salesforce(consumer_key=CREDS["client_id"], consumer_secret=CREDS["client_secret"],
                    domain="arhub-sandbox.my", session=session)
    assert sf.query("SELECT Id FROM User LIMIT 1")["totalSize"] == 1
    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        Salesforce(consumer_key=CREDS["client_id"], consumer_secret="nope", domain="arhub-sandbox.my",
                   session=session)
    assert exc.value.code == "invalid_client"


def test_jwt_bearer_flow_checks_signature_issuer_and_expiry(server, session, rsa_key):
    """An RS256 assertion signed by the configured key logs in; a foreign key, an expired
    assertion, a wrong issuer or an unknown subject is invalid_grant (or invalid_client_id)."""
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    session_id, instance = SalesforceLogin(username=CREDS["username"], consumer_key=CREDS["client_id"],
                                           privatekey=pem, session=session)
    assert instance == urlsplit(server.url).netloc and session_id
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def assertion(key=rsa_key, **claims):
        payload = {"iss": CREDS["client_id"], "sub": CREDS["username"], "aud": "https://login.salesforce.com",
                   "exp": int(time.time()) + 180, **claims}
        return jwt.encode(payload, key, algorithm="RS256")

    def post(value):
        return session.post(server.url + "/services/oauth2/token",
                            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": value})

    assert post(assertion()).status_code == 200
    assert post(assertion(other)).json()["error"] == "invalid_grant"
    assert post(assertion(exp=int(time.time()) - 5)).json() == {"error": "invalid_grant",
                                                                "error_description": "expired authorization code"}
    assert post(assertion(iss="someone-else")).json()["error"] == "invalid_client_id"
    assert post(assertion(sub="nobody@example.com")).json()["error"] == "invalid_grant"
    assert post(assertion(aud="https://evil.example.com")).json()["error_description"] == "audience is invalid"


def test_soap_login_and_invalid_login_fault(server, session):
    """The SOAP login simple-salesforce sends answers a sessionId and serverUrl on this host; a bad
    password is a SOAP fault with sf:exceptionCode INVALID_LOGIN."""
    session_id, instance = SalesforceLogin(username=CREDS["username"], password=CREDS["password"],
                                           security_token=CREDS["security_token"], session=session,
                                           scratch_url=server.url)
    assert instance == urlsplit(server.url).netloc
    sf = Salesforce(instance_url=server.url, session_id=session_id, session=session)
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] > 0
    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        SalesforceLogin(username=CREDS["username"], password="bad", security_token=CREDS["security_token"],
                        session=session, scratch_url=server.url)
    assert exc.value.code == "INVALID_LOGIN"
    # the organizationId (IP-filtered) variant of the envelope
    session_id, _ = SalesforceLogin(username=CREDS["username"], password=CREDS["password"],
                                    organizationId=CREDS["organization_id"], session=session)
    assert session_id


def test_unknown_or_expired_session_is_invalid_session_id(server, session, token):
    """An unknown bearer token is 401 INVALID_SESSION_ID; after expire_sessions every token is."""
    response = api(session, server, "00Dxx!bogus", "GET", "limits")
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    assert api(session, server, token, "GET", "limits").status_code == 200
    assert session.post(server.url + "/_sandbox/expire_sessions").json()["expired"] >= 1
    direct = Salesforce(instance_url=server.url, session_id=token, session=session)
    with pytest.raises(SalesforceExpiredSession):
        direct.query("SELECT Id FROM Account LIMIT 1")


def test_simple_salesforce_logs_in_again_after_sessions_expire(server, session):
    """A username/password Salesforce object (SOAP login) refreshes its session on INVALID_SESSION_ID."""
    sf = Salesforce(username=CREDS["username"], password=CREDS["password"],
                    security_token=CREDS["security_token"], session=session)
    first = sf.session_id
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] > 0
    server.expire_sessions()
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] > 0
    assert sf.session_id != first


# ------------------------------------------------------------------------------------------- limits
def test_every_api_call_counts_in_sforce_limit_info_and_limits(server, session, token, sf):
    """Each authenticated call adds one to api-usage (logins do not); /limits reports the remainder."""
    sf.query("SELECT Id FROM Account LIMIT 1")
    used = sf.api_usage["api-usage"].used
    assert sf.api_usage["api-usage"].total == 100_000
    password_login(session, server)  # not an API call
    sf.query("SELECT Id FROM Account LIMIT 1")
    assert sf.api_usage["api-usage"].used == used + 1
    limits = sf.limits()
    assert limits["DailyApiRequests"] == {"Max": 100_000, "Remaining": 100_000 - (used + 2)}
    for key in ("DailyBulkV2QueryJobs", "DailyBulkApiBatches", "DataStorageMB"):
        assert {"Max", "Remaining"} <= set(limits[key])
    response = api(session, server, token, "GET", "")
    assert response.headers["Sforce-Limit-Info"] == f"api-usage={used + 3}/100000"


def test_spent_budget_is_request_limit_exceeded(server, session, sf):
    """Once the daily budget is spent every API call is 403 REQUEST_LIMIT_EXCEEDED."""
    assert session.post(server.url + "/_sandbox/budget", json={"max": 1000, "used": 999}).json() == {
        "max": 1000, "used": 999}
    sf.query("SELECT Id FROM Account LIMIT 1")
    assert sf.api_usage["api-usage"] == (1000, 1000)
    with pytest.raises(SalesforceRefusedRequest) as exc:
        sf.query("SELECT Id FROM Account LIMIT 1")
    assert exc.value.content == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]


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


def test_lock_row_faults(server, session, sf):
    """With lock_row_rate set, writes fail with UNABLE_TO_LOCK_ROW: the whole single-record call,
    one record of a collection."""
    rid = sf.AR_Summary__c.create({"Name": "lock", "ARHub_Key__c": "lock-1"})["id"]
    session.post(server.url + "/_sandbox/faults", json={"lock_row_rate": 1.0, "seed": 1})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.AR_Summary__c.update(rid, {"Tags__c": "x"})
    assert exc.value.content[0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
    assert exc.value.content[0]["message"] == f"unable to obtain exclusive access to this record or 1 records: {rid}"
    results = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "AR_Summary__c"}, "Id": rid, "Tags__c": "y"}]})
    assert results[0]["success"] is False and results[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    session.post(server.url + "/_sandbox/faults", json={"lock_row_rate": 0.3, "seed": 7})
    outcomes = [r["success"] for r in sf.restful("composite/sobjects", method="POST", json={"records": [
        {"attributes": {"type": "AR_Summary__c"}, "Name": f"lk{i}"} for i in range(100)]})]
    assert 10 < outcomes.count(False) < 50


def test_server_errors_and_latency_faults(server, session, sf):
    """error_5xx_rate makes calls fail with 500/503; latency_ms delays every answer."""
    session.post(server.url + "/_sandbox/faults", json={"error_5xx_rate": 1.0, "seed": 3})
    statuses = set()
    for _ in range(8):
        with pytest.raises(SalesforceGeneralError) as exc:
            sf.query("SELECT Id FROM Account LIMIT 1")
        statuses.add(exc.value.status)
        assert exc.value.content[0]["errorCode"] in ("UNKNOWN_EXCEPTION", "SERVER_UNAVAILABLE")
    assert statuses <= {500, 503} and statuses
    session.post(server.url + "/_sandbox/faults", json={"latency_ms": 60})
    started = time.monotonic()
    sf.query("SELECT Id FROM Account LIMIT 1")
    assert time.monotonic() - started >= 0.06
    session.delete(server.url + "/_sandbox/faults")
    session.post(server.url + "/_sandbox/faults", json=[{"status": 503, "retry_after": 2, "path": "/limits"}])
    with pytest.raises(SalesforceGeneralError) as exc:
        sf.limits()
    assert exc.value.status == 503
    assert sf.limits()["DailyApiRequests"]["Max"] == 100_000


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


# ------------------------------------------------------------------------------------------- Bulk 2.0
def test_composite_runs_subrequests_in_order_as_one_api_call(server, session, token):
    """POST composite: describes and a query in one request, one API call however many
    subrequests; a later subrequest reads an earlier answer through @{ref.path}."""
    server.set_budget(max=100_000, used=0)
    body = {"compositeRequest": [
        {"method": "GET", "url": f"/services/data/v{V}/sobjects/AR_Summary__c/describe", "referenceId": "summary"},
        {"method": "GET", "url": f"/services/data/v{V}/sobjects/AR_Invoice__c/describe", "referenceId": "invoice"},
        {"method": "GET", "url": f"/services/data/v{V}/sobjects/No_Such__c/describe", "referenceId": "missing"},
        {"method": "GET", "url": f"/services/data/v{V}/query?q=SELECT+Id+FROM+Account+ORDER+BY+Id+LIMIT+1",
         "referenceId": "first"},
        {"method": "GET", "url": f"/services/data/v{V}/sobjects/Account/@{{first.records[0].Id}}?fields=Id,Name",
         "referenceId": "account"}]}
    response = api(session, server, token, "POST", "composite", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["Sforce-Limit-Info"] == "api-usage=1/100000"
    answers = {r["referenceId"]: r for r in response.json()["compositeResponse"]}
    assert [r["referenceId"] for r in response.json()["compositeResponse"]] == [
        "summary", "invoice", "missing", "first", "account"]
    assert answers["summary"]["httpStatusCode"] == 200 and answers["summary"]["body"]["name"] == "AR_Summary__c"
    assert {f["name"] for f in answers["invoice"]["body"]["fields"]} >= {"ARHub_Key__c", "Account__c"}
    assert answers["missing"]["httpStatusCode"] == 404 and answers["missing"]["body"][0]["errorCode"] == "NOT_FOUND"
    first_id = answers["first"]["body"]["records"][0]["Id"]
    assert answers["account"]["httpStatusCode"] == 200 and answers["account"]["body"]["Id"] == first_id
    stats = server.stats()
    assert stats["api_used"] == 1 and stats["by_endpoint"].get("POST composite") == 1


def test_composite_all_or_none_rolls_back_and_halts_the_rest(server, session, token):
    """allOrNone: a failing subrequest rolls the earlier writes back; the others answer PROCESSING_HALTED.
    Without it a subrequest that references a failed one is halted, the rest run; more than 25 is refused."""
    def create(ref, key, name="X"):
        return {"method": "POST", "url": f"/services/data/v{V}/sobjects/AR_Summary__c", "referenceId": ref,
                "body": {"Name": name, "ARHub_Key__c": key}}
    bad = {"method": "PATCH", "url": f"/services/data/v{V}/sobjects/AR_Summary__c/@{{one.id}}",
           "referenceId": "bad", "body": {"No_Such_Field__c": 1}}
    answer = api(session, server, token, "POST", "composite",
                 json={"allOrNone": True, "compositeRequest": [create("one", "cmp-aon-1"), bad,
                                                               create("two", "cmp-aon-2")]}).json()
    codes = {r["referenceId"]: (r["httpStatusCode"], r["body"][0]["errorCode"]) for r in answer["compositeResponse"]}
    assert codes == {"one": (400, "PROCESSING_HALTED"), "bad": (400, "INVALID_FIELD"),
                     "two": (400, "PROCESSING_HALTED")}
    assert not [r for r in live(server, "AR_Summary__c") if (r.get("ARHub_Key__c") or "").startswith("cmp-aon-")]

    after_bad = {"method": "GET", "url": f"/services/data/v{V}/sobjects/AR_Summary__c/@{{oops.id}}",
                 "referenceId": "after"}
    oops = dict(create("oops", "cmp-part-1"), body={"Nope__c": 1})
    answer = api(session, server, token, "POST", "composite",
                 json={"compositeRequest": [oops, after_bad, create("fine", "cmp-part-2")]}).json()
    status = {r["referenceId"]: r["httpStatusCode"] for r in answer["compositeResponse"]}
    assert status == {"oops": 400, "after": 400, "fine": 201}
    assert answer["compositeResponse"][1]["body"][0]["errorCode"] == "PROCESSING_HALTED"

    many = [{"method": "GET", "url": f"/services/data/v{V}/limits", "referenceId": f"r{n}"} for n in range(26)]
    refused = api(session, server, token, "POST", "composite", json={"compositeRequest": many})
    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "INVALID_API_INPUT"


def test_composite_batch_charges_every_subrequest(server, session, token):
    """POST composite/batch: independent subrequests, each counted against the API budget (Salesforce:
    "Each subrequest counts against rate limits"); haltOnError answers 412 after the first failure."""
    server.set_budget(max=100_000, used=0)
    body = {"batchRequests": [{"method": "GET", "url": f"v{V}/sobjects/AR_Summary__c/describe"},
                              {"method": "GET", "url": f"v{V}/sobjects/No_Such__c/describe"},
                              {"method": "GET", "url": f"v{V}/limits"}]}
    response = api(session, server, token, "POST", "composite/batch", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["Sforce-Limit-Info"] == "api-usage=3/100000"
    answer = response.json()
    assert answer["hasErrors"] is True
    assert [r["statusCode"] for r in answer["results"]] == [200, 404, 200]
    assert answer["results"][0]["result"]["name"] == "AR_Summary__c"
    assert "DailyApiRequests" in answer["results"][2]["result"]
    halted = api(session, server, token, "POST", "composite/batch", json=dict(body, haltOnError=True)).json()
    assert [r["statusCode"] for r in halted["results"]] == [200, 404, 412]
    assert halted["results"][2]["result"][0]["errorCode"] == "BATCH_PROCESSING_HALTED"


def _wait_for(session, server, token, job_id, states=("JobComplete", "Failed", "Aborted"), kind="ingest"):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = api(session, server, token, "GET", f"jobs/{kind}/{job_id}").json()
        if info["state"] in states:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {info['state']}")


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_bulk2_upsert_through_simple_salesforce(server, sf):
    """sf.bulk2.<Object>.upsert runs the whole job lifecycle; relationship columns resolve, bad rows
    fail alone and show up in failedResults with Salesforce's error format."""
    numbers = server.org.seed_truth["with_external_id"][:5]
    records = [{"ARHub_Key__c": f"bulk-{i}", "Name": f"Bulk {i}", "Open_Balance__c": str(100 + i),
                "Account__r.ERP_Customer_Number__c": numbers[i]} for i in range(5)]
    records.append({"ARHub_Key__c": "bulk-bad", "Name": "", "Open_Balance__c": "1",
                    "Account__r.ERP_Customer_Number__c": numbers[0]})
    records.append({"ARHub_Key__c": "bulk-fk", "Name": "FK", "Open_Balance__c": "1",
                    "Account__r.ERP_Customer_Number__c": "CUST-424242"})
    [result] = sf.bulk2.AR_Summary__c.upsert(records=records, external_id_field="ARHub_Key__c", wait=0.05)
    assert result["numberRecordsProcessed"] == 7 and result["numberRecordsFailed"] == 2
    rows = sf.query("SELECT ARHub_Key__c, Account__c, Open_Balance__c FROM AR_Summary__c "
                    "WHERE ARHub_Key__c LIKE 'bulk-%' ORDER BY ARHub_Key__c")["records"]
    assert [(r["ARHub_Key__c"], r["Account__c"], r["Open_Balance__c"]) for r in rows] == [
        (f"bulk-{i}", server.org.seed_truth["accounts"][numbers[i]], 100.0 + i) for i in range(5)]
    failed = _csv_rows(sf.bulk2.AR_Summary__c._client.get_ingest_results(result["job_id"], "failedResults"))
    errors = {row["ARHub_Key__c"]: row["sf__Error"] for row in failed}
    assert errors["bulk-bad"] == "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"
    assert errors["bulk-fk"] == ("INVALID_FIELD:Foreign key external ID: cust-424242 not found for field "
                                 "ERP_Customer_Number__c in entity Account: --")
    ok = _csv_rows(sf.bulk2.AR_Summary__c._client.get_ingest_results(result["job_id"], "successfulResults"))
    assert [row["sf__Created"] for row in ok] == ["true"] * 5 and all(row["sf__Id"].startswith("a0X") for row in ok)
    # a second run updates: sf__Created false
    [again] = sf.bulk2.AR_Summary__c.upsert(records=records[:5], external_id_field="ARHub_Key__c", wait=0.05)
    ok = _csv_rows(sf.bulk2.AR_Summary__c._client.get_ingest_results(again["job_id"], "successfulResults"))
    assert [row["sf__Created"] for row in ok] == ["false"] * 5


def test_bulk2_raw_lifecycle_with_failed_rows(server, session, token):
    """By raw requests: create (Open), PUT CSV (201), UploadComplete, InProgress → JobComplete;
    successfulResults and failedResults carry sf__ columns plus the original ones; #N/A is null."""
    job = api(session, server, token, "POST", "jobs/ingest", json={
        "object": "AR_Invoice__c", "operation": "insert", "contentType": "CSV", "lineEnding": "CRLF",
        "columnDelimiter": "COMMA"}).json()
    assert job["state"] == "Open" and job["contentUrl"] == f"services/data/v{V}/jobs/ingest/{job['id']}/batches"
    data = ("Name,ARHub_Key__c,Amount__c,Due_Date__c,Status__c,PO_Number__c\r\n"
            "INV-1,raw-1,100.50,2026-02-01,Open,#N/A\r\n"
            ",raw-2,1,2026-02-01,Open,\r\n"
            "INV-3,raw-3,abc,2026-02-01,Open,\r\n"
            "INV-4,raw-4,1,2026-02-30,Open,\r\n"
            "INV-5,raw-5,1,2026-02-01,Unknown,\r\n"
            f"INV-6,raw-6,1,2026-02-01,Paid,{'P' * 81}\r\n"
            "\"INV-7, with comma\",raw-7,2,2026-02-01,Paid,PO-7\r\n")
    put = api(session, server, token, "PUT", f"jobs/ingest/{job['id']}/batches", data=data.encode(),
              headers={"Content-Type": "text/csv"})
    assert put.status_code == 201
    closed = api(session, server, token, "PATCH", f"jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    assert closed.json()["state"] == "UploadComplete"
    info = _wait_for(session, server, token, job["id"])
    assert info["state"] == "JobComplete"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (7, 5)
    ok = api(session, server, token, "GET", f"jobs/ingest/{job['id']}/successfulResults").text
    assert ok.startswith('"sf__Id","sf__Created","Name","ARHub_Key__c"')
    assert [r["ARHub_Key__c"] for r in csv.DictReader(io.StringIO(ok))] == ["raw-1", "raw-7"]
    failed = {r["ARHub_Key__c"]: r["sf__Error"] for r in csv.DictReader(io.StringIO(
        api(session, server, token, "GET", f"jobs/ingest/{job['id']}/failedResults").text))}
    assert failed["raw-2"] == "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"
    assert failed["raw-3"].startswith("INVALID_TYPE_ON_FIELD_IN_RECORD:Amount: value not of required type: abc")
    assert failed["raw-4"].startswith("INVALID_TYPE_ON_FIELD_IN_RECORD:Due Date:")
    assert failed["raw-5"].startswith("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:Status: bad value")
    assert failed["raw-6"].startswith("STRING_TOO_LONG:PO Number: data value too large")
    row = server.org.tables["AR_Invoice__c"][server.org.find("AR_Invoice__c", "ARHub_Key__c", "raw-1")[0]]
    assert (row["Amount__c"], row["PO_Number__c"], row["Due_Date__c"]) == (100.5, None, "2026-02-01")
    listed = api(session, server, token, "GET", "jobs/ingest").json()
    assert job["id"] in {j["id"] for j in listed["records"]} and listed["done"] is True
    again = api(session, server, token, "PATCH", f"jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    assert again.status_code == 400 and again.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert api(session, server, token, "DELETE", f"jobs/ingest/{job['id']}").status_code == 204
    assert api(session, server, token, "GET", f"jobs/ingest/{job['id']}").status_code == 404


def test_bulk2_abort_leaves_unprocessed_records(server, session, token):
    """An aborted job processes nothing: its rows come back from unprocessedrecords, and it takes no more data."""
    job = api(session, server, token, "POST", "jobs/ingest", json={"object": "AR_Summary__c",
                                                                    "operation": "insert"}).json()
    data = "Name,ARHub_Key__c\nA,abort-1\nB,abort-2\n"
    assert api(session, server, token, "PUT", f"jobs/ingest/{job['id']}/batches", data=data,
               headers={"Content-Type": "text/csv"}).status_code == 201
    aborted = api(session, server, token, "PATCH", f"jobs/ingest/{job['id']}", json={"state": "Aborted"}).json()
    assert aborted["state"] == "Aborted"
    rows = list(csv.reader(io.StringIO(api(session, server, token, "GET",
                                           f"jobs/ingest/{job['id']}/unprocessedrecords").text)))
    assert rows == [["Name", "ARHub_Key__c"], ["A", "abort-1"], ["B", "abort-2"]]
    late = api(session, server, token, "PUT", f"jobs/ingest/{job['id']}/batches", data=data,
               headers={"Content-Type": "text/csv"})
    assert late.status_code == 409 and late.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert server.org.find("AR_Summary__c", "ARHub_Key__c", "abort-1") == []


def test_bulk2_bad_header_fails_the_job(server, session, token):
    """A CSV header naming an unknown field fails the whole job with Salesforce's errorMessage."""
    job = api(session, server, token, "POST", "jobs/ingest", json={
        "object": "AR_Summary__c", "operation": "upsert", "externalIdFieldName": "ARHub_Key__c"}).json()
    api(session, server, token, "PUT", f"jobs/ingest/{job['id']}/batches",
        data="Name,ARHub_Key__c,Foo__c\nA,hdr-1,x\n", headers={"Content-Type": "text/csv"})
    api(session, server, token, "PATCH", f"jobs/ingest/{job['id']}", json={"state": "UploadComplete"})
    info = _wait_for(session, server, token, job["id"])
    assert info["state"] == "Failed"
    assert info["errorMessage"] == "InvalidBatch : Field name not found : Foo__c"
    bad = api(session, server, token, "POST", "jobs/ingest", json={
        "object": "AR_Summary__c", "operation": "upsert", "externalIdFieldName": "Name"})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALIDJOB"
    with pytest.raises(SalesforceOperationError, match="Field name not found"):
        Salesforce(instance_url=server.url, session_id=token, session=session).bulk2.AR_Summary__c.insert(
            records=[{"Name": "x", "Nope__c": "1"}], wait=0.05)


def test_bulk2_query_job(server, session, token, sf):
    """A Bulk 2.0 query job returns CSV pages with Sforce-Locator and Sforce-NumberOfRecords."""
    pages = list(sf.bulk2.AR_Invoice__c.query("SELECT Id, ARHub_Key__c, Amount__c FROM AR_Invoice__c "
                                              "WHERE ARHub_Key__c LIKE 'page-%'", max_records=1000, wait=0.05))
    rows = [row for page in pages for row in csv.DictReader(io.StringIO(page))]
    assert len(pages) == 3 and len(rows) == 2500
    assert rows[0]["ARHub_Key__c"] == "page-00000" and rows[1]["Amount__c"] == "1"


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


def test_stats_count_calls_per_endpoint(server, session, sf):
    """/_sandbox/stats counts API calls in total and per endpoint; reset_stats zeroes them."""
    session.post(server.url + "/_sandbox/reset_stats")
    sf.query("SELECT Id FROM Account LIMIT 1")
    sf.query("SELECT Id FROM Account LIMIT 2")
    sf.Account.describe()
    stats = session.get(server.url + "/_sandbox/stats").json()
    assert stats["api_used"] == 3
    assert stats["by_endpoint"] == {"GET query": 2, "GET sobjects/{object}/describe": 1}
    assert server.stats()["api_used"] == 3


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
