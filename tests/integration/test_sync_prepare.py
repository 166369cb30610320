"""The sync's prepare stage in a forked process: the same store as in a thread, errors with their
names, and a prepare process that dies midway loses nothing and moves no cursor."""
from __future__ import annotations

import os
import signal

import pytest

from connectors.sandbox.faults import Fault
from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS
from jobs.sync import load_preset, make_connector
from middleware.models import Invoice, Payment, Source, SyncCursor, SyncRun
from middleware.sources import configure_source
from middleware.sync import SyncService


def netsuite(sandbox, name: str, page_size: int | None = None) -> Source:
    preset = load_preset("netsuite-2023_2")
    src = configure_source(name, preset, endpoint=sandbox.netsuite_url + "/services/NetSuitePort_2023_2",
                           credentials=SANDBOX_CREDENTIALS)
    src = Source.get_by_id(src.id)
    if page_size:
        config = dict(src.config)
        config["connection"] = {**config["connection"], "soap_headers": {
            "{urn:messages_2023_2.platform.webservices.netsuite.com}searchPreferences":
                {"bodyFieldsOnly": False, "returnSearchColumns": False, "pageSize": page_size}}}
        src.config = config
        src.save()
    return src


def invoices_of(src: Source) -> list[tuple]:
    return sorted((i.external_id, i.number, i.customer.external_id if i.customer else None, str(i.amount),
                   str(i.open_amount), i.status, str(i.amount_reporting), str(i.fx_rate), i.due_date, i.po_number,
                   i.content_hash) for i in Invoice.select().where(Invoice.source == src.id))


def test_a_sync_prepared_in_a_process_stores_what_a_thread_stores(db, sandbox):
    """Two sources on the same ERP, one prepared in a forked process and one in a thread: the same invoices."""
    in_process, in_thread = netsuite(sandbox, "by-process", 100), netsuite(sandbox, "by-thread", 100)
    runs = {}
    for src, mode in ((in_process, "process"), (in_thread, "thread")):
        connector = make_connector(src, sleep=lambda s: None)
        runs[mode] = SyncService(src, connector, prepare=mode).run()
        connector.close()
        assert runs[mode].status == "succeeded", runs[mode].errors
    assert runs["process"].objects["invoice"]["pages"] > 1
    assert invoices_of(in_process) == invoices_of(in_thread)
    assert len(invoices_of(in_process)) == len(sandbox.book.invoices)
    assert (Payment.select().where(Payment.source == in_process.id).count()
            == Payment.select().where(Payment.source == in_thread.id).count() == len(sandbox.book.payments))


def test_an_erp_error_in_the_prepare_process_is_named_on_the_run(db, sandbox):
    """A SOAP fault met by the prepare process ends on the run as the connector's error, with the object."""
    src = netsuite(sandbox, "faulty", 100)
    sandbox.faults.push(Fault(status=401, path="NetSuitePort", after=3))
    connector = make_connector(src, sleep=lambda s: None)
    run = SyncService(src, connector, prepare="process").run()
    connector.close()
    assert run.status in ("failed", "partial")
    errors = [e for e in run.errors if "error" in e]
    assert errors and all(e.get("object") for e in errors), run.errors
    assert any("401" in e["error"] or "auth" in e["error"].lower() for e in errors), errors


class DiesAfterFirstPage:
    """Our ERP port around the real connector, whose prepare process is killed after the first invoice page."""

    def __init__(self, connector):
        self.connector, self.parent = connector, os.getpid()

    def pull(self, name, since):
        for number, page in enumerate(self.connector.pull(name, since), 1):
            yield page
            if name == "invoice" and number == 1 and os.getpid() != self.parent:
                os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would

    def pull_deleted(self, name, since):
        return self.connector.pull_deleted(name, since)

    def after_fork(self):
        self.connector.after_fork()


