"""``POST /inbound/email`` (console.inbound): a signed raw message is stored and routed (202); anything
not signed with ARHUB_INBOUND_SECRET over a fresh timestamp is refused (401) and stores nothing."""
from __future__ import annotations

import time
from email.message import EmailMessage

import pytest
import requests

from console import create_app
from console.inbound import sign
from middleware.models import Customer, Message, Source
from middleware.settings import reset_settings

SECRET = "whsec-test-0123456789abcdef"


@pytest.fixture
def app(db, settings, monkeypatch):
    monkeypatch.setenv("ARHUB_INBOUND_SECRET", SECRET)
    reset_settings()
    return create_app()


@pytest.fixture
def acme(db):
    source = Source.create(name="erp", kind="rest", config={})
    customer = Customer.create(source=source, external_id="c-1", name="Acme", billing_currency="EUR",
                               collector="carla@ar.example.test", content_hash="x" * 32)
    Message.create(direction="out", customer=customer, message_id="arhub.act-1@reply.arhub.localhost",
                   thread_token="tok-acme", status="sent")
    return customer


def reply(message_id: str = "<reply-1@acme.example.test>") -> bytes:
    msg = EmailMessage()
    msg["From"] = "ap@acme.example.test"
    msg["To"] = "reply+tok-acme@reply.arhub.localhost"
    msg["Subject"] = "Re: Invoice overdue"
    msg["Message-ID"] = message_id
    msg.set_content("We will pay on Friday.")
    return msg.as_bytes()


def signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict:
    at = int(time.time()) if at is None else at
    return {"X-Arhub-Timestamp": str(at), "X-Arhub-Signature": sign(secret, at, body)}


def inbound_count() -> int:
    return Message.select().where(Message.direction == "in").count()


def test_a_signed_raw_message_is_accepted_stored_and_routed(app, acme):
    """202 with the stored message's id and routing; a second delivery says duplicate and stores nothing."""
    client = app.test_client()
    body = reply()
    resp = client.post("/inbound/email", data=body, content_type="message/rfc822", headers=signed(body))
    assert resp.status_code == 202, resp.get_json()
    data = resp.get_json()
    stored = Message.get(Message.direction == "in")
    assert data == {"id": stored.id, "message_id": "reply-1@acme.example.test", "status": "routed",
                    "routed_to": "carla@ar.example.test", "customer_id": acme.id, "matched_by": "token",
                    "duplicate": False}
    again = client.post("/inbound/email", data=body, content_type="message/rfc822", headers=signed(body))
    assert again.status_code == 202 and again.get_json()["duplicate"] is True
    assert again.get_json()["id"] == stored.id and inbound_count() == 1


def test_the_message_may_come_as_a_form_field(app, acme):
    """A provider posting a form with the message in the field ``message`` is read the same way (the
    signature covers the form body as sent)."""
    client = app.test_client()
    form = {"message": reply().decode(), "recipient": "reply+tok-acme@reply.arhub.localhost"}
    prepared = requests.Request("POST", "http://x/inbound/email", data=form).prepare()
    resp = client.post("/inbound/email", data=prepared.body, content_type=prepared.headers["Content-Type"],
                       headers=signed(prepared.body.encode()))
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["customer_id"] == acme.id


@pytest.mark.parametrize("case", ["missing", "no-timestamp", "wrong-secret", "altered-body", "stale", "future",
                                  "not-sha256"])
def test_requests_not_signed_with_the_secret_over_a_fresh_timestamp_are_refused(app, acme, case):
    """401 with a JSON error saying what is wrong, and nothing stored."""
    body = reply()
    now = int(time.time())
    headers = {
        "missing": {},
        "no-timestamp": {"X-Arhub-Signature": sign(SECRET, now, body)},
        "wrong-secret": signed(body, secret="not-the-secret"),
        "altered-body": signed(body.replace(b"Friday", b"Monday")),
        "stale": signed(body, at=now - 600),  # a captured request replayed 10 minutes later
        "future": signed(body, at=now + 600),
        "not-sha256": {"X-Arhub-Timestamp": str(now), "X-Arhub-Signature": "md5=abc"},
    }[case]
    resp = app.test_client().post("/inbound/email", data=body, content_type="message/rfc822", headers=headers)
    assert resp.status_code == 401
    error = resp.get_json()["error"]
    expected = {"missing": "missing X-Arhub-Timestamp", "no-timestamp": "missing X-Arhub-Timestamp",
                "wrong-secret": "does not match", "altered-body": "does not match", "stale": "5 minutes",
                "future": "5 minutes", "not-sha256": "sha256="}[case]
    assert expected in error
    assert inbound_count() == 0


def test_an_old_signature_cannot_be_replayed_with_a_fresh_timestamp(app, acme):
    """The timestamp is part of the signed bytes: reusing an old signature with a new timestamp fails."""
    body = reply()
    old = signed(body, at=int(time.time()) - 3600)
    headers = {"X-Arhub-Timestamp": str(int(time.time())), "X-Arhub-Signature": old["X-Arhub-Signature"]}
    resp = app.test_client().post("/inbound/email", data=body, content_type="message/rfc822", headers=headers)
    assert resp.status_code == 401 and "does not match" in resp.get_json()["error"]


def test_without_a_configured_secret_the_endpoint_is_off(db, settings, acme):
    """No ARHUB_INBOUND_SECRET: 503 naming the setting, whatever the request carries."""
    body = reply()
    resp = create_app().test_client().post("/inbound/email", data=body, content_type="message/rfc822",
                                           headers=signed(body))
    assert resp.status_code == 503
    assert "ARHUB_INBOUND_SECRET" in resp.get_json()["error"]
    assert inbound_count() == 0


def test_empty_and_unsupported_bodies(app):
    """A signed empty body is a 400; a JSON body is a 415 (send the raw message)."""
    client = app.test_client()
    assert client.post("/inbound/email", data=b"", content_type="message/rfc822",
                       headers=signed(b"")).status_code == 400
    body = b'{"message": "x"}'
    resp = client.post("/inbound/email", data=body, content_type="application/json", headers=signed(body))
    assert resp.status_code == 415 and "message/rfc822" in resp.get_json()["error"]


def test_over_real_http(app, acme, serve_wsgi):
    """The same exchange over a real socket (werkzeug server on loopback, requests as the provider)."""
    base = serve_wsgi(app)
    body = reply("<reply-http@acme.example.test>")
    resp = requests.post(f"{base}/inbound/email", data=body,
                         headers={"Content-Type": "message/rfc822", **signed(body)}, timeout=10)
    assert resp.status_code == 202, resp.text
    assert resp.json()["routed_to"] == "carla@ar.example.test"
    refused = requests.post(f"{base}/inbound/email", data=body,
                            headers={"Content-Type": "message/rfc822", **signed(body, secret="nope")}, timeout=10)
    assert refused.status_code == 401 and refused.headers["Content-Type"] == "application/json"
