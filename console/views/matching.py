"""Matching review: ERP customers ↔ Salesforce Accounts (``middleware.matching``).

* **Review**: the customers waiting for a person, best candidate first, each candidate with its
  score and reasons; link to a candidate or to a typed Account Id, or say "no Account".
* **Linked** (external id / auto / manual) and **Unlinked** (unmatched / manual "no Account" / not
  matched yet): paged lists, filterable by state and name.
* **One customer**: why it is (not) linked (``explain_match``), its candidates, an Account search,
  and the decisions: link, unlink, reset (back to automatic).

Reading needs ``view``; decisions need ``manage``. Each decision is one ``middleware.matching``
call, which writes the ``AuditLog`` row itself. Lists are paged with LIMIT/OFFSET and one query per
page for the Account names (no per-row queries); no total counts (they would scan the customers).
"""
from __future__ import annotations

from flask import abort, flash, redirect, request, url_for
from flask_admin import expose
from flask_login import current_user

from console.auth import can
from console.views.base import SecureView
from middleware import matching
from middleware.models import Customer, MatchState, SfAccount, Source

MENU_ORDER = 65
PAGE_SIZE = 25
LINKED = {"all": (MatchState.EXTERNAL_ID.value, MatchState.AUTO.value, MatchState.MANUAL.value),
          "manual": (MatchState.MANUAL.value,), "auto": (MatchState.AUTO.value,),
          "external_id": (MatchState.EXTERNAL_ID.value,)}
UNLINKED = {"all": (MatchState.UNMATCHED.value, MatchState.MANUAL_UNLINKED.value, None),
            "unmatched": (MatchState.UNMATCHED.value,), "manual_unlinked": (MatchState.MANUAL_UNLINKED.value,),
            "none": (None,)}
STATE_LABELS = {"external_id": "linked by external id", "auto": "linked automatically", "manual": "linked by a person",
                "review": "waiting for review", "unmatched": "no candidate", "manual_unlinked": "no Account (a person's decision)",
                None: "not matched yet"}


def _page() -> int:
    try:
        return max(1, int(request.args.get("page", 1)))
    except ValueError:
        return 1


def _account_names(sf_ids) -> dict[str, str]:
    """Names of the Accounts on one page, in one query (a live Account's name wins over a deleted one's)."""
    ids = sorted({i for i in sf_ids if i})
    if not ids:
        return {}
    names = {}
    for sf_id, name in (SfAccount.select(SfAccount.sf_id, SfAccount.name)
                        .where(SfAccount.source.in_(_sf_sources()), SfAccount.sf_id.in_(ids))
                        .order_by(SfAccount.is_deleted.desc()).tuples()):
        names[sf_id] = name
    return names


def _sf_sources():
    """The Salesforce sources: with it, an Account lookup by Id uses the (source, sf_id) index."""
    return Source.select(Source.id).where(Source.kind == "salesforce")


def _state_filter(states: tuple):
    present = [s for s in states if s is not None]
    clause = Customer.match_state.in_(present) if present else None
    if None in states:
        clause = Customer.match_state.is_null() if clause is None else (clause | Customer.match_state.is_null())
    return clause


def _safe_back(default: str) -> str:
    target = request.form.get("next") or ""
    return target if target.startswith("/") and not target.startswith("//") else default


