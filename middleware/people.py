"""People: users and their roles, passwords, cover while away, and each collector's workload.

- Emails are the identity (stored lower-case); customers name their collector by email.
- Passwords are stored only as werkzeug hashes (scrypt, salted); the password itself is never
  stored, logged or audited. :func:`verify_password` spends the same time on an unknown email.
- **Away and cover.** :func:`set_away` marks a user away through ``until`` (inclusive: back
  on the next day, with nothing to undo) and names a colleague who covers. While away, their
  accounts, approvals and replies go to :func:`effective_collector`: the cover, or the cover's
  cover when that colleague is away too. A chain that ends at someone away without cover, at
  an inactive user, or loops back on itself resolves to ``None``: the team queue. The
  assignment itself (``Customer.collector``) never changes, so nothing has to move back.
- :func:`workload`: customers and open amount per collector and for the team queue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from peewee import JOIN
from werkzeug.security import check_password_hash, generate_password_hash

from .ar import OPEN_STATUSES
from .bulk import placeholders, to_decimal
from .db import database
from .models import AuditLog, Role, User, utcnow

MIN_PASSWORD_LENGTH = 8
PASSWORD_METHOD = "scrypt"  # werkzeug's default: salted scrypt (n=2**15, r=8, p=1)
ROLES = tuple(r.value for r in Role)


class PeopleError(ValueError):
    """A request about people that cannot be honoured (unknown user, bad role, weak password)."""


def normalize_email(email: str | None) -> str:
    text = (email or "").strip().lower()
    local, at, domain = text.partition("@")
    if not at or not local or "." not in domain or any(ch.isspace() for ch in text):
        raise PeopleError(f"{email!r} is not an email address")
    return text


def _role(role) -> str:
    value = role.value if isinstance(role, Role) else str(role or "").strip().lower()
    if value not in ROLES:
        raise PeopleError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    return value


def _hash(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise PeopleError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    return generate_password_hash(password, method=PASSWORD_METHOD)


def _public(user: User) -> dict:
    """What the audit log may keep about a user (never the password hash)."""
    return {"email": user.email, "name": user.name, "role": user.role, "active": user.active,
            "away_until": user.away_until.isoformat() if user.away_until else None,
            "cover": user.cover.email if user.cover_id else None}


def get_user(email: str) -> User | None:
    try:
        return User.get_or_none(User.email == normalize_email(email))
    except PeopleError:
        return None


def _require(email: str) -> User:
    user = get_user(email)
    if user is None:
        raise PeopleError(f"no user {email!r}")
    return user


def list_users() -> list[User]:
    return list(User.select().order_by(User.email))


def create_user(email: str, name: str, role: str | Role = Role.COLLECTOR, password: str | None = None, *,
                actor: str = "system") -> User:
    """A new user; ``password`` (optional: a user without one cannot log in yet) is hashed."""
    email, role = normalize_email(email), _role(role)
    name = (name or "").strip()
    if not name:
        raise PeopleError("a user needs a name")
    password_hash = _hash(password) if password is not None else None
    with database.atomic():
        if User.select().where(User.email == email).exists():
            raise PeopleError(f"user {email} already exists")
        user = User.create(email=email, name=name, role=role, password_hash=password_hash)
        AuditLog.create(actor=actor, action="user.create", object_type="user", object_id=email, before=None,
                        after={**_public(user), "password_set": password_hash is not None})
    return user


def set_password(email: str, password: str, *, actor: str = "system") -> None:
    user = _require(email)
    password_hash = _hash(password)
    with database.atomic():
        User.update(password_hash=password_hash, updated_at=utcnow()).where(User.id == user.id).execute()
        AuditLog.create(actor=actor, action="user.password", object_type="user", object_id=user.email,
                        before=None, after={"password_set": True})


_DUMMY_HASH: list[str] = []


def authenticate(email: str, password: str) -> User | None:
    """The active user with this email and password, else ``None`` (same work either way)."""
    user = get_user(email)
    if user is None or not user.password_hash:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(generate_password_hash("arhub-no-such-user", method=PASSWORD_METHOD))
        check_password_hash(_DUMMY_HASH[0], password or "")
        return None
    if not check_password_hash(user.password_hash, password or ""):
        return None
    return user if user.active else None


def verify_password(email: str, password: str) -> bool:
    return authenticate(email, password) is not None


def set_away(email: str, until: date | None, cover_email: str | None = None, *, actor: str = "system") -> User:
    """``email`` is away through ``until`` (inclusive); ``cover_email`` covers meanwhile (none:
    the team queue). ``until=None`` ends the absence now. Audited."""
    user = _require(email)
    cover = None
    if until is not None and cover_email:
        cover = _require(cover_email)
        if cover.id == user.id:
            raise PeopleError(f"{user.email} cannot cover for themselves")
        if not cover.active:
            raise PeopleError(f"{cover.email} is inactive and cannot cover")
    with database.atomic():
        before = _public(user)
        user.away_until = until
        user.cover = cover
        user.updated_at = utcnow()
        user.save()
        AuditLog.create(actor=actor, action="user.away", object_type="user", object_id=user.email, before=before,
                        after=_public(user))
    return user


def _availability() -> dict[str, tuple[bool, date | None, str | None]]:
    covers = User.alias()
    query = (User.select(User.email, User.active, User.away_until, covers.email)
             .join(covers, JOIN.LEFT_OUTER, on=(User.cover == covers.id)).tuples())
    return {email: (active, away_until, cover) for email, active, away_until, cover in query}


def _resolve(email: str, on: date, users: dict) -> str | None:
    seen: set[str] = set()
    current = email
    while True:
        info = users.get(current)
        if info is None:
            return current  # not a user of arhub: the assignment stands as it is
        active, away_until, cover = info
        if active and (away_until is None or on > away_until):
            return current
        seen.add(current)
        if cover is None or cover in seen:
            return None
        current = cover


def today() -> date:
    """Today in the company's time zone (``ARHUB_TIMEZONE``): the day an absence is checked against."""
    from .settings import get_settings

    return datetime.now(get_settings().tzinfo).date()


