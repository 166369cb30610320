"""The collections team's ``arhub`` groups: dunning, inbox, statements, users, rules, collectors.

jobs/cli.py adds each group to ``main``."""
from __future__ import annotations

import json
import sys
from datetime import datetime

import click
from rich.table import Table

from jobs.cli_common import _ctx, console


# ----------------------------------------------------------------- dunning
@click.group()
def dunning() -> None:
    """Dunning campaigns: plan a day's actions, explain a customer, seed the default campaign."""


def _dunning_day(value, settings):
    return value.date() if value else datetime.now(settings.tzinfo).date()


def _first(rows: list, limit: int) -> list:
    return rows if limit <= 0 else rows[:limit]


@dunning.command("plan")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="the day to plan [default: today in ARHUB_TIMEZONE]")
@click.option("--dry-run", is_flag=True, help="show what would be planned; write nothing")
@click.option("--campaign", "campaign_names", multiple=True, help="plan only this campaign (repeatable)")
@click.option("--catch-up-days", default=3, show_default=True, help="also plan steps missed on the days before")
@click.option("--limit", default=50, show_default=True, help="rows shown per table (0: all)")
def dunning_plan(as_of, dry_run, campaign_names, catch_up_days, limit) -> None:
    """Plan the actions due on a day: who gets what, and why the others get nothing."""
    from middleware.dunning import plan
    from middleware.models import Campaign

    ctx = _ctx(migrate=True)
    day = _dunning_day(as_of, ctx.settings)
    ids = None
    if campaign_names:
        found = {c.name: c.id for c in Campaign.select().where(Campaign.name.in_(list(campaign_names)))}
        missing = sorted(set(campaign_names) - set(found))
        if missing:
            raise click.ClickException(f"no campaign named {', '.join(map(repr, missing))}")
        ids = list(found.values())
    result = plan(day, dry_run=dry_run, campaign_ids=ids, catch_up_days=catch_up_days)
    if not result.sending_day:
        console.print(f"{day.isoformat()} is not a sending day (business days and holidays): nothing planned")
    sends = [r for r in result.rows if r.status in ("planned", "pending_approval", "approved")]
    tasks = [r for r in result.rows if r.status == "task"]
    skips = [r for r in result.rows if r.status == "skipped"]
    table = Table("customer", "campaign", "step", "invoices", "to", "when (UTC)", "status",
                  title=f"emails on {day.isoformat()} ({len(sends)})")
    for r in _first(sends, limit):
        table.add_row(r.customer_name, r.campaign_name, r.step_name, ", ".join(r.invoice_numbers),
                      r.to_address + (f" (cc {', '.join(r.cc)})" if r.cc else ""),
                      f"{r.send_after:%Y-%m-%d %H:%M}", r.status + (f": {r.reason}" if r.reason else ""))
    console.print(table)
    if tasks:
        table = Table("customer", "campaign", "step", "invoices", "task", title=f"tasks for collectors ({len(tasks)})")
        for r in _first(tasks, limit):
            table.add_row(r.customer_name, r.campaign_name, r.step_name, ", ".join(r.invoice_numbers), r.reason or "")
        console.print(table)
    if skips:
        table = Table("customer", "campaign", "step", "invoices", "why nothing is sent",
                      title=f"skipped ({len(skips)})")
        for r in _first(skips, limit):
            table.add_row(r.customer_name, r.campaign_name, r.step_name, ", ".join(r.invoice_numbers), r.reason or "")
        console.print(table)
    if result.unassigned:
        names = ", ".join(name for _, name in _first(result.unassigned, limit))
        console.print(f"{len(result.unassigned)} customer(s) with a step due are in no campaign: {names}")
    if result.already_planned:
        console.print(f"{result.already_planned} invoice step(s) due were already planned earlier")
    for (campaign, step, status), count in sorted(result.counts.items()):
        console.print(f"  {campaign} / {step} / {status}: {count}")
    written = "dry run: nothing written" if dry_run else f"{result.inserted} new action(s) written"
    console.print(f"{len(result.rows)} action(s); {result.customers_considered} customer(s) had a step due; "
                  f"{written} ({result.seconds:.2f} s)")


