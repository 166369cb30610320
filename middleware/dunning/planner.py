"""The planner: customers and open invoices → planned actions and exclusions, written idempotently."""
from __future__ import annotations

import json
import time as _time
from collections import defaultdict
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Iterable, Sequence

from peewee import chunked

from ..bulk import placeholders, to_decimal, upsert
from ..db import database, is_postgres
from ..fx import RateBook
from ..models import ActionStatus, DunningAction, utcnow
from ..sf_pull import open_opportunities
from .audience import Facts, _describe, _num, _rule_needs, check_audience, compile_audience
from .base import CATCH_UP_DAYS, CHUNK, FIXED_ANCHORS, OPPORTUNITY_TYPES, UTC, ZERO, _PLAN_LOCK
from .calendar import Calendar, window_start_utc
from .campaigns import (
    PlanResult, PlannedAction, _Campaign, _Inv, _Step, _company, _day, _money, _reporting_currency, action_key,
    load_campaigns,
)
from .outcomes import assign_variant


# ---------------------------------------------------------------------------------- the planner
class _Planner:
    """One planning pass for ``as_of``. ``customer_ids`` narrows it (explain uses one customer and
    then loads every open invoice and all the history of that customer).

    Order of work, each a bulk query: open disputes/promises/replies, the recent history of the
    planned campaigns, the candidate invoices (open, with an anchor date that puts some step of
    some enabled campaign in the window), their customers, tags, opportunities and (only if a rule
    needs it) balances; then campaign membership, grouping by (customer, step), exclusions."""

    MANY = 30000  # above this many customers a full scan beats chunked IN lists

    def __init__(self, as_of: date, *, campaign_ids: Iterable[int] | None = None,
                 customer_ids: Iterable[int] | None = None, catch_up_days: int = CATCH_UP_DAYS):
        self.as_of = as_of
        self.company = _company()
        self.cal = Calendar.of(self.company)
        self.company_tz = self.company.timezone or "UTC"
        self.reporting = _reporting_currency(self.company)
        self.window_start = self.cal.add_sending_days(self.cal.next_sending_day(as_of), -catch_up_days) \
            if catch_up_days > 0 else as_of
        self.only_customers = None if customer_ids is None else sorted(set(customer_ids))
        self.campaigns = load_campaigns()
        wanted = None if campaign_ids is None else set(campaign_ids)
        self.planned = [c for c in self.campaigns if wanted is None or c.id in wanted]
        self.matchers = {c.id: compile_audience(c.audience) for c in self.campaigns}
        self.approvals = {s.id: compile_audience(s.approval, ignore=("expires_days",))
                          for c in self.campaigns for s in c.steps if s.approval is not None}
        self.memo: dict[tuple[int, date], date] = {}
        self._book: RateBook | None = None
        self._dates: dict[str, date] = {}
        self._windows: dict[tuple[str, str], datetime] = {}
        self.totals: dict[int, dict[str, tuple]] = {}
        self.rows: list[PlannedAction] = []
        self.timings: dict[str, float] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def _date(self, value) -> date | None:
        if value is None or value.__class__ is date:
            return value
        found = self._dates.get(value)
        if found is None:
            found = self._dates[value] = _day(value)
        return found

    def _chunks(self, ids: Sequence[int]) -> list:
        """Chunks of ``ids`` for IN lists, or ``[None]`` (one full query) when there are many."""
        if self.only_customers is not None:
            return [self.only_customers]
        return [None] if len(ids) > self.MANY else list(chunked(ids, CHUNK))

    @staticmethod
    def _in(column: str, part) -> tuple[str, tuple]:
        return ("", ()) if part is None else (f' AND {column} IN ({placeholders(len(part))})', tuple(part))

    def step_day(self, step: _Step, anchor: date) -> date:
        key = (step.id, anchor)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self.cal.step_day(anchor, step.offset, step.business)
        return found

    def book(self) -> RateBook:
        if self._book is None:
            self._book = RateBook.load(self.reporting)
        return self._book

    # -- loads -------------------------------------------------------------------------------------
    def load_activities(self) -> None:
        """Open disputes, unresolved promises, unhandled inbound replies."""
        extra, args = self._in('"customer_id"', self.only_customers)
        sql = ('SELECT "customer_id", "invoice_id", "kind", "until", "body", "created_at", "id" FROM "activity" '
               'WHERE "kind" IN (\'promise\', \'dispute\') AND "resolved_at" IS NULL' + extra)
        self.disputes: dict[int, dict[int | None, str]] = defaultdict(dict)  # customer → invoice (None: all) → why
        self.promises: dict[tuple[int, int | None], date] = {}  # (customer, invoice or None) → until of the latest
        latest: dict[tuple[int, int | None], tuple] = {}
        for cid, iid, kind, until, body, created, aid in database.execute_sql(sql, args).fetchall():
            if kind == "dispute":
                self.disputes[cid][iid] = (body or "").strip()
            elif until is not None:
                stamp = (str(created), aid)
                if (cid, iid) not in latest or stamp > latest[(cid, iid)]:
                    latest[(cid, iid)] = stamp
                    self.promises[(cid, iid)] = _day(until)
        sql = ('SELECT DISTINCT "customer_id" FROM "message" WHERE "direction" = \'in\' AND "handled_at" IS NULL '
               'AND "customer_id" IS NOT NULL AND ("status" IS NULL OR "status" <> \'auto_reply\')' + extra)
        self.waiting_reply = {row[0] for row in database.execute_sql(sql, args).fetchall()}
        self.invoice_promises = {cid for cid, iid in self.promises if iid is not None}

    def load_history(self) -> None:
        """Actions already recorded for the planned campaigns up to ``as_of``:
        ``(invoice, step) → [(day, status, reason)]``."""
        self.history: dict[tuple[int, int], list[tuple[date, str, str | None]]] = defaultdict(list)
        ids = [c.id for c in self.planned]
        if not ids:
            return
        args: list = [*ids, self.as_of]
        sql = (f'SELECT "step_id", "planned_for", "invoice_ids", "status", "reason" FROM "dunning_action" '
               f'WHERE "campaign_id" IN ({placeholders(len(ids))}) AND "planned_for" <= {placeholders(1)}')
        if self.only_customers is None:
            back = max([abs(s.offset) * 2 for c in self.planned for s in c.steps if s.anchor == "previous"] or [0])
            sql += f' AND "planned_for" >= {placeholders(1)}'
            args.append(self.window_start - timedelta(days=back + 31))
        else:
            extra, more = self._in('"customer_id"', self.only_customers)
            sql, args = sql + extra, args + list(more)
        history = self.history
        for step_id, day, invoice_ids, status, reason in database.execute_sql(sql, args).fetchall():
            entry = (self._date(day), status, reason)
            for iid in json.loads(invoice_ids) if isinstance(invoice_ids, str) else invoice_ids or []:
                history[(iid, step_id)].append(entry)

    def load_invoices(self) -> None:
        """Candidate invoices: open, with an anchor date (issue/sent/due, in SQL) that puts a step of
        any enabled campaign in the window, plus those a previous step or a promise anchors (by id).
        Explaining a customer loads all of its open invoices."""
        self.invoices: dict[int, _Inv] = {}
        cols = '"id", "customer_id", "number", "currency", "open_amount", "issue_date", "sent_date", "due_date"'
        base = (f'SELECT {cols} FROM "invoice" WHERE "status" = {placeholders(1)} AND "open_amount" > 0 '
                'AND "deleted_at" IS NULL AND "customer_id" IS NOT NULL')
        self.tables: dict[int, dict[date, date]] = {}
        sets: dict[str, set] = defaultdict(set)
        for camp in self.campaigns:
            for step in camp.steps:
                if step.anchor in FIXED_ANCHORS:
                    self.tables[step.id] = self._anchor_table(step)
                    sets[step.anchor] |= set(self.tables[step.id])
        if self.only_customers is not None:
            extra, args = self._in('"customer_id"', self.only_customers)
            self._add_invoices(database.execute_sql(base + extra, ("open", *args)).fetchall())
            return
        clauses, args = [], ["open"]
        for column, anchor in (("due_date", "due"), ("issue_date", "issue"), ("sent_date", "sent")):
            if sets[anchor]:
                clauses.append(f'"{column}" IN ({placeholders(len(sets[anchor]))})')
                args += sorted(sets[anchor])
        if sets["sent"]:
            clauses.append(f'("sent_date" IS NULL AND "issue_date" IN ({placeholders(len(sets["sent"]))}))')
            args += sorted(sets["sent"])
        if clauses:
            self._add_invoices(database.execute_sql(base + " AND (" + " OR ".join(clauses) + ")", args).fetchall())
        ids = self._previous_candidates() | self._promise_invoice_ids()
        ids -= set(self.invoices)
        for part in chunked(sorted(ids), CHUNK):
            self._add_invoices(database.execute_sql(
                base + f' AND "id" IN ({placeholders(len(part))})', ("open", *part)).fetchall())
        if any(s.anchor == "promise" for c in self.planned for s in c.steps):
            customers = sorted({cid for cid, iid in self.promises if iid is None})
            for part in chunked(customers, CHUNK):
                self._add_invoices(database.execute_sql(
                    base + f' AND "customer_id" IN ({placeholders(len(part))})', ("open", *part)).fetchall())

    def _add_invoices(self, rows) -> None:
        invoices, d = self.invoices, self._date
        for iid, cid, number, cur, amount, issued, sent, due in rows:
            invoices[iid] = _Inv(iid, cid, number or f"#{iid}", cur, amount, d(issued), d(sent), d(due))

    def _anchor_table(self, step: _Step) -> dict[date, date]:
        """``{anchor date: step day}`` for the anchor dates whose step day falls in the window."""
        span = abs(step.offset) * (2 if step.business else 1) + 40
        out, day = {}, self.window_start - timedelta(days=span)
        end = self.as_of + timedelta(days=span)
        while day <= end:
            due = self.step_day(step, day)
            if self.window_start <= due <= self.as_of:
                out[day] = due
            day += timedelta(days=1)
        return out

    def _previous_candidates(self) -> set[int]:
        """Invoice ids whose previous step's action puts a ``previous``-anchored step in the window."""
        pairs = {(prev.id, step) for camp in self.planned for variant in [None, *camp.variants]
                 for prev, step in zip(camp.steps_for(variant), camp.steps_for(variant)[1:])
                 if step.anchor == "previous"}
        if not pairs:
            return set()
        following: dict[int, list[_Step]] = defaultdict(list)
        for prev_id, step in pairs:
            following[prev_id].append(step)
        out: set[int] = set()
        for (iid, sid), entries in self.history.items():
            for step in following.get(sid, ()):
                if self.window_start <= self.step_day(step, max(e[0] for e in entries)) <= self.as_of:
                    out.add(iid)
        return out

    def _promise_invoice_ids(self) -> set[int]:
        if not any(s.anchor == "promise" for c in self.planned for s in c.steps):
            return set()
        return {iid for (cid, iid) in self.promises if iid is not None}

    def load_customers(self, ids: list[int]) -> None:
        self.customers: dict[int, tuple] = {}
        wanted = set(ids)
        for part in self._chunks(ids):
            extra, args = self._in('"id"', part)
            sql = ('SELECT "id", "name", "arr", "segment", "country", "billing_currency", "timezone", "locale", '
                   '"collector", "paused_until", "paused_reason", "sf_account_id", "number", "source_id", "inactive" '
                   'FROM "customer" '
                   'WHERE "deleted_at" IS NULL' + extra)
            self.customers.update((row[0], row) for row in database.execute_sql(sql, args).fetchall()
                                  if row[0] in wanted)

    def load_open_totals(self, ids: list[int]) -> None:
        """Open amounts by customer and currency: (open, open in reporting, open without a reporting
        amount), raw as the database returns them (converted when used)."""
        totals = self.totals
        todo = sorted({cid for cid in ids if cid not in totals})
        if not todo:
            return
        for part in self._chunks(todo):
            extra, args = self._in('"customer_id"', part)
            # every customer: on SQLite a plain scan is ~3x faster than walking the customer index
            # with a row lookup per invoice, which its planner would pick
            hint = " NOT INDEXED" if part is None and not is_postgres() else ""
            sql = ('SELECT "customer_id", "currency", SUM("open_amount"), SUM("open_amount_reporting"), '
                   f'SUM(CASE WHEN "open_amount_reporting" IS NULL THEN "open_amount" ELSE 0 END) FROM "invoice"{hint} '
                   'WHERE "status" = ' + placeholders(1) + ' AND "open_amount" > 0 AND "deleted_at" IS NULL '
                   'AND "customer_id" IS NOT NULL' + extra + ' GROUP BY "customer_id", "currency"')
            for cid, cur, amount, rep, missing in database.execute_sql(sql, ("open", *args)).fetchall():
                self.totals.setdefault(cid, {})[cur] = (amount, rep, missing)
        for cid in todo:
            self.totals.setdefault(cid, {})

    def open_by_currency(self, cid: int) -> dict[str, Decimal]:
        if cid not in self.totals:
            self.load_open_totals([cid])
        return {cur: _money(v[0]) for cur, v in self.totals[cid].items()}

    def balance(self, cid: int) -> Decimal | None:
        """Open amount in reporting currency (stored revaluations; a missing one converted at the
        as-of date's rate; None when that rate is missing too)."""
        if cid not in self.totals:
            self.load_open_totals([cid])
        total = ZERO
        for cur, (_, rep, missing) in self.totals[cid].items():
            total += _money(rep) or ZERO
            missing = _money(missing)
            if missing:
                conv = self.book().convert(missing, cur, self.as_of)
                if conv is None:
                    return None
                total += conv.amount
        return total

    def load_tags(self) -> None:
        extra, args = self._in('ct."customer_id"', self.only_customers)
        sql = ('SELECT ct."customer_id", t."name" FROM "customer_tag" ct JOIN "tag" t ON t."id" = ct."tag_id" '
               'WHERE 1 = 1' + extra)
        for cid, name in database.execute_sql(sql, args).fetchall():
            if cid in self.customers:
                self.tags[cid].add(name)

    def assign(self) -> None:
        """Facts and campaign membership (first match in priority order) of the candidate customers."""
        rules = [c.audience for c in self.campaigns] + [s.approval for c in self.campaigns for s in c.steps]
        needs = _rule_needs(rules)
        self.tags: dict[int, set] = defaultdict(set)
        if "tags" in needs:
            self.load_tags()
        self.opps: dict[int, list] = {}
        days = [c.skip_open_renewal_days or 0 for c in self.campaigns]
        days += [r["open_opportunity"]["within_days"] for r in rules if r and "open_opportunity" in r]
        if "opportunities" in needs or any(c.skip_open_renewal_days for c in self.campaigns):
            self.opps = open_opportunities(self.only_customers, as_of=self.as_of, within_days=max(days))
        if "balance" in needs:  # the sums in bulk; converted lazily, for customers that reach a balance rule
            self.load_open_totals(sorted(self.customers))
        self.membership: dict[int, _Campaign | None] = {}
        self.facts_of: dict[int, Facts] = {}
        empty: frozenset = frozenset()
        matchers = [(c, self.matchers[c.id]) for c in self.campaigns]
        opps, tags, as_of, balance = self.opps, self.tags, self.as_of, self.balance
        sources = dict(database.execute_sql('SELECT "id", "name" FROM "source"').fetchall())  # audience "sources"
        for cid, row in self.customers.items():
            f = self.facts_of[cid] = Facts(
                cid, row[1], to_decimal(row[2]), row[3], row[4], row[5],
                frozenset(tags[cid]) if cid in tags else empty,
                (lambda cid=cid: balance(cid)), opps.get(cid), as_of, sources.get(row[13]))
            self.membership[cid] = next((c for c, match in matchers if match(f)), None)

    def _timed(self, stage: str, fn, *args):
        started = _time.perf_counter()
        out = fn(*args)
        self.timings[stage] = self.timings.get(stage, 0.0) + _time.perf_counter() - started
        return out

    def prepare(self) -> None:
        self._timed("activities", self.load_activities)
        self._timed("history", self.load_history)
        self._timed("invoices", self.load_invoices)
        self._timed("customers", self.load_customers, sorted({inv.customer_id for inv in self.invoices.values()} | set(
            self.only_customers or ())))
        self._timed("assign", self.assign)

    # -- per invoice and step --------------------------------------------------------------------
    def anchor(self, step: _Step, inv: _Inv, previous: _Step | None) -> tuple[date | None, str | None]:
        """The anchor date of ``step`` for ``inv`` and a note when it is a fallback or missing."""
        if step.anchor == "issue":
            return inv.issue_date, None
        if step.anchor == "due":
            return inv.due_date, None
        if step.anchor == "sent":
            if inv.sent_date is None:
                return inv.issue_date, "no sent date: the issue date is used"
            return inv.sent_date, None
        if step.anchor == "previous":
            if previous is None:
                return None, "the first step has no previous step"
            entries = self.history.get((inv.id, previous.id))
            if not entries:
                return None, f"previous step {previous.name!r} not yet planned for this invoice"
            return max(e[0] for e in entries), None
        until = self.promises.get((inv.customer_id, inv.id)) or self.promises.get((inv.customer_id, None))
        return (until, None) if until else (None, "no promise to pay")

    def done(self, inv_id: int, step_id: int, due: date) -> tuple[date, str, str | None] | None:
        """The action already recorded for this invoice at this step on or after ``due``."""
        entries = [e for e in self.history.get((inv_id, step_id), ()) if e[0] >= due]
        return max(entries) if entries else None

    # -- the pass --------------------------------------------------------------------------------
    def run(self) -> PlanResult:
        started = _time.perf_counter()
        result = PlanResult(self.as_of, dry_run=True, sending_day=self.cal.is_sending_day(self.as_of))
        if result.sending_day:
            self.prepare()
            result.customers_considered = len(self.customers)
            result.unassigned = sorted((cid, self.customers[cid][1])
                                       for cid, c in self.membership.items() if c is None)
            result.rows, result.already_planned = self.compute()
        result.seconds = _time.perf_counter() - started
        result.timings = self.timings
        return result

    def compute(self) -> tuple[list[PlannedAction], int]:
        groups, already = self._timed("group", self.group)
        customers = sorted({cid for cid, _ in groups})
        self._timed("contacts", self.load_contacts, customers)
        self._timed("credits", self.load_credits, customers)
        self._timed("decide", self._decide_all, groups)
        return self.rows, already

    def _decide_all(self, groups: dict) -> None:
        self.reasons: dict[int, str | None] = {}
        for (cid, step_id), invoices in sorted(groups.items()):
            invoices.sort(key=lambda i: i.id)
            self.decide(cid, self.step_by_id[step_id], invoices)

    def group(self) -> tuple[dict, int]:
        """``{(customer, step): [invoice]}`` for steps due in the window and not done yet."""
        self.step_by_id: dict[int, _Step] = {}
        self.assignment: dict[int, tuple[int | None, bool]] = {}
        planned_ids = {c.id for c in self.planned}
        by_customer: dict[int, list[_Inv]] = defaultdict(list)
        for inv in self.invoices.values():
            by_customer[inv.customer_id].append(inv)
        groups: dict[tuple[int, int], list] = defaultdict(list)
        already = 0
        lo, hi, history = self.window_start, self.as_of, self.history
        layouts: dict[tuple[int, int | None], tuple] = {}
        for cid, invoices in by_customer.items():
            camp = self.membership.get(cid)
            if camp is None or camp.id not in planned_ids:
                continue
            variant, held = self.assignment[cid] = assign_variant(cid, camp.id, camp.holdout_percent, camp.weights)
            layout = layouts.get((camp.id, variant))
            if layout is None:
                layout = layouts[(camp.id, variant)] = self._layout(camp, variant)
            by_issue, by_sent, by_due, others = layout
            for inv in invoices:
                hits = [*by_issue.get(inv.issue_date, ()), *by_sent.get(inv.sent_date or inv.issue_date, ()),
                        *by_due.get(inv.due_date, ())]
                for previous, step in others:
                    anchor, _ = self.anchor(step, inv, previous)
                    if anchor is not None:
                        due = self.step_day(step, anchor)
                        if lo <= due <= hi:
                            hits.append((step, due))
                for step, due in hits:
                    entries = history.get((inv.id, step.id))
                    if entries and any(e[0] >= due for e in entries):
                        already += 1
                        continue
                    groups[(cid, step.id)].append(inv)
        return groups, already

    def _layout(self, camp: _Campaign, variant: int | None) -> tuple:
        """For the steps a variant gets: ``{anchor date: [(step, step day)]}`` by issue, sent and
        due date (only anchor dates with a step day in the window), and the (previous step, step)
        pairs anchored on a previous step or a promise."""
        tables: dict[str, dict[date, list]] = {"issue": {}, "sent": {}, "due": {}}
        others = []
        steps = camp.steps_for(variant)
        for previous, step in zip([None, *steps], steps):
            self.step_by_id[step.id] = step
            if step.anchor in FIXED_ANCHORS:
                for anchor, due in self.tables[step.id].items():
                    tables[step.anchor].setdefault(anchor, []).append((step, due))
            else:
                others.append((previous, step))
        return tables["issue"], tables["sent"], tables["due"], others

    def load_contacts(self, customer_ids: list[int]) -> None:
        """Bulk ``sf_pull.merged_contacts``: the customer's ERP contacts and its Salesforce account's,
        one per email, Salesforce's role winning; per role, recipients sorted by email."""
        self.contacts: dict[int, dict[str, list[tuple[str, str | None]]]] = {}
        if not customer_ids:
            return
        cols = '"id", "customer_id", "customer_external_id", "name", "email", "role", "origin"'
        wanted = set(customer_ids)
        rows = []
        for part in self._chunks(customer_ids):
            extra, args = self._in('"customer_id"', part)
            rows += database.execute_sql(f'SELECT {cols} FROM "contact" WHERE "deleted_at" IS NULL{extra}',
                                         args).fetchall()
        accounts: dict[str, list[int]] = defaultdict(list)
        for cid in customer_ids:
            sf = self.customers[cid][11]
            if sf:
                accounts[sf].append(cid)
        if accounts:
            rows += [r for r in database.execute_sql(
                f'SELECT {cols} FROM "contact" WHERE "deleted_at" IS NULL AND "origin" = \'salesforce\'').fetchall()
                if r[2] in accounts]
        merged: dict[int, dict[str, list]] = defaultdict(dict)  # customer → email key → [email, name, role]
        rows.sort(key=lambda r: (r[6] != "erp", r[0]))
        for row_id, owner, account, name, email, role, origin in rows:
            targets = [owner] if owner in wanted else []
            if origin == "salesforce" and account in accounts:
                targets += [c for c in accounts[account] if c != owner]
            key = (email or f"#{row_id}").lower()
            for cid in targets:
                entry = merged[cid].get(key)
                if entry is None:
                    merged[cid][key] = [email, name, role]
                    continue
                entry[0], entry[1] = email or entry[0], name or entry[1]
                if role in ("billing", "escalation"):
                    entry[2] = role
        for cid, people in merged.items():
            by_role: dict[str, list] = {}
            for email, name, role in people.values():
                if email:
                    by_role.setdefault(role, []).append((email, name))
            for found in by_role.values():
                if len(found) > 1:
                    found.sort()
            self.contacts[cid] = by_role

    def load_credits(self, customer_ids: list[int]) -> None:
        """Unapplied credit memos and payments by customer and currency."""
        self.credits: dict[int, dict[str, Decimal]] = defaultdict(dict)
        wanted = set(customer_ids)
        for table, cond in (("credit_memo", " AND \"status\" NOT IN ('voided', 'deleted')"), ("payment", "")):
            sql = (f'SELECT "customer_id", "currency", SUM("unapplied_amount") FROM "{table}" WHERE '
                   f'"unapplied_amount" > 0 AND "deleted_at" IS NULL AND "customer_id" IS NOT NULL{cond} '
                   f'GROUP BY "customer_id", "currency"')
            for cid, cur, amount in database.execute_sql(sql).fetchall():
                if cid in wanted:
                    self.credits[cid][cur] = self.credits[cid].get(cur, ZERO) + _money(amount)

    def credit_covers(self, cid: int) -> str | None:
        """The reason to skip when unapplied credits cover the open invoices, else None."""
        credits = self.credits.get(cid)
        if not credits:
            return None
        opened = self.open_by_currency(cid)
        currencies = set(credits) | set(opened)
        if len(currencies) == 1:  # one currency: compared as is, no rate needed
            cur = currencies.pop()
            credit, owed = credits.get(cur, ZERO), opened.get(cur, ZERO)
            if credit >= owed:
                return f"credit balance: unapplied credits {_num(credit)} {cur} cover the open {_num(owed)} {cur}"
            return None
        total_credit = ZERO
        for cur, amount in credits.items():
            conv = self.book().convert(amount, cur, self.as_of)
            if conv is None:
                return None  # a missing rate is never guessed: no skip
            total_credit += conv.amount
        balance = self.balance(cid)
        if balance is not None and total_credit >= balance:
            return (f"credit balance: unapplied credits {_num(total_credit)} {self.reporting} cover the open "
                    f"{_num(balance)} {self.reporting}")
        return None

    def customer_reason(self, cid: int, camp: _Campaign, held: bool) -> str | None:
        """Why nothing goes to this customer today (None: go on), checks in a fixed order."""
        row = self.customers[cid]
        if held:  # first: an A/B group keeps its inactive customers, as the variants keep theirs
            return "holdout"
        if row[14]:
            return "customer inactive in the ERP"
        paused = self._date(row[9])
        if paused is not None and paused >= self.as_of:
            return f"paused until {paused.isoformat()}: {row[10] or 'no reason given'}"
        if cid in self.waiting_reply:
            return "waiting for the collector to answer the customer's reply"
        until = self.promises.get((cid, None))
        if until is not None and until >= self.as_of:
            return f"promise to pay by {until.isoformat()}"
        if None in self.disputes.get(cid, {}):
            why = self.disputes[cid][None]
            return "customer disputes its invoices" + (f": {why}" if why else "")
        if camp.skip_open_renewal_days:
            limit = self.as_of + timedelta(days=camp.skip_open_renewal_days)
            for o in sorted(self.opps.get(cid, []), key=lambda o: (o["close_date"] or date.max, o["id"])):
                if o["type"] in OPPORTUNITY_TYPES and o["close_date"] is not None and o["close_date"] <= limit:
                    return (f"open {o['type']} opportunity '{o['name']}' closes on {o['close_date'].isoformat()} "
                            f"(within {camp.skip_open_renewal_days} days)")
        return self.credit_covers(cid)

    def decide(self, cid: int, step: _Step, invoices: list[_Inv]) -> None:
        camp = self.membership[cid]
        variant, held = self.assignment[cid]
        if cid not in self.reasons:
            self.reasons[cid] = self.customer_reason(cid, camp, held)
        reason = self.reasons[cid]
        if reason is not None:
            self.emit(cid, camp, step, variant, invoices, ActionStatus.SKIPPED.value, reason)
            return
        disputes = self.disputes.get(cid)
        if disputes is None and cid not in self.invoice_promises and camp.min_invoice_amount is None:
            keep, dropped = invoices, {}  # the common case: nothing to drop
        else:
            keep, dropped = self._drop(cid, camp, invoices, disputes or {})
        for why, group in sorted(dropped.items()) if dropped else ():
            detail = ", ".join(f"{i.number} ({_num(i.open_amount)} {i.currency})" for i in group)
            self.emit(cid, camp, step, variant, group, ActionStatus.SKIPPED.value, f"{why}: {detail}")
        if not keep:
            return
        self._send(cid, camp, step, variant, keep)

    def _drop(self, cid: int, camp: _Campaign, invoices: list[_Inv], disputes: dict) -> tuple[list, dict]:
        """Invoices that stay, and those left out by reason: disputed, promised, under the minimum."""
        keep, dropped = [], defaultdict(list)
        for inv in invoices:
            until = self.promises.get((cid, inv.id))
            if inv.id in disputes:
                dropped["disputed" + (f" ({disputes[inv.id]})" if disputes[inv.id] else "")].append(inv)
            elif until is not None and until >= self.as_of:
                dropped[f"promise to pay by {until.isoformat()}"].append(inv)
            elif camp.min_invoice_amount is not None and inv.open_amount < camp.min_invoice_amount:
                dropped[f"under the campaign minimum of {_num(camp.min_invoice_amount)}"].append(inv)
            else:
                keep.append(inv)
        return keep, dropped

    def _send(self, cid: int, camp: _Campaign, step: _Step, variant: int | None, keep: list[_Inv]) -> None:
        """The step's action for the invoices that stay: a task, a task to find a contact, an email
        waiting for approval, or a planned email."""
        if step.channel == "task":
            self.emit(cid, camp, step, variant, keep, ActionStatus.TASK.value, f"task: {step.name}")
            return
        recipients = self.contacts.get(cid, {}).get(step.recipient_role) or []
        if not recipients:
            self.emit(cid, camp, step, variant, keep, ActionStatus.TASK.value,
                      f"no {step.recipient_role} contact: find one", channel="task")
            return
        status, why, expires = ActionStatus.PLANNED.value, None, None
        if step.approval is not None and self.approvals[step.id](self.facts_of[cid]):
            rule = {k: v for k, v in step.approval.items() if k != "expires_days"}
            checks = check_audience(rule, self.facts_of[cid], details=True)[1]
            status = ActionStatus.PENDING_APPROVAL.value
            why = "needs approval" + (": " + "; ".join(_describe(c) for c in checks) if checks else "")
            expires = timedelta(days=int(step.approval.get("expires_days", 3)))
        self.emit(cid, camp, step, variant, keep, status, why, to=recipients[0][0], expires=expires)

    def emit(self, cid: int, camp: _Campaign, step: _Step, variant: int | None, invoices: list[_Inv], status: str,
             reason: str | None, *, to: str | None = None, expires: timedelta | None = None,
             channel: str | None = None) -> None:
        row = self.customers[cid]
        ids = [i.id for i in invoices]
        window = (row[6] or "", step.window_start)
        send_after = self._windows.get(window)
        if send_after is None:
            send_after = self._windows[window] = window_start_utc(self.as_of, step.window_start, row[6],
                                                                  self.company_tz)
        collector = row[8]
        self.rows.append(PlannedAction(
            action_key(cid, ids, step.id, variant, self.as_of), cid, row[1], camp.id, camp.name, step.id, step.name,
            variant, camp.variants.get(variant), self.as_of, status, reason, channel or step.channel, ids,
            [i.number for i in invoices], to, [collector] if step.cc_collector and collector and to else [],
            send_after, send_after + expires if expires else None, step.template))


