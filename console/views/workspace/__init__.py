"""The collector workspace (issue 5, item 8): my accounts by priority, my approvals, my inbox of
routed replies, the team queue, bulk reassignment (admins) and cover while away.

Thin: every change goes through a middleware function that checks and audits it
(``middleware.dunning.approve``/``skip``, ``middleware.inbox.handle``/``assign``/``reassign``,
``middleware.rules.reassign``/``assign_collector``, ``middleware.people.set_away``); an approved
email that is due now is handed to the send job (``jobs.dunning.enqueue_dunning_email``), one
that is due later waits for the 5-minute ``send_due_actions``. Reading needs ``view``; acting
needs ``work`` (``manage`` for bulk reassignment and setting someone else away). A collector
acts only on the work that is theirs today (their own accounts, and those they cover); an admin
on anyone's. docs/console-workspace.md describes the pages.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from flask import abort, flash, redirect, request, url_for
from flask_admin import expose
from flask_login import current_user

from console.auth import can
from console.views.base import SecureView
from console.views.workspace import queries
from middleware.models import (
    ActionStatus, Customer, DunningAction, Invoice, Message, Role, User, UTC, utcnow,
)

MENU_ORDER = 15  # after the dashboard: a collector's day starts here
PAGE_SIZE = 50


# ------------------------------------------------------------------------------- helpers


def _today() -> date:
    from middleware.people import today

    return today()


def _reporting_currency() -> str:
    from middleware.settings import get_settings

    return get_settings().reporting_currency


def _page() -> int:
    try:
        return max(1, int(request.args.get("page", 1)))
    except ValueError:
        return 1


def _money(amount, currency: str) -> str:
    from middleware.templating import format_money

    return format_money(amount, currency, current_user.locale or "en") if amount is not None else ""


def _when(value) -> str:
    """A UTC timestamp in the signed-in user's time zone."""
    if value is None:
        return ""
    try:
        zone = ZoneInfo(current_user.timezone or "UTC")
    except Exception:  # an unknown zone name on the user row: show UTC rather than fail the page
        zone = ZoneInfo("UTC")
    if isinstance(value, datetime):
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") + ("" if zone.key == "UTC" else f" {zone.key}")
    return value.isoformat()


def _collectors() -> list[User]:
    """Active users who can hold a book (collectors and admins), by name."""
    return list(User.select().where(User.active == True,  # noqa: E712
                                    User.role.in_([Role.COLLECTOR.value, Role.ADMIN.value]))
                .order_by(User.name, User.email))


def _whose() -> str:
    """Whose workspace this page shows: the signed-in user, or ``?collector=`` (reading)."""
    other = (request.values.get("collector") or "").strip().lower()
    return other or current_user.email


def _forbid(reason: str):
    abort(403, description=reason)


def _need(permission: str) -> None:
    if not can(permission):
        _forbid(f"Your role ({current_user.role}) may not do this: it needs "
                f"{'an admin' if permission == 'manage' else 'a collector or an admin'}.")


def _mine_today(customer_collector: str | None, routed_to: str | None = None) -> bool:
    """Whether the signed-in user handles this work today (admins handle anything)."""
    if current_user.role == Role.ADMIN.value:
        return True
    from middleware.people import effective_collector

    me = current_user.email
    on = _today()
    candidates = [e for e in (customer_collector, routed_to) if e]
    return any(effective_collector(e, on) == me for e in candidates)


def _back(default: str):
    target = request.form.get("next") or ""
    if target.startswith("/") and not target.startswith("//"):
        return redirect(target)
    return redirect(default)


