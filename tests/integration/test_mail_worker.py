"""``jobs.queues.MailWorker``, the non-forking worker for the ``dunning`` queue: one SMTP
connection serves one email after another, and a worker killed mid-send still never sends twice.
Real ``rq worker`` processes, a real aiosmtpd server on loopback (the helpers of test_mailer)."""
from __future__ import annotations

import socket

from rq import Retry

from jobs.dunning import enqueue_dunning_email
from jobs.queues import MAIL_WORKER_CLASS, get_queue
from middleware import mailer
from middleware.settings import get_settings
from tests.integration.test_mailer import (  # noqa: F401  (fixtures)
    Sink, _gone, _rerun_abandoned, out_messages, reload, smtp_server, use_smtp, world,
)


class PeerSink(Sink):
    """Also counts the SMTP sessions that greeted the server (one EHLO per connection)."""

    ehlos = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.ehlos += 1
        session.host_name = hostname
        return responses


def test_a_mail_worker_sends_one_email_after_another_over_one_connection(world, redis_url, smtp_server, use_smtp,
                                                                         start_rq_worker, wait_until):
    """Three due emails through one MailWorker: each sent once, all three over the same SMTP
    connection (a fresh connect, EHLO, STARTTLS and login per email is what made sending slow)."""
    controller, sink = smtp_server(PeerSink())
    env = use_smtp(controller)
    actions = []
    for n in range(3):
        cust, inv = world.customer(name=f"Kunde {n}", email=f"ap{n}@kunde.example")
        actions.append(world.action(cust, inv))
    start_rq_worker(queues=["dunning"], env=env, worker_class=MAIL_WORKER_CLASS)
    queue = get_queue("dunning", get_settings())
    for action in actions:
        enqueue_dunning_email(action, queue=queue)
    wait_until(lambda: len(sink.received) == 3, timeout=30, message="three emails")
    wait_until(lambda: all(reload(a).status == "sent" for a in actions), message="three actions sent")
    assert sorted(r.rcpt_tos[0] for r in sink.received) == ["ap0@kunde.example", "ap1@kunde.example",
                                                            "ap2@kunde.example"]
    assert sink.ehlos == 1


def test_a_mail_worker_killed_during_data_never_sends_twice(world, redis_url, smtp_server, use_smtp,
                                                            start_rq_worker, wait_until):
    """The MailWorker runs the job in its own process: killed after the message reached the
    server but before the reply was recorded, the retried job sends nothing and fails the
    action as 'outcome unknown after a worker crash'; the mailbox holds one copy."""
    controller, sink = smtp_server(Sink(hold_data=True))
    env = use_smtp(controller)
    cust, inv = world.customer()
    action = world.action(cust, inv)
    worker = start_rq_worker(queues=["dunning"], env=env, with_scheduler=False, worker_class=MAIL_WORKER_CLASS)
    queue = get_queue("dunning", get_settings())
    job = enqueue_dunning_email(action, queue=queue, retry=Retry(max=2))

    wait_until(sink.holding.is_set, message="the worker to reach DATA")
    worker.kill()
    worker.wait(timeout=10)
    wait_until(lambda: _gone(worker.pid), message="the worker to die")
    sink.gate.set()  # the server accepts what it has; nobody hears the 250
    assert reload(action).status == "sending"

    result = _rerun_abandoned(queue, job, start_rq_worker, env, wait_until)

    assert result["status"] == "unknown"
    assert len(sink.received) == 1 and sink.data_commands == 1
    assert reload(action).status == "failed"
    assert [m.status for m in out_messages(action)] == ["unknown"]


def test_a_kept_connection_is_checked_and_replaced_when_the_server_dropped_it(world, smtp_server, use_smtp):
    """In one process with connections kept: the second email reuses the first's connection; when
    the server has dropped it meanwhile, a NOOP finds out and a new connection sends the email."""
    controller, sink = smtp_server(PeerSink())
    use_smtp(controller)
    mailer.keep_connections(True)
    try:
        sent = []
        for n in range(3):
            cust, inv = world.customer(name=f"Kunde {n}", email=f"ap{n}@kunde.example")
            if n == 2:  # the server closes the idle connection
                mailer._kept["entry"][1].sock.shutdown(socket.SHUT_RDWR)
            sent.append(mailer.send_action(world.action(cust, inv).id).status)
        assert sent == ["sent", "sent", "sent"]
        assert len(sink.received) == 3
        assert sink.ehlos == 2  # the first connection for emails 1 and 2, a new one for email 3
    finally:
        mailer.keep_connections(False)
    assert mailer._kept["entry"] is None


def test_connections_are_not_kept_by_default(world, smtp_server, use_smtp):
    """Outside a MailWorker nothing changes: each email has its own connection, closed after it."""
    controller, sink = smtp_server(PeerSink())
    use_smtp(controller)
    for n in range(2):
        cust, inv = world.customer(name=f"Kunde {n}", email=f"ap{n}@kunde.example")
        assert mailer.send_action(world.action(cust, inv).id).status == "sent"
    assert sink.ehlos == 2 and mailer._kept["entry"] is None
