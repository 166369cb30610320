"""The SQL side of the AR metrics (:mod:`middleware.ar`): shared constants, dialect helpers (exact money
and day arithmetic on SQLite and PostgreSQL, id filters in chunks or one pass over a table), the
statements that find invoices open and credits unapplied as of a date, closing-rate conversion, and
the open amounts per (customer, currency, bucket) at that rate. A move out of ``middleware/ar.py``;
``middleware.ar`` re-exports its public names.
"""
from __future__ import annotations

import bisect
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable, Iterator, Sequence

from .bulk import placeholders, to_decimal
from .db import database, is_postgres
from .fx import RateBook
from .schemas import minor_units

ZERO = Decimal(0)
DEFAULT_EDGES = (30, 60, 90)
OPEN_STATUSES = ("open",)  # the status the store gives an invoice open *today* (as-of figures: NOT_RECEIVABLE)
NOT_RECEIVABLE = ("draft", "voided", "deleted")  # invoices out of AR on every date
VOID = ("voided", "deleted")  # credit memos out on every date
CHUNK = 900  # customer ids per IN (...) list
WHOLE_TABLE_ABOVE = 5000  # more customer ids than this, and at least 1/WHOLE_TABLE_SHARE of all customers:
WHOLE_TABLE_SHARE = 4  # one pass over the table, filtered in Python (fewer: IN lists over the indexes)


# ------------------------------------------------------------------------ SQL helpers
def _ph() -> str:
    return placeholders(1)


def sql_money(column: str) -> str:
    """An exact money expression: integer ten-thousandths on SQLite (floats there), numeric on PostgreSQL."""
    return column if is_postgres() else f"CAST(ROUND({column} * 10000) AS INTEGER)"


def money_from_sql(value) -> Decimal:
    if value is None:
        return ZERO
    if is_postgres():
        return to_decimal(value)
    return Decimal(int(value)).scaleb(-4)


def sql_days(later: str, earlier: str) -> str:
    """Whole days from ``earlier`` to ``later`` (date columns or a date parameter)."""
    if is_postgres():
        return f"(CAST({later} AS date) - CAST({earlier} AS date))"
    return f"CAST(julianday({later}) - julianday({earlier}) AS INTEGER)"


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # module constants only


def _rows(sql: str, before: tuple, after: tuple, ids: Sequence[int] | None, column: str,
          whole: tuple[str, tuple] | None = None) -> Iterator[tuple]:
    """Run ``sql`` (with a ``{filter}`` slot after its WHERE) for ``ids`` on ``column`` (None: every row).

    Rows start with the customer id. Many ids: one pass over the table, filtered here. ``whole``:
    another (statement, args) for that pass, shaped for a whole table rather than a few customers."""
    if _whole_table(ids):
        statement, args = whole or (sql.replace("{filter}", ""), before + after)
        wanted = None if ids is None else set(ids)
        for row in database.execute_sql(statement, args).fetchall():
            if wanted is None or row[0] in wanted:
                yield row
        return
    for start in range(0, len(ids), CHUNK):
        part = ids[start:start + CHUNK]
        frag = f" AND {column} IN ({placeholders(len(part))})"
        yield from database.execute_sql(sql.replace("{filter}", frag), before + tuple(part) + after).fetchall()


def _whole_table(ids: Sequence[int] | None) -> bool:
    """Read every row rather than the rows of ``ids``? Yes for all customers, or for many ids that
    are a good share of all customers (an incremental Salesforce push asks for a few thousand of
    150,000: their rows through the customer indexes cost a fraction of a pass over the table)."""
    if ids is None:
        return True
    if len(ids) <= WHOLE_TABLE_ABOVE:
        return False
    total = database.execute_sql('SELECT COUNT(*) FROM "customer"').fetchone()[0]
    return len(ids) * WHOLE_TABLE_SHARE >= total


def _norm_ids(customer_ids: Iterable[int] | None) -> list[int] | None:
    return None if customer_ids is None else sorted(set(customer_ids))