def _find_customer(text: str):
    from middleware.models import Customer

    live = Customer.deleted_at.is_null()
    found = []
    if text.isdigit():
        found = list(Customer.select().where(live, Customer.id == int(text)))
    for column in (Customer.number, Customer.external_id, Customer.name):
        if not found:
            found = list(Customer.select().where(live, column == text).limit(5))
    if not found:
        raise click.ClickException(f"no customer with id, number, external id or name {text!r}")
    if len(found) > 1:
        raise click.ClickException(f"{text!r} names {len(found)} customers: use the id "
                                   f"({', '.join(str(c.id) for c in found)})")
    return found[0]


@dunning.command("explain")
@click.argument("customer")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="the day to explain [default: today in ARHUB_TIMEZONE]")
def dunning_explain(customer, as_of) -> None:
    """Which campaign CUSTOMER (id, number, external id or name) is in and why, and what each step does."""
    from middleware.dunning import explain

    ctx = _ctx()
    found = _find_customer(customer)
    for line in explain(found.id, _dunning_day(as_of, ctx.settings)).lines():
        console.print(line, markup=False, highlight=False)


@dunning.command("seed")
def dunning_seed() -> None:
    """Create the default campaign and its email templates (once; later edits are kept)."""
    from middleware.dunning import seed_default_campaign

    _ctx(migrate=True)
    out = seed_default_campaign()
    console.print(f"default campaign #{out['campaign']}: {out['steps_created']} step(s) and "
                  f"{out['templates_created']} template(s) created")


# ------------------------------------------------------------------- inbox
@click.group()
def inbox() -> None:
    """Customer replies: receive one, poll the mailbox, see and handle what waits for whom."""


def _reply_summary(message) -> str:
    customer = message.customer.name if message.customer_id else "no customer"
    to = {"routed": f"routed to {message.routed_to}", "queued": "in the team queue",
          "auto_reply": "automatic reply: not routed", "unmatched": "unmatched"}.get(message.status, message.status)
    how = f" (matched by {message.matched_by})" if message.matched_by else ""
    return f"message #{message.id} <{message.message_id}>: {customer}{how}, {to}"


@inbox.command("receive")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def inbox_receive(path) -> None:
    """Receive the reply in the .eml file PATH, as the webhook and the IMAP poll do."""
    from middleware.inbox import InboxError, ingest

    _ctx()
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        message, created = ingest(raw)
    except InboxError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(_reply_summary(message) + ("" if created else "; already received, nothing stored"),
                  markup=False, highlight=False)


@inbox.command("poll")
@click.option("--limit", default=500, show_default=True, help="at most this many messages")
def inbox_poll(limit) -> None:
    """Receive the unseen messages of ARHUB_IMAP_URL now (what the poll job does)."""
    from jobs.inbox import ImapError, poll_imap

    try:
        result = poll_imap(limit=limit)
    except ImapError as exc:
        raise click.ClickException(str(exc)) from None
    if result["status"] != "ok":
        raise click.ClickException(f"{result['status']}: {result['message']}")
    statuses = {k: v for k, v in result.items() if k not in ("status", "fetched", "stored", "duplicates", "left")}
    text = f"fetched {result['fetched']}: {result['stored']} stored"
    if statuses:
        text += " (" + ", ".join(f"{status} {count}" for status, count in statuses.items()) + ")"
    text += f", {result['duplicates']} already received"
    if result["left"]:
        text += f"; {result['left']} left for the next poll"
    console.print(text, markup=False, highlight=False)


@inbox.command("list")
@click.option("--collector", help="replies routed to this collector")
@click.option("--queue", is_flag=True, help="replies in the team queue")
@click.option("--unmatched", is_flag=True, help="replies no customer was found for")
@click.option("--limit", default=100, show_default=True)
def inbox_list(collector, queue, unmatched, limit) -> None:
    """Replies waiting for someone (not handled yet), oldest first; by default routed and queued ones."""
    from middleware.inbox import pending

    _ctx()
    table = Table("id", "received", "from", "customer", "subject", "waiting for", "matched by")
    rows = list(pending(collector=collector, queue=queue, unmatched=unmatched).limit(limit))
    for m in rows:
        table.add_row(str(m.id), m.at.strftime("%Y-%m-%d %H:%M"), m.from_address or "",
                      m.customer.name if m.customer_id else "", (m.subject or "")[:60],
                      m.routed_to or ("team queue" if m.status == "queued" else m.status), m.matched_by or "")
    console.print(table if rows else "nothing waiting")


