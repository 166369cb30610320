"""``arhub users``, ``arhub rules`` and ``arhub collectors`` as real subprocesses on SQLite: the password
goes in through stdin and is never printed or stored; rules apply and report counts; a book moves; an
absence is recorded with its cover."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from werkzeug.security import check_password_hash

ROOT = Path(__file__).resolve().parents[2]
SECRET = "arhub-e2e-secret-key-not-for-production"
PASSWORD = "plum-tree-harbour-42"


def arhub(env: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path) -> dict:
    """One CLI installation: its own SQLite file and var dir, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'arhub.db'}", ARHUB_VAR_DIR=str(tmp_path / "var"),
               ARHUB_SECRET_KEY=SECRET, ARHUB_ENV_FILE="", COLUMNS="160", PYTHONUNBUFFERED="1")
    return env


def test_users_create_reads_the_password_from_stdin_and_never_shows_it(env, tmp_path):
    """``arhub users create --password-stdin`` takes the password from a pipe, prints no trace of it,
    stores a hash that checks against it, and ``users list`` shows only that a password is set."""
    done = arhub(env, "users", "create", "--email", "Anna@Corp.com", "--name", "Anna", "--role", "admin",
                 "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "user anna@corp.com (admin) created" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr

    with sqlite3.connect(tmp_path / "arhub.db") as conn:
        (stored,) = conn.execute('SELECT "password_hash" FROM "user" WHERE "email" = ?', ("anna@corp.com",)).fetchone()
        audit = " ".join(str(r) for r in conn.execute('SELECT "before", "after" FROM "audit_log"'))
    assert PASSWORD not in stored and check_password_hash(stored, PASSWORD)
    assert PASSWORD not in audit and stored not in audit

    listed = arhub(env, "users", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "anna@corp.com" in listed.stdout and "admin" in listed.stdout and "set" in listed.stdout
    assert stored not in listed.stdout and PASSWORD not in listed.stdout

    again = arhub(env, "users", "create", "--email", "anna@corp.com", "--name", "Anna", "--role", "viewer")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_rules_apply_reassign_and_away_from_the_command_line(env):
    """Seeded rules apply and report what changed; a collector's book moves with its rule; an
    absence names the cover and the workload shows who carries the book meanwhile."""
    assert arhub(env, "db", "upgrade").returncode == 0
    from middleware.db import connect
    from middleware.models import Customer, Source
    from middleware.rules import save_rule

    db = connect(env["ARHUB_DATABASE_URL"])
    try:
        erp = Source.create(name="erp", kind="rest", config={})
        for n, (arr, country) in enumerate([("250000", "DE"), ("30000", "FR"), ("10", "US")]):
            Customer.create(source=erp, external_id=f"c{n}", name=f"Customer {n}", billing_currency="USD",
                            arr=Decimal(arr), country=country, content_hash="x" * 32)
        save_rule("collector", "emea", "anna@corp.com", [{"field": "region", "op": "=", "value": "EMEA"}])
    finally:
        db.close()
    for email, name in (("anna@corp.com", "Anna"), ("bob@corp.com", "Bob")):
        assert arhub(env, "users", "create", "--email", email, "--name", name).returncode == 0

    seeded = arhub(env, "rules", "seed")
    assert "created tag:arr-100k-plus, segment:enterprise, segment:mid-market, segment:smb" in seeded.stdout
    applied = arhub(env, "rules", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "3 customers" in applied.stdout and "tags +1 -0; 3 segments and 2 collectors changed" in applied.stdout
    assert "team queue: 1" in applied.stdout

    moved = arhub(env, "collectors", "reassign", "anna@corp.com", "bob@corp.com", "--actor", "boss@corp.com")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "moved 2 customers to bob@corp.com; rules now giving them: emea" in moved.stdout
    assert "0 segments and 0 collectors changed" in arhub(env, "rules", "apply").stdout

    away = arhub(env, "collectors", "away", "bob@corp.com", "--until", "2099-01-31", "--cover", "anna@corp.com")
    assert away.returncode == 0, away.stdout + away.stderr
    assert "bob@corp.com away through 2099-01-31; covered by anna@corp.com" in away.stdout
    workload = arhub(env, "collectors", "workload", "--effective").stdout
    anna_line = next(line for line in workload.splitlines() if "anna@corp.com" in line)
    assert "bob@corp.com" in anna_line and " 2 " in anna_line