# ------------------------------------------------------------------ rows as of a date
def _open_invoice_rows(dates: Sequence[date], ids: Sequence[int] | None, detail: bool = False,
                       wrap: tuple[str, str, tuple] | None = None) -> Iterator[tuple]:
    """Invoices open on any of ``dates``, in one pass: (customer id, currency, days past due on ``dates[0]``,
    open amount on each date as SQL gave it[, id, number, amount, applied, issue date, due date] (one date only)).

    ``wrap``: (prefix, suffix, args after) around the statement, which becomes a subquery ``t``."""
    p = _ph()
    amount = sql_money("i.amount")
    last = max(dates)
    if len(dates) == 1:
        applied = f'COALESCE(SUM({sql_money("a.amount")}), 0)'
        opens, open_args = [f"{amount} - {applied}"], ()
    else:  # one join up to the last date; what each date saw, by conditional sums
        opens = [f'CASE WHEN i.issue_date <= {p} THEN {amount} - COALESCE(SUM(CASE WHEN a."date" <= {p} '
                 f'THEN {sql_money("a.amount")} END), 0) ELSE 0 END' for _ in dates]
        open_args = tuple(d for day in dates for d in (day, day))
    cols = f'i.customer_id AS cid, i.currency AS cur, {sql_days(p, "i.due_date")} AS dpd, ' + ", ".join(
        f"{expr} AS o{k}" for k, expr in enumerate(opens))
    group = "i.id, i.customer_id, i.currency, i.due_date, i.amount, i.issue_date"
    if detail:
        if len(dates) != 1:
            raise ValueError("invoice details for one date at a time")
        cols += (f", i.id AS inv, i.number AS num, {amount} AS amt, {applied} AS app, i.issue_date AS iss, "
                 f"i.due_date AS due")
        group += ", i.number"
    inner = (f'SELECT {cols} FROM invoice i LEFT JOIN application a ON a.invoice_id = i.id AND a."date" <= {p} '
             f"WHERE i.issue_date <= {p} AND i.status NOT IN ({_quoted(NOT_RECEIVABLE)}) AND i.deleted_at IS NULL"
             f"{{filter}} GROUP BY {group}")
    keep = " OR ".join(f"t.o{k} > 0" for k in range(len(opens)))
    sql = f"SELECT * FROM ({inner}) t WHERE {keep}"
    # the whole table: applications summed per invoice first, then one hash join (no group over invoices)
    sums = ", ".join(f'SUM(CASE WHEN "date" <= {p} THEN {sql_money("amount")} ELSE 0 END) AS s{k}' for k in range(len(dates)))
    agg = (f'SELECT invoice_id, {sums} FROM application WHERE "date" <= {p} AND invoice_id IS NOT NULL '
           f"GROUP BY invoice_id")
    whole_cols = f'i.customer_id AS cid, i.currency AS cur, {sql_days(p, "i.due_date")} AS dpd, ' + ", ".join(
        f"CASE WHEN i.issue_date <= {p} THEN {amount} - COALESCE(x.s{k}, 0) ELSE 0 END AS o{k}"
        for k in range(len(dates)))
    if detail:
        whole_cols += (f", i.id AS inv, i.number AS num, {amount} AS amt, COALESCE(x.s0, 0) AS app, "
                       f"i.issue_date AS iss, i.due_date AS due")
    whole = (f"SELECT * FROM (SELECT {whole_cols} FROM invoice i LEFT JOIN ({agg}) x ON x.invoice_id = i.id "
             f"WHERE i.issue_date <= {p} AND i.status NOT IN ({_quoted(NOT_RECEIVABLE)}) AND i.deleted_at IS NULL) t "
             f"WHERE {keep}")
    whole_args = (dates[0], *dates, *dates, last, last)
    after: tuple = ()
    if wrap is not None:
        sql, whole, after = wrap[0] + sql + wrap[1], wrap[0] + whole + wrap[1], wrap[2]
    return _rows(sql, (dates[0], *open_args, last, last), after, ids, "i.customer_id", (whole, whole_args + after))


