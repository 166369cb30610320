"""Per-customer balances for today (table ``customer_balance``, migration 6).

What the console's customer list sorts and filters by amount on: per customer with an open
invoice, the open and overdue amounts in the reporting currency, the oldest overdue due date,
the number of open invoices, of those without a reporting amount, and per aging bucket
(``middleware.ar.DEFAULT_EDGES``). The figures are those of ``docs/console-customers.md``: open =
status ``open``, open amount > 0, not deleted, with a customer; overdue = due before ``as_of``;
an invoice without ``open_amount_reporting`` (missing rate) is left out of the sums and counted
in ``fx_missing``. Every row is one ``INSERT ... SELECT ... GROUP BY`` over the partial covering
index ``invoice_open_by_customer`` (migration 5), never the invoice table itself.

When the rows are written:
* :func:`after_sync` at the end of every ERP sync's finishing pass (``SyncService._finish_documents``):
  the customers whose invoices the run wrote, touched (applications, deletions) or linked late;
  many of them (a first sync), or an open invoice that moved to another customer (caught by the
  count of open invoices), and it is every customer at once;
* :func:`ensure_current` before the list reads the table: every customer, when the stored day is
  not today (overdue depends on the date) or nothing was ever stored;
* :func:`refresh` after the open amounts are revalued at new rates (``middleware.fx``).
Any other writer of invoices' open amounts, status, due dates or customers calls :func:`refresh`
(with the customers it changed, or none for all).

All rows always carry the same ``as_of``: a partial refresh on another day than the stored one
refreshes everything.
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Iterable

from .ar import DEFAULT_EDGES
from .db import database, is_postgres

#: Above this many written or touched invoices, :func:`after_sync` refreshes every customer in one
#: grouped pass instead of looking up their customers (cheaper at a first sync of a big store).
FULL_AFTER = 20_000
_LOCK_KEY = 0x62616C63  # "balc": PostgreSQL advisory lock, so two refreshes do not interleave
OPEN_WHERE = ('i."status" = \'open\' AND i."open_amount" > 0 AND i."deleted_at" IS NULL '
              'AND i."customer_id" IS NOT NULL')  # a literal 'open': the partial index's condition
COLUMNS = ("customer_id", "open_reporting", "overdue_reporting", "oldest_due", "open_invoices", "fx_missing",
           "n_current", "n_1_30", "n_31_60", "n_61_90", "n_91", "as_of")
#: bucket label → its count column (the labels of ``middleware.ar.bucket_labels(DEFAULT_EDGES)``)
BUCKET_COLUMNS = {"current": "n_current", "1-30": "n_1_30", "31-60": "n_31_60", "61-90": "n_61_90", "91+": "n_91"}


def _ph() -> str:
    return "%s" if is_postgres() else "?"


def _today() -> date:
    from .people import today

    return today()


def _select(today: date, ids: list[int] | None) -> tuple[str, list]:
    p = _ph()
    assert len(DEFAULT_EDGES) == 3, "the bucket columns follow DEFAULT_EDGES (30, 60, 90)"
    lows = [today - timedelta(days=e) for e in DEFAULT_EDGES]  # due on or after: 1-30, 31-60, 61-90
    args: list = [today, today, today,  # overdue, oldest, current
                  lows[0], today, lows[1], lows[0], lows[2], lows[1], lows[2], today]
    where = OPEN_WHERE
    if ids is not None:
        where += f' AND i."customer_id" IN ({", ".join([p] * len(ids))})'
        args.extend(ids)
    sql = (f'SELECT i."customer_id", COALESCE(SUM(i."open_amount_reporting"), 0), '
           f'COALESCE(SUM(CASE WHEN i."due_date" < {p} THEN i."open_amount_reporting" ELSE 0 END), 0), '
           f'MIN(CASE WHEN i."due_date" < {p} THEN i."due_date" END), COUNT(*), '
           'SUM(CASE WHEN i."open_amount_reporting" IS NULL THEN 1 ELSE 0 END), '
           f'SUM(CASE WHEN i."due_date" >= {p} THEN 1 ELSE 0 END), '
           f'SUM(CASE WHEN i."due_date" >= {p} AND i."due_date" < {p} THEN 1 ELSE 0 END), '
           f'SUM(CASE WHEN i."due_date" >= {p} AND i."due_date" < {p} THEN 1 ELSE 0 END), '
           f'SUM(CASE WHEN i."due_date" >= {p} AND i."due_date" < {p} THEN 1 ELSE 0 END), '
           f'SUM(CASE WHEN i."due_date" < {p} THEN 1 ELSE 0 END), {p} '
           f'FROM "invoice" i WHERE {where} GROUP BY i."customer_id"')
    # CASE order above: [< today] [< today] [>= today] [>= low30, < today] [>= low60, < low30] [>= low90, < low60]
    # [< low90], then as_of: the arguments are listed in that order
    return sql, args


def stored_day() -> date | None:
    """The day the stored rows are for (all rows carry the same), None when there are none."""
    row = database.execute_sql('SELECT "as_of" FROM "customer_balance" LIMIT 1').fetchone()
    if row is None or row[0] is None:
        return None
    return row[0] if isinstance(row[0], date) else date.fromisoformat(str(row[0])[:10])


def _lock() -> None:
    if is_postgres():
        database.execute_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")


def _write(today: date, ids: list[int] | None) -> None:
    insert = f'INSERT INTO "customer_balance" ({", ".join(chr(34) + c + chr(34) for c in COLUMNS)}) '
    if ids is None:
        database.execute_sql('DELETE FROM "customer_balance"')
        sql, args = _select(today, None)
        database.execute_sql(insert + sql, args)
        return
    p = _ph()
    for start in range(0, len(ids), 900):
        part = ids[start:start + 900]
        database.execute_sql(f'DELETE FROM "customer_balance" WHERE "customer_id" IN ({", ".join([p] * len(part))})',
                             part)
        sql, args = _select(today, part)
        database.execute_sql(insert + sql, args)


def refresh(customer_ids: Iterable[int] | None = None, today: date | None = None) -> str:
    """Rewrite the rows of ``customer_ids`` (None: every customer) for ``today`` (default: the
    company's today). A partial refresh on a day other than the stored one, or on a table never
    filled, refreshes every customer. Returns ``"all"``, ``"some"`` or ``"none"``."""
    today = today or _today()
    ids = None if customer_ids is None else sorted({int(c) for c in customer_ids if c is not None})
    with database.atomic():
        _lock()
        if ids is not None and stored_day() != today:
            ids = None
        if ids == []:
            return "none"
        _write(today, ids)
    return "all" if ids is None else "some"


def ensure_current(today: date | None = None) -> bool:
    """Refresh every customer when the stored day is not ``today`` (or nothing is stored); True if it did."""
    today = today or _today()
    if stored_day() == today:
        return False
    with database.atomic():
        _lock()
        if stored_day() == today:  # another process did it while we waited for the lock
            return False
        _write(today, None)
    return True


def _open_count() -> int:
    return database.execute_sql(f'SELECT COUNT(*) FROM "invoice" i WHERE {OPEN_WHERE}').fetchone()[0]


def after_sync(source_id: int, invoice_external_ids: Iterable[str], customer_external_ids: Iterable[str],
               today: date | None = None) -> str:
    """After an ERP sync of source ``source_id``: refresh the customers of the invoices it wrote or
    touched and the customers it wrote (invoices linked to them late). Many invoices: every customer."""
    invoices = sorted(set(invoice_external_ids))
    customers = sorted(set(customer_external_ids))
    if not invoices and not customers:
        return "none"
    if len(invoices) + len(customers) > FULL_AFTER:
        return refresh(None, today)
    p = _ph()
    ids: set[int] = set()
    for table, column, keys in (("invoice", "customer_id", invoices), ("customer", "id", customers)):
        for start in range(0, len(keys), 900):
            part = keys[start:start + 900]
            rows = database.execute_sql(
                f'SELECT DISTINCT "{column}" FROM "{table}" WHERE "source_id" = {p} AND "external_id" IN '
                f'({", ".join([p] * len(part))})', (source_id, *part)).fetchall()
            ids.update(r[0] for r in rows if r[0] is not None)
    done = refresh(ids, today)
    # an open invoice that moved to another customer leaves its old customer's row counting it:
    # the stored counts then differ from the open invoices, and everything is refreshed
    stored = database.execute_sql('SELECT COALESCE(SUM("open_invoices"), 0) FROM "customer_balance"').fetchone()[0]
    if done != "all" and int(stored) != _open_count():
        return refresh(None, today)
    return done
