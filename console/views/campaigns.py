"""Campaigns: the list, an editor (steps inline, the audience rule, A/B variants), a preview of
who gets what on a chosen date and why, a test send to the signed-in user, outcomes per variant.

Thin: validation, saving and auditing are ``middleware.dunning.editing``; the preview is the
planner's own dry run (``middleware.dunning.plan(day, dry_run=True, campaign_ids=[id])``) and
``explain``; a test send is the ``jobs.dunning.send_test_email`` job on the ``dunning`` queue.
Seeing needs ``view``; editing ``manage``; a test send ``work``. See docs/console-campaigns.md.
"""
from __future__ import annotations

import json
from datetime import date, datetime

from flask import abort, flash, redirect, request, url_for
from flask_admin import expose
from flask_login import current_user

from console.auth import can
from console.views.base import SecureView

MENU_ORDER = 30
PAGE_SIZE = 50
LIST_KEYS = ("tags_any", "tags_all", "tags_none", "segments", "currencies", "countries", "sources")
RANGE_KEYS = tuple(f"{attr}_{op}" for attr in ("arr", "balance") for op in ("gte", "gt", "lte", "lt"))
STEP_FIELDS = ("id", "name", "anchor", "offset_days", "window_start", "window_end", "channel", "template",
               "recipient_role", "variant")
STEP_FLAGS = ("business_days", "cc_collector", "attach_statement")
CAMPAIGN_FIELDS = ("name", "description", "priority", "holdout_percent", "min_invoice_amount",
                   "skip_open_renewal_days")
_SYMBOL = {"gte": "≥", "gt": ">", "lte": "≤", "lt": "<"}


def _forbid(permission: str) -> None:
    if not can(permission):
        abort(403, description=f"Your role ({current_user.role}) may not do this: it needs the "
                               f"'{permission}' permission.")


def _day(text: str | None, default: date | None = None) -> date | None:
    try:
        return date.fromisoformat((text or "").strip())
    except ValueError:
        return default


def _today() -> date:
    from middleware.settings import get_settings

    return datetime.now(get_settings().tzinfo).date()


def audience_summary(rule: dict | None) -> str:
    """``tags any of strategic · ARR ≥ 100000``; ``everyone`` for an empty rule."""
    parts = []
    for key, value in (rule or {}).items():
        if key in LIST_KEYS:
            label = {"tags_any": "tags any of", "tags_all": "tags all of", "tags_none": "tags none of",
                     "segments": "segment", "currencies": "currency", "countries": "country",
                     "sources": "ERP source"}[key]
            parts.append(f"{label} {', '.join(value)}")
        elif key == "open_opportunity":
            types = "/".join(value.get("types") or ("Renewal", "Expansion"))
            parts.append(f"open {types} closing within {value.get('within_days')} days")
        else:
            attr, op = key.rsplit("_", 1)
            parts.append(f"{'ARR' if attr == 'arr' else 'balance'} {_SYMBOL.get(op, op)} {value}")
    return " · ".join(parts) or "everyone"


# ---------------------------------------------------------------------------------- form <-> data
def _approval_from_form(form, prefix: str, errors: dict) -> dict | None:
    mode = form.get(f"{prefix}.approval_mode", "none")
    value = (form.get(f"{prefix}.approval_value") or "").strip()
    expires = (form.get(f"{prefix}.approval_expires") or "").strip()
    if mode == "none":
        return None
    if mode == "json":
        try:
            rule = json.loads(value or "{}")
        except ValueError as exc:
            errors[f"{prefix}.approval"] = f"not valid JSON: {exc}"
            return None
    elif mode == "arr":
        if not value:
            errors[f"{prefix}.approval.arr_gte"] = "give the ARR from which approval is needed"
            return None
        rule = {"arr_gte": value}
    else:  # always
        rule = {}
    if expires:
        rule = {**rule, "expires_days": expires}
    return rule


