"""The customer list's SQL: filters from the URL, one page of rows, the export's rows.

Figures are today's, from the stored open amounts (``Invoice.open_amount`` /
``open_amount_reporting``, revalued at the latest rate by the sync), summed per customer in
SQL over the partial covering index ``invoice_open_by_customer`` (migration 5): open invoices
(status ``open``, open amount > 0, not deleted); overdue = those due before today; the oldest
overdue days = today − the earliest due date among them. An open invoice without a reporting
amount (missing rate) is left out of the sums and flagged (``fx_missing``), never guessed.

Two plans, so no page scans more than it must:
* **by name** (the default, and whenever no amount filter or sort is asked): customers filtered
  on their own columns, the page's ids ``ORDER BY name, id LIMIT/OFFSET`` on the partial index
  ``customer_live_name`` (migration 9), then only those rows; a search takes its candidates from
  the search index (migration 10: SQLite FTS5 trigram, PostgreSQL pg_trgm) and keeps its exact
  condition.
* **by amount** (sort by open/overdue/oldest, or an overdue range, or a bucket): the per-customer
  balances of today (table ``customer_balance``, ``middleware.balances``: refreshed by every ERP
  sync for what it touched and in full when the day changes), less deleted customers (or joined to
  the filtered customers), counted, then the page's ids ``ORDER BY`` an amount ``LIMIT/OFFSET`` on
  that table's indexes. Customers with nothing open come after them, by name, when the filters
  admit a zero balance.
Either way the page's figures are then summed live for its customers only (one grouped query
with ``IN`` over the partial index), so what the page shows is exact even between refreshes.
Then a few queries keyed by the page's ids: tags, the campaign of the latest dunning action.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Iterator

from middleware.ar import DEFAULT_EDGES, bucket_labels
from middleware.bulk import placeholders, to_decimal
from middleware.db import database, is_postgres, unicode_lower_sql

SORTS = ("name", "open", "overdue", "oldest")
STATUSES = {
    "active": "not paused, not inactive",
    "paused": "dunning paused until a date on or after today",
    "disputed": "an open dispute",
    "promised": "an open promise to pay",
    "credit": "unapplied payments or credit memos",
    "inactive": "inactive in the ERP",
    "overdue": "an open invoice past its due date",
}
PER_PAGE = (25, 50, 100, 200)
BUCKETS = bucket_labels(DEFAULT_EDGES)  # current, 1-30, 31-60, 61-90, 91+
OPEN_WHERE = ('i."status" = \'open\' AND i."open_amount" > 0 AND i."deleted_at" IS NULL '
              'AND i."customer_id" IS NOT NULL')  # a literal 'open': the partial index's condition


def _ph() -> str:
    return "%s" if is_postgres() else "?"


def _num(value: Decimal):
    """A bound number: SQLite compares a float column with text as text, so it gets a float."""
    return value if is_postgres() else float(value)


def _money(value) -> Decimal | None:
    value = to_decimal(value)
    return None if value is None else value.quantize(Decimal("0.01"))


def _day(value) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _dec(text: str | None) -> Decimal | None:
    if text in (None, ""):
        return None
    try:
        return Decimal(str(text).replace(",", "").strip())
    except InvalidOperation:
        return None


def bucket_range(label: str, today: date, edges=DEFAULT_EDGES) -> tuple[date | None, date | None]:
    """Due dates (first, last; None: open-ended) of the invoices in bucket ``label`` on ``today``."""
    index = BUCKETS.index(label)
    if index == 0:
        return today, None  # current: due on or after today (days past due ≤ 0)
    low = ([0, *edges])[index - 1] + 1  # days past due, inclusive
    high = edges[index - 1] if index - 1 < len(edges) else None
    return (today - timedelta(days=high) if high is not None else None), today - timedelta(days=low)


@dataclass
class Filters:
    """The list's URL parameters, validated (unknown values are dropped, not guessed)."""
    q: str = ""
    tag: str = ""
    collector: str = ""  # an email, or "none" for the team queue
    segment: str = ""  # a name, or "none"
    currency: str = ""
    status: str = ""
    overdue_min: Decimal | None = None
    overdue_max: Decimal | None = None
    bucket: str = ""
    campaign: int | None = None
    sort: str = "name"
    desc: bool = False
    page: int = 1
    per_page: int = 50

    @classmethod
    def from_args(cls, args) -> "Filters":
        f = cls()
        f.q = (args.get("q") or "").strip()[:200]
        f.tag = (args.get("tag") or "").strip().lower()
        f.collector = (args.get("collector") or "").strip().lower()
        f.segment = (args.get("segment") or "").strip()
        currency = (args.get("currency") or "").strip().upper()
        f.currency = currency if len(currency) == 3 and currency.isalpha() else ""
        f.status = args.get("status") if args.get("status") in STATUSES else ""
        f.overdue_min, f.overdue_max = _dec(args.get("overdue_min")), _dec(args.get("overdue_max"))
        f.bucket = args.get("bucket") if args.get("bucket") in BUCKETS else ""
        campaign = (args.get("campaign") or "").strip()
        f.campaign = int(campaign) if campaign.isdigit() else None
        sort = (args.get("sort") or "").strip()
        minus = sort.startswith("-") and sort[1:] in SORTS  # "-overdue": descending (the dashboard's links)
        f.sort = sort[1:] if minus else (sort if sort in SORTS else "name")
        default_desc = f.sort != "name"
        f.desc = True if minus else {"desc": True, "asc": False}.get(args.get("dir") or "", default_desc)
        page = (args.get("page") or "").strip()
        f.page = max(int(page), 1) if page.isdigit() else 1
        per = (args.get("per_page") or "").strip()
        f.per_page = int(per) if per.isdigit() and int(per) in PER_PAGE else 50
        return f

    def args(self, **override) -> dict:
        """The non-default parameters (for links: the same list, another page or sort)."""
        out = {"q": self.q, "tag": self.tag, "collector": self.collector, "segment": self.segment,
               "currency": self.currency, "status": self.status,
               "overdue_min": "" if self.overdue_min is None else str(self.overdue_min),
               "overdue_max": "" if self.overdue_max is None else str(self.overdue_max),
               "bucket": self.bucket, "campaign": "" if self.campaign is None else str(self.campaign),
               "sort": "" if self.sort == "name" else self.sort,
               "dir": "" if self.desc == (self.sort != "name") else ("desc" if self.desc else "asc"),
               "page": "" if self.page == 1 else str(self.page),
               "per_page": "" if self.per_page == 50 else str(self.per_page)}
        out.update({k: ("" if v is None else str(v)) for k, v in override.items()})
        return {k: v for k, v in out.items() if v}

    @property
    def by_amount(self) -> bool:
        return self.sort != "name" or self.overdue_min is not None or self.overdue_max is not None \
            or bool(self.bucket) or self.status == "overdue"

    @property
    def zero_qualifies(self) -> bool:
        """Whether a customer with nothing open passes the amount filters."""
        return (not self.bucket and self.status != "overdue" and (self.overdue_min is None or self.overdue_min <= 0)
                and (self.overdue_max is None or self.overdue_max >= 0))