@inbox.command("handle")
@click.argument("message")
@click.option("--actor", required=True, help="who acted (the collector's email)")
@click.option("--promise-until", type=click.DateTime(formats=["%Y-%m-%d"]), help="promise to pay by (YYYY-MM-DD)")
@click.option("--amount", help="the promised amount, in the customer's billing currency")
@click.option("--dispute", "dispute_invoice", help="number of the disputed invoice")
@click.option("--note", help="a note for the customer's timeline")
def inbox_handle(message, actor, promise_until, amount, dispute_invoice, note) -> None:
    """Record what was done about reply MESSAGE (its id or Message-ID) and mark it handled."""
    from middleware.inbox import InboxError, handle

    _ctx()
    try:
        created = handle(message, actor, promise_until=promise_until.date() if promise_until else None,
                         promise_amount=amount, dispute_invoice=dispute_invoice, note=note)
    except (InboxError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    recorded = ", ".join(a.kind for a in created) or "nothing recorded"
    console.print(f"reply {message} handled by {actor}: {recorded}", markup=False, highlight=False)


# -------------------------------------------------------------- statements
@click.group()
def statements() -> None:
    """Customer statements as PDF (docs/statements.md)."""


@statements.command("render")
@click.argument("customer")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), help="[default: today, ARHUB_TIMEZONE]")
@click.option("--out", type=click.Path(dir_okay=False), help="[default: <var dir>/statements/<date>/<customer id>.pdf]")
def statements_render(customer, as_of, out) -> None:
    """Render CUSTOMER's statement (a customer number, or an id) to a PDF file now, in this process."""
    from jobs.statements import as_of_date, find_customer, write_statement

    ctx = _ctx()
    try:
        customer_id = find_customer(customer)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    path = write_statement(customer_id, as_of_date(as_of, ctx.settings), ctx.settings, out=out)
    console.print(f"wrote {path}", markup=False, highlight=False)


@statements.command("run")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), help="[default: today, ARHUB_TIMEZONE]")
def statements_run(as_of) -> None:
    """Enqueue one statement job per customer with open invoices on the statements queue (reruns add none twice)."""
    from jobs.statements import statement_run

    _ctx()
    result = statement_run(as_of=as_of.date() if as_of else None)
    console.print(f"statements of {result['as_of']}: {result['enqueued']} enqueued, {result['requeued']} failed "
                  f"ones requeued, {result['skipped']} already queued or done ({result['customers']} customers)")


# ------------------------------------------------------------------- users
@click.group()
def users() -> None:
    """People who use arhub: admins, collectors, viewers."""


def _read_password(prompt: bool) -> str:
    """A password from stdin: hidden and confirmed on a terminal, else the first line of the pipe."""
    if prompt and sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    return sys.stdin.readline().rstrip("\r\n")


@users.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "collector", "viewer"]), default="collector", show_default=True)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin (never an argument: it would "
              "show in the process list and the shell history)")
def users_create(email, name, role, password_stdin) -> None:
    """Create a user (without --password-stdin the user cannot log in until a password is set)."""
    from middleware.people import PeopleError, create_user

    _ctx(migrate=True)
    password = _read_password(True) if password_stdin else None
    try:
        user = create_user(email, name, role, password, actor="cli")
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"user {user.email} ({user.role}) created"
                  f"{'' if user.password_hash else '; no password yet: arhub users password'}",
                  markup=False, highlight=False)


@users.command("password")
@click.argument("email")
def users_password(email) -> None:
    """Set EMAIL's password, read from stdin (hidden and confirmed on a terminal)."""
    from middleware.people import PeopleError, set_password

    _ctx()
    try:
        set_password(email, _read_password(True), actor="cli")
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"password of {email.strip().lower()} set", markup=False, highlight=False)


@users.command("list")
def users_list() -> None:
    """Users with their role and who covers them while away."""
    from middleware.people import list_users

    _ctx()
    table = Table("email", "name", "role", "active", "password", "away until", "cover")
    for user in list_users():
        table.add_row(user.email, user.name, user.role, "yes" if user.active else "no",
                      "set" if user.password_hash else "none",
                      user.away_until.isoformat() if user.away_until else "", user.cover.email if user.cover_id else "")
    console.print(table)


# ------------------------------------------------------------------- rules
@click.group()
def rules() -> None:
    """Assignment rules: tags, segments and collectors (docs/collectors-and-rules.md)."""


