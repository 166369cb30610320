"""``arhub bench salesforce`` as a real subprocess at a tiny size: it prints one JSON object with
the figures, and the push spends fewer API calls than one call per record (a behaviour, not a timing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"db", "accounts", "invoices", "linked", "pull_calls", "pull_seconds", "full_push_calls",
        "full_push_seconds", "full_push_records", "incremental_accounts", "incremental_invoices",
        "incremental_calls", "incremental_seconds", "naive_calls", "naive_seconds_estimate",
        "full_push_call_ratio", "incremental_call_ratio", "full_push_speedup"}


def test_bench_salesforce_prints_the_figures_and_pushes_with_fewer_calls_than_records(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_VAR_DIR=str(tmp_path / "var"), ARHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}",
               ARHUB_SECRET_KEY="arhub-e2e-secret-key-not-for-production", ARHUB_ENV_FILE="")
    result = subprocess.run([sys.executable, "-m", "jobs.cli", "bench", "salesforce", "--accounts", "300", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert KEYS <= figures.keys(), KEYS - figures.keys()
    assert figures["db"] == "sqlite" and figures["accounts"] == 300 and figures["invoices"] == 900
    assert figures["linked"] > 0
    assert figures["full_push_records"] == figures["naive_calls"] > 0
    assert 0 < figures["full_push_calls"] < figures["naive_calls"]
    assert figures["incremental_accounts"] > 0 and figures["incremental_calls"] > 0
    assert figures["incremental_calls"] < figures["naive_incremental_calls"]
    assert figures["full_push_call_ratio"] > 1
