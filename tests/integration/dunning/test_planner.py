"""Dunning (middleware.dunning): the step calendar (cadence, business days, time zones, one email
per customer, step and day, catching up a missed run), campaign priority, audiences and explain,
idempotent and concurrent planning, the seeded campaign and its templates, and ``arhub dunning``;
on SQLite and PostgreSQL, with small hand-built books.

The company in these books works Mon-Fri in Europe/Berlin with two holidays: Good Friday
(2026-04-03) and 1 May (2026-05-01, a Friday). Fixtures: conftest.py; helpers:
tests/support/dunning.py.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date, datetime
from decimal import Decimal

import pytest

from middleware.dunning import DunningError, explain, plan, seed_default_campaign, template_context
from middleware.models import (
    Campaign, CampaignStep, Customer, CustomerTag, DunningAction, SfOpportunity, Source, Tag, Template,
)
from middleware.templating import render_string
from tests.support.dunning import DAY_AFTER, DUE, ROOT, UTC, actions, campaign, numbers, run_daily


# ----------------------------------------------------------------------------------- cadence
def test_default_cadence_dates_weekends_holidays_and_windows(book):
    """Run daily for ten weeks, the seeded campaign sends: +6 days after the invoice was sent (a
    Sunday moves to Monday; no sent date: from the issue date), 6 days before the due date, then
    +1 (after Good Friday and the weekend: Monday), +7, +14 and +30 (1 May is a holiday: Monday
    4 May, both invoices in one email to the escalation contact, collector in cc). Every email is
    due at 09:00 Berlin time: 08:00 UTC before the clocks change on 29 March, 07:00 UTC after."""
    seed_default_campaign()
    c = book.customer("Bolt GmbH", arr=Decimal("20000"))
    first = book.invoice(c, issued=date(2026, 3, 2), due=DUE, number="INV-A")
    second = book.invoice(c, issued=date(2026, 3, 4), sent=None, due=date(2026, 4, 2), number="INV-B")
    run_daily(date(2026, 3, 1), date(2026, 5, 10))
    sent = [(a.planned_for, CampaignStep.get_by_id(a.step_id).name, numbers(a), a.status, a.to_address, a.cc,
             a.send_after) for a in actions(c)]
    at = lambda day, hour: datetime(day.year, day.month, day.day, hour, tzinfo=UTC)  # noqa: E731
    bill, cfo = "ap@boltgmbh.test", "cfo@boltgmbh.test"
    assert sent == [
        (date(2026, 3, 9), "proactive check-in", ["INV-A"], "planned", bill, [], at(date(2026, 3, 9), 8)),
        (date(2026, 3, 10), "proactive check-in", ["INV-B"], "planned", bill, [], at(date(2026, 3, 10), 8)),
        (date(2026, 3, 26), "pre-due reminder", ["INV-A"], "planned", bill, [], at(date(2026, 3, 26), 8)),
        (date(2026, 3, 27), "pre-due reminder", ["INV-B"], "planned", bill, [], at(date(2026, 3, 27), 8)),
        (date(2026, 4, 2), "overdue 1", ["INV-A"], "planned", bill, [], at(date(2026, 4, 2), 7)),
        (date(2026, 4, 6), "overdue 1", ["INV-B"], "planned", bill, [], at(date(2026, 4, 6), 7)),
        (date(2026, 4, 8), "overdue 7", ["INV-A"], "planned", bill, [], at(date(2026, 4, 8), 7)),
        (date(2026, 4, 9), "overdue 7", ["INV-B"], "planned", bill, [], at(date(2026, 4, 9), 7)),
        (date(2026, 4, 15), "overdue 14", ["INV-A"], "planned", bill, [], at(date(2026, 4, 15), 7)),
        (date(2026, 4, 16), "overdue 14", ["INV-B"], "planned", bill, [], at(date(2026, 4, 16), 7)),
        (date(2026, 5, 4), "final notice", ["INV-A", "INV-B"], "planned", cfo, ["cora@acme.test"],
         at(date(2026, 5, 4), 7)),
    ]
    assert actions(c)[-1].invoice_ids == sorted([first.id, second.id])
    lines = "\n".join(explain(c.id, date(2026, 3, 10)).lines())
    assert "no sent date: the issue date is used" in lines


def test_business_day_offsets_and_the_recipients_time_zone(book):
    """Business-day offsets count Mon-Fri minus holidays (+3 from Thursday 2 April skips Good
    Friday and the weekend: Wednesday 8 April; -2 from Monday 6 April: Wednesday 1 April), calendar
    offsets land on the next sending day; the window opens at 09:00 in the customer's own zone."""
    campaign("Business", [
        {"name": "calendar +3", "anchor": "due", "offset_days": 3},
        {"name": "business +3", "anchor": "due", "offset_days": 3, "business_days": True},
        {"name": "business -2", "anchor": "due", "offset_days": -2, "business_days": True},
    ])
    c = book.customer("Nyx Inc", timezone="America/New_York")
    book.invoice(c, due=date(2026, 4, 2), number="INV-THU")
    book.invoice(c, due=date(2026, 4, 6), number="INV-MON")
    run_daily(date(2026, 3, 25), date(2026, 4, 20))
    got = [(a.planned_for, CampaignStep.get_by_id(a.step_id).name, numbers(a), a.send_after) for a in actions(c)]
    ny = lambda day: datetime(day.year, day.month, day.day, 13, tzinfo=UTC)  # 09:00 EDT  # noqa: E731
    assert got == [
        (date(2026, 3, 31), "business -2", ["INV-THU"], ny(date(2026, 3, 31))),
        (date(2026, 4, 1), "business -2", ["INV-MON"], ny(date(2026, 4, 1))),
        (date(2026, 4, 6), "calendar +3", ["INV-THU"], ny(date(2026, 4, 6))),
        (date(2026, 4, 8), "business +3", ["INV-THU"], ny(date(2026, 4, 8))),
        (date(2026, 4, 9), "calendar +3", ["INV-MON"], ny(date(2026, 4, 9))),
        (date(2026, 4, 9), "business +3", ["INV-MON"], ny(date(2026, 4, 9))),
    ]