@contextmanager
def _write_lock():
    """A transaction that holds the planner's write lock: SQLite's write lock taken at BEGIN
    (IMMEDIATE, so a concurrent writer waits instead of failing on a stale snapshot), an advisory
    transaction lock on PostgreSQL. Reads inside it are exact."""
    db = database.obj
    with (db.atomic() if is_postgres(db) else db.atomic("IMMEDIATE")):
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_PLAN_LOCK,))
        yield db


def _write(rows: list[PlannedAction]) -> int:
    """Insert ``rows`` once (ON CONFLICT (key) DO NOTHING); returns how many were new. Under the
    write lock the count is exact: SQLite's change counter, PostgreSQL's keys present before."""
    if not rows:
        return 0
    now = utcnow()
    cols = ("key", "customer_id", "campaign_id", "step_id", "variant_id", "planned_for", "status", "reason",
            "channel", "invoice_ids", "to_address", "cc", "send_after", "expires_at", "attempts", "created_at",
            "updated_at")
    stamps: dict[Any, str | None] = {None: None}

    def ts(value):  # naive-UTC text, as the sqlite3 adapter and UTCDateTimeField write it (few distinct values)
        text = stamps.get(value)
        if text is None and value is not None:
            text = stamps[value] = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ") \
                if isinstance(value, datetime) else value.isoformat()
        return text

    created = ts(now)
    data = [(r.key, r.customer_id, r.campaign_id, r.step_id, r.variant_id, ts(r.planned_for), r.status, r.reason,
             r.channel, "[" + ", ".join(map(str, r.invoice_ids)) + "]", r.to_address, json.dumps(r.cc),
             ts(r.send_after), ts(r.expires_at), 0, created, created) for r in rows]
    with _write_lock() as db:
        if not is_postgres(db):
            before = db.connection().total_changes
            upsert(DunningAction, cols, data, ("key",), ())
            return db.connection().total_changes - before
        existing = 0
        for part in chunked([r.key for r in rows], CHUNK):
            existing += db.execute_sql(f'SELECT COUNT(*) FROM "dunning_action" WHERE "key" IN '
                                       f'({placeholders(len(part))})', part).fetchone()[0]
        upsert(DunningAction, cols, data, ("key",), ())
    return len(rows) - existing


def plan(as_of: date, *, dry_run: bool = False, campaign_ids: Iterable[int] | None = None,
         catch_up_days: int = CATCH_UP_DAYS) -> PlanResult:
    """Plan the dunning actions due on ``as_of`` (a sending day), and those that came due on the
    ``catch_up_days`` sending days before it without an action (a missed run). Deterministic; with
    ``dry_run`` nothing is written. Campaign membership is decided over every enabled campaign
    even when ``campaign_ids`` narrows what is planned."""
    planner = _Planner(as_of, campaign_ids=campaign_ids, catch_up_days=catch_up_days)
    result = planner.run()
    result.dry_run = dry_run
    if not dry_run:
        started = _time.perf_counter()
        result.inserted = _write(result.rows)
        result.timings["write"] = _time.perf_counter() - started
        result.seconds += result.timings["write"]
    return result
