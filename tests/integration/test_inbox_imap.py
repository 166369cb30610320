"""The IMAP poller (jobs.inbox.poll_imap) against a real IMAP server on loopback (tests/support/imap_server.py):
unseen replies are received and flagged seen only after they are stored, over TLS or STARTTLS; a crash between
storing and flagging re-reads the message next time without storing it twice."""
from __future__ import annotations

import ssl
from email.message import EmailMessage

import pytest
import trustme

from jobs.inbox import ImapError, parse_imap_url, poll_imap
from middleware.models import Customer, Message, Source
from tests.support.imap_server import ImapServer


@pytest.fixture(scope="module")
def tls():
    """(server context, client context) from a throwaway CA that only this module trusts."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.fixture
def acme(db):
    source = Source.create(name="erp", kind="rest", config={})
    customer = Customer.create(source=source, external_id="c-1", name="Acme", billing_currency="EUR",
                               collector="carla@ar.example.test", content_hash="x" * 32)
    Message.create(direction="out", customer=customer, message_id="arhub.act-1@reply.arhub.localhost",
                   thread_token="tok-acme", status="sent")
    return customer


def reply(n: int, **headers) -> bytes:
    msg = EmailMessage()
    msg["From"] = "ap@acme.example.test"
    msg["To"] = "reply+tok-acme@reply.arhub.localhost"
    msg["Subject"] = f"Re: Invoice overdue ({n})"
    msg["Message-ID"] = f"<reply-{n}@acme.example.test>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(f"Reply number {n}.")
    return msg.as_bytes()


def inbound() -> list[Message]:
    return list(Message.select().where(Message.direction == "in").order_by(Message.id))


def test_unseen_replies_are_received_over_imaps_and_flagged_seen(acme, tls):
    """Every unseen message is stored and routed, then flagged \\Seen; messages already seen are left
    alone; a second poll finds nothing new. The message is read with BODY.PEEK[] (never flagged on read)."""
    server_ctx, client_ctx = tls
    with ImapServer(tls_context=server_ctx) as server:
        a = server.deliver(reply(1))
        b = server.deliver(reply(2, Auto_Submitted="auto-replied"))
        server.deliver(reply(3), seen=True)  # read by a person in their mail client: not ours to take
        result = poll_imap(server.url, ssl_context=client_ctx)
        assert result == {"status": "ok", "fetched": 2, "stored": 2, "duplicates": 0, "left": 0,
                          "routed": 1, "auto_reply": 1}
        assert [(m.message_id, m.status, m.routed_to) for m in inbound()] == [
            ("reply-1@acme.example.test", "routed", "carla@ar.example.test"),
            ("reply-2@acme.example.test", "auto_reply", None)]
        assert "\\Seen" in server.flags(a) and "\\Seen" in server.flags(b)
        assert server.unseen() == []
        assert "FETCH" not in server.commands  # only UID FETCH ... BODY.PEEK[]
        assert poll_imap(server.url, ssl_context=client_ctx)["fetched"] == 0


def test_plain_imap_upgrades_with_starttls_before_logging_in(acme, tls):
    """imap:// to a server offering STARTTLS: the poller encrypts first (the server refuses LOGIN before)."""
    server_ctx, client_ctx = tls
    with ImapServer(starttls_context=server_ctx) as server:
        server.deliver(reply(1))
        assert poll_imap(server.url, ssl_context=client_ctx)["stored"] == 1
        assert server.commands.index("STARTTLS") < server.commands.index("LOGIN")


def test_a_crash_between_storing_and_flagging_rereads_without_storing_twice(acme):
    """The connection dies when the poller flags the first message: that message is stored but still
    unseen. The next poll reads it again, recognises its Message-ID, stores nothing, and flags it."""
    with ImapServer() as server:  # plain IMAP on loopback, no STARTTLS offered
        uid = server.deliver(reply(1))
        server.deliver(reply(2))
        server.drop_on = "STORE"
        with pytest.raises(ImapError, match="IMAP"):
            poll_imap(server.url)
        assert [m.message_id for m in inbound()] == ["reply-1@acme.example.test"]
        assert uid in server.unseen()
        result = poll_imap(server.url)
        assert (result["fetched"], result["stored"], result["duplicates"]) == (2, 1, 1)
        assert [m.message_id for m in inbound()] == ["reply-1@acme.example.test", "reply-2@acme.example.test"]
        assert server.unseen() == []


def test_limit_leaves_the_rest_for_the_next_poll(acme):
    """At most ``limit`` messages per poll, oldest first; ``left`` says how many wait."""
    with ImapServer() as server:
        for n in range(1, 6):
            server.deliver(reply(n))
        first = poll_imap(server.url, limit=2)
        assert (first["stored"], first["left"]) == (2, 3)
        assert [m.message_id for m in inbound()] == ["reply-1@acme.example.test", "reply-2@acme.example.test"]
        assert poll_imap(server.url, limit=10)["stored"] == 3


def test_wrong_password_and_untrusted_certificate_fail_clearly(acme, tls):
    """Bad credentials or a certificate not signed by a trusted CA: an ImapError naming the problem, and
    the mailbox untouched."""
    server_ctx, _ = tls
    with ImapServer(tls_context=server_ctx) as server:
        server.deliver(reply(1))
        with pytest.raises(ImapError, match="cannot reach IMAP server"):
            poll_imap(server.url)  # the default context does not trust the test CA
    with ImapServer() as server:
        server.deliver(reply(1))
        wrong = server.url.replace("p%40ss%20word", "wrong")
        with pytest.raises(ImapError, match="login .* failed"):
            poll_imap(wrong)
        assert len(server.unseen()) == 1 and inbound() == []


def test_without_an_imap_url_the_poll_is_disabled(db, settings):
    """ARHUB_IMAP_URL unset: nothing to poll, and the job says so instead of failing."""
    assert poll_imap() == {"status": "disabled", "message": "ARHUB_IMAP_URL is not set"}


def test_the_url_is_percent_decoded_and_defaults_to_inbox():
    """User and password are percent-encoded in the URL; the folder defaults to INBOX; the repr hides
    the password."""
    target = parse_imap_url("imaps://ar%40example.test:p%40ss%20word@mail.example.test")
    assert (target.tls, target.host, target.port, target.user, target.password, target.folder) == (
        True, "mail.example.test", 993, "ar@example.test", "p@ss word", "INBOX")
    assert "p@ss" not in repr(target)
    assert parse_imap_url("imap://u:p@h/Replies").port == 143
    with pytest.raises(ImapError, match="imaps://"):
        parse_imap_url("pop3://u:p@h")


def test_the_poll_runs_as_an_rq_job_in_a_real_worker(acme, redis_url, settings, start_rq_worker, wait_until):
    """Enqueued like the cron would, a real rq worker reads ARHUB_IMAP_URL and stores the replies."""
    from jobs.queues import get_queue

    with ImapServer() as server:
        server.deliver(reply(1))
        start_rq_worker(queues=["default"], env={"ARHUB_IMAP_URL": server.url})
        job = get_queue("default", settings).enqueue("jobs.inbox.poll_imap")
        wait_until(lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout=60, message="the poll job")
        assert job.get_status() == "finished", job.latest_result()
        assert job.return_value()["stored"] == 1
        assert [m.message_id for m in inbound()] == ["reply-1@acme.example.test"]
