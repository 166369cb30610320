"""Paging while the ERP changes underneath: nothing shifts out of view, nothing is skipped silently."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
import requests

from connectors.sandbox.book import Book
from connectors.sandbox.faults import Fault
from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS as NS_CREDS
from connectors.sandbox.server import SandboxServer
from connectors.sandbox.xero import SANDBOX_CREDENTIALS as XERO_CREDS
from jobs.sync import load_preset, make_connector
from middleware.models import Invoice, Source, SyncCursor
from middleware.sources import configure_source
from middleware.sync import SyncService


class MutateAfterFirstPage:
    """Our own ERP port around the real connector: the ERP changes once the first invoice page is in."""

    def __init__(self, connector, mutate):
        self.connector, self.mutate, self.pages = connector, mutate, 0

    def pull(self, name, since):
        for page in self.connector.pull(name, since):
            if name == "invoice":
                self.pages += 1
                if self.pages == 2:
                    self.mutate()  # before the second page is fetched... by the next request
            yield page

    def pull_deleted(self, name, since):
        return self.connector.pull_deleted(name, since)


@pytest.fixture
def sandbox():
    with SandboxServer(Book(30, 400, seed=5, as_of=date(2026, 11, 1))) as server:
        yield server


def xero_source(sandbox, page_size: int, keyset: bool) -> Source:
    preset = load_preset("xero")
    preset["connection"]["pagination"]["size"] = page_size
    if not keyset:
        for obj in preset["objects"].values():
            obj.pop("paging", None)
    src = configure_source("xero", preset, endpoint=sandbox.xero_url + "/api.xro/2.0",
                           credentials=dict(XERO_CREDS, token_url=sandbox.xero_url + "/connect/token"))
    return Source.get_by_id(src.id)


def test_keyset_paging_keeps_records_that_move_while_paging(db, sandbox):
    """Invoices modified after page 1 move to the end of the list; keyset paging still lands every invoice, updated."""
    book = sandbox.book
    src = xero_source(sandbox, page_size=50, keyset=True)
    first_page = book.changed_since("invoice")[:50]
    moved = first_page[:10]

    before = {inv_id: book.invoices[inv_id].po_number for inv_id in moved}

    def mutate():
        # through the ERP's own control endpoint: the pages are read in the sync's prepare
        # process, where the test's copy of the book is not the one the server answers from
        requests.post(sandbox.url + "/_sandbox/mutate", json={"action": "modify_invoices", "ids": moved},
                      timeout=30).raise_for_status()

    connector = make_connector(src, sleep=lambda s: None)
    run = SyncService(src, MutateAfterFirstPage(connector, mutate)).run(objects=["customer", "invoice"])
    assert run.status == "succeeded", run.errors
    numbers = {i.number for i in Invoice.select()}
    live = {inv.number for inv in book.invoices.values()}
    assert live <= numbers  # nothing shifted out of view
    for inv_id in moved:
        po_number = book.invoices[inv_id].po_number
        assert po_number != before[inv_id]  # the ERP changed it mid-pull...
        assert Invoice.get(Invoice.number == book.invoices[inv_id].number).po_number == po_number  # ...and we have it


def test_a_record_vanishing_between_pages_is_reported_and_holds_the_cursor(db, sandbox):
    """A short page in the middle of a pull is named on the run, and the invoice cursor does not move past it."""
    src = configure_source("netsuite", load_preset("netsuite-2023_2"),
                           endpoint=sandbox.netsuite_url + "/services/NetSuitePort_2023_2", credentials=NS_CREDS)
    src = Source.get_by_id(src.id)
    config = dict(src.config)
    config["connection"] = {**config["connection"], "soap_headers": {
        "{urn:messages_2023_2.platform.webservices.netsuite.com}searchPreferences":
            {"bodyFieldsOnly": False, "returnSearchColumns": False, "pageSize": 100}}}
    src.config = config
    src.save()
    first = SyncService(src, make_connector(src, sleep=lambda s: None)).run(objects=["invoice"])
    cursor = SyncCursor.get(SyncCursor.object_name == "invoice").cursor
    assert cursor is not None and first.status == "succeeded"
    sandbox.book.modify_invoices(250, now=datetime.now(timezone.utc))
    # the second page of the next pull comes back one record short
    sandbox.faults.push(Fault(body="vanish", path="NetSuitePort", after=1))
    run = SyncService(src, make_connector(src, sleep=lambda s: None)).run(objects=["invoice"])
    warnings = [e["warning"] for e in run.errors if "warning" in e]
    assert any("vanished between pages" in w and "page 2 of 3" in w for w in warnings), warnings
    assert SyncCursor.get(SyncCursor.object_name == "invoice").cursor == cursor
    sandbox.faults.clear()
    again = SyncService(src, make_connector(src, sleep=lambda s: None)).run(objects=["invoice"])
    assert again.objects["invoice"]["fetched"] == 250  # looked again from the held cursor
    assert SyncCursor.get(SyncCursor.object_name == "invoice").cursor > cursor
