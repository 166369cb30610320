"""The audit log: every audited change (campaigns, mappings, templates, users, ops actions), read-only."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from flask import request
from flask_admin import expose

from console.views.base import SecureView
from console.views.ops.common import PAGE_SIZE, helpers, pretty, user_tz

_MISSING = object()
#: object types offered in the filter (any other can be typed: a DISTINCT would scan the whole log)
KNOWN_TYPES = ("assignment_rule", "campaign", "customer", "dunning_action", "job", "mapping", "message", "rules",
               "source", "template", "user")


def changes(before, after) -> list[dict]:
    """The keys whose value differs between ``before`` and ``after`` (dicts), with both values;
    anything else (a creation, a deletion, a list) is one row for the whole value."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key, _MISSING), after.get(key, _MISSING)
            if old != new:
                out.append({"key": key, "before": None if old is _MISSING else pretty(old),
                            "after": None if new is _MISSING else pretty(new),
                            "added": old is _MISSING, "removed": new is _MISSING})
        return out
    if before is None and after is None:
        return []
    return [{"key": "", "before": None if before is None else pretty(before),
             "after": None if after is None else pretty(after), "added": before is None, "removed": after is None}]


def _day(raw: str | None) -> date | None:
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        return None


class AuditView(SecureView):
    permission = "view"

    @expose("/")
    def index(self):
        """Newest first; filters: actor (contains), object type, object id, from and to dates (the user's zone)."""
        from middleware.models import AuditLog

        actor = (request.args.get("actor") or "").strip()
        object_type = (request.args.get("object_type") or "").strip()
        object_id = (request.args.get("object_id") or "").strip()
        day_from, day_to = _day(request.args.get("from")), _day(request.args.get("to"))
        page = max(request.args.get("page", 1, type=int) or 1, 1)
        query = AuditLog.select().order_by(AuditLog.at.desc(), AuditLog.id.desc())
        if actor:
            query = query.where(AuditLog.actor.contains(actor))
        if object_type:
            query = query.where(AuditLog.object_type == object_type)
        if object_id:
            query = query.where(AuditLog.object_id == object_id)
        tz = user_tz()
        if day_from:
            query = query.where(AuditLog.at >= datetime.combine(day_from, time.min, tz).astimezone(timezone.utc))
        if day_to:
            query = query.where(AuditLog.at < datetime.combine(day_to + timedelta(days=1), time.min, tz)
                                .astimezone(timezone.utc))
        entries = list(query.limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE))
        rows = [{"entry": e, "changes": changes(e.before, e.after)} for e in entries[:PAGE_SIZE]]
        args = {k: v for k, v in (("actor", actor), ("object_type", object_type), ("object_id", object_id),
                                  ("from", request.args.get("from") or ""), ("to", request.args.get("to") or "")) if v}
        return self.render("console/ops/audit.html", rows=rows, more=len(entries) > PAGE_SIZE, page=page,
                           types=KNOWN_TYPES, args=args, **helpers())
