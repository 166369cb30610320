"""Sending days (business days minus holidays) and send windows in the recipient's time zone."""
from __future__ import annotations

import zoneinfo
from datetime import date, datetime, time, timedelta
from typing import Any, Iterable

from ..models import Company
from .base import DunningError, UTC, WEEKDAYS


# ---------------------------------------------------------------------------------- calendar
class Calendar:
    """Sending days: the company's business days (``"Mon,Tue,..."``) minus its holidays (ISO dates)."""

    def __init__(self, business_days: str = "Mon,Tue,Wed,Thu,Fri", holidays: Iterable[str | date] = ()):
        names = [p.strip().lower()[:3] for p in (business_days or "").split(",") if p.strip()]
        unknown = [n for n in names if n not in WEEKDAYS]
        if unknown or not names:
            raise DunningError(f"company business_days {business_days!r}: expected names like Mon,Tue,...")
        self.weekdays = frozenset(WEEKDAYS.index(n) for n in names)
        self.holidays = frozenset(h if isinstance(h, date) else date.fromisoformat(str(h)) for h in holidays or ())

    @classmethod
    def of(cls, company: Company) -> "Calendar":
        return cls(company.business_days, company.holidays or ())

    def is_sending_day(self, day: date) -> bool:
        return day.weekday() in self.weekdays and day not in self.holidays

    def next_sending_day(self, day: date) -> date:
        """The first sending day on or after ``day``."""
        for _ in range(400):
            if self.is_sending_day(day):
                return day
            day += timedelta(days=1)
        raise DunningError("no sending day within 400 days: check the company's business days and holidays")

    def add_sending_days(self, day: date, n: int) -> date:
        """``n`` sending days after (negative: before) ``day``."""
        step = 1 if n >= 0 else -1
        for _ in range(abs(n)):
            day += timedelta(days=step)
            while not self.is_sending_day(day):
                day += timedelta(days=step)
        return day

    def step_day(self, anchor: date, offset: int, business: bool) -> date:
        """When a step anchored on ``anchor`` is due: the first sending day ≥ anchor + offset."""
        day = self.add_sending_days(anchor, offset) if business else anchor + timedelta(days=offset)
        return self.next_sending_day(day)


def window_start_utc(day: date, window_start: str, tz_name: str | None, fallback_tz: str = "UTC") -> datetime:
    """``window_start`` ("HH:MM") on ``day`` in ``tz_name`` (else ``fallback_tz``), as aware UTC."""
    zone = _zone(tz_name) or _zone(fallback_tz) or UTC
    hour, minute = (int(p) for p in (window_start or "09:00").split(":")[:2])
    return datetime.combine(day, time(hour, minute), tzinfo=zone).astimezone(UTC)


_ZONES: dict[str, Any] = {}


def _zone(name: str | None):
    if not name:
        return None
    if name not in _ZONES:
        try:
            _ZONES[name] = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            _ZONES[name] = None
    return _ZONES[name]
