"""Approve, reject, skip and expire pending actions."""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

from ..db import database
from ..models import ActionStatus, AuditLog, DunningAction, utcnow
from .base import ActionStateError, DunningError, OPEN_STATUSES


# ---------------------------------------------------------------------------------- approvals
def _transition(action_id: int, actor: str, from_statuses: Sequence[str], changes: dict, *,
                now: datetime | None = None, check_expiry: bool = False) -> DunningAction:
    """Move an action to a new state with one conditional UPDATE (two people acting at once:
    one wins, the other gets :class:`ActionStateError`), and record it in the audit log."""
    now = now or utcnow()
    with database.atomic():
        before = DunningAction.get_or_none(DunningAction.id == action_id)
        if before is None:
            raise ActionStateError(f"dunning action {action_id} does not exist")
        query = DunningAction.update(**changes, decided_by=actor, decided_at=now, updated_at=now).where(
            DunningAction.id == action_id, DunningAction.status.in_(list(from_statuses)))
        if check_expiry:
            query = query.where(DunningAction.expires_at.is_null() | (DunningAction.expires_at > now))
        if query.execute() != 1:
            current = DunningAction.get_by_id(action_id)
            if current.status in from_statuses and check_expiry:
                raise ActionStateError(f"dunning action {action_id}: the approval expired at {current.expires_at}")
            raise ActionStateError(f"dunning action {action_id} is {current.status}, not "
                                   f"{' or '.join(from_statuses)}")
        after = DunningAction.get_by_id(action_id)
        fields_ = ("status", "reason", "to_address", "cc", "send_after", "invoice_ids", "channel")
        AuditLog.create(actor=actor, action=f"dunning.{changes.get('status', 'edit')}",
                        object_type="dunning_action", object_id=str(action_id),
                        before={f: getattr(before, f) for f in fields_}, after={f: getattr(after, f) for f in fields_})
    return after


EDITABLE = ("to_address", "cc", "send_after", "invoice_ids")


def approve(action_id: int, actor: str, edits: dict | None = None, *, now: datetime | None = None) -> DunningAction:
    """Approve a pending action (status ``approved``), optionally editing the recipient, the cc
    list, the sending time or narrowing the invoices. Refused once it expired."""
    edits = dict(edits or {})
    unknown = set(edits) - set(EDITABLE)
    if unknown:
        raise DunningError(f"cannot edit {', '.join(sorted(unknown))} (editable: {', '.join(EDITABLE)})")
    if "invoice_ids" in edits:
        current = DunningAction.get_by_id(action_id).invoice_ids
        ids = sorted(set(int(i) for i in edits["invoice_ids"]))
        if not ids or not set(ids) <= set(current):
            raise DunningError("invoice_ids must be a non-empty subset of the action's invoices")
        edits["invoice_ids"] = ids
    if "cc" in edits:
        edits["cc"] = list(edits["cc"])
    return _transition(action_id, actor, [ActionStatus.PENDING_APPROVAL.value],
                       {"status": ActionStatus.APPROVED.value, **edits}, now=now, check_expiry=True)


def reject(action_id: int, actor: str, reason: str, *, now: datetime | None = None) -> DunningAction:
    """Reject a pending action: it becomes ``skipped`` with "rejected by <actor>: <reason>"."""
    return _transition(action_id, actor, [ActionStatus.PENDING_APPROVAL.value],
                       {"status": ActionStatus.SKIPPED.value, "reason": f"rejected by {actor}: {reason}"}, now=now)


def skip(action_id: int, actor: str, reason: str, *, now: datetime | None = None) -> DunningAction:
    """Skip an action not sent yet (planned, pending, approved or a task): "skipped by <actor>: <reason>"."""
    return _transition(action_id, actor, OPEN_STATUSES,
                       {"status": ActionStatus.SKIPPED.value, "reason": f"skipped by {actor}: {reason}"}, now=now)


def expire_pending(now: datetime | None = None) -> int:
    """Pending approvals whose ``expires_at`` has passed become ``expired``; returns how many."""
    now = now or utcnow()
    return (DunningAction.update(status=ActionStatus.EXPIRED.value, reason="approval expired before anyone decided",
                                 updated_at=now)
            .where(DunningAction.status == ActionStatus.PENDING_APPROVAL.value, DunningAction.expires_at <= now)
            .execute())
