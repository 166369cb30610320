"""Editing campaigns and templates (what the console's editors call): validation whose errors
name the field they concern, audited saves, and a template preview for a chosen customer.

Field paths in errors are the ones the console's forms use: ``name``, ``priority``,
``audience.arr_gte``, ``steps.2.anchor``, ``variants.0.weight``; for templates ``subject``,
``body_text``, ``body_html``. Every save and delete writes an ``AuditLog`` row with the whole
campaign (steps and variants included) or template before and after.
"""
from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from jinja2 import TemplateSyntaxError

from ..db import database
from ..models import (
    AuditLog, Campaign, CampaignStep, CampaignVariant, Customer, DunningAction, Invoice, InvoiceStatus, Template,
    utcnow,
)
from ..templating import TemplateRenderError, environment, parse_locale, render_string
from .audience import validate_audience
from .base import ANCHORS, DunningError

__all__ = [
    "CHANNELS", "RECIPIENT_ROLES", "CampaignInvalid", "campaign_snapshot", "delete_campaign", "find_customer",
    "preview_template", "save_campaign", "save_template", "template_snapshot", "validate_campaign",
    "validate_template",
]

CHANNELS = ("email", "task")
RECIPIENT_ROLES = ("billing", "escalation")
MAX_OFFSET_DAYS = 366
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")