class MatchingView(SecureView):
    permission = "view"

    @expose("/")
    def index(self):
        tab = request.args.get("tab", "review")
        page = _page()
        offset = (page - 1) * PAGE_SIZE
        q = (request.args.get("q") or "").strip()
        state = request.args.get("state", "all")
        rows, names = [], {}
        if tab == "review":
            rows = matching.review_queue(limit=PAGE_SIZE + 1, offset=offset)
        elif tab in ("linked", "unlinked"):
            choices = LINKED if tab == "linked" else UNLINKED
            if state not in choices:
                state = "all"
            query = (Customer.select(Customer.id, Customer.name, Customer.number, Customer.country, Customer.email,
                                     Customer.match_state, Customer.sf_account_id)
                     .where(_state_filter(choices[state]), Customer.deleted_at.is_null()))
            if q:
                query = query.where(Customer.name.contains(q) | (Customer.number == q))
            rows = list(query.order_by(Customer.id).limit(PAGE_SIZE + 1).offset(offset).dicts())
            names = _account_names(r["sf_account_id"] for r in rows)
        else:
            abort(404)
        has_next = len(rows) > PAGE_SIZE
        return self.render("console/matching/index.html", tab=tab, rows=rows[:PAGE_SIZE], names=names, page=page,
                           has_next=has_next, q=q, state=state, states=(LINKED if tab == "linked" else UNLINKED),
                           labels=STATE_LABELS, can_manage=can("manage"))

    @expose("/customer/<int:customer_id>")
    def customer(self, customer_id: int):
        try:
            explained = matching.explain_match(customer_id)
        except matching.MatchError:
            abort(404)
        customer = Customer.get_by_id(customer_id)
        search = (request.args.get("account") or "").strip()
        found = []
        if search:
            key = matching.normalize_name(search)
            query = SfAccount.select(SfAccount.sf_id, SfAccount.name, SfAccount.country, SfAccount.domain)
            if key:  # a prefix of the normalized name: a range on the name_key index
                query = query.where(SfAccount.name_key >= key, SfAccount.name_key < key + "\uffff")
            found = list(query.where(SfAccount.is_deleted == False)  # noqa: E712
                         .order_by(SfAccount.name_key).limit(20).dicts())
            exact = SfAccount.get_or_none(SfAccount.source.in_(_sf_sources()), SfAccount.sf_id == search,
                                          SfAccount.is_deleted == False)  # noqa: E712
            if exact is not None and all(f["sf_id"] != exact.sf_id for f in found):
                found.insert(0, {"sf_id": exact.sf_id, "name": exact.name, "country": exact.country,
                                 "domain": exact.domain})
        return self.render("console/matching/customer.html", m=explained, customer=customer, search=search,
                           found=found, labels=STATE_LABELS, can_manage=can("manage"))

    def _decide(self, customer_id: int, action: str):
        if not can("manage"):
            abort(403, description=f"Your role ({current_user.role}) may not change matches: it needs admin.")
        back = _safe_back(url_for(".customer", customer_id=customer_id))
        try:
            if action == "link":
                sf_id = (request.form.get("sf_account_id") or "").strip()
                if not sf_id:
                    flash("Choose a candidate or type a Salesforce Account Id.", "danger")
                    return redirect(back)
                customer = matching.link(customer_id, sf_id, actor=current_user.email)
                flash(f"{customer.name} is linked to Account {sf_id}; later matching runs keep this link.", "success")
            elif action == "unlink":
                customer = matching.unlink(customer_id, actor=current_user.email)
                flash(f"{customer.name} has no Salesforce Account; later matching runs leave it so.", "success")
            else:
                customer = matching.reset(customer_id, actor=current_user.email)
                flash(f"{customer.name} is back to automatic matching: the next run decides.", "success")
        except matching.MatchError as exc:
            flash(f"Nothing changed: {exc}.", "danger")
        return redirect(back)

    @expose("/customer/<int:customer_id>/link", methods=["POST"])
    def link(self, customer_id: int):
        return self._decide(customer_id, "link")

    @expose("/customer/<int:customer_id>/unlink", methods=["POST"])
    def unlink(self, customer_id: int):
        return self._decide(customer_id, "unlink")

    @expose("/customer/<int:customer_id>/reset", methods=["POST"])
    def reset(self, customer_id: int):
        return self._decide(customer_id, "reset")


def register(admin) -> None:
    admin.add_view(MatchingView(name="Matching review", category="Admin", endpoint="matching", url="/matching"))
