"""``arhub source add`` and ``arhub sync erp`` as real subprocesses against the NetSuite emulator, on SQLite;
a sync killed with SIGKILL midway and re-run ends with the same store as an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path


from connectors.sandbox.book import Book
from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS
from connectors.sandbox.server import SandboxServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "arhub-e2e-secret-key-not-for-production"


def arhub_env(tmp_path: Path, name: str) -> tuple[dict, Path]:
    """Environment for one CLI 'installation': its own SQLite file and var dir, no .env, nothing inherited."""
    db_path = tmp_path / f"{name}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_DATABASE_URL=f"sqlite:///{db_path}", ARHUB_VAR_DIR=str(tmp_path / f"var-{name}"),
               ARHUB_SECRET_KEY=SECRET, ARHUB_ENV_FILE="", COLUMNS="120", PYTHONUNBUFFERED="1",
               ARHUB_SYNC_COMMIT_ROWS="500")  # small commit groups: a kill lands between commits of one pull
    return env, db_path


def arhub(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *args]


def add_source(sandbox: SandboxServer, env: dict, tmp_path: Path) -> None:
    creds = tmp_path / "netsuite-credentials.json"
    creds.write_text(json.dumps(SANDBOX_CREDENTIALS))
    result = subprocess.run(arhub("source", "add", "netsuite", "--preset", "netsuite-2023_2",
                                  "--endpoint", sandbox.netsuite_url + "/services/NetSuitePort_2023_2",
                                  "--credentials-file", str(creds)),
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "source 'netsuite' (soap, preset netsuite-2023_2) saved" in result.stdout


def sync_erp(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(arhub("sync", "erp", "--source", "netsuite"), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def summary_rows(output: str) -> dict[str, list[int]]:
    """The summary table's rows: object -> [fetched, created, updated, unchanged, rejected, deleted]
    (each row's last cell, its seconds, must read as a number)."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 8 and all(c.isdigit() for c in cells[1:7]):
            assert float(cells[7]) >= 0, line
            rows[cells[0]] = [int(c) for c in cells[1:7]]
    return rows


def read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)


def store(db_path: Path) -> tuple:
    """What a user sees of the store: invoices (id, open amount, status), payments, applications."""
    conn = read_only(db_path)
    try:
        money = lambda v: str(Decimal(str(v)).normalize())  # noqa: E731
        invoices = sorted((e, money(o), s) for e, o, s in
                          conn.execute('SELECT "external_id", "open_amount", "status" FROM "invoice"'))
        payments = sorted((e, money(a), money(u)) for e, a, u in
                          conn.execute('SELECT "external_id", "amount", "unapplied_amount" FROM "payment"'))
        applications = sorted((k, d, i, money(a)) for k, d, i, a in conn.execute(
            'SELECT "doc_kind", "doc_external_id", "invoice_external_id", "amount" FROM "application"'))
        return invoices, payments, applications
    finally:
        conn.close()


def count_invoices(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        conn = read_only(db_path)
        try:
            return conn.execute('SELECT count(*) FROM "invoice"').fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not migrated yet, or briefly locked
        return 0


def test_source_add_then_sync_prints_the_summary(tmp_path):
    """``arhub source add`` then ``arhub sync erp --source netsuite`` exits 0 and prints per-object counts
    that match the ERP book, and a second run reports nothing changed."""
    book = Book(60, 600, seed=11)
    with SandboxServer(book) as sandbox:
        env, db_path = arhub_env(tmp_path, "cli")
        add_source(sandbox, env, tmp_path)
        result = sync_erp(env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "sync run 1: netsuite (full) - succeeded" in result.stdout
        rows = summary_rows(result.stdout)
        assert set(rows) == {"fx_rate", "customer", "invoice", "credit_memo", "payment", "total"}
        assert rows["customer"][:2] == [len(book.customers)] * 2
        assert rows["invoice"][:2] == [len(book.invoices)] * 2
        assert rows["payment"][:2] == [len(book.payments)] * 2
        assert rows["total"][1] == sum(r[1] for name, r in rows.items() if name != "total")
        assert f"{rows['total'][1]} created, 0 updated, 0 deleted, 0 unchanged, 0 rejected" in result.stdout
        assert len(store(db_path)[0]) == len(book.invoices)
        again = sync_erp(env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing changed" in again.stdout
        assert summary_rows(again.stdout)["total"][1:3] == [0, 0]


def test_a_sync_killed_midway_and_rerun_equals_an_uninterrupted_sync(tmp_path):
    """SIGKILL during the invoice pull leaves a half-written store; re-running the sync converges to exactly
    the store (invoices, open amounts, statuses, payments, applications) of a sync that was never interrupted."""
    book = Book(300, 6000, seed=5)  # pageSize 1000 in the preset: six invoice pages
    with SandboxServer(book) as sandbox:
        env, killed_db = arhub_env(tmp_path, "killed")
        add_source(sandbox, env, tmp_path)
        proc = subprocess.Popen(arhub("sync", "erp", "--source", "netsuite"), env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while count_invoices(killed_db) == 0:
                assert proc.poll() is None, f"the sync finished (exit {proc.returncode}) before it could be killed"
                assert time.monotonic() < deadline, "no invoice landed within 120 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        partial = count_invoices(killed_db)
        conn = read_only(killed_db)
        unfinished = conn.execute('SELECT "status", "finished_at" FROM "sync_run"').fetchall()
        conn.close()
        assert unfinished == [("running", None)], "the run was killed before it finished"
        assert 0 < partial < len(book.invoices)

        rerun = sync_erp(env)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "succeeded" in rerun.stdout

        clean_env, clean_db = arhub_env(tmp_path, "clean")
        add_source(sandbox, clean_env, tmp_path)
        clean = sync_erp(clean_env)
        assert clean.returncode == 0, clean.stdout + clean.stderr

    recovered, uninterrupted = store(killed_db), store(clean_db)
    assert len(uninterrupted[0]) == len(book.invoices) and uninterrupted[1] and uninterrupted[2]
    assert recovered[0] == uninterrupted[0], "invoices differ"
    assert recovered[1] == uninterrupted[1], "payments differ"
    assert recovered[2] == uninterrupted[2], "applications differ"


def test_mapping_preview_shows_the_record_and_names_the_broken_field(tmp_path, settings, db, sandbox):
    """``arhub mapping preview`` fetches a sample from the ERP, shows the canonical record, and names a bad path."""
    from click.testing import CliRunner

    from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS
    from jobs.cli import main
    from jobs.sync import load_preset
    from middleware.models import FieldMapping
    from middleware.sources import configure_source

    configure_source("netsuite", load_preset("netsuite-2023_2"),
                     endpoint=sandbox.netsuite_url + "/services/NetSuitePort_2023_2", credentials=SANDBOX_CREDENTIALS)
    runner = CliRunner()
    ok = runner.invoke(main, ["mapping", "preview", "--source", "netsuite", "--object", "invoice"])
    assert ok.exit_code == 0, ok.output
    assert "due_date" in ok.output and "datetime.date(" in ok.output
    FieldMapping.update(transform="decimal").where(FieldMapping.canonical_field == "due_date").execute()
    broken = runner.invoke(main, ["mapping", "preview", "--source", "netsuite", "--object", "invoice"])
    assert broken.exit_code == 1
    assert "error due_date: not a number (path dueDate)" in broken.output