class WorkspaceView(SecureView):
    permission = "view"

    def _common(self, tab: str, scope=None) -> dict:
        scope = scope or queries.scope_for(_whose(), _today())
        return {"tab": tab, "scope": scope, "whose": scope.collector, "today": scope.on,
                "is_me": scope.collector == current_user.email, "money": _money, "when": _when,
                "reporting": _reporting_currency(), "can_work": can("work"), "can_manage": can("manage"),
                "collectors": _collectors(), "query_suffix": ("" if scope.collector == current_user.email
                                                              else f"?collector={scope.collector}")}

    # -- my accounts ----------------------------------------------------------------------

    @expose("/")
    def index(self):
        """My accounts by priority (overdue money × days), paged."""
        ctx = self._common("accounts")
        scope = ctx["scope"]
        page = _page()
        total = queries.count_accounts(scope.emails)
        rows = queries.accounts(scope.emails, scope.on, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        pending = queries.approvals(scope.emails, limit=1)[1]
        return self.render("console/workspace/accounts.html", rows=rows, total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), pending_approvals=pending, **ctx)

    # -- my approvals ---------------------------------------------------------------------

    @expose("/approvals")
    def approvals(self):
        ctx = self._common("approvals")
        page = _page()
        query, total = queries.approvals(ctx["scope"].emails, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        return self.render("console/workspace/approvals.html", actions=list(query), total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), now=utcnow(), **ctx)

    def _action(self, action_id: int) -> tuple[DunningAction, Customer]:
        action = DunningAction.get_or_none(DunningAction.id == action_id)
        if action is None:
            abort(404)
        return action, Customer.get_by_id(action.customer_id)

    @expose("/approvals/<int:action_id>")
    def approval(self, action_id: int):
        """One email waiting for approval: rendered as the customer will get it, with the edits
        the approval allows (recipient, cc, sending time, fewer invoices)."""
        from middleware.mailer import MailError, compose_action

        action, customer = self._action(action_id)
        preview, error = None, None
        try:
            # the statement PDF is not rendered for a preview (it is attached when sent)
            preview = compose_action(action, statement_renderer=lambda *a, **k: b"")
        except MailError as exc:
            error = str(exc)
        invoices = list(Invoice.select().where(Invoice.id.in_(action.invoice_ids or [0]))
                        .order_by(Invoice.due_date, Invoice.id))
        html = None
        if preview is not None:
            part = preview.message.get_body(("html",))
            html = part.get_content() if part is not None and part.get_content_type() == "text/html" else None
        return self.render("console/workspace/approval.html", action=action, customer=customer, preview=preview,
                           preview_html=html, error=error, invoices=invoices, now=utcnow(),
                           mine=_mine_today(customer.collector), **self._common("approvals"))

    @expose("/approvals/<int:action_id>/approve", methods=["POST"])
    def approve(self, action_id: int):
        """Approve (with the edits given, and the subject/text if typed: "Edit and approve"); an
        email due now goes to the send queue at once."""
        from middleware.dunning import approve
        from middleware.dunning.base import DunningError
        from middleware.mailer import approve_with_wording

        _need("work")
        action, customer = self._action(action_id)
        if not _mine_today(customer.collector):
            _forbid("This approval belongs to another collector's accounts.")
        try:
            edits = self._edits(action)
            subject, body = self._wording()
            if subject or body:
                approved = approve_with_wording(action_id, current_user.email, subject=subject, body=body,
                                                edits=edits or None)
            else:
                approved = approve(action_id, current_user.email, edits or None)
        except (DunningError, ValueError) as exc:
            flash(f"Not approved: {exc}", "danger")
            return redirect(url_for(".approval", action_id=action_id))
        edited = " with your wording" if approved.subject_override or approved.body_override else ""
        flash(f"Approved{edited}: the email to {approved.to_address} for {customer.name}. " + _dispatch(approved),
              "success")
        return _back(url_for(".approvals"))

    def _wording(self) -> tuple[str | None, str | None]:
        """The subject and text typed on the review page, each only when it differs from what the
        page showed (``*_shown``): an untouched or emptied field keeps the template's."""
        form = request.form
        found = []
        for name in ("subject", "body"):
            typed = (form.get(name) or "").replace("\r\n", "\n")
            shown = (form.get(f"{name}_shown") or "").replace("\r\n", "\n")
            found.append(typed if typed.strip() and typed.strip() != shown.strip() else None)
        return found[0], found[1]

    def _edits(self, action: DunningAction) -> dict:
        form = request.form
        edits: dict = {}
        to = (form.get("to_address") or "").strip()
        if to and to != (action.to_address or ""):
            if "@" not in to or " " in to:
                raise ValueError(f"{to!r} is not an email address")
            edits["to_address"] = to
        if "cc" in form:
            cc = [c.strip() for c in form.get("cc", "").replace(";", ",").split(",") if c.strip()]
            if any("@" not in c for c in cc):
                raise ValueError("every cc must be an email address")
            if cc != list(action.cc or []):
                edits["cc"] = cc
        send_after = (form.get("send_after") or "").strip()
        if send_after:
            zone = ZoneInfo(current_user.timezone or "UTC")
            when = datetime.fromisoformat(send_after)
            when = (when if when.tzinfo else when.replace(tzinfo=zone)).astimezone(UTC)
            if action.send_after is None or abs((when - action.send_after).total_seconds()) >= 60:
                edits["send_after"] = when
        if "invoice_ids" in form or form.get("invoices_shown"):
            ids = sorted(int(i) for i in form.getlist("invoice_ids"))
            if ids != sorted(action.invoice_ids or []):
                edits["invoice_ids"] = ids
        return edits

    @expose("/approvals/<int:action_id>/skip", methods=["POST"])
    def skip(self, action_id: int):
        """Skip a waiting email with a reason (it shows on the customer's timeline)."""
        from middleware.dunning import skip
        from middleware.dunning.base import DunningError

        _need("work")
        action, customer = self._action(action_id)
        if not _mine_today(customer.collector):
            _forbid("This approval belongs to another collector's accounts.")
        reason = (request.form.get("reason") or "").strip()
        if not reason:
            flash("Say why it is skipped: the reason goes on the customer's timeline.", "danger")
            return redirect(url_for(".approval", action_id=action_id))
        try:
            skip(action_id, current_user.email, reason)
        except DunningError as exc:
            flash(f"Not skipped: {exc}", "danger")
            return redirect(url_for(".approval", action_id=action_id))
        flash(f"Skipped the email for {customer.name}: {reason}", "success")
        return _back(url_for(".approvals"))

    # -- my inbox -------------------------------------------------------------------------

    @expose("/inbox")
    def inbox(self):
        """Replies routed to me (or to colleagues I cover), with what they seem to say."""
        from middleware.inbox import suggestions_for

        ctx = self._common("inbox")
        messages = list(queries.replies_for(ctx["whose"], ctx["today"]).limit(200))
        return self.render("console/workspace/inbox.html", messages=messages,
                           suggestions={m.id: suggestions_for(m) for m in messages}, **ctx)

    @expose("/queue")
    def queue(self):
        """The team queue: replies nobody is assigned, unmatched replies, customers without a collector."""
        from middleware.inbox import suggestions_for
        from middleware.rules import team_queue

        ctx = self._common("queue")
        page = _page()
        queued = list(queries.team_replies().limit(200))
        unmatched = list(queries.team_replies(unmatched=True).limit(200))
        customers = team_queue(on=ctx["today"])
        total = customers.count()
        return self.render("console/workspace/queue.html", messages=queued, unmatched=unmatched,
                           suggestions={m.id: suggestions_for(m) for m in queued},
                           customers=list(customers.paginate(page, PAGE_SIZE)), total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), **ctx)

    def _message(self, message_id: int) -> Message:
        message = Message.get_or_none(Message.id == message_id, Message.direction == "in")
        if message is None:
            abort(404)
        collector = Customer.get_by_id(message.customer_id).collector if message.customer_id else None
        queued = message.status in ("queued", "unmatched")
        if not queued and not _mine_today(collector, message.routed_to):
            _forbid("This reply is in another collector's inbox.")
        return message

    @expose("/inbox/<int:message_id>/handle", methods=["POST"])
    def handle(self, message_id: int):
        """Mark a reply handled, recording a promise to pay, a dispute and/or a note."""
        from middleware.inbox import InboxError, handle

        _need("work")
        message = self._message(message_id)
        form = request.form
        try:
            until = date.fromisoformat(form["promise_until"]) if form.get("promise_until") else None
            amount = Decimal(form["promise_amount"].strip()) if form.get("promise_amount", "").strip() else None
            handle(message.id, current_user.email, promise_until=until, promise_amount=amount,
                   dispute_invoice=(form.get("dispute_invoice") or "").strip() or None,
                   note=(form.get("note") or "").strip() or None)
        except (InboxError, ValueError, InvalidOperation) as exc:
            flash(f"Not handled: {exc}", "danger")
        else:
            flash(f"Handled the reply “{message.subject or '(no subject)'}”.", "success")
        return _back(url_for(".inbox"))

    @expose("/inbox/<int:message_id>/assign", methods=["POST"])
    def assign(self, message_id: int):
        """Put a reply on another customer (by id or number); it is routed as if it had matched."""
        from middleware.inbox import assign

        _need("work")
        message = self._message(message_id)
        ref = (request.form.get("customer") or "").strip()
        customer = None
        if ref:
            query = Customer.select().where(Customer.deleted_at.is_null())
            customer = (query.where(Customer.number == ref).first()
                        or (query.where(Customer.id == int(ref)).first() if ref.isdigit() else None))
        if customer is None:
            flash(f"No customer {ref!r} (give its number or id).", "danger")
            return _back(url_for(".inbox"))
        message = assign(message.id, customer, current_user.email)
        where = f"routed to {message.routed_to}" if message.routed_to else "in the team queue"
        flash(f"The reply is now on {customer.name}, {where}.", "success")
        return _back(url_for(".inbox"))

    @expose("/inbox/<int:message_id>/reassign", methods=["POST"])
    def reassign_reply(self, message_id: int):
        """Hand a reply to a colleague (or to the team queue)."""
        from middleware.inbox import InboxError, reassign

        _need("work")
        message = self._message(message_id)
        target = (request.form.get("to") or "").strip().lower() or None
        try:
            reassign(message.id, target, current_user.email)
        except InboxError as exc:
            flash(f"Not reassigned: {exc}", "danger")
        else:
            flash(f"The reply went to {target or 'the team queue'}.", "success")
        return _back(url_for(".inbox"))

    # -- bulk reassignment (admins) -------------------------------------------------------

    @expose("/reassign", methods=["GET", "POST"])
    def reassign(self):
        """Move a collector's whole book, or the customers picked from it, to a colleague."""
        from middleware.rules import RuleError, assign_collector, reassign

        ctx = self._common("reassign")
        if request.method == "POST":
            _need("manage")
            form = request.form
            source = (form.get("from") or "").strip().lower()
            target = (form.get("to") or "").strip().lower()
            whole = form.get("scope") == "all"
            ids = [int(i) for i in form.getlist("customer_ids") if i.isdigit()]
            if not source or (not whole and not ids):
                flash("Pick the collector and the customers to move (or the whole book).", "danger")
            elif target == source:
                flash("Pick another collector to move them to.", "danger")
            elif not target:
                wanted = ids if not whole else [c for (c,) in Customer.select(Customer.id).where(
                    Customer.collector == source, Customer.deleted_at.is_null()).tuples()]
                moved = assign_collector([c for c in wanted], None, current_user.email)
                flash(f"Moved {moved} customers of {source} to the team queue.", "success")
            else:
                try:
                    result = reassign(source, target, current_user.email, None if whole else ids)
                except RuleError as exc:
                    flash(f"Not moved: {exc}", "danger")
                else:
                    extra = f"; rules repointed: {', '.join(result.rules_repointed)}" if result.rules_repointed else ""
                    skipped = f"; {result.skipped} were not {source}'s and stayed" if result.skipped else ""
                    flash(f"Moved {result.moved} customers from {source} to {target}{skipped}{extra}.", "success")
            return redirect(url_for(".reassign", **{"from": source} if source else {}))
        source = (request.args.get("from") or "").strip().lower()
        search = (request.args.get("q") or "").strip()
        page = _page()
        customers, total = [], 0
        if source:
            query = Customer.select(Customer.id, Customer.name, Customer.number, Customer.segment,
                                    Customer.billing_currency, Customer.country).where(
                Customer.collector == source, Customer.deleted_at.is_null())
            if search:
                like = f"%{search}%"
                query = query.where(Customer.name ** like | Customer.number ** like)
            total = query.count()
            customers = list(query.order_by(Customer.name, Customer.id).paginate(page, PAGE_SIZE))
        from middleware.people import workload

        return self.render("console/workspace/reassign.html", source=source, search=search, customers=customers,
                           total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)), books=workload(), **ctx)

    # -- cover while away -----------------------------------------------------------------

    @expose("/away", methods=["GET", "POST"])
    def away(self):
        """Set who is away until when, and who covers meanwhile; or end an absence."""
        from middleware.people import PeopleError, set_away

        ctx = self._common("away")
        if request.method == "POST":
            _need("work")
            form = request.form
            email = (form.get("email") or current_user.email).strip().lower()
            if email != current_user.email:
                _need("manage")
            try:
                if form.get("back"):
                    set_away(email, None, actor=current_user.email)
                    flash(f"{email} is back: their accounts, approvals and replies are theirs again.", "success")
                else:
                    until = date.fromisoformat(form.get("until") or "")
                    if until < _today():
                        raise PeopleError("the last day away is already past")
                    cover = (form.get("cover") or "").strip().lower() or None
                    set_away(email, until, cover, actor=current_user.email)
                    flash(f"{email} is away through {until.isoformat()}; "
                          f"{cover or 'the team queue'} covers.", "success")
            except (PeopleError, ValueError) as exc:
                flash(f"Not saved: {exc}", "danger")
            return redirect(url_for(".away"))
        on = _today()
        absent = list(User.select().where(User.away_until >= on).order_by(User.away_until, User.email))
        return self.render("console/workspace/away.html", absent=absent, **ctx)


def _dispatch(action: DunningAction) -> str:
    """Hand an approved email that is due now to the send queue (the job sends it once); one
    due later is picked up by the 5-minute ``send_due_actions``. Returns what happened, for the user."""
    now = utcnow()
    due = (action.send_after <= now if action.send_after is not None
           else action.planned_for <= _today())
    if action.channel != "email" or not due:
        when = _when(action.send_after) if action.send_after else action.planned_for.isoformat()
        return f"It goes out at {when}."
    from redis.exceptions import RedisError

    from jobs.dunning import enqueue_dunning_email

    try:
        job = enqueue_dunning_email(action)
    except RedisError:
        return "The send queue is unreachable now: the next scheduled round sends it."
    if job is not None:
        DunningAction.update(status=ActionStatus.QUEUED.value, updated_at=utcnow()).where(
            DunningAction.id == action.id, DunningAction.status == ActionStatus.APPROVED.value).execute()
    return "It is queued for sending now."


def register(admin) -> None:
    admin.add_view(WorkspaceView(name="My work", endpoint="workspace", url="/workspace"))
