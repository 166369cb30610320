"""In a real browser: an admin fetches a sample invoice from the ERP sandbox (a job run by a real rq
worker), edits a source path and sees the preview change without the page reloading."""
from __future__ import annotations

import pytest

from connectors.sandbox import xero
from jobs.sync import load_preset
from middleware.models import FieldMapping
from middleware.sources import configure_source
from tests.e2e.conftest import login

pytestmark = pytest.mark.e2e


def test_edit_a_mapping_and_watch_the_preview_change(page, console_url, make_user, sandbox, start_rq_worker):
    """After the sample arrives, typing another source path for the invoice number shows the new value in
    the preview (same page, no reload), a broken path is flagged on its row, and Save keeps the change."""
    source = configure_source("xero", load_preset("xero"), endpoint=sandbox.xero_url + "/api.xro/2.0",
                              credentials=dict(xero.SANDBOX_CREDENTIALS, token_url=sandbox.xero_url + "/connect/token"))
    make_user("ada@example.com", "admin", "Ada Admin")
    start_rq_worker(queues=["sync"])
    login(page, console_url, "ada@example.com")
    page.goto(f"{console_url}/mappings/")
    page.get_by_role("link", name="invoice").click()
    page.get_by_test_id("no-sample").wait_for()
    page.get_by_test_id("fetch-sample").click()
    # the page polls the job and reloads itself when the worker has stored the sample
    number = page.get_by_test_id("preview-number")
    number.wait_for(timeout=30_000)
    original = number.inner_text()
    assert original.startswith("INV-")
    external_id = page.get_by_test_id("preview-external_id").inner_text()

    page.evaluate("window.__same_page = true")
    path = page.get_by_test_id("path-number")
    path.fill("InvoiceID")
    page.wait_for_function("(before) => document.querySelector('[data-testid=preview-number]').innerText !== before",
                           arg=original)
    assert number.inner_text() == external_id
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded

    path.fill("InvoiceID[")
    errors = page.get_by_test_id("row-errors-number")
    errors.wait_for(state="visible")
    assert "InvoiceID[" in errors.inner_text()
    assert page.get_by_test_id("preview-verdict").inner_text() != "valid"
    assert page.evaluate("window.__same_page") is True

    path.fill("InvoiceID")
    page.wait_for_function("document.querySelector('[data-testid=preview-verdict]').innerText === 'valid'")
    page.get_by_test_id("save-button").click()
    page.get_by_text("Saved the invoice mapping of xero").wait_for()
    assert FieldMapping.get(FieldMapping.source == source.id, FieldMapping.object_name == "invoice",
                            FieldMapping.canonical_field == "number").source_path == "InvoiceID"