def test_one_email_per_customer_step_and_day_lists_all_its_invoices(book):
    """Three invoices due the same day go out in one email listing all three (ids sorted); an
    invoice due another day waits for its own date; another customer gets its own email."""
    campaign("Simple", [{"name": "overdue", "anchor": "due", "offset_days": 1}])
    a, b = book.customer("Alpha"), book.customer("Beta")
    same = [book.invoice(a, number=f"A-{n}") for n in range(3)]
    book.invoice(a, due=date(2026, 4, 8), number="A-later")
    book.invoice(b, number="B-1")
    result = plan(DAY_AFTER)
    mine = [r for r in result.rows if r.customer_id == a.id]
    assert len(mine) == 1 and mine[0].invoice_ids == sorted(i.id for i in same)
    assert mine[0].invoice_numbers == ["A-0", "A-1", "A-2"] and mine[0].to_address == "ap@alpha.test"
    assert [numbers(x) for x in actions(b)] == [["B-1"]]
    assert [numbers(x) for x in actions(a)] == [["A-0", "A-1", "A-2"]]


def test_a_step_missed_by_a_skipped_run_is_caught_up_once(book):
    """When the daily run did not happen (the worker was down on Thursday 2 April), the next
    run within 3 sending days (Monday: Good Friday is a holiday) plans Thursday's step, and the
    run after it does not plan it again; a run more than 3 sending days later does not send it."""
    campaign("Simple", [{"name": "overdue", "anchor": "due", "offset_days": 1}])
    c = book.customer("Late Run")
    book.invoice(c, number="INV-1")
    plan(date(2026, 4, 1))
    plan(date(2026, 4, 9))  # Thursday 9 April: 4 sending days later
    assert actions(c) == []
    plan(date(2026, 4, 6))
    plan(date(2026, 4, 7))
    assert [(a.planned_for, numbers(a)) for a in actions(c)] == [(date(2026, 4, 6), ["INV-1"])]


