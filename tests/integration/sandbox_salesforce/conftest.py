"""Fixtures of the Salesforce emulator tests: one small org per test module (300 ERP customers and
2,500 extra invoices to page through) served over real TLS on loopback, a requests session that
trusts the sandbox CA, a bearer token, a simple-salesforce client, and no faults and a fresh API
budget around every test.

The environment may set REQUESTS_CA_BUNDLE, which requests lets override ``session.verify``; the
sessions here set ``trust_env = False`` so the sandbox CA is the one used.
"""
from __future__ import annotations

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce

from connectors.sandbox.book import Book
from connectors.sandbox.salesforce import Org, SalesforceServer
from tests.support.salesforce_emulator import ToSandbox, password_login


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


@pytest.fixture
def token(session, server) -> str:
    response = password_login(session, server)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture
def sf(server, session, token) -> Salesforce:
    return Salesforce(instance_url=server.url, session_id=token, session=session)
