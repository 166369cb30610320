"""``arhub inbox receive|poll|list|handle`` as real subprocesses on SQLite: a reply from an .eml file and one
from a real IMAP server on loopback reach the collector's list, and handling one takes it off."""
from __future__ import annotations

import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.imap_server import ImapServer

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def reply(n: int, sender: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "ar@arhub.localhost"
    msg["Subject"] = f"Re: reminder {n}"
    msg["Message-ID"] = f"<cli-{n}@acme.example.test>"
    msg.set_content("We will pay by 4 December.")
    return msg.as_bytes()


@pytest.fixture
def env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'arhub.db'}", ARHUB_VAR_DIR=str(tmp_path / "var"),
               ARHUB_SECRET_KEY="arhub-e2e-secret-key-not-for-production", ARHUB_ENV_FILE="", COLUMNS="200")
    run(env, "db", "upgrade")
    # one customer with a billing contact, written as the ERP sync would have
    seed = ("from middleware.db import connect; from middleware.models import *; "
            f"connect({env['ARHUB_DATABASE_URL']!r}); s = Source.create(name='erp', kind='rest', config={{}}); "
            "c = Customer.create(source=s, external_id='c1', name='Acme GmbH', billing_currency='EUR', "
            "collector='carla@ar.example.test', content_hash='x'*32); "
            "Contact.create(source=s, external_id='c1:billing', customer=c, customer_external_id='c1', "
            "email='ap@acme.example.test', content_hash='x'*32)")
    subprocess.run([sys.executable, "-c", seed], env=env, cwd=ROOT, check=True, timeout=60)
    return env


def test_receive_list_handle_and_poll(env, tmp_path):
    """An .eml received from the command line is listed for its collector; handled, it leaves the list;
    a poll reads the mailbox; receiving the same file again stores nothing."""
    eml = tmp_path / "reply.eml"
    eml.write_bytes(reply(1, "ap@acme.example.test"))
    out = run(env, "inbox", "receive", str(eml))
    assert "message #1 <cli-1@acme.example.test>: Acme GmbH (matched by sender), routed to carla@ar.example.test" in out
    assert "already received, nothing stored" in run(env, "inbox", "receive", str(eml))

    listed = run(env, "inbox", "list", "--collector", "carla@ar.example.test")
    assert "Acme GmbH" in listed and "Re: reminder 1" in listed
    assert "nothing waiting" in run(env, "inbox", "list", "--queue")

    out = run(env, "inbox", "handle", "1", "--actor", "carla@ar.example.test", "--promise-until", "2026-12-04",
              "--amount", "1200")
    assert "reply 1 handled by carla@ar.example.test: promise" in out
    assert "nothing waiting" in run(env, "inbox", "list", "--collector", "carla@ar.example.test")

    with ImapServer() as server:
        server.deliver(reply(2, "stranger@gmail.com"))
        out = run({**env, "ARHUB_IMAP_URL": server.url}, "inbox", "poll")
        assert "fetched 1: 1 stored (unmatched 1), 0 already received" in out
        assert server.unseen() == []
    assert "stranger@gmail.com" in run(env, "inbox", "list", "--unmatched")