def _unapplied_rows(as_of: date, ids: Sequence[int] | None) -> Iterator[tuple]:
    """Payments and credit memos with credit not applied on ``as_of``: (customer id, currency, unapplied)."""
    p = _ph()
    for table, kind in (("payment", "payment"), ("credit_memo", "credit_memo")):
        unapplied = f'{sql_money("d.amount")} - COALESCE(SUM({sql_money("a.amount")}), 0)'
        status = f" AND d.status NOT IN ({_quoted(VOID)})" if table == "credit_memo" else ""
        sql = (f"SELECT d.customer_id, d.currency, {unapplied} FROM {table} d LEFT JOIN application a "
               f"ON a.source_id = d.source_id AND a.doc_kind = '{kind}' AND a.doc_external_id = d.external_id "
               f"AND a.\"date\" <= {p} WHERE d.\"date\" <= {p} AND d.deleted_at IS NULL{status}{{filter}} "
               f"GROUP BY d.id, d.customer_id, d.currency, d.amount HAVING {unapplied} > 0")
        agg = (f'SELECT source_id, doc_external_id, SUM({sql_money("amount")}) AS s FROM application '
               f'WHERE doc_kind = \'{kind}\' AND "date" <= {p} GROUP BY source_id, doc_external_id')
        left = f'{sql_money("d.amount")} - COALESCE(x.s, 0)'
        whole = (f"SELECT d.customer_id, d.currency, {left} FROM {table} d LEFT JOIN ({agg}) x "
                 f"ON x.source_id = d.source_id AND x.doc_external_id = d.external_id "
                 f'WHERE d."date" <= {p} AND d.deleted_at IS NULL{status} AND {left} > 0')
        yield from _rows(sql, (as_of, as_of), (), ids, "d.customer_id", (whole, (as_of, as_of)))


class _Closing:
    """The closing rate of one day per billing currency (cached), and per-line conversion."""

    def __init__(self, book: RateBook, day: date):
        self.book, self.day = book, day
        self.quantum = Decimal(1).scaleb(-minor_units(book.reporting))
        self._rates: dict[str, tuple | None] = {}

    def found(self, currency: str):
        if currency not in self._rates:
            self._rates[currency] = self.book.rate(currency, self.day)
        return self._rates[currency]

    def convert(self, amount: Decimal, currency: str) -> Decimal | None:
        found = self.found(currency)
        if found is None:
            return None
        return (amount * found[0]).quantize(self.quantum, rounding=ROUND_HALF_UP)


Cells = dict  # (customer id or None, currency, bucket) → [billing, reporting, count, missing, missing amount, max days]


def _open_cells(dates: Sequence[date], ids: Sequence[int] | None, edges: Sequence[int], book: RateBook,
                per_customer: bool) -> tuple[list[Cells], int]:
    """Invoices open on each of ``dates``, summed per (customer or None, currency, bucket): the billing
    amount, the reporting amount at that date's closing rate (each line rounded half up on its own),
    the count, the lines without a rate and their amount, the most days past due. Also the number of
    customers with an invoice open on ``dates[0]``. One SQL pass over the invoices for all the dates."""
    if is_postgres():
        return _open_cells_sql(dates, ids, tuple(edges), book, per_customer)
    return _open_cells_python(dates, ids, tuple(edges), book, per_customer)