def effective_collector(email: str | None, on: date | None = None) -> str | None:
    """Who handles ``email``'s accounts, approvals and replies on ``on`` (default: :func:`today`):
    ``email`` itself, the colleague covering, or ``None`` for the team queue."""
    if not email:
        return None
    on = on or today()
    return _resolve(email.strip().lower(), on, _availability())


def cover_map(on: date | None = None) -> dict[str, str | None]:
    """``{email: who handles their work}`` for every user unavailable on ``on`` (away or
    inactive); users not listed handle their own. For bulk routing (inbox, dunning, queue)."""
    on = on or today()
    users = _availability()
    return {email: _resolve(email, on, users) for email, (active, away_until, _) in users.items()
            if not active or (away_until is not None and on <= away_until)}


@dataclass
class Workload:
    collector: str | None  # None: the team queue
    name: str | None = None
    customers: int = 0
    open_invoices: int = 0
    open_amount: Decimal = Decimal("0.0000")  # reporting currency, closing rate
    fx_missing: int = 0  # open invoices without a reporting amount (not in open_amount)
    away_until: date | None = None
    covered_by: str | None = None  # who handles the work while away (effective view only)
    covering_for: list = field(default_factory=list)  # effective view: whose books are counted here


def workload(on: date | None = None, *, effective: bool = False) -> list[Workload]:
    """Live customers, open invoices and open amount (reporting currency) per collector, every
    active collector listed even with nothing; the team queue (``collector=None``) last.
    ``effective=True`` counts the books of people away on ``on`` under whoever covers them."""
    on = on or today()
    users = {u.email: u for u in User.select()}
    rows: dict[str | None, Workload] = {}

    def row(email: str | None) -> Workload:
        if email not in rows:
            user = users.get(email) if email else None
            rows[email] = Workload(email, name=user.name if user else None,
                                   away_until=user.away_until if user and user.away_until and user.away_until >= on
                                   else None)
        return rows[email]

    for email, user in users.items():
        if user.active and user.role == Role.COLLECTOR.value:
            row(email)
    row(None)
    moved = cover_map(on) if effective else {}
    for email, count in database.execute_sql(
            'SELECT "collector", COUNT(*) FROM "customer" WHERE "deleted_at" IS NULL GROUP BY "collector"').fetchall():
        row(email).customers += count
    sql = (f'SELECT c."collector", COUNT(*), SUM(i."open_amount_reporting"), '
           f'SUM(CASE WHEN i."open_amount_reporting" IS NULL THEN 1 ELSE 0 END) '
           f'FROM "invoice" i JOIN "customer" c ON c."id" = i."customer_id" '
           f'WHERE i."deleted_at" IS NULL AND c."deleted_at" IS NULL AND i."open_amount" > 0 '
           f'AND i."status" IN ({placeholders(len(OPEN_STATUSES))}) GROUP BY c."collector"')
    for email, count, total, missing in database.execute_sql(sql, OPEN_STATUSES).fetchall():
        r = row(email)
        r.open_invoices += count
        r.open_amount += (to_decimal(total) or Decimal(0)).quantize(Decimal("0.0001"))
        r.fx_missing += missing or 0
    if effective:
        for email, target in moved.items():
            if email not in rows:
                continue
            source = rows.pop(email)
            source_target = row(target)
            source_target.customers += source.customers
            source_target.open_invoices += source.open_invoices
            source_target.open_amount += source.open_amount
            source_target.fx_missing += source.fx_missing
            source_target.covering_for.append(email)
            rows[email] = Workload(email, name=source.name, away_until=source.away_until, covered_by=target)
    return sorted(rows.values(), key=lambda w: (w.collector is None, w.collector or ""))