@dataclass
class Row:
    id: int
    name: str
    source: str
    number: str | None
    external_id: str
    billing_currency: str
    segment: str | None
    collector: str | None
    effective_collector: str | None = None
    sf_account_id: str | None = None
    match_state: str | None = None
    paused_until: date | None = None
    inactive: bool = False
    open_reporting: Decimal = Decimal("0.00")
    overdue_reporting: Decimal = Decimal("0.00")
    oldest_due: date | None = None
    open_invoices: int = 0
    fx_missing: int = 0
    oldest_overdue_days: int | None = None
    tags: list[str] = field(default_factory=list)
    campaign: str | None = None


@dataclass
class Page:
    rows: list[Row]
    total: int
    filters: Filters

    @property
    def pages(self) -> int:
        return max((self.total + self.filters.per_page - 1) // self.filters.per_page, 1)


class _Where:
    def __init__(self):
        self.sql: list[str] = []
        self.args: list = []

    def add(self, sql: str, *args) -> None:
        self.sql.append(sql.replace("?", _ph()))
        self.args.extend(args)

    def text(self) -> str:
        return " AND ".join(self.sql) if self.sql else "1 = 1"

    @property
    def live_only(self) -> bool:
        """Whether the only condition is "not deleted" (the list unfiltered)."""
        return self.sql == [LIVE]


LIVE = 'c."deleted_at" IS NULL'
#: shortest text the search's index can look up: a trigram (shorter: every customer is read)
SEARCH_MIN_CHARS = 3


def _fts_phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _search_candidates(needle: str, like: str, email_like: str, q: str) -> tuple[str, list] | None:
    """The ids that can match the search, from indexes (None: the text is too short for them).

    By name (contains) and email domain (ends with): SQLite's FTS5 trigram table ``customer_search``
    (a phrase of the text matches every name containing it, case folded, a superset of what the
    exact condition keeps); PostgreSQL's pg_trgm indexes on LOWER(name)/LOWER(email), with the
    exact LIKEs. By ERP number and ERP id: their indexes. The exact condition is applied as well, so
    what matches is what the search always matched."""
    domain = email_like[1:]  # "@domain"
    if len(needle) < SEARCH_MIN_CHARS or len(domain) < SEARCH_MIN_CHARS:
        return None
    if is_postgres():
        by_text = ('SELECT "id" FROM "customer" WHERE LOWER("name") LIKE ? ESCAPE \'\\\' '
                   'UNION ALL SELECT "id" FROM "customer" WHERE LOWER("email") LIKE ?')
        text_args = [like, email_like]
    else:
        by_text = 'SELECT "rowid" FROM "customer_search" WHERE "customer_search" MATCH ?'
        text_args = [f"name : {_fts_phrase(needle)} OR email : {_fts_phrase(domain)}"]
    sql = (f'c."id" IN ({by_text} UNION ALL SELECT "id" FROM "customer" WHERE "number" = ? '
           'UNION ALL SELECT "id" FROM "customer" WHERE "source_id" IN (SELECT "id" FROM "source") '
           'AND "external_id" = ?)')
    return sql, [*text_args, q, q]


def _customer_where(f: Filters, today: date) -> _Where:
    w = _Where()
    w.add(LIVE)
    if f.q:
        needle = f.q.lower()
        like = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        domain = needle.split("@")[-1]
        candidates = _search_candidates(needle, like, "%@" + domain, f.q)
        if candidates is not None:
            w.add(candidates[0], *candidates[1])
        # an ASCII needle matches through LOWER() (ASCII folding is all it needs, and SQLite's is
        # native); a needle in another script through Unicode lower-casing ("école" finds "ÉCOLE")
        fold = (lambda column: f"LOWER({column})") if needle.isascii() else unicode_lower_sql
        name, email = fold('c."name"'), fold('c."email"')
        w.add(f'({name} LIKE ? ESCAPE \'\\\' OR c."number" = ? OR c."external_id" = ? OR {email} LIKE ?)',
              like, f.q, f.q, "%@" + domain)
    if f.collector == "none":
        w.add('c."collector" IS NULL')
    elif f.collector:
        w.add('c."collector" = ?', f.collector)
    if f.segment == "none":
        w.add('c."segment" IS NULL')
    elif f.segment:
        w.add('c."segment" = ?', f.segment)
    if f.currency:
        w.add('c."billing_currency" = ?', f.currency)
    if f.tag:
        w.add('c."id" IN (SELECT ct."customer_id" FROM "customer_tag" ct JOIN "tag" t ON t."id" = ct."tag_id" '
              'WHERE t."name" = ?)', f.tag)
    if f.status == "active":
        w.add('c."inactive" = ? AND (c."paused_until" IS NULL OR c."paused_until" < ?)', False, today)
    elif f.status == "paused":
        w.add('c."paused_until" >= ?', today)
    elif f.status == "inactive":
        w.add('c."inactive" = ?', True)
    elif f.status == "disputed":
        w.add('c."id" IN (SELECT "customer_id" FROM "activity" WHERE "kind" = \'dispute\' '
              'AND "resolved_at" IS NULL)')
    elif f.status == "promised":
        w.add('c."id" IN (SELECT "customer_id" FROM "activity" WHERE "kind" = \'promise\' '
              'AND "resolved_at" IS NULL AND "until" >= ?)', today)
    elif f.status == "credit":
        w.add('c."id" IN (SELECT "customer_id" FROM "payment" WHERE "unapplied_amount" > 0 AND "deleted_at" IS NULL '
              'AND "customer_id" IS NOT NULL UNION SELECT "customer_id" FROM "credit_memo" WHERE '
              '"unapplied_amount" > 0 AND "deleted_at" IS NULL AND "status" <> \'voided\' '
              'AND "customer_id" IS NOT NULL)')
    if f.campaign is not None:
        # the campaign of the customer's latest dunning action (membership itself is computed by the
        # planner each day; the customer page explains it)
        w.add('c."id" IN (SELECT "customer_id" FROM "dunning_action" WHERE "campaign_id" = ?) AND '
              '(SELECT d."campaign_id" FROM "dunning_action" d WHERE d."customer_id" = c."id" '
              'ORDER BY d."planned_for" DESC, d."id" DESC LIMIT 1) = ?', f.campaign, f.campaign)
    return w


def _ar_select(today: date, ids: list[int]) -> tuple[str, list]:
    """Per-customer sums of today's open invoices of ``ids`` (the partial index, by customer)."""
    p = _ph()
    args: list = [today, today, *ids]
    where = OPEN_WHERE + (f' AND i."customer_id" IN ({placeholders(len(ids))})' if ids else " AND 1 = 0")
    sql = ('SELECT i."customer_id" AS cid, SUM(i."open_amount_reporting") AS open_rep, '
           f'SUM(CASE WHEN i."due_date" < {p} THEN i."open_amount_reporting" ELSE 0 END) AS overdue_rep, '
           f'MIN(CASE WHEN i."due_date" < {p} THEN i."due_date" END) AS oldest_due, COUNT(*) AS n_open, '
           'SUM(CASE WHEN i."open_amount_reporting" IS NULL THEN 1 ELSE 0 END) AS n_missing'
           f' FROM "invoice" i WHERE {where} GROUP BY i."customer_id"')
    return sql, args


CUSTOMER_COLUMNS = ('c."id", c."name", s."name", c."number", c."external_id", c."billing_currency", c."segment", '
                    'c."collector", c."sf_account_id", c."match_state", c."paused_until", c."inactive"')
_FROM = 'FROM "customer" c JOIN "source" s ON s."id" = c."source_id"'


def _row(values) -> Row:
    (cid, name, source, number, ext, cur, seg, coll, sf, match, paused, inactive) = values[:12]
    return Row(cid, name, source, number, ext, cur, seg, coll, sf_account_id=sf, match_state=match,
               paused_until=_day(paused), inactive=bool(inactive))


def _apply_ar(row: Row, open_rep, overdue_rep, oldest, n_open, n_missing, today: date) -> None:
    row.open_reporting = _money(open_rep) or Decimal("0.00")
    row.overdue_reporting = _money(overdue_rep) or Decimal("0.00")
    row.oldest_due = _day(oldest)
    row.oldest_overdue_days = (today - row.oldest_due).days if row.oldest_due else None
    row.open_invoices = int(n_open or 0)
    row.fx_missing = int(n_missing or 0)


def _order(f: Filters) -> str:
    d = "DESC" if f.desc else "ASC"
    return f'c."name" {d}, c."id"'


def _balance_order(f: Filters) -> str:
    """The amount sorts on customer_balance's indexes (ties by customer id, as by name)."""
    d = "DESC" if f.desc else "ASC"
    if f.sort == "open":
        return f'b."open_reporting" {d}, b."customer_id"'
    if f.sort == "oldest":  # most days overdue first when descending: the earliest due date first
        return (f'CASE WHEN b."oldest_due" IS NULL THEN 1 ELSE 0 END, b."oldest_due" {"ASC" if f.desc else "DESC"}, '
                'b."customer_id"')
    if f.sort == "name":  # an amount filter, sorted by name
        return f'c."name" {d}, c."id"'
    return f'b."overdue_reporting" {d}, b."customer_id"'


def _balance_having(f: Filters) -> tuple[str, list]:
    from middleware.balances import BUCKET_COLUMNS

    conds, args = [], []
    p = _ph()
    if f.overdue_min is not None:
        conds.append(f'b."overdue_reporting" >= {p}')
        args.append(_num(f.overdue_min))
    if f.overdue_max is not None:
        conds.append(f'b."overdue_reporting" <= {p}')
        args.append(_num(f.overdue_max))
    if f.bucket:
        conds.append(f'b."{BUCKET_COLUMNS[f.bucket]}" > 0')
    if f.status == "overdue":  # an open invoice due before today (with or without a rate)
        conds.append('b."oldest_due" IS NOT NULL')
    return (" AND " + " AND ".join(conds) if conds else ""), args


def _decorate(rows: list[Row], today: date) -> None:
    """Tags, the latest action's campaign and the effective collector of the page's customers."""
    if not rows:
        return
    from middleware.people import cover_map

    ids = [r.id for r in rows]
    by_id = {r.id: r for r in rows}
    ph = placeholders(len(ids))
    for cid, name in database.execute_sql(
            f'SELECT ct."customer_id", t."name" FROM "customer_tag" ct JOIN "tag" t ON t."id" = ct."tag_id" '
            f'WHERE ct."customer_id" IN ({ph}) ORDER BY t."name"', ids).fetchall():
        by_id[cid].tags.append(name)
    for cid, name in database.execute_sql(
            f'SELECT c."id", (SELECT k."name" FROM "dunning_action" d JOIN "campaign" k ON k."id" = d."campaign_id" '
            f'WHERE d."customer_id" = c."id" ORDER BY d."planned_for" DESC, d."id" DESC LIMIT 1) '
            f'FROM "customer" c WHERE c."id" IN ({ph})', ids).fetchall():
        by_id[cid].campaign = name
    covers = cover_map(today)
    for r in rows:
        r.effective_collector = covers.get(r.collector, r.collector) if r.collector else None


def _page_ar(rows: list[Row], today: date, f: Filters) -> None:
    sql, args = _ar_select(today, [r.id for r in rows])
    by_id = {r.id: r for r in rows}
    for cid, open_rep, overdue_rep, oldest, n_open, n_missing in database.execute_sql(sql, args).fetchall():
        _apply_ar(by_id[cid], open_rep, overdue_rep, oldest, n_open, n_missing, today)


#: a search matching more customers than this is counted and paged the general way
SEARCH_IDS_MAX = 5000


def _count(sql: str, args: list) -> int:
    return database.execute_sql(sql, args).fetchone()[0]


def _by_name_page(where: str, args: list, order: str, limit: int, offset: int) -> list[Row]:
    """The page's customers: their ids cut from the index first (``customer_live_name`` by name: no
    row is read for the skipped ones), then only those rows with their source."""
    p = _ph()
    ids = f'SELECT c."id" FROM "customer" c WHERE {where} ORDER BY {order} LIMIT {p} OFFSET {p}'
    sql = f'SELECT {CUSTOMER_COLUMNS} {_FROM} WHERE c."id" IN ({ids}) ORDER BY {order}'
    return [_row(v) for v in database.execute_sql(sql, [*args, limit, offset]).fetchall()]


def list_page(f: Filters, today: date) -> Page:
    """One page of the list (``f.page``, ``f.per_page``) and the number of matching customers."""
    w = _customer_where(f, today)
    limit, offset = f.per_page, (f.page - 1) * f.per_page
    p = _ph()
    if not f.by_amount:
        rows = None
        if f.q:
            # a search collects its matching ids in order in one pass (from the search's index, see
            # _search_candidates), the count and the page from them
            ids = [r[0] for r in database.execute_sql(
                f'SELECT c."id" FROM "customer" c WHERE {w.text()} ORDER BY {_order(f)} LIMIT {p}',
                [*w.args, SEARCH_IDS_MAX + 1]).fetchall()]
            if len(ids) <= SEARCH_IDS_MAX:
                total, wanted = len(ids), ids[offset:offset + limit]
                rows = []
                if wanted:
                    sql = (f'SELECT {CUSTOMER_COLUMNS} {_FROM} WHERE c."id" IN ({", ".join([p] * len(wanted))}) '
                           f'ORDER BY {_order(f)}')
                    rows = [_row(v) for v in database.execute_sql(sql, wanted).fetchall()]
        if rows is None:
            total = _count(f'SELECT COUNT(*) FROM "customer" c WHERE {w.text()}', w.args)
            rows = _by_name_page(w.text(), w.args, _order(f), limit, offset) if offset < total else []
        _page_ar(rows, today, f)
        _decorate(rows, today)
        return Page(rows, total, f)
    # by amount: the per-customer balances of today (table customer_balance, middleware.balances),
    # counted, sorted and cut in SQL on its indexes; the page's figures are then read live (exact)
    from middleware.balances import ensure_current

    ensure_current(today)
    having, having_args = _balance_having(f)
    joined = f'FROM "customer_balance" b JOIN "customer" c ON c."id" = b."customer_id" WHERE {w.text()}'
    if w.live_only:
        # no filter on customers: the balance rows alone, less those of deleted customers (a few,
        # from the partial index customer_deleted), so counting and cutting read no customer row
        base = ('FROM "customer_balance" b WHERE b."customer_id" NOT IN '
                '(SELECT "id" FROM "customer" WHERE "deleted_at" IS NOT NULL)')
        base_args: list = []
    else:
        base, base_args = joined, list(w.args)
    n_open = _count(f'SELECT COUNT(*) {base}{having}', [*base_args, *having_args])
    rows = []
    if offset < n_open:
        order = _balance_order(f)
        cut, cut_args = (joined, list(w.args)) if f.sort == "name" else (base, base_args)  # by name: c."name"
        ids = f'SELECT b."customer_id" {cut}{having} ORDER BY {order} LIMIT {p} OFFSET {p}'
        sql = (f'SELECT {CUSTOMER_COLUMNS} FROM "customer_balance" b JOIN "customer" c ON c."id" = b."customer_id" '
               f'JOIN "source" s ON s."id" = c."source_id" WHERE b."customer_id" IN ({ids}) ORDER BY {order}')
        rows = [_row(v) for v in database.execute_sql(sql, [*cut_args, *having_args, limit, offset]).fetchall()]
    total = n_open
    if f.zero_qualifies:
        # then the customers with nothing open, by name
        n_all = _count(f'SELECT COUNT(*) FROM "customer" c WHERE {w.text()}', w.args)
        with_open = _count(f'SELECT COUNT(*) {base}', base_args) if having else n_open
        total = n_open + (n_all - with_open)
        if len(rows) < limit and offset + len(rows) < total:
            tail_offset = max(offset - n_open, 0)
            zero = 'c."id" NOT IN (SELECT "customer_id" FROM "customer_balance")'
            rows += _by_name_page(f'{w.text()} AND {zero}', w.args, 'c."name", c."id"', limit - len(rows),
                                  tail_offset)
    _page_ar(rows, today, f)
    _decorate(rows, today)
    return Page(rows, total, f)


def export_rows(f: Filters, today: date, limit: int | None = None, chunk: int = 5000) -> Iterator[Row]:
    """Every row of the filtered list in its order (in pages of ``chunk``), up to ``limit``."""
    done, page = 0, 1
    while limit is None or done < limit:
        rows = list_page(_with_page(f, page, chunk), today).rows
        if limit is not None:
            rows = rows[:limit - done]
        yield from rows
        done += len(rows)
        if len(rows) < chunk:
            return
        page += 1


def _with_page(f: Filters, page: int, per_page: int) -> Filters:
    g = Filters(**f.__dict__)
    g.page, g.per_page = page, per_page
    return g


def count(f: Filters, today: date) -> int:
    """How many customers the filters match (the list's total)."""
    return list_page(_with_page(f, 1, 1), today).total
