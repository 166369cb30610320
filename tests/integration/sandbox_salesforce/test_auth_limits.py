"""The Salesforce emulator (connectors/sandbox/salesforce/): the OAuth (password, client
credentials, JWT bearer) and SOAP logins, expired sessions, the daily API budget and its headers,
per-endpoint stats, and injected faults (locked rows, 5xx, latency), driven by simple-salesforce.

One small org per module, every call over real TLS on loopback (fixtures: conftest.py).
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (SalesforceAuthenticationFailed, SalesforceExpiredSession,
                                          SalesforceGeneralError, SalesforceMalformedRequest,
                                          SalesforceRefusedRequest)
from simple_salesforce.login import SalesforceLogin

from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as CREDS
from tests.support.salesforce_emulator import api, password_login


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


# ------------------------------------------------------------------------------------------- faults
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