class CampaignInvalid(DunningError):
    """Input that cannot be saved; ``errors`` maps each field path to what is wrong with it."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


# ---------------------------------------------------------------------------------- small parsers
def _int(value: Any, errors: dict, path: str, *, low: int | None = None, high: int | None = None,
         required: bool = True) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors[path] = "required"
        return None
    if isinstance(value, bool):
        errors[path] = f"must be a whole number, got {value!r}"
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        errors[path] = f"must be a whole number, got {value!r}"
        return None
    if low is not None and number < low or high is not None and number > high:
        errors[path] = f"must be between {low} and {high}" if low is not None and high is not None else (
            f"must be at least {low}" if low is not None else f"must be at most {high}")
        return None
    return number


def _decimal(value: Any, errors: dict, path: str) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        errors[path] = f"must be a number, got {value!r}"
        return None
    if not number.is_finite():
        errors[path] = f"must be a number, got {value!r}"
        return None
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "y", "yes", "on")
    return bool(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


# ---------------------------------------------------------------------------------- campaigns
def _validate_rule(rule: Any, errors: dict, prefix: str, *, allow: tuple[str, ...] = ()) -> dict | None:
    """An audience (or approval) rule checked key by key, so each error names its condition."""
    if rule is None:
        return None
    if not isinstance(rule, dict):
        errors[prefix] = "must be a JSON object of conditions"
        return None
    clean: dict = {}
    for key, value in rule.items():
        path = f"{prefix}.{key}"
        if key == "expires_days" and "expires_days" in allow:
            days = _int(value, errors, path, low=1, high=90)
            if days is not None:
                clean[key] = days
            continue
        try:
            validate_audience({key: value})
        except DunningError as exc:
            errors[path] = str(exc).removeprefix("audience: ")
            continue
        if key == "open_opportunity" and value["within_days"] < 0:
            errors[path] = "within_days must be 0 or more"
            continue
        clean[key] = value
    for attr in ("arr", "balance"):
        low = next((Decimal(str(clean[f"{attr}_{op}"])) for op in ("gte", "gt") if f"{attr}_{op}" in clean), None)
        high_key = next((f"{attr}_{op}" for op in ("lte", "lt") if f"{attr}_{op}" in clean), None)
        if low is not None and high_key is not None and Decimal(str(clean[high_key])) < low:
            errors[f"{prefix}.{high_key}"] = f"is below the minimum {attr} of the same rule: nobody would match"
    return clean


def validate_campaign(data: dict, *, campaign_id: int | None = None) -> dict:
    """``data`` (the editor's input) checked and normalised; raises :class:`CampaignInvalid`
    with every problem found, keyed by field path. ``data``: ``name``, ``description``,
    ``priority``, ``enabled``, ``holdout_percent``, ``min_invoice_amount``,
    ``skip_open_renewal_days``, ``audience`` (a rule, docs/dunning.md), ``variants`` (``id``,
    ``name``, ``weight``) and ``steps`` (``id``, ``name``, ``anchor``, ``offset_days``,
    ``business_days``, ``window_start``, ``window_end``, ``channel``, ``template``,
    ``recipient_role``, ``cc_collector``, ``attach_statement``, ``approval``: a rule plus
    ``expires_days`` or None, ``variant``: a variant's name or None), in order."""
    errors: dict[str, str] = {}
    spec: dict[str, Any] = {}
    name = _text(data.get("name"))
    if not name:
        errors["name"] = "required"
    elif len(name) > 200:
        errors["name"] = "at most 200 characters"
    else:
        clash = Campaign.select(Campaign.id).where(Campaign.name == name)
        if campaign_id is not None:
            clash = clash.where(Campaign.id != campaign_id)
        if clash.exists():
            errors["name"] = f"another campaign is already called {name!r}"
    spec["name"] = name
    spec["description"] = _text(data.get("description")) or None
    spec["priority"] = _int(data.get("priority"), errors, "priority", low=0, high=1_000_000)
    spec["enabled"] = _bool(data.get("enabled", True))
    spec["holdout_percent"] = _int(data.get("holdout_percent") or 0, errors, "holdout_percent", low=0, high=100)
    amount = _decimal(data.get("min_invoice_amount"), errors, "min_invoice_amount")
    if amount is not None and amount < 0:
        errors["min_invoice_amount"] = "must be 0 or more"
    spec["min_invoice_amount"] = amount
    spec["skip_open_renewal_days"] = _int(data.get("skip_open_renewal_days"), errors, "skip_open_renewal_days",
                                          low=0, high=3650, required=False)
    spec["audience"] = _validate_rule(data.get("audience") or {}, errors, "audience") or {}

    existing_variants = ({v.id: v for v in CampaignVariant.select().where(CampaignVariant.campaign == campaign_id)}
                         if campaign_id is not None else {})
    variants, seen = [], set()
    for i, raw in enumerate(data.get("variants") or []):
        path = f"variants.{i}"
        vid = _int(raw.get("id"), errors, f"{path}.id", required=False)
        if vid is not None and vid not in existing_variants:
            errors[f"{path}.id"] = f"variant {vid} is not a variant of this campaign"
        vname = _text(raw.get("name"))
        if not vname:
            errors[f"{path}.name"] = "required"
        elif vname.lower() in seen:
            errors[f"{path}.name"] = f"two variants are called {vname!r}"
        elif vname.lower() == "holdout":
            errors[f"{path}.name"] = "'holdout' is the name of the held-out group"
        seen.add(vname.lower())
        weight = _int(raw.get("weight", 1), errors, f"{path}.weight", low=0, high=1000)
        variants.append({"id": vid, "name": vname, "weight": weight})
    spec["variants"] = variants
    variant_names = {v["name"] for v in variants}

    existing_steps = ({s.id for s in CampaignStep.select(CampaignStep.id).where(CampaignStep.campaign == campaign_id)}
                      if campaign_id is not None else set())
    templates = {n for (n,) in Template.select(Template.name).distinct().tuples()}
    steps = []
    raw_steps = list(data.get("steps") or [])
    if not raw_steps:
        errors["steps"] = "add at least one step"
    for i, raw in enumerate(raw_steps):
        path = f"steps.{i}"
        sid = _int(raw.get("id"), errors, f"{path}.id", required=False)
        if sid is not None and sid not in existing_steps:
            errors[f"{path}.id"] = f"step {sid} is not a step of this campaign"
        step: dict[str, Any] = {"id": sid, "position": i + 1, "name": _text(raw.get("name"))}
        if not step["name"]:
            errors[f"{path}.name"] = "required"
        anchor = _text(raw.get("anchor")) or "due"
        if anchor not in ANCHORS:
            errors[f"{path}.anchor"] = f"must be one of {', '.join(ANCHORS)}, got {anchor!r}"
        elif anchor == "previous" and i == 0:
            errors[f"{path}.anchor"] = "the first step has no previous step to count from"
        step["anchor"] = anchor
        step["offset_days"] = _int(raw.get("offset_days"), errors, f"{path}.offset_days",
                                   low=-MAX_OFFSET_DAYS, high=MAX_OFFSET_DAYS)
        step["business_days"] = _bool(raw.get("business_days"))
        for key, default in (("window_start", "09:00"), ("window_end", "17:00")):
            value = _text(raw.get(key)) or default
            if not _HHMM.match(value):
                errors[f"{path}.{key}"] = f"must be a time HH:MM (24 hours), got {value!r}"
            step[key] = value
        if (f"{path}.window_start" not in errors and f"{path}.window_end" not in errors
                and step["window_end"] <= step["window_start"]):
            errors[f"{path}.window_end"] = "must be after the window's start"
        channel = _text(raw.get("channel")) or "email"
        if channel not in CHANNELS:
            errors[f"{path}.channel"] = f"must be one of {', '.join(CHANNELS)}, got {channel!r}"
        step["channel"] = channel
        template = _text(raw.get("template")) or None
        if template is None and channel == "email":
            errors[f"{path}.template"] = "an email step needs a template"
        elif template is not None and template not in templates:
            errors[f"{path}.template"] = f"no template is called {template!r}"
        step["template"] = template
        role = _text(raw.get("recipient_role")) or "billing"
        if role not in RECIPIENT_ROLES:
            errors[f"{path}.recipient_role"] = f"must be one of {', '.join(RECIPIENT_ROLES)}, got {role!r}"
        step["recipient_role"] = role
        step["cc_collector"] = _bool(raw.get("cc_collector"))
        step["attach_statement"] = _bool(raw.get("attach_statement"))
        step["approval"] = _validate_rule(raw.get("approval"), errors, f"{path}.approval", allow=("expires_days",))
        variant = _text(raw.get("variant")) or None
        if variant is not None and variant not in variant_names:
            errors[f"{path}.variant"] = f"no variant {variant!r} in this campaign"
        step["variant"] = variant
        steps.append(step)
    spec["steps"] = steps
    if errors:
        raise CampaignInvalid(errors)
    return spec


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def campaign_snapshot(campaign_id: int) -> dict | None:
    """The campaign with its variants and steps as plain JSON (what the audit log keeps)."""
    c = Campaign.get_or_none(Campaign.id == campaign_id)
    if c is None:
        return None
    variants = list(CampaignVariant.select().where(CampaignVariant.campaign == c.id).order_by(CampaignVariant.id))
    names = {v.id: v.name for v in variants}
    steps = CampaignStep.select().where(CampaignStep.campaign == c.id).order_by(CampaignStep.position, CampaignStep.id)
    return {
        "id": c.id, "name": c.name, "description": c.description, "priority": c.priority, "enabled": c.enabled,
        "holdout_percent": c.holdout_percent, "min_invoice_amount": _plain(c.min_invoice_amount),
        "skip_open_renewal_days": c.skip_open_renewal_days, "audience": c.audience or {},
        "variants": [{"id": v.id, "name": v.name, "weight": v.weight} for v in variants],
        "steps": [{"id": s.id, "position": s.position, "name": s.name, "anchor": s.anchor,
                   "offset_days": s.offset_days, "business_days": s.business_days, "window_start": s.window_start,
                   "window_end": s.window_end, "channel": s.channel, "template": s.template,
                   "recipient_role": s.recipient_role, "cc_collector": s.cc_collector,
                   "attach_statement": s.attach_statement, "approval": s.approval,
                   "variant": names.get(s.variant_id)} for s in steps],
    }


def save_campaign(data: dict, *, campaign_id: int | None = None, actor: str) -> Campaign:
    """Create (``campaign_id`` None) or replace a campaign with its variants and steps, validated
    first (:class:`CampaignInvalid`), in one transaction, audited (``campaign.create`` /
    ``campaign.update`` with the whole campaign before and after). Steps and variants given
    with an ``id`` are updated in place (their history keeps pointing at them); those left out
    are deleted; the order given is the steps' order."""
    with database.atomic():
        if campaign_id is not None and Campaign.get_or_none(Campaign.id == campaign_id) is None:
            raise CampaignInvalid({"id": f"no campaign {campaign_id}"})
        spec = validate_campaign(data, campaign_id=campaign_id)
        before = campaign_snapshot(campaign_id) if campaign_id is not None else None
        now = utcnow()
        fields = {k: spec[k] for k in ("name", "description", "priority", "enabled", "holdout_percent",
                                       "min_invoice_amount", "skip_open_renewal_days", "audience")}
        if campaign_id is None:
            campaign = Campaign.create(**fields, created_at=now, updated_at=now)
        else:
            campaign = Campaign.get_by_id(campaign_id)
            for key, value in fields.items():
                setattr(campaign, key, value)
            campaign.updated_at = now
            campaign.save()
        kept_variants = {v["id"] for v in spec["variants"] if v["id"] is not None}
        kept_steps = {s["id"] for s in spec["steps"] if s["id"] is not None}
        # steps first: deleting a variant cascades to its steps, and those must be the ones left out
        CampaignStep.delete().where(CampaignStep.campaign == campaign.id,
                                    CampaignStep.id.not_in(list(kept_steps) or [0])).execute()
        CampaignVariant.delete().where(CampaignVariant.campaign == campaign.id,
                                       CampaignVariant.id.not_in(list(kept_variants) or [0])).execute()
        variant_ids: dict[str, int] = {}
        # two passes so that renaming A→B and B→A in one save does not trip the unique index
        for v in spec["variants"]:
            if v["id"] is not None:
                CampaignVariant.update(name=f"~{v['id']}").where(CampaignVariant.id == v["id"]).execute()
        for v in spec["variants"]:
            if v["id"] is None:
                variant_ids[v["name"]] = CampaignVariant.create(campaign=campaign, name=v["name"],
                                                                weight=v["weight"]).id
            else:
                CampaignVariant.update(name=v["name"], weight=v["weight"]).where(
                    CampaignVariant.id == v["id"]).execute()
                variant_ids[v["name"]] = v["id"]
        for s in spec["steps"]:
            values = {k: s[k] for k in ("position", "name", "anchor", "offset_days", "business_days",
                                        "window_start", "window_end", "channel", "template", "recipient_role",
                                        "cc_collector", "attach_statement", "approval")}
            values["variant"] = variant_ids[s["variant"]] if s["variant"] else None
            if s["id"] is None:
                CampaignStep.create(campaign=campaign, **values)
            else:
                CampaignStep.update(**values).where(CampaignStep.id == s["id"]).execute()
        AuditLog.create(actor=actor, action="campaign.create" if before is None else "campaign.update",
                        object_type="campaign", object_id=str(campaign.id), before=before,
                        after=campaign_snapshot(campaign.id))
    return campaign


def delete_campaign(campaign_id: int, *, actor: str) -> bool:
    """Delete a campaign with its steps and variants (its past actions stay, without campaign); audited."""
    with database.atomic():
        before = campaign_snapshot(campaign_id)
        if before is None:
            return False
        Campaign.delete().where(Campaign.id == campaign_id).execute()
        AuditLog.create(actor=actor, action="campaign.delete", object_type="campaign", object_id=str(campaign_id),
                        before=before, after=None)
    return True


# ---------------------------------------------------------------------------------- templates
def template_snapshot(template: Template | None) -> dict | None:
    if template is None:
        return None
    return {"id": template.id, "name": template.name, "language": template.language, "subject": template.subject,
            "body_text": template.body_text, "body_html": template.body_html}


def _syntax(source: str, errors: dict, path: str, *, html: bool = False) -> None:
    try:
        environment(html=html).parse(source)
    except TemplateSyntaxError as exc:
        errors[path] = f"line {exc.lineno}: {exc.message}"


def validate_template(data: dict, *, template_id: int | None = None) -> dict:
    """A template's ``name``, ``language``, ``subject``, ``body_text``, ``body_html`` checked
    (required fields, Jinja2 syntax, one template per name and language); raises
    :class:`CampaignInvalid` keyed by field."""
    errors: dict[str, str] = {}
    spec = {"name": _text(data.get("name")), "language": _text(data.get("language")) or "en",
            "subject": (data.get("subject") or "").strip(), "body_text": data.get("body_text") or "",
            "body_html": data.get("body_html") or None}
    if not _TEMPLATE_NAME.match(spec["name"]):
        errors["name"] = ("required" if not spec["name"] else
                          "lower-case letters, digits, '.', '_' and '-' only (like overdue-7)")
    if not _LANGUAGE.match(spec["language"]) or parse_locale(spec["language"], default="") == "":
        errors["language"] = f"a language code like en, de or fr_CA, got {spec['language']!r}"
    if not spec["subject"]:
        errors["subject"] = "required"
    if not spec["body_text"].strip():
        errors["body_text"] = "required"
    if spec["body_html"] is not None and not spec["body_html"].strip():
        spec["body_html"] = None
    for key in ("subject", "body_text", "body_html"):
        if spec[key] and key not in errors:
            _syntax(spec[key], errors, key, html=key == "body_html")
    if "name" not in errors and "language" not in errors:
        clash = Template.select(Template.id).where(Template.name == spec["name"], Template.language == spec["language"])
        if template_id is not None:
            clash = clash.where(Template.id != template_id)
        if clash.exists():
            errors["language"] = f"{spec['name']!r} already has a {spec['language']!r} version"
    if errors:
        raise CampaignInvalid(errors)
    return spec


def save_template(data: dict, *, template_id: int | None = None, actor: str) -> Template:
    """Create or update a template, validated first; audited (``template.create``/``template.update``)."""
    with database.atomic():
        template = Template.get_or_none(Template.id == template_id) if template_id is not None else None
        if template_id is not None and template is None:
            raise CampaignInvalid({"id": f"no template {template_id}"})
        spec = validate_template(data, template_id=template_id)
        before = template_snapshot(template)
        if template is None:
            template = Template(**spec)
        else:
            for key, value in spec.items():
                setattr(template, key, value)
        template.updated_at, template.updated_by = utcnow(), actor
        template.save()
        AuditLog.create(actor=actor, action="template.create" if before is None else "template.update",
                        object_type="template", object_id=str(template.id), before=before,
                        after=template_snapshot(template))
    return template


def find_customer(ref: str | int | None) -> Customer | None:
    """A customer by id, number or exact name; without ``ref``, the first one with an open invoice."""
    ref = _text(ref)
    alive = Customer.deleted_at.is_null()
    if not ref:
        first = (Invoice.select(Invoice.customer).where(Invoice.status == InvoiceStatus.OPEN.value,
                                                        Invoice.open_amount > 0, Invoice.deleted_at.is_null())
                 .order_by(Invoice.customer).limit(1).first())
        return Customer.get_or_none(Customer.id == first.customer_id) if first else Customer.select().where(
            alive).order_by(Customer.id).first()
    found = Customer.select().where(Customer.number == ref, alive).order_by(Customer.id).first()
    if found is None and ref.isdigit():
        found = Customer.get_or_none(Customer.id == int(ref))
    if found is None:
        found = Customer.select().where(Customer.name == ref, alive).order_by(Customer.id).first()
    return found


def preview_template(subject: str, body_text: str, body_html: str | None, customer: Customer, *,
                     language: str = "en", as_of: date | None = None, pay_url: str | None = None,
                     invoice_limit: int = 200) -> dict:
    """Render a draft for ``customer`` as its next reminder would be: its open invoices (the
    oldest ``invoice_limit`` by due date), its billing contact, the context of
    :func:`template_context`, in the sandbox. Returns ``{"subject", "text", "html", "errors",
    "locale"}``: each part that fails is None with its error under the field's name (an
    unknown variable, a forbidden attribute, a syntax error), never an exception."""
    from ..sf_pull import merged_contacts
    from .context import template_context

    locale = parse_locale(customer.locale)
    if locale.split("_")[0] != language.split("_")[0]:
        locale = parse_locale(language)
    invoice_ids = [i for (i,) in Invoice.select(Invoice.id).where(
        Invoice.customer == customer.id, Invoice.status == InvoiceStatus.OPEN.value, Invoice.open_amount > 0,
        Invoice.deleted_at.is_null()).order_by(Invoice.due_date, Invoice.id).limit(invoice_limit).tuples()]
    contacts = [c for c in merged_contacts(customer) if c.get("email")]
    billing = next((c for c in contacts if c.get("role") == "billing"), contacts[0] if contacts else None)
    probe = DunningAction(customer=customer.id, invoice_ids=invoice_ids, planned_for=as_of or date.today(),
                          to_address=billing["email"] if billing else None)
    context = template_context(probe, pay_url=pay_url)
    out: dict[str, Any] = {"subject": None, "text": None, "html": None, "errors": {}, "locale": locale}
    for key, field, source, html in (("subject", "subject", subject, False), ("text", "body_text", body_text, False),
                                     ("html", "body_html", body_html, True)):
        if not source:
            continue
        try:
            out[key] = render_string(source, context, locale=locale, html=html, name=field)
        except TemplateRenderError as exc:
            out["errors"][field] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a filter given a wrong type: shown to the editor, not a 500
            out["errors"][field] = f"{field}: {type(exc).__name__}: {exc}"
    if out["subject"] is not None:
        out["subject"] = " ".join(out["subject"].split())
    return out