# ----------------------------------------------------------------------------------- priority, explain
def test_each_customer_is_in_one_campaign_by_priority_and_explain_says_why(book):
    """A customer is in the first enabled campaign (lowest priority number) whose audience it
    matches, and nowhere else; explain lists every condition checked with the customer's values
    and what each step does; a disabled campaign is ignored."""
    seed_default_campaign()
    step = [{"name": "nudge", "anchor": "due", "offset_days": 1}]
    campaign("Everyone (disabled)", step, priority=1, enabled=False)
    strategic = campaign("Strategic", step, priority=10, audience={"tags_any": ["strategic"], "arr_gte": "100000"})
    euro = campaign("Euro", step, priority=20, audience={"currencies": ["EUR"], "countries": ["DE", "AT"],
                                                          "tags_none": ["no-dunning"]})
    tag = Tag.create(name="strategic")
    vip = book.customer("VIP", arr=Decimal("200000"))
    small_vip = book.customer("Small VIP", arr=Decimal("50000"), currency="EUR", country="DE")
    german = book.customer("German", currency="EUR", country="DE")
    other = book.customer("Other", currency="EUR", country="FR")
    for c in (vip, small_vip):
        CustomerTag.create(customer=c, tag=tag)
    for c in (vip, small_vip, german, other):
        book.invoice(c)
    plan(DAY_AFTER)
    assert {c.name: {a.campaign_id for a in actions(c)} for c in (vip, small_vip, german, other)} == {
        "VIP": {strategic.id}, "Small VIP": {euro.id}, "German": {euro.id},
        "Other": {Campaign.get(Campaign.name == "Default").id}}

    ex = explain(small_vip.id, DAY_AFTER)
    assert ex.campaign == "Euro"
    assert [c.campaign for c in ex.campaigns] == ["Strategic", "Euro"]
    checks = {c.name: (c.actual, c.wanted, c.ok) for c in ex.campaigns[0].checks}
    assert checks == {"tags_any": ("[strategic]", "any of [strategic]", True),
                      "arr_gte": ("50000", "≥ 100000", False)}
    assert all(c.ok for c in ex.campaigns[1].checks)
    assert [(s.step, s.outcome) for s in ex.steps] == [("nudge", "done: planned on 2026-04-02")]
    text = "\n".join(ex.lines())
    assert "arr_gte: 50000 (wanted ≥ 100000) → no" in text and "→ campaign 'Euro'" in text

    before = explain(other.id, date(2026, 4, 1))
    assert [(s.step, s.outcome) for s in before.steps][:2] == [
        ("proactive check-in", "was due on 2026-03-09, before the catch-up window: not sent"),
        ("pre-due reminder", "was due on 2026-03-26, before the catch-up window: not sent")]
    assert ("overdue 1", "upcoming on 2026-04-02") in [(s.step, s.outcome) for s in before.steps]


def test_audience_balance_segment_and_open_opportunity(book):
    """Audience rules on the open balance (reporting currency), the segment and an open renewal
    closing soon pick the right customers; a typo in a rule is an error, never a match-all."""
    step = [{"name": "nudge", "anchor": "due", "offset_days": 1}]
    campaign("Renewing", step, priority=5, audience={"open_opportunity": {"within_days": 60}})
    campaign("Big balance", step, priority=10, audience={"balance_gte": "1000", "segments": ["enterprise"]})
    campaign("Rest", step, priority=90)
    sf = Source.create(name="salesforce", kind="salesforce", config={})
    renewing = book.customer("Renewing", sf_account_id="001R")
    SfOpportunity.create(source=sf, sf_id="006R", account_sf_id="001R", name="FY27", opp_type="Renewal",
                         close_date=date(2026, 5, 15))
    rich = book.customer("Rich", segment="enterprise")
    poor = book.customer("Poor", segment="enterprise")
    book.invoice(renewing)
    book.invoice(rich, amount="600.00")
    book.invoice(rich, amount="400.00", due=date(2026, 5, 1))
    book.invoice(poor, amount="999.99")
    assert [explain(c.id, DAY_AFTER).campaign for c in (renewing, rich, poor)] == ["Renewing", "Big balance", "Rest"]
    checks = {c.name: c.actual for c in explain(rich.id, DAY_AFTER).campaigns[1].checks}
    assert checks == {"balance_gte": "1000", "segments": "enterprise"}
    Campaign.create(name="Typo", priority=1, audience={"segmnts": ["smb"]})
    with pytest.raises(DunningError, match="unknown condition 'segmnts'"):
        plan(DAY_AFTER, dry_run=True)


# ----------------------------------------------------------------------------------- idempotency
def _expected_keys(day):
    return sorted(r.key for r in plan(day, dry_run=True).rows)


def _idempotency_book(book):
    seed_default_campaign()
    customers = [book.customer(f"Cust {n}", arr=Decimal(n * 20000)) for n in range(12)]
    for n, c in enumerate(customers):
        for k in range(n % 3 + 1):
            book.invoice(c)
    Customer.update(paused_until=date(2026, 4, 30)).where(Customer.id == customers[0].id).execute()
    return customers


