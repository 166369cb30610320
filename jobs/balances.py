"""The daily refresh of ``customer_balance`` (``middleware.balances``): RQ job for the cron.

Overdue amounts and aging buckets depend on the date, so the first list by amount of a new day
would rebuild the whole table inside a web request (``balances.ensure_current``). The cron runs
:func:`refresh_balances` just after midnight in ``ARHUB_TIMEZONE`` (``jobs.schedule``) so that
rebuild happens here instead; on any other run it finds the table current and does nothing.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime

__all__ = ["JOB_TIMEOUT_SECONDS", "QUEUE", "refresh_balances"]

log = logging.getLogger(__name__)

QUEUE = "default"
#: A full rebuild is one grouped pass over the open-invoice index (seconds at 1,000,000 invoices).
JOB_TIMEOUT_SECONDS = 1800


def refresh_balances() -> dict:
    """RQ job (cron): rebuild every customer's row of ``customer_balance`` for today (in
    ARHUB_TIMEZONE) unless it is already for today. Returns the day, whether it rebuilt, and
    how long it took."""
    from jobs.bootstrap import bootstrap
    from middleware.balances import ensure_current

    ctx = bootstrap()
    day = datetime.now(ctx.settings.tzinfo).date()
    started = time.monotonic()
    refreshed = ensure_current(day)
    seconds = round(time.monotonic() - started, 3)
    if refreshed:
        log.info("customer_balance rebuilt for %s in %.1f s", day.isoformat(), seconds)
    return {"as_of": day.isoformat(), "refreshed": refreshed, "seconds": seconds}
