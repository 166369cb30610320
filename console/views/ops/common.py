"""Helpers shared by the ops pages: permission checks for actions, times, paging, audit rows."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from flask import abort
from flask_login import current_user

from console.auth import PERMISSIONS, can

PAGE_SIZE = 50


def require_manage() -> None:
    """Actions (run now, retry, cancel) are for admins: 403 for anyone else."""
    if not can("manage"):
        abort(403, description=f"Your role ({current_user.role}) may not do this: it needs "
                               f"{' or '.join(sorted(PERMISSIONS['manage']))}.")


def user_tz():
    try:
        return ZoneInfo(getattr(current_user, "timezone", None) or "UTC")
    except (KeyError, ValueError):
        return timezone.utc


def when(value: datetime | None) -> str:
    """A UTC time in the signed-in user's time zone."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(user_tz()).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return ""
    seconds = int((end - start).total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def safe_next(target: str | None) -> str | None:
    """A path on this site to go back to after an action (never another host)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def pretty(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def audit(action: str, object_type: str, object_id: str, before=None, after=None) -> None:
    from middleware.models import AuditLog

    AuditLog.create(actor=current_user.email, action=action, object_type=object_type, object_id=object_id,
                    before=before, after=after)


def helpers() -> dict:
    """Functions the ops templates use."""
    return {"when": when, "duration": duration, "pretty": pretty}
