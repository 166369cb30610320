"""Dunning: campaigns (audience + steps) → planned actions, deterministic and idempotent.

Who: every customer with open invoices is in exactly one enabled campaign, the one of lowest
``priority`` (then lowest id) whose ``audience`` rule it matches (:func:`check_audience`).
What and when: each step of that campaign (and of the customer's A/B variant) counts
``offset_days`` (calendar or business days) from its anchor (issue, sent, due, the previous
step, a promise to pay); the action is due on the first sending day on or after that date
(the company's business days minus its holidays) and is sent from the start of the step's
window in the recipient's time zone. One action per customer, step and day lists all the
invoices at that step. Exclusions are actions too (status ``skipped`` with a human reason),
so the console's timeline shows why nothing went out.

:func:`plan` loads what it needs in a few bulk queries, computes in dicts, and inserts with
``ON CONFLICT (key) DO NOTHING``: the key hashes (customer, sorted invoice ids, step,
variant, date), so planning twice, or in two processes at once, writes each action once.
See docs/dunning.md.

The package's modules: ``base`` (constants, errors), ``calendar`` (sending days, windows),
``audience`` (audience rules), ``campaigns`` (plan types, keys, campaign loading), ``planner``
(:func:`plan`), ``explain``, ``approvals``, ``outcomes`` (A/B), ``seed`` and ``context``
(:func:`template_context`). Everything public is re-exported here.
"""
from __future__ import annotations

from .base import (
    ANCHORS, ActionStateError, CATCH_UP_DAYS, CENT, CHUNK, DunningError, FIXED_ANCHORS, OPEN_STATUSES,
    OPPORTUNITY_TYPES, UTC, WEEKDAYS, ZERO,
)
from .calendar import Calendar, window_start_utc
from .audience import AUDIENCE_KEYS, Check, Facts, check_audience, compile_audience, validate_audience
from .outcomes import Estimate, T975, VariantOutcome, Z975, assign_variant, mean_ci, t975, variant_outcomes, wilson
from .campaigns import PlanResult, PlannedAction, action_key, load_campaigns
from .planner import plan
from .explain import CampaignCheck, Explanation, StepLine, explain
from .approvals import EDITABLE, approve, expire_pending, reject, skip
from .seed import DEFAULT_CAMPAIGN, DEFAULT_STEPS, DEFAULT_TEMPLATES, default_template_rows, seed_default_campaign
from .context import template_context

__all__ = [
    "ANCHORS", "ActionStateError", "CATCH_UP_DAYS", "CENT", "CHUNK", "DunningError", "FIXED_ANCHORS", "OPEN_STATUSES",
    "OPPORTUNITY_TYPES", "UTC", "WEEKDAYS", "ZERO", "Calendar", "window_start_utc", "AUDIENCE_KEYS", "Check", "Facts",
    "check_audience", "compile_audience", "validate_audience", "Estimate", "T975", "VariantOutcome", "Z975",
    "assign_variant", "mean_ci", "t975", "variant_outcomes", "wilson", "PlanResult", "PlannedAction", "action_key",
    "load_campaigns", "plan", "CampaignCheck", "Explanation", "StepLine", "explain", "EDITABLE", "approve",
    "expire_pending", "reject", "skip", "DEFAULT_CAMPAIGN", "DEFAULT_STEPS", "DEFAULT_TEMPLATES",
    "default_template_rows", "seed_default_campaign", "template_context",
]
