"""``arhub bench dunning`` as a real subprocess at a tiny size: one JSON object with the figures, a
plan that produced actions, statements measured against their floor, and every enqueued email
received by the bench's SMTP server (a behaviour, not a timing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"db", "customers", "invoices", "plan_seconds", "actions", "plan_day", "plan_normal_seconds",
        "plan_normal_day", "plan_days", "statements_per_s", "statement_floor_ratio", "statement_pages",
        "emails_per_s", "emails_enqueued", "emails_received", "emails_sent", "email_workers"}


def test_bench_dunning_prints_the_figures_and_every_enqueued_email_arrives(tmp_path):
    """A user running the bench small gets the plan, statement and email figures, and the counts
    agree: the worst day planned actions, two-page statements were rendered, and the SMTP server
    received exactly the emails the two workers were given (none lost, none twice)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_VAR_DIR=str(tmp_path / "var"), ARHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}",
               ARHUB_SECRET_KEY="arhub-e2e-secret-key-not-for-production", ARHUB_ENV_FILE="")
    result = subprocess.run([sys.executable, "-m", "jobs.cli", "bench", "dunning", "--customers", "200",
                             "--invoices", "2000", "--statements", "2", "--emails", "30", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert KEYS <= figures.keys(), KEYS - figures.keys()
    assert figures["db"] == "sqlite" and figures["customers"] == 200 and 1900 < figures["invoices"] <= 2000
    week = [d for d in figures["plan_days"] if d["measured"]]
    assert [d["weekday"] for d in week] == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert figures["actions"] == max(d["actions"] for d in week) > 0
    assert figures["plan_seconds"] > 0 and figures["statements_per_s"] > 0 and figures["statement_floor_ratio"] > 0
    assert figures["statement_pages"] == [2]
    assert figures["email_workers"] == 2
    assert 0 < figures["emails_enqueued"] <= 30
    assert figures["emails_received"] == figures["emails_sent"] > 0
    # every enqueued email was either received or deliberately skipped (e.g. an inactive customer)
    by_status = figures["emails_by_status"]
    assert figures["emails_sent"] + by_status.get("skipped", 0) == figures["emails_enqueued"], by_status
    assert figures["emails_per_s"] > 0
