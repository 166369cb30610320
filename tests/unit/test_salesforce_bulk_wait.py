"""connectors.salesforce: when the first poll of a Bulk API 2.0 job comes (no network involved)."""
from __future__ import annotations

import time

import pytest

from connectors.salesforce import BULK_ROWS_PER_S, BulkJob, SalesforceConnector


def connector(rate: float | None) -> SalesforceConnector:
    c = SalesforceConnector({"login_url": "https://login.example.invalid"}, {})
    c.bulk_rate = rate
    return c


def test_the_first_poll_waits_for_every_row_in_flight_at_the_known_rate():
    """Two jobs closed together: the first one waited for is polled when the org can have done the
    rows of both (it may process them in any order), less the time since they were closed."""
    c = connector(10_000.0)
    now = time.monotonic()
    summaries = BulkJob("750A", "AR_Summary__c", 145_000, now - 2.0)
    invoices = BulkJob("750B", "AR_Invoice__c", 85_000, now)
    c._inflight[:] = [summaries, invoices]
    assert c._first_wait(summaries) == pytest.approx(230_000 / 10_000 * 1.1 + 0.25 - 2.0, abs=0.1)
    c._inflight.remove(summaries)  # seen done: the second job is waited for on its own rows
    assert c._first_wait(invoices) == pytest.approx(85_000 / 10_000 * 1.1 + 0.25, abs=0.1)


def test_without_a_known_rate_the_first_poll_uses_the_default_guess_and_never_waits_long():
    """No job seen yet: rows at BULK_ROWS_PER_S (capped); a job long since closed is polled at once."""
    c = connector(None)
    now = time.monotonic()
    small = BulkJob("750C", "AR_Invoice__c", 3_000, now)
    c._inflight[:] = [small]
    assert c._first_wait(small) == pytest.approx(max(0.5, 3_000 / BULK_ROWS_PER_S), abs=0.1)
    old = BulkJob("750D", "AR_Invoice__c", 3_000, now - 3600)
    c._inflight[:] = [old]
    assert c._first_wait(old) == 0.5