@pytest.mark.parametrize("commit_rows", [1, 20000])
def test_a_prepare_process_killed_midway_keeps_what_landed_and_the_cursor(db, sandbox, commit_rows):
    """SIGKILL of the prepare process: the run says so, the invoice cursor stays, and the next run completes the store."""
    src = netsuite(sandbox, "killed", 100)
    connector = make_connector(src, sleep=lambda s: None)
    run = SyncService(src, DiesAfterFirstPage(connector), prepare="process", commit_rows=commit_rows).run()
    assert run.status in ("failed", "partial")
    errors = {e["object"]: e["error"] for e in run.errors if "error" in e}
    assert "prepare process ended without finishing" in errors.get("invoice", ""), run.errors
    cursor = SyncCursor.get_or_none((SyncCursor.source == src.id) & (SyncCursor.object_name == "invoice"))
    assert cursor is None or cursor.cursor is None
    landed = Invoice.select().where(Invoice.source == src.id).count()
    assert 0 < landed < len(sandbox.book.invoices)  # the first page, prepared before the kill, is kept
    again = SyncService(src, connector, prepare="process").run()
    connector.close()
    assert again.status == "succeeded", again.errors
    assert Invoice.select().where(Invoice.source == src.id).count() == len(sandbox.book.invoices)


def _refuse_invoice(db, external_id: str | None) -> None:
    """A real database failure on one invoice's write (a trigger), or none."""
    from middleware.db import is_postgres

    if is_postgres(db):
        db.execute_sql('DROP TRIGGER IF EXISTS refuse_one ON "invoice"')
        if external_id:
            db.execute_sql(f"""CREATE OR REPLACE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN
                IF NEW.external_id = '{external_id}' THEN RAISE EXCEPTION 'disk full (test)'; END IF;
                RETURN NEW; END $$ LANGUAGE plpgsql""")
            db.execute_sql('CREATE TRIGGER refuse_one BEFORE INSERT ON "invoice" FOR EACH ROW EXECUTE FUNCTION refuse_one()')
    else:
        db.execute_sql("DROP TRIGGER IF EXISTS refuse_one")
        if external_id:
            db.execute_sql(f"""CREATE TRIGGER refuse_one BEFORE INSERT ON "invoice" WHEN NEW.external_id = '{external_id}'
                BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END""")


def test_a_failed_write_rolls_back_its_commit_group_and_the_next_sync_takes_it_again(db, sandbox):
    """The database refuses one invoice in the third commit group: the two groups before it stay, the
    third is rolled back whole with its counts, the run says so, the cursor stays; once the database
    accepts it again, the next sync completes the store."""
    src = netsuite(sandbox, "refused", 100)
    order = [inv.id for inv in sorted(sandbox.book.invoices.values(), key=lambda i: (i.modified, i.id))]
    _refuse_invoice(db, str(order[250]))  # pages of 100, groups of 100 records: the third group
    connector = make_connector(src, sleep=lambda s: None)
    with pytest.raises(Exception, match="disk full"):  # not an ERP error: the job fails and ops see it
        SyncService(src, connector, commit_rows=100).run(objects=["customer", "invoice"])
    run = SyncRun.select().where(SyncRun.source == src.id).order_by(SyncRun.id.desc()).first()
    assert run.status == "failed"
    invoice = run.objects["invoice"]
    assert "disk full (test)" in invoice.get("error", ""), run.objects
    assert Invoice.select().where(Invoice.source == src.id).count() == invoice.get("created", 0) == 200
    assert any("rolled back" in w and "next sync takes them again" in w for w in invoice.get("warnings", [])), invoice
    cursor = SyncCursor.get_or_none((SyncCursor.source == src.id) & (SyncCursor.object_name == "invoice"))
    assert cursor is None or cursor.cursor is None
    _refuse_invoice(db, None)
    again = SyncService(src, connector, commit_rows=100).run(objects=["customer", "invoice"])
    connector.close()
    assert again.status == "succeeded", again.errors
    assert Invoice.select().where(Invoice.source == src.id).count() == len(sandbox.book.invoices)