def test_dry_run_writes_nothing_and_planning_twice_writes_once(book):
    """A dry run returns the actions and writes none; the real run writes exactly those; a second
    run the same day finds them planned and writes nothing."""
    _idempotency_book(book)
    dry = plan(DAY_AFTER, dry_run=True)
    assert dry.rows and DunningAction.select().count() == 0 and dry.inserted == 0
    first = plan(DAY_AFTER)
    assert sorted(r.key for r in first.rows) == sorted(r.key for r in dry.rows) and first.inserted == len(dry.rows)
    assert sorted(a.key for a in DunningAction.select()) == sorted(r.key for r in dry.rows)
    assert first.by_status == {"planned": 4, "pending_approval": 7, "skipped": 1}
    second = plan(DAY_AFTER)
    assert second.rows == [] and second.inserted == 0 and second.already_planned == len(
        [i for r in first.rows for i in r.invoice_ids])
    assert DunningAction.select().count() == len(dry.rows)


def test_two_planners_in_threads_at_once_write_each_action_once(book):
    """Two planners started together on separate connections write every action once."""
    _idempotency_book(book)
    expected = _expected_keys(DAY_AFTER)
    barrier, results, errors = threading.Barrier(2), [], []

    def worker():
        from middleware.db import database
        try:
            barrier.wait()
            results.append(plan(DAY_AFTER))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(a.key for a in DunningAction.select()) == expected
    assert sum(r.inserted for r in results) == len(expected)


def test_a_concurrent_planner_that_commits_first_wins_without_duplicates(book, db_url):
    """While another planner's transaction holds the same action uncommitted, plan waits; once
    that commits, plan's insert of that key does nothing (ON CONFLICT DO NOTHING) and the rest
    is written."""
    _idempotency_book(book)
    dry = plan(DAY_AFTER, dry_run=True)
    target = dry.rows[0]
    values = (target.key, target.customer_id, target.planned_for.isoformat(), "planned", "the other planner",
              "email", json.dumps(target.invoice_ids), "[]", 0, "2026-04-02 05:00:00", "2026-04-02 05:00:00")
    cols = '"key", "customer_id", "planned_for", "status", "reason", "channel", "invoice_ids", "cc", "attempts", ' \
           '"created_at", "updated_at"'
    if db_url.startswith("sqlite"):
        other = sqlite3.connect(db_url.split(":///", 1)[1], isolation_level=None, timeout=30)
        other.execute("BEGIN IMMEDIATE")
        other.execute(f'INSERT INTO "dunning_action" ({cols}) VALUES ({", ".join("?" * len(values))})', values)
    else:
        import psycopg2

        other = psycopg2.connect(db_url)
        other.cursor().execute(f'INSERT INTO "dunning_action" ({cols}) VALUES ({", ".join(["%s"] * len(values))})',
                               values)
    done = []

    def worker():
        from middleware.db import database
        try:
            done.append(plan(DAY_AFTER))
        finally:
            database.close()

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive()  # waiting for the other transaction
    other.commit() if not db_url.startswith("sqlite") else other.execute("COMMIT")
    other.close()
    thread.join(60)
    assert not thread.is_alive() and done
    rows = {a.key: a for a in DunningAction.select()}
    assert sorted(rows) == sorted(r.key for r in dry.rows)
    assert rows[target.key].reason == "the other planner"


def _cli_env() -> dict:
    env = {k: v for k, v in os.environ.items()}
    env.update(COLUMNS="250", PYTHONUNBUFFERED="1")
    return env


def test_two_cli_processes_planning_at_once_write_each_action_once(book, settings):
    """``arhub dunning plan`` run twice at the same moment in two processes writes each action
    once; together they report every action written."""
    _idempotency_book(book)
    expected = _expected_keys(DAY_AFTER)
    cmd = [sys.executable, "-m", "jobs.cli", "dunning", "plan", "--as-of", DAY_AFTER.isoformat()]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(a.key for a in DunningAction.select()) == expected
    written = [int(re.search(r"(\d+) new action\(s\) written", o).group(1)) for o in outs]
    assert sum(written) == len(expected)


