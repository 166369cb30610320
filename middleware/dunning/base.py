"""Shared constants and errors of the dunning planner."""
from __future__ import annotations

from datetime import timezone
from decimal import Decimal

from ..models import ActionStatus


UTC = timezone.utc
ZERO = Decimal(0)
CENT = Decimal("0.0001")
OPPORTUNITY_TYPES = ("Renewal", "Expansion")
ANCHORS = ("issue", "sent", "due", "previous", "promise")
FIXED_ANCHORS = ("issue", "sent", "due")
CATCH_UP_DAYS = 3
CHUNK = 900
_PLAN_LOCK = 0x64756E6E  # "dunn": serialises the write phase of concurrent planners on PostgreSQL
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: statuses an action can be skipped from by a person
OPEN_STATUSES = (ActionStatus.PLANNED.value, ActionStatus.PENDING_APPROVAL.value, ActionStatus.APPROVED.value,
                 ActionStatus.TASK.value)


class DunningError(ValueError):
    """A campaign, audience rule or action request that cannot be honoured (the message says why)."""


class ActionStateError(DunningError):
    """An approval, rejection or skip on an action that is not (or no longer) in a state that allows it."""