def data_from_form(form) -> tuple[dict, dict]:
    """The editor's POST as the dict ``validate_campaign`` takes, plus errors only the form can
    see (unparseable JSON). Blank step and variant rows are dropped, rows marked for deletion
    too, and steps are ordered by their ``order`` field."""
    errors: dict[str, str] = {}
    data = {key: form.get(key, "") for key in CAMPAIGN_FIELDS}
    data["enabled"] = form.get("enabled") == "y"
    audience: dict = {}
    for key in LIST_KEYS:
        items = [x.strip() for x in (form.get(f"audience.{key}") or "").replace(";", ",").split(",") if x.strip()]
        if key in ("currencies", "countries"):
            items = [x.upper() for x in items]
        if items:
            audience[key] = items
    for key in RANGE_KEYS:
        value = (form.get(f"audience.{key}") or "").strip()
        if value:
            audience[key] = value
    within = (form.get("audience.open_opportunity.within_days") or "").strip()
    if within:
        types = [t for t in ("Renewal", "Expansion") if form.get(f"audience.open_opportunity.{t}") == "y"]
        audience["open_opportunity"] = {"within_days": int(within) if within.lstrip("-").isdigit() else within,
                                        **({"types": types} if types else {})}
    data["audience"] = audience
    variants = []
    for i in range(int(form.get("variant_rows") or 0)):
        p = f"variants.{i}"
        row = {"id": form.get(f"{p}.id") or None, "name": (form.get(f"{p}.name") or "").strip(),
               "weight": form.get(f"{p}.weight") or "1"}
        if form.get(f"{p}.delete") == "y" or (not row["name"] and not row["id"]):
            continue
        variants.append(row)
    data["variants"] = variants
    rows = []
    for i in range(int(form.get("step_rows") or 0)):
        p = f"steps.{i}"
        row = {key: form.get(f"{p}.{key}", "") for key in STEP_FIELDS}
        row.update({key: form.get(f"{p}.{key}") == "y" for key in STEP_FLAGS})
        if form.get(f"{p}.delete") == "y" or not (row["id"] or row["name"].strip() or row["template"]):
            continue
        try:
            order = float(form.get(f"{p}.order") or i + 1)
        except ValueError:
            order = i + 1
        rows.append((order, i, p, row))
    rows.sort(key=lambda r: (r[0], r[1]))
    steps = []
    for new_index, (_, _, p, row) in enumerate(rows):
        sub: dict[str, str] = {}
        row["approval"] = _approval_from_form(form, p, sub)
        errors.update({k.replace(p, f"steps.{new_index}", 1): v for k, v in sub.items()})
        row["id"] = row["id"] or None
        steps.append(row)
    data["steps"] = steps
    return data, errors


def _approval_to_form(rule: dict | None) -> dict:
    if rule is None:
        return {"mode": "none", "value": "", "expires": ""}
    rest = {k: v for k, v in rule.items() if k != "expires_days"}
    expires = rule.get("expires_days", "")
    if not rest:
        return {"mode": "always", "value": "", "expires": expires}
    if set(rest) == {"arr_gte"}:
        return {"mode": "arr", "value": rest["arr_gte"], "expires": expires}
    return {"mode": "json", "value": json.dumps(rest), "expires": expires}


def _blank_step(position: int) -> dict:
    return {"id": None, "name": "", "anchor": "due", "offset_days": "", "business_days": False,
            "window_start": "09:00", "window_end": "17:00", "channel": "email", "template": "",
            "recipient_role": "billing", "cc_collector": False, "attach_statement": False, "approval": None,
            "variant": None, "position": position}


def _form_context(data: dict, extra_steps: int, extra_variants: int) -> dict:
    from middleware.dunning import ANCHORS
    from middleware.dunning.editing import CHANNELS, RECIPIENT_ROLES
    from middleware.models import Template

    steps = [dict(s) for s in data.get("steps") or []]
    for s in steps:
        s["approval_form"] = _approval_to_form(s.get("approval"))
    steps += [dict(_blank_step(len(steps) + k + 1), approval_form=_approval_to_form(None))
              for k in range(extra_steps)]
    variants = list(data.get("variants") or []) + [{"id": None, "name": "", "weight": 1}] * extra_variants
    languages: dict[str, list[str]] = {}
    for name, language in Template.select(Template.name, Template.language).order_by(
            Template.name, Template.language).tuples():
        languages.setdefault(name, []).append(language)
    audience = data.get("audience") or {}
    opportunity = audience.get("open_opportunity") or {}
    return {"data": data, "steps": steps, "variants": variants, "audience": audience,
            "opportunity": opportunity, "anchors": ANCHORS, "channels": CHANNELS, "roles": RECIPIENT_ROLES,
            "template_languages": languages, "list_keys": LIST_KEYS, "range_keys": RANGE_KEYS}