# ----------------------------------------------------------------------------------- seed, templates, CLI
def test_seed_is_idempotent_keeps_edits_and_templates_render(book):
    """Seeding twice creates one default campaign with six steps and six templates; an admin's
    edit of a template survives a re-seed; every template renders (text and HTML) with the
    context the sender builds, listing the invoices, the total and the pay link."""
    first = seed_default_campaign()
    Template.update(subject="Edited").where(Template.name == "overdue-1").execute()
    again = seed_default_campaign()
    assert first["steps_created"] == 6 and first["templates_created"] == 6
    assert again == {"campaign": first["campaign"], "templates_created": 0, "steps_created": 0}
    assert Campaign.select().count() == 1 and Template.get(Template.name == "overdue-1").subject == "Edited"
    steps = [(s.name, s.anchor, s.offset_days, s.template, s.recipient_role, s.cc_collector, s.attach_statement,
              s.approval) for s in CampaignStep.select().order_by(CampaignStep.position)]
    approval = {"arr_gte": "100000", "expires_days": 3}
    assert steps == [
        ("proactive check-in", "sent", 6, "proactive-check-in", "billing", False, False, None),
        ("pre-due reminder", "due", -6, "pre-due-reminder", "billing", False, False, None),
        ("overdue 1", "due", 1, "overdue-1", "billing", False, False, approval),
        ("overdue 7", "due", 7, "overdue-7", "billing", False, False, approval),
        ("overdue 14", "due", 14, "overdue-14", "billing", False, False, approval),
        ("final notice", "due", 30, "final-notice", "escalation", True, True, approval)]
    c = book.customer("Bits & Bobs", arr=Decimal("1000"))
    book.invoice(c, number="INV-7", amount="1234.50", due=date(2026, 3, 20))
    book.invoice(c, number="INV-8", amount="99.00", currency="EUR", due=date(2026, 3, 20))
    plan(date(2026, 4, 20))  # 31 days after: the final notice
    action = actions(c)[0]
    ctx = template_context(action, pay_url="https://pay.example/abc")
    assert set(ctx) == {"customer", "contact", "invoices", "totals", "collector", "company", "pay_url",
                        "statement_attached"}
    assert ctx["statement_attached"] is True and ctx["contact"]["email"] == "cfo@bitsbobs.test"
    assert ctx["totals"] == [{"currency": "EUR", "amount": Decimal("99.00")},
                             {"currency": "USD", "amount": Decimal("1234.50")}]
    for t in Template.select():
        subject = render_string(t.subject, ctx, name=t.name)
        text = render_string(t.body_text, ctx, name=t.name)
        html = render_string(t.body_html, ctx, html=True, name=t.name)
        assert subject and "INV-7" in text and "$1,234.50" in text and "€99.00" in text
        assert "https://pay.example/abc" in text and "Bits &amp; Bobs" in html and "Bits & Bobs" in text
    final = Template.get(Template.name == "final-notice")
    text = render_string(final.body_text, ctx)
    assert "statement is attached" in text and "Total: €99.00 + $1,234.50\n" in text


def test_cli_plan_dry_run_and_explain(book, settings):
    """``arhub dunning plan --dry-run`` prints who gets what and why others get nothing (skips
    with reasons, customers in no campaign) and writes nothing; ``arhub dunning explain`` prints
    the campaign checks and the steps."""
    campaign("Only big", [{"name": "nudge", "anchor": "due", "offset_days": 1}], audience={"arr_gte": "1000"})
    happy = book.customer("Happy Co", arr=Decimal("5000"))
    paused = book.customer("Paused Co", arr=Decimal("5000"), paused_until=date(2026, 4, 9), paused_reason="M&A")
    tiny = book.customer("Tiny Co", arr=Decimal("10"))
    gone = book.customer("Gone Co", arr=Decimal("5000"), inactive=True)
    for c in (happy, paused, tiny, gone):
        book.invoice(c)
    run = lambda *a: subprocess.run([sys.executable, "-m", "jobs.cli", "dunning", *a], cwd=ROOT,  # noqa: E731
                                    env=_cli_env(), capture_output=True, text=True, timeout=120)
    out = run("plan", "--as-of", "2026-04-02", "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Happy Co" in out.stdout and "ap@happyco.test" in out.stdout and "2026-04-02 07:00" in out.stdout
    assert "paused until 2026-04-09: M&A" in out.stdout
    assert re.search(r"Gone Co.*customer inactive in the ERP", out.stdout), out.stdout
    assert "ap@goneco.test" not in out.stdout
    assert "1 customer(s) with a step due are in no campaign: Tiny Co" in out.stdout
    assert "dry run: nothing written" in out.stdout and DunningAction.select().count() == 0
    out = run("explain", "Tiny Co", "--as-of", "2026-04-02")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "arr_gte: 10 (wanted ≥ 1000) → no" in out.stdout and "in no campaign" in out.stdout
    out = run("explain", happy.number, "--as-of", "2026-04-02")
    assert "step 'nudge' / INV-" in out.stdout and "due: planned" in out.stdout
    out = run("explain", gone.number, "--as-of", "2026-04-02")
    assert "customer skipped today: customer inactive in the ERP" in out.stdout, out.stdout
    out = run("plan", "--as-of", "2026-04-03")
    assert "2026-04-03 is not a sending day" in out.stdout