def _open_cells_sql(dates, ids, edges, book, per_customer) -> tuple[list[Cells], int]:
    """PostgreSQL: numeric is exact, so ROUND(open × rate) per line and the sums run in the database."""
    p = _ph()
    offsets = [(day - dates[0]).days for day in dates]
    known = [c for (c,) in database.execute_sql(
        f"SELECT DISTINCT currency FROM fx_rate WHERE base_currency = {p}", (book.reporting,)).fetchall()]
    rates, rate_args = [], []
    for k, day in enumerate(dates):
        for currency in sorted({*known, book.reporting}):
            found = book.rate(currency, day)
            if found is not None:
                rates.append(f"({k}, CAST({p} AS varchar), CAST({p} AS numeric))")
                rate_args += [currency, found[0]]
    rates_sql = (f"(VALUES {', '.join(rates)}) r(k, cur, rate)" if rates
                 else "(SELECT 0 AS k, CAST(NULL AS varchar) AS cur, CAST(NULL AS numeric) AS rate) r")
    lateral = ", ".join(f"({k}, t.o{k}, t.dpd + {off})" for k, off in enumerate(offsets))  # integers: literals
    bucket = ("CASE WHEN v.dpd <= 0 THEN 0 " + " ".join(f"WHEN v.dpd <= {int(e)} THEN {i + 1}" for i, e in
                                                       enumerate(edges)) + f" ELSE {len(edges) + 1} END")
    key = "t.cid" if per_customer else "CAST(NULL AS integer)"
    groups = f"t.cid, v.k, t.cur, {bucket}" if per_customer else f"GROUPING SETS ((v.k, t.cur, {bucket}), ())"
    prefix = (f"SELECT {key}, v.k, t.cur, {bucket}, SUM(v.amt), SUM(ROUND(v.amt * r.rate, "
              f"{minor_units(book.reporting)})), COUNT(*), COUNT(*) - COUNT(r.rate), "
              f"SUM(CASE WHEN r.rate IS NULL THEN v.amt ELSE 0 END), MAX(v.dpd), "
              f"COUNT(DISTINCT t.cid) FILTER (WHERE v.k = 0), {'0' if per_customer else 'GROUPING(v.k)'} FROM (")
    suffix = (f") t CROSS JOIN LATERAL (VALUES {lateral}) v(k, amt, dpd) LEFT JOIN {rates_sql} "
              f"ON r.k = v.k AND r.cur = t.cur WHERE v.amt > 0 GROUP BY {groups}")
    cells: list[Cells] = [{} for _ in dates]
    customers = 0
    for key_, k, currency, b, billing, rep, count, missing, missing_amount, max_dpd, distinct, total in \
            _open_invoice_rows(dates, ids, wrap=(prefix, suffix, tuple(rate_args))):
        if total:
            customers = distinct
            continue
        cells[k][(key_, currency, b)] = [billing, rep or ZERO, count, missing, missing_amount, max_dpd]
    return cells, customers


def _open_cells_python(dates, ids, edges, book, per_customer) -> tuple[list[Cells], int]:
    """SQLite: DECIMAL columns are floats there, so lines come back as exact integer ten-thousandths and
    are converted and rounded here."""
    closings = [_Closing(book, day) for day in dates]
    offsets = [(day - dates[0]).days for day in dates]
    unit, quantum, half_up = Decimal("0.0001"), closings[0].quantum, ROUND_HALF_UP
    unit_rates: list[dict[str, Decimal | None]] = [{} for _ in dates]
    cells: list[Cells] = [{} for _ in dates]
    seen: set[int] = set()
    for cid, currency, dpd0, *opens in _open_invoice_rows(dates, ids):
        if cid is not None and opens[0] > 0:
            seen.add(cid)
        key = cid if per_customer else None
        for k, raw in enumerate(opens):
            if raw <= 0:
                continue
            dpd = dpd0 + offsets[k]
            b = 0 if dpd <= 0 else 1 + bisect.bisect_left(edges, dpd)
            cell = cells[k].get((key, currency, b))
            if cell is None:
                cell = cells[k][(key, currency, b)] = [0, ZERO, 0, 0, 0, dpd]
            cell[0] += raw
            cell[2] += 1
            rates = unit_rates[k]
            if currency in rates:
                rate = rates[currency]
            else:
                found = closings[k].found(currency)
                rate = rates[currency] = None if found is None else found[0] * unit
            if rate is None:
                cell[3] += 1
                cell[4] += raw
            else:
                cell[1] += (raw * rate).quantize(quantum, rounding=half_up)
            if dpd > cell[5]:
                cell[5] = dpd
    for by_key in cells:
        for cell in by_key.values():
            cell[0], cell[4] = money_from_sql(cell[0]), money_from_sql(cell[4])
    return cells, len(seen)