# ---------------------------------------------------------------------------------- the view
class CampaignsView(SecureView):
    permission = "view"

    @expose("/")
    def index(self):
        """Every campaign in priority order: who it is for, whether it runs, variants, steps."""
        from middleware.models import Campaign, CampaignStep, CampaignVariant
        from peewee import fn

        campaigns = list(Campaign.select().order_by(Campaign.priority, Campaign.id))
        ids = [c.id for c in campaigns] or [0]
        steps = dict(CampaignStep.select(CampaignStep.campaign, fn.COUNT(CampaignStep.id))
                     .where(CampaignStep.campaign.in_(ids)).group_by(CampaignStep.campaign).tuples())
        variants: dict[int, list[str]] = {}
        for cid, name, weight in (CampaignVariant.select(CampaignVariant.campaign, CampaignVariant.name,
                                                         CampaignVariant.weight)
                                  .where(CampaignVariant.campaign.in_(ids)).order_by(CampaignVariant.id).tuples()):
            variants.setdefault(cid, []).append(f"{name} ({weight})")
        rows = [{"c": c, "audience": audience_summary(c.audience), "steps": steps.get(c.id, 0),
                 "variants": variants.get(c.id, [])} for c in campaigns]
        return self.render("console/campaigns/list.html", rows=rows)

    def _editor(self, data: dict, errors: dict, campaign_id: int | None, *, extra_steps: int, extra_variants: int,
                status: int = 200):
        ctx = _form_context(data, extra_steps, extra_variants)
        return self.render("console/campaigns/edit.html", errors=errors, campaign_id=campaign_id, **ctx), status

    def _post_editor(self, campaign_id: int | None):
        from middleware.dunning.editing import CampaignInvalid, save_campaign, validate_campaign

        _forbid("manage")
        data, form_errors = data_from_form(request.form)
        if request.form.get("add_step"):
            return self._editor(data, {}, campaign_id, extra_steps=1, extra_variants=0)
        if request.form.get("add_variant"):
            return self._editor(data, {}, campaign_id, extra_steps=0, extra_variants=1)
        try:
            if form_errors:
                try:
                    validate_campaign(data, campaign_id=campaign_id)
                except CampaignInvalid as exc:
                    form_errors = {**exc.errors, **form_errors}
                raise CampaignInvalid(form_errors)
            campaign = save_campaign(data, campaign_id=campaign_id, actor=current_user.email)
        except CampaignInvalid as exc:
            flash(f"Not saved: {len(exc.errors)} field{'s' if len(exc.errors) > 1 else ''} to correct.", "danger")
            return self._editor(data, exc.errors, campaign_id, extra_steps=0, extra_variants=0, status=400)
        flash(f"Campaign {campaign.name!r} saved.", "success")
        return redirect(url_for(".edit", campaign_id=campaign.id))

    @expose("/new", methods=("GET", "POST"))
    def new(self):
        """A new campaign: three blank step rows and one variant row to start from."""
        _forbid("manage")
        if request.method == "POST":
            return self._post_editor(None)
        data = {"name": "", "priority": 100, "enabled": True, "holdout_percent": 0, "audience": {},
                "steps": [], "variants": []}
        return self._editor(data, {}, None, extra_steps=3, extra_variants=1)

    @expose("/<int:campaign_id>/edit", methods=("GET", "POST"))
    def edit(self, campaign_id: int):
        """The editor: the campaign, its audience rule, variants and steps inline."""
        from middleware.dunning.editing import campaign_snapshot

        _forbid("manage")
        if request.method == "POST":
            return self._post_editor(campaign_id)
        data = campaign_snapshot(campaign_id)
        if data is None:
            abort(404)
        return self._editor(data, {}, campaign_id, extra_steps=1, extra_variants=0 if data["variants"] else 1)

    @expose("/<int:campaign_id>/delete", methods=("POST",))
    def delete(self, campaign_id: int):
        from middleware.dunning.editing import delete_campaign

        _forbid("manage")
        if delete_campaign(campaign_id, actor=current_user.email):
            flash("Campaign deleted.", "success")
        return redirect(url_for(".index"))

    @expose("/<int:campaign_id>/preview")
    def preview(self, campaign_id: int):
        """Who gets what on a chosen date and why: the planner's dry run for this campaign,
        paged, plus the customers in no campaign and one customer's full explanation."""
        from middleware.dunning import explain, plan
        from middleware.dunning.editing import find_customer
        from middleware.models import Campaign

        campaign = Campaign.get_or_none(Campaign.id == campaign_id)
        if campaign is None:
            abort(404)
        day = _day(request.args.get("date"), _today())
        status = request.args.get("status") or ""
        page = max(1, request.args.get("page", 1, type=int))
        result = plan(day, dry_run=True, campaign_ids=[campaign_id])
        rows = sorted(result.rows, key=lambda r: (r.customer_name.lower(), r.customer_id, r.planned_for, r.step_id))
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            counts[(r.step_name, r.status)] = counts.get((r.step_name, r.status), 0) + 1
        if status:
            rows = [r for r in rows if r.status == status]
        total = len(rows)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(page, pages)
        shown = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        explanation, explain_error = None, None
        ref = (request.args.get("customer") or "").strip()
        if ref:
            customer = find_customer(ref)
            if customer is None:
                explain_error = f"no customer with the number, id or name {ref!r}"
            else:
                explanation = explain(customer.id, day)
        return self.render("console/campaigns/preview.html", campaign=campaign, day=day, result=result,
                           rows=shown, total=total, page=page, pages=pages, status=status,
                           counts=sorted(counts.items()), explanation=explanation, explain_error=explain_error,
                           customer_ref=ref, unassigned=result.unassigned[:20],
                           page_size=PAGE_SIZE)

    @expose("/<int:campaign_id>/test-send", methods=("POST",))
    def test_send(self, campaign_id: int):
        """Queue a test email (a step's template, rendered for a customer) to the signed-in user."""
        _forbid("work")
        from jobs.queues import get_queue
        from middleware.dunning.editing import find_customer
        from middleware.models import Template

        back = request.form.get("next") or url_for(".preview", campaign_id=campaign_id)
        if not back.startswith("/") or back.startswith("//"):
            back = url_for(".preview", campaign_id=campaign_id)
        customer = find_customer(request.form.get("customer") or "")
        name = (request.form.get("template") or "").strip()
        languages = [lang for (lang,) in Template.select(Template.language).where(Template.name == name).tuples()]
        if customer is None or not languages:
            flash("Test send: " + ("no such customer" if customer is None else f"no template {name!r}"), "danger")
            return redirect(back)
        wanted = (customer.locale or "en").replace("-", "_")
        language = next((lang for lang in (wanted, wanted.split("_")[0], "en") if lang in languages), languages[0])
        job = get_queue("dunning").enqueue("jobs.dunning.send_test_email", name, language, current_user.email,
                                           customer.id, description=f"test send of {name}/{language} to "
                                                                    f"{current_user.email}")
        flash(f"Test email {name!r} ({language}) for {customer.name} queued to {current_user.email} "
              f"(job {job.id} on the dunning queue).", "success")
        return redirect(back)

    @expose("/<int:campaign_id>/outcomes")
    def outcomes(self, campaign_id: int):
        """Per variant (and holdout): share paid within N days of due, mean days to pay, ADD, with 95% CIs."""
        from middleware.dunning import variant_outcomes
        from middleware.models import Campaign

        campaign = Campaign.get_or_none(Campaign.id == campaign_id)
        if campaign is None:
            abort(404)
        as_of = _day(request.args.get("as_of"), _today())
        within = max(0, min(365, request.args.get("within", 0, type=int)))
        groups = variant_outcomes(campaign_id, as_of, within_days=within)
        return self.render("console/campaigns/outcomes.html", campaign=campaign, as_of=as_of, within=within,
                           groups=groups, share=fmt_share, mean=fmt_mean)


def fmt_share(est) -> str:
    if est.value is None:
        return "—"
    interval = f" ({est.low * 100:.0f}–{est.high * 100:.0f} %)" if est.low is not None else ""
    return f"{est.value * 100:.1f} %{interval}"


def fmt_mean(est) -> str:
    if est.value is None:
        return "—"
    interval = f" ({est.low:.1f}–{est.high:.1f})" if est.low is not None else ""
    return f"{est.value:.1f}{interval}"


def register(admin) -> None:
    admin.add_view(CampaignsView(name="Campaigns", endpoint="campaigns", url="/campaigns", category="Dunning"))
