"""The Salesforce emulator (connectors/sandbox/salesforce/): the composite and composite/batch
resources, and Bulk API 2.0 ingest and query jobs, by raw requests and through simple-salesforce.

One small org per module, every call over real TLS on loopback (fixtures: conftest.py).
"""
from __future__ import annotations

import csv
import io
import time

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceOperationError

from tests.support.salesforce_emulator import V, api, live


# ------------------------------------------------------------------------------------------- composite
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


# ------------------------------------------------------------------------------------------- Bulk 2.0
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