@rules.command("apply")
def rules_apply() -> None:
    """Apply every enabled rule to every customer now (what a person assigned is kept)."""
    from middleware.locks import LockBusy
    from middleware.rules import RuleError, apply_rules

    _ctx()
    try:
        result = apply_rules(actor="cli")
    except (RuleError, LockBusy) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"{result.customers} customers in {result.seconds:.1f}s: tags +{result.tags_added} "
                  f"-{result.tags_removed}; {result.segments_changed} segments and {result.collectors_changed} "
                  f"collectors changed; kept as people set them: {result.segment_held} segments, "
                  f"{result.collector_held} collectors; team queue: {result.team_queue}", markup=False, highlight=False)
    if result.matched:
        table = Table("rule", "customers")
        for name, count in result.matched.items():
            table.add_row(name, str(count))
        console.print(table)


@rules.command("seed")
def rules_seed() -> None:
    """Create the default tag and segment rules that do not exist yet."""
    from middleware.rules import seed_default_rules

    _ctx(migrate=True)
    created = seed_default_rules(actor="cli")
    console.print(f"created {', '.join(created)}" if created else "default rules already there: nothing to do",
                  markup=False, highlight=False)


@rules.command("list")
def rules_list() -> None:
    """Rules in the order they are evaluated."""
    from middleware.models import AssignmentRule

    _ctx()
    table = Table("kind", "priority", "name", "conditions", "value", "enabled")
    for rule in AssignmentRule.select().order_by(AssignmentRule.kind, AssignmentRule.priority, AssignmentRule.id):
        conditions = " and ".join(f"{c['field']} {c['op']} {json.dumps(c['value']) if 'value' in c else ''}".strip()
                                  for c in rule.conditions) or "(every customer)"
        table.add_row(rule.kind, str(rule.priority), rule.name, conditions, rule.value, "yes" if rule.enabled else "no")
    console.print(table)


# -------------------------------------------------------------- collectors
@click.group()
def collectors() -> None:
    """Collectors' books: reassign, cover while away, workload."""


@collectors.command("reassign")
@click.argument("from_email")
@click.argument("to_email")
@click.option("--customer", "customer_ids", type=int, multiple=True,
              help="only this customer id (repeatable); they then stay with TO whatever the rules say")
@click.option("--actor", default="cli", show_default=True, help="who is recorded in the audit log")
def collectors_reassign(from_email, to_email, customer_ids, actor) -> None:
    """Move FROM_EMAIL's book (and collector rules) to TO_EMAIL."""
    from middleware.rules import RuleError, reassign

    _ctx()
    try:
        result = reassign(from_email, to_email, actor, customer_ids=list(customer_ids) or None)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from None
    line = f"moved {result.moved} customers to {to_email.strip().lower()}"
    if result.rules_repointed:
        line += f"; rules now giving them: {', '.join(result.rules_repointed)}"
    if result.skipped:
        line += f"; {result.skipped} requested customers were not {from_email.strip().lower()}'s"
    console.print(line, markup=False, highlight=False)


@collectors.command("away")
@click.argument("email")
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), help="last day away (back the day after)")
@click.option("--cover", "cover_email", help="who takes the accounts, approvals and replies meanwhile")
@click.option("--back", is_flag=True, help="end the absence now")
@click.option("--actor", default="cli", show_default=True, help="who is recorded in the audit log")
def collectors_away(email, until, cover_email, back, actor) -> None:
    """Mark EMAIL away through --until, covered by --cover (none: the team queue)."""
    from middleware.people import PeopleError, set_away

    if back == bool(until):
        raise click.UsageError("give --until DATE, or --back")
    _ctx()
    try:
        user = set_away(email, None if back else until.date(), None if back else cover_email, actor=actor)
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from None
    if back:
        console.print(f"{user.email} is back", markup=False, highlight=False)
    else:
        console.print(f"{user.email} away through {user.away_until.isoformat()}; "
                      f"covered by {user.cover.email if user.cover_id else 'the team queue'}", markup=False,
                      highlight=False)


@collectors.command("workload")
@click.option("--effective", is_flag=True, help="count the books of people away today under whoever covers them")
def collectors_workload(effective) -> None:
    """Customers and open amount per collector, and the team queue."""
    from middleware.people import workload

    ctx = _ctx()
    table = Table("collector", "customers", "open invoices", f"open ({ctx.settings.reporting_currency})",
                  "without rate", "away until", "covered by / covering")
    for row in workload(effective=effective):
        table.add_row(row.collector or "(team queue)", str(row.customers), str(row.open_invoices),
                      f"{row.open_amount:,.2f}", str(row.fx_missing),
                      row.away_until.isoformat() if row.away_until else "",
                      row.covered_by or ", ".join(row.covering_for))
    console.print(table)
