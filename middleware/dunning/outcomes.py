"""A/B: stable variant assignment and per-variant outcomes with confidence intervals."""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Sequence

from peewee import chunked

from ..bulk import placeholders, to_decimal
from ..db import database
from ..models import ActionStatus, CampaignVariant, DunningAction
from .base import CHUNK, ZERO
from .campaigns import _day


# ---------------------------------------------------------------------------------- A/B
def _unit(*parts) -> float:
    """A stable number in [0, 1) from ``parts`` (sha256), the same in every process and run."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:13], 16) / float(16 ** 13)


def assign_variant(customer_id: int, campaign_id: int, holdout_percent: int,
                   variants: Sequence[tuple[int, int]]) -> tuple[int | None, bool]:
    """``(variant id or None, held out)`` for a customer in a campaign. ``variants`` are
    ``(id, weight)``. Stable: a hash of (campaign id, customer id), never a random draw; the
    holdout and the variant use independent hashes, so changing the holdout share does not
    reshuffle the variants."""
    if holdout_percent and _unit("holdout", campaign_id, customer_id) * 100 < holdout_percent:
        return None, True
    weighted = [(vid, w) for vid, w in sorted(variants) if w > 0]
    if not weighted:
        return None, False
    point = _unit("variant", campaign_id, customer_id) * sum(w for _, w in weighted)
    for vid, weight in weighted:
        if point < weight:
            return vid, False
        point -= weight
    return weighted[-1][0], False


# ---------------------------------------------------------------------------------- A/B outcomes
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = statistics.NormalDist().inv_cdf(0.975)


def t975(df: int) -> float:
    """Student's t 97.5% quantile: exact table to 30 degrees of freedom, then a Cornish-Fisher
    expansion around the normal quantile (error < 0.001)."""
    if df <= 30:
        return T975[df - 1]
    z = Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Estimate:
    """A share or a mean with its 95% confidence interval (None when n is too small)."""
    value: float | None
    low: float | None
    high: float | None
    n: int


def wilson(successes: int, n: int) -> Estimate:
    """A share with Wilson's 95% score interval (sound near 0 and 1 and for small n)."""
    if n == 0:
        return Estimate(None, None, None, 0)
    p, z = successes / n, Z975
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_ci(values: Sequence[float]) -> Estimate:
    """A mean with a Student-t 95% interval (the normal one for large n)."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, None, 0)
    mean = statistics.fmean(values)
    if n == 1:
        return Estimate(mean, None, None, 1)
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


@dataclass
class VariantOutcome:
    group: str  # a variant's name, "holdout", or "all" for a campaign without variants
    customers: int
    invoices: int
    paid_within: Estimate  # share of invoices paid within N days of due (those whose due + N has passed)
    days_to_pay: Estimate  # paid invoices: paid on − issue date
    days_late: Estimate  # invoices due by as_of: (paid on, or as_of when unpaid) − due, at least 0
    paid_date_unknown: int = 0  # closed without applications: no date to measure


def variant_outcomes(campaign_id: int, as_of: date, *, within_days: int = 0) -> list[VariantOutcome]:
    """Outcomes per variant and holdout of the customers a campaign planned for up to ``as_of``.
    An invoice belongs to the group of the first action that listed it; its paid date is the
    date its applications (payments, credit memos, dated ≤ as_of) reached its amount."""
    names = {v.id: v.name for v in CampaignVariant.select().where(CampaignVariant.campaign == campaign_id)}
    group_of_invoice: dict[int, str] = {}
    customers: dict[str, set] = defaultdict(set)
    query = (DunningAction.select(DunningAction.customer, DunningAction.variant, DunningAction.status,
                                  DunningAction.reason, DunningAction.invoice_ids)
             .where(DunningAction.campaign == campaign_id, DunningAction.planned_for <= as_of)
             .order_by(DunningAction.planned_for, DunningAction.id).tuples())
    for cid, vid, status, reason, invoice_ids in query.iterator():
        ids = json.loads(invoice_ids) if isinstance(invoice_ids, str) else invoice_ids
        group = "holdout" if status == ActionStatus.SKIPPED.value and reason == "holdout" else (
            names.get(vid, "all") if vid else "all")
        customers[group].add(cid)
        for iid in ids:
            group_of_invoice.setdefault(iid, group)
    invoices: dict[int, tuple] = {}
    applied: dict[int, list] = defaultdict(list)
    ids = sorted(group_of_invoice)
    for part in chunked(ids, CHUNK):
        ph = placeholders(len(part))
        for row in database.execute_sql(
                f'SELECT "id", "amount", "issue_date", "due_date", "status" FROM "invoice" WHERE "id" IN ({ph})',
                part).fetchall():
            invoices[row[0]] = (to_decimal(row[1]), _day(row[2]), _day(row[3]), row[4])
        for iid, amount, day in database.execute_sql(
                f'SELECT "invoice_id", "amount", "date" FROM "application" WHERE "invoice_id" IN ({ph})',
                part).fetchall():
            applied[iid].append((_day(day), to_decimal(amount)))
    stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for iid, group in group_of_invoice.items():
        if iid not in invoices or invoices[iid][3] in ("voided", "deleted"):
            continue
        amount, issued, due, status = invoices[iid]
        paid_on, total = None, ZERO
        for day, value in sorted(applied.get(iid, ())):
            if day > as_of:
                break
            total += value
            if total >= amount:
                paid_on = day
                break
        s = stats[group]
        s["invoices"].append(iid)
        if paid_on is None and status == "paid":
            s["unknown"].append(iid)
            continue
        if due + timedelta(days=within_days) <= as_of:
            s["within"].append(paid_on is not None and paid_on <= due + timedelta(days=within_days))
        if paid_on is not None:
            s["to_pay"].append((paid_on - issued).days)
        if due <= as_of:
            s["late"].append(max(0, ((paid_on or as_of) - due).days))
    order = sorted(set(customers) | set(stats), key=lambda g: (g == "holdout", g))
    return [VariantOutcome(g, len(customers[g]), len(stats[g]["invoices"]),
                           wilson(sum(stats[g]["within"]), len(stats[g]["within"])),
                           mean_ci([float(v) for v in stats[g]["to_pay"]]),
                           mean_ci([float(v) for v in stats[g]["late"]]), len(stats[g]["unknown"]))
            for g in order]
