"""``arhub bench console`` as a real subprocess at a tiny size: it prints one JSON object with the
server-time figures of the customer list (per variant), the customer page and the dashboard, every
page answered (a behaviour, not a timing target)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"db", "customers", "invoices", "open_invoices", "customers_with_open", "requests", "list_p95_ms",
        "list_p50_ms", "customer_p95_ms", "customer_p50_ms", "dashboard_p95_ms", "dashboard_p50_ms",
        "dashboard_compute_seconds", "balance_refresh_seconds", "variants"}
VARIANTS = {"list_default", "list_deep_page", "list_search", "list_collector", "list_bucket", "list_currency",
            "list_sort_overdue", "list_sort_open", "list_sort_overdue_deep", "list_sort_open_asc_tail",
            "list_combined", "customer_busy", "customer_typical", "dashboard"}


def test_bench_console_prints_p50_and_p95_of_every_page(tmp_path):
    """A tiny run prints the JSON figures: list, customer page and dashboard p95 and p50, and the same per
    list variant, with p95 >= p50 > 0 everywhere (every request was answered with 200, or the run fails)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_VAR_DIR=str(tmp_path / "var"), ARHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}",
               ARHUB_SECRET_KEY="arhub-e2e-secret-key-not-for-production", ARHUB_ENV_FILE="")
    result = subprocess.run([sys.executable, "-m", "jobs.cli", "bench", "console", "--customers", "200",
                             "--invoices", "1500", "--requests", "5", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert KEYS <= figures.keys(), KEYS - figures.keys()
    assert figures["db"] == "sqlite" and figures["customers"] == 200 and figures["invoices"] == 1500
    assert 0 < figures["customers_with_open"] <= 200 and figures["open_invoices"] > 0
    for page in ("list", "customer", "dashboard"):
        assert figures[f"{page}_p95_ms"] >= figures[f"{page}_p50_ms"] > 0, page
    assert set(figures["variants"]) == VARIANTS
    for name, v in figures["variants"].items():
        assert v["max_ms"] >= v["p95_ms"] >= v["p50_ms"] > 0, name
