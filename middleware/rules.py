"""Assignment rules: tags, segments and collectors from what the store knows about each customer.

An :class:`~middleware.models.AssignmentRule` has a ``kind`` (``tag``, ``segment``,
``collector``), a ``priority`` (lowest first), ``conditions`` (all must hold) and a ``value``
(the tag name, the segment, the collector's email). :func:`apply_rules` evaluates every
enabled rule over every live customer in one pass and writes only the differences, in bulk:

- **tags**: every matching tag rule adds its tag (origin ``rule:<rule name>``); a rule tag that
  no longer matches goes. Manual tags and Salesforce tag rules' (``rule:sf:<name>``) are never touched.
- **segment**: the first matching segment rule by priority; no match: no segment.
- **collector**: the first matching collector rule by priority; no match: no collector, i.e.
  the customer sits in the **team queue** (:func:`team_queue`).

Evaluation order is tags, then segments, then collectors; each stage sees the results of the
stages before it. Tag rules see the customer's manual and Salesforce tags (not other rule
tags) and may not test ``segment``, so one run reaches the final state and a second changes nothing.

**People win over rules.** :func:`assign_collector` and :func:`set_segment` record a person's
choice as an open :class:`~middleware.models.Activity` (kind ``assign`` / ``segment``, ``body``
the value, ``resolved_at`` empty while it holds): rule runs leave such values alone until
:func:`release_collector` / :func:`release_segment`. A column written directly is not a hold.

Every change is audited (``AuditLog``: actor, before, after). Writers serialise on one lock and
re-read what they are about to change (:func:`_writing`): a person's choice made mid-run is kept.

Fields: ``arr``, ``arr_reporting``, ``open_balance``, ``terms_days``, ``country``, ``region``
(:data:`REGIONS`), ``billing_currency``, ``segment``, ``name``, ``number``, ``locale``, ``tags``,
``account_type``, ``sf_owner_email`` and ``sf.<Field>`` (the linked Salesforce account's pulled
fields); ops ``=``, ``!=``, ``in``, ``not in``, ``>=``, ``>``, ``<=``, ``<``, ``contains``,
``exists``. Their exact meaning, the defaults and examples: docs/collectors-and-rules.md.
"""
from __future__ import annotations

import operator
import re
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import Enum
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Sequence

from peewee import chunked

from .ar import OPEN_STATUSES
from .bulk import placeholders, to_decimal, update_many, upsert
from .db import database, is_sqlite
from .locks import exclusive
from .models import Activity, AssignmentRule, AuditLog, Customer, CustomerTag, Tag, utcnow
from .people import PeopleError, cover_map, normalize_email

UTC = timezone.utc


class RuleError(ValueError):
    """A rule that cannot be evaluated (unknown field or op, a value of the wrong shape)."""


class RuleKind(str, Enum):
    TAG = "tag"
    SEGMENT = "segment"
    COLLECTOR = "collector"


#: Activity kinds that hold a person's choice against the rules (open while ``resolved_at`` is empty).
HOLD_COLLECTOR = "assign"
HOLD_SEGMENT = "segment"

RULE_ORIGIN = "rule:"
SF_ORIGIN = "rule:sf:"  # Salesforce tag rules (sf_pull.apply_tag_rules): not ours, never touched
SF_FIELD = "sf."

# -- regions ------------------------------------------------------------------------
_NA = "US CA PR VI UM BM PM"
_LATAM = ("MX GT BZ SV HN NI CR PA CU DO HT JM TT BS BB AG DM GD KN LC VC AW CW SX BQ KY TC VG AI MS GP MQ BL MF "
          "CO VE EC PE BO BR PY UY AR CL GY SR GF FK")
_APAC = ("CN HK MO TW JP KR KP MN IN PK BD LK NP BT MV AF SG MY ID TH VN PH MM KH LA BN TL AU NZ PG FJ SB VU NC PF "
         "WS TO KI TV NR FM MH PW GU MP AS CK NU TK WF NF CX CC")
_EMEA = ("AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB UK GG GI GL GR HR HU IE IM IS IT JE LI LT LU LV "
         "MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK "
         "AE BH IL IQ IR JO KW LB OM PS QA SA SY TR YE AM AZ GE KZ KG TJ TM UZ "
         "DZ AO BJ BW BF BI CM CV CF TD KM CG CD CI DJ EG GQ ER SZ ET GA GM GH GN GW KE LS LR LY MG MW ML MR MU "
         "YT MA MZ NA NE NG RE RW SH ST SN SC SL SO ZA SS SD TZ TG TN UG EH ZM ZW")
#: Country (ISO 3166 alpha-2) → sales region. Mexico, Central America and the Caribbean are LATAM;
#: Central Asia and the Caucasus are EMEA; South Asia is APAC. A country not listed has no region.
REGIONS: dict[str, str] = {c: region for region, codes in (("NA", _NA), ("LATAM", _LATAM), ("APAC", _APAC),
                                                             ("EMEA", _EMEA)) for c in codes.split()}


def region_of(country: str | None) -> str | None:
    return REGIONS.get(country.strip().upper()) if country else None


# -- fields and ops -----------------------------------------------------------------
NUMERIC_FIELDS = frozenset({"arr", "arr_reporting", "open_balance", "terms_days"})
FIELDS = NUMERIC_FIELDS | {"country", "region", "billing_currency", "segment", "name", "number", "locale",
                           "account_type", "sf_owner_email", "tags"}
ORDER_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
OPS = ("=", "!=", "in", "not in", *ORDER_OPS, "contains", "exists")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_TAG_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]*$")
_SF_NAME = re.compile(r"^sf\.[A-Za-z][A-Za-z0-9_]*$")  # Salesforce API names: letters, digits, underscores
_EMPTY: frozenset = frozenset()


def _num(value) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _date(value) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE.match(value):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().casefold()


def _matcher(values: Sequence) -> Callable[[Any], bool]:
    """For values of unknown type (Salesforce fields): equal as numbers, else as text."""
    nums = {n for n in map(_num, values) if n is not None}
    texts = {_text(v) for v in values if v is not None}
    if not nums:
        return lambda value: value is not None and _text(value) in texts

    def match(value) -> bool:
        if value is None:
            return False
        n = _num(value)
        return (n is not None and n in nums) or _text(value) in texts
    return match


def _tag_predicate(op: str, want) -> Callable[[dict], bool]:
    if op == "exists":
        flag = True if want is None else bool(want)
        return lambda facts: bool(facts["tags"]) == flag
    if op in ("in", "not in"):
        names = frozenset(_text(v) for v in want)
        if op == "in":
            return lambda facts: not names.isdisjoint(facts["tags"])
        return lambda facts: names.isdisjoint(facts["tags"])
    name = _text(want)
    if op == "!=":
        return lambda facts: name not in facts["tags"]
    return lambda facts: name in facts["tags"]  # "=" and "contains"


def _predicate(name: str, op: str, want) -> Callable[[dict], bool]:
    """One condition as a test of a customer's facts (loaded normalised: text casefolded, numbers
    Decimal, blanks None; Salesforce fields raw, so those compare as numbers when both sides are)."""
    if name == "tags":
        return _tag_predicate(op, want)
    get = operator.itemgetter(name)
    if op == "exists":
        flag = True if want is None else bool(want)
        return lambda f: (get(f) not in (None, "")) == flag
    if op in ("=", "!=", "in", "not in"):
        values = [want] if op in ("=", "!=") else list(want)
        if name.startswith(SF_FIELD):
            test = _matcher(values)
        else:
            test = frozenset(map(_num if name in NUMERIC_FIELDS else _text, values)).__contains__
        return (lambda f: test(get(f))) if op in ("=", "in") else (lambda f: not test(get(f)))
    if op == "contains":
        needle = _text(want)
        return lambda f: (value := get(f)) is not None and needle in _text(value)
    compare = ORDER_OPS[op]
    bound = _num(want)
    if name in NUMERIC_FIELDS:  # already Decimal
        return lambda f: (n := get(f)) is not None and compare(n, bound)
    if bound is not None:
        return lambda f: (n := _num(get(f))) is not None and compare(n, bound)
    day = _date(want)
    return lambda f: (d := _date(get(f))) is not None and compare(d, day)


def _check_condition(kind: str, cond, where: str) -> dict:
    if not isinstance(cond, dict):
        raise RuleError(f"{where}: a condition is {{'field': ..., 'op': ..., 'value': ...}}, not {cond!r}")
    name, op, want = cond.get("field"), cond.get("op", "="), cond.get("value")
    if not isinstance(name, str) or not (name in FIELDS or _SF_NAME.match(name)):
        raise RuleError(f"{where}: unknown field {name!r} (one of {', '.join(sorted(FIELDS))}, or sf.<Field>)")
    if op not in OPS:
        raise RuleError(f"{where}: unknown op {op!r} (one of {', '.join(OPS)})")
    if kind == RuleKind.TAG.value and name == "segment":
        raise RuleError(f"{where}: tag rules run before segment rules and cannot test the segment")
    if op in ("in", "not in"):
        if not isinstance(want, (list, tuple)) or not want:
            raise RuleError(f"{where}: {op!r} needs a non-empty list of values")
        want = list(want)
    elif op == "exists":
        if want is not None and not isinstance(want, bool):
            raise RuleError(f"{where}: 'exists' takes true or false")
    elif want is None or isinstance(want, (list, tuple, dict)):
        raise RuleError(f"{where}: {op!r} needs one value")
    if name == "tags":
        if op in ORDER_OPS:
            raise RuleError(f"{where}: tags take =, !=, in, not in, contains or exists")
    elif op in ORDER_OPS:
        if _num(want) is None and (name in NUMERIC_FIELDS or _date(want) is None):
            raise RuleError(f"{where}: {op!r} needs a number{'' if name in NUMERIC_FIELDS else ' or an ISO date'}, "
                            f"not {want!r}")
    elif name in NUMERIC_FIELDS and op != "exists":
        if op == "contains" or any(_num(v) is None for v in (want if isinstance(want, list) else [want])):
            raise RuleError(f"{where}: {name} is a number: {op} {want!r} cannot match")
    out = {"field": name, "op": op}
    if want is not None:
        out["value"] = want
    return out


def validate_rule(kind: str, name: str, value: str, conditions: Iterable[dict] = ()) -> tuple[str, str, str, list]:
    """Normalised ``(kind, name, value, conditions)``, or :class:`RuleError` saying what is wrong."""
    try:
        kind = RuleKind(kind).value
    except ValueError:
        raise RuleError(f"unknown rule kind {kind!r} (tag, segment, collector)") from None
    name = (name or "").strip()
    if not name:
        raise RuleError("a rule needs a name")
    if kind == RuleKind.TAG.value and (RULE_ORIGIN + name).startswith(SF_ORIGIN):
        raise RuleError(f"tag rule {name!r}: names starting with 'sf:' belong to Salesforce tag rules")
    value = (value or "").strip()
    if kind == RuleKind.COLLECTOR.value:
        try:
            value = normalize_email(value)
        except PeopleError:
            raise RuleError(f"collector rule {name!r}: the value is the collector's email, not {value!r}") from None
    elif kind == RuleKind.TAG.value:
        value = value.lower()
        if not _TAG_NAME.match(value):
            raise RuleError(f"tag rule {name!r}: a tag is a lower-case slug (letters, digits, - _ . :), not {value!r}")
    elif not value:
        raise RuleError(f"segment rule {name!r}: the value is the segment's name")
    if isinstance(conditions, dict) or isinstance(conditions, str):
        raise RuleError(f"{kind} rule {name!r}: conditions are a list")
    checked = [_check_condition(kind, c, f"{kind} rule {name!r}, condition {i + 1}")
               for i, c in enumerate(conditions or [])]
    return kind, name, value, checked


@dataclass(frozen=True)
class _Compiled:
    kind: str
    name: str
    value: str
    fields: frozenset
    matches: Callable[[dict], bool]
    key: str  # "kind:name", as counted in RulesResult.matched


def _all(tests: tuple) -> Callable[[dict], bool]:
    if not tests:
        return lambda facts: True
    if len(tests) == 1:
        return tests[0]

    def matches(facts: dict) -> bool:
        for test in tests:
            if not test(facts):
                return False
        return True
    return matches


def _compile(rule: AssignmentRule) -> _Compiled:
    kind, name, value, conditions = validate_rule(rule.kind, rule.name, rule.value, rule.conditions or [])
    return _Compiled(kind, name, value, frozenset(c["field"] for c in conditions),
                     _all(tuple(_predicate(c["field"], c["op"], c.get("value")) for c in conditions)),
                     f"{kind}:{name}")


# -- rule administration ----------------------------------------------------------------
def _rule_dict(rule: AssignmentRule) -> dict:
    return {"kind": rule.kind, "name": rule.name, "priority": rule.priority, "conditions": rule.conditions,
            "value": rule.value, "enabled": rule.enabled}


def save_rule(kind: str, name: str, value: str, conditions: Iterable[dict] = (), *, priority: int = 100,
              enabled: bool = True, actor: str = "system") -> AssignmentRule:
    """Create or update the rule ``(kind, name)``, validated first; audited. Takes effect at the next run."""
    kind, name, value, conditions = validate_rule(kind, name, value, conditions)
    with database.atomic():
        rule = AssignmentRule.get_or_none(AssignmentRule.kind == kind, AssignmentRule.name == name)
        before = _rule_dict(rule) if rule else None
        if rule is None:
            rule = AssignmentRule(kind=kind, name=name)
        rule.value, rule.conditions, rule.priority, rule.enabled = value, conditions, priority, enabled
        rule.updated_at = utcnow()
        rule.save()
        AuditLog.create(actor=actor, action="rule.save", object_type="assignment_rule", object_id=str(rule.id),
                        before=before, after=_rule_dict(rule))
    return rule


def delete_rule(kind: str, name: str, *, actor: str = "system") -> bool:
    """Delete the rule; its tags go at the next run (customers it assigned go back to the rules)."""
    with database.atomic():
        rule = AssignmentRule.get_or_none(AssignmentRule.kind == kind, AssignmentRule.name == name)
        if rule is None:
            return False
        AuditLog.create(actor=actor, action="rule.delete", object_type="assignment_rule", object_id=str(rule.id),
                        before=_rule_dict(rule), after=None)
        rule.delete_instance()
    return True


DEFAULT_RULES = (
    # (kind, name, value, conditions, priority)
    ("tag", "arr-100k-plus", "arr-100k-plus", [{"field": "arr", "op": ">=", "value": "100000"}], 100),
    ("segment", "enterprise", "enterprise", [{"field": "arr", "op": ">=", "value": "100000"}], 10),
    ("segment", "mid-market", "mid-market", [{"field": "arr", "op": ">=", "value": "20000"}], 20),
    ("segment", "smb", "smb", [], 30),
)


def seed_default_rules(*, actor: str = "system") -> list[str]:
    """Create the default rules that do not exist yet (by kind and name; an edited rule is left
    as it is). Returns ``kind:name`` of those created. ``strategic`` comes from Salesforce's tag
    rules; collector rules are deployment-specific and none is seeded (docs/collectors-and-rules.md)."""
    created = []
    for kind, name, value, conditions, priority in DEFAULT_RULES:
        if not AssignmentRule.select().where(AssignmentRule.kind == kind, AssignmentRule.name == name).exists():
            save_rule(kind, name, value, conditions, priority=priority, actor=actor)
            created.append(f"{kind}:{name}")
    return created


# -- locking and bulk writes ----------------------------------------------------------------
_LOCK_KEY = zlib.crc32(b"arhub:assignment")


@contextmanager
def _writing() -> Iterator[None]:
    """A write transaction serialised with every other writer of collectors, segments and holds."""
    if is_sqlite():
        with database.atomic(lock_type="IMMEDIATE"):
            yield
    else:
        with database.atomic():
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            yield


def _insert(model, columns: Sequence[str], rows: list[tuple]) -> None:
    """Plain bulk insert (the primary key never conflicts: it is not given)."""
    if rows:
        upsert(model, columns, rows, ("id",), ())


_AUDIT_COLUMNS = ("at", "actor", "action", "object_type", "object_id", "before", "after")


def _stamp(moment: datetime) -> str:
    """A timestamp as stored (naive UTC text): computed once for rows written in bulk."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


@lru_cache(maxsize=4096)
def _dump_items(items: tuple) -> str:
    return AuditLog.before.db_value(dict(items))


def _dump(value: dict | None) -> str | None:
    if value is None:
        return None
    try:
        return _dump_items(tuple(value.items()))  # rows of one run repeat a few before/after values
    except TypeError:  # unhashable (nested) values
        return AuditLog.before.db_value(value)


def _audit_rows(rows: list[tuple]) -> None:
    """Rows of ``(at, actor, action, object_type, object_id, before dict, after dict)``."""
    stamps: dict = {}
    _insert(AuditLog, _AUDIT_COLUMNS,
            [(stamps.get(r[0]) or stamps.setdefault(r[0], _stamp(r[0])), *r[1:5], _dump(r[5]), _dump(r[6]))
             for r in rows])


def _in_batches(sql: str, params: tuple, customer_ids, column: str, tail: str = "") -> Iterator[tuple]:
    """Rows of ``sql`` (ending in a WHERE clause) + ``tail``, for every customer or those in ``customer_ids``."""
    if customer_ids is None:
        yield from database.execute_sql(sql + tail, params).fetchall()
        return
    for batch in chunked(list(customer_ids), 1000):
        yield from database.execute_sql(f"{sql} AND {column} IN ({placeholders(len(batch))}){tail}",
                                        (*params, *batch)).fetchall()


def _open_holds(hold_kind: str, customer_ids: Iterable[int] | None = None) -> dict[int, str | None]:
    """``{customer id: held value}`` for the customers a person holds against the rules."""
    sql = f'SELECT "customer_id", "body" FROM "activity" WHERE "kind" = {placeholders(1)} AND "resolved_at" IS NULL'
    return dict(_in_batches(sql, (hold_kind,), customer_ids, '"customer_id"'))


def _current(customer_ids: Iterable[int] | None) -> dict[int, tuple[str | None, str | None]]:
    """``{id: (collector, segment)}`` of live customers, as committed now."""
    sql = 'SELECT "id", "collector", "segment" FROM "customer" WHERE "deleted_at" IS NULL'
    return {cid: (col, seg) for cid, col, seg in _in_batches(sql, (), customer_ids, '"id"')}


def _resolve_holds(hold_kind: str, customer_ids: Sequence[int], now: datetime) -> None:
    for batch in chunked(list(customer_ids), 1000):
        (Activity.update(resolved_at=now)
         .where(Activity.kind == hold_kind, Activity.resolved_at.is_null(), Activity.customer.in_(batch)).execute())


def _add_holds(hold_kind: str, values: dict[int, str | None], actor: str, now: datetime) -> None:
    _insert(Activity, ("customer_id", "kind", "body", "actor", "created_at"),
            [(cid, hold_kind, value, actor, _stamp(now)) for cid, value in values.items()])


# -- applying the rules -------------------------------------------------------------------
@dataclass
class RulesResult:
    customers: int = 0  # live customers evaluated
    tags_added: int = 0
    tags_removed: int = 0
    segments_changed: int = 0
    collectors_changed: int = 0
    segment_held: int = 0  # customers whose segment a person set (rules left them alone)
    collector_held: int = 0
    team_queue: int = 0  # evaluated customers without a collector afterwards
    matched: dict = field(default_factory=dict)  # "kind:name" -> customers it tagged or assigned
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=65536)
def _norm(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip().casefold()
    return text or None


@lru_cache(maxsize=1024)
def _region(country) -> str | None:
    return _norm(region_of(country))


def _decimal(value) -> Decimal | None:
    return None if value is None else to_decimal(value) if not isinstance(value, int) else Decimal(value)


def _identity(value):
    return value


#: field -> (SQL expression, normaliser); "a" is the linked Salesforce account, "u" its owner.
_COLUMNS: dict[str, tuple[str, Callable]] = {
    "arr": ('c."arr"', _decimal), "terms_days": ('c."terms_days"', _decimal), "country": ('c."country"', _norm),
    "region": ('c."country"', _region), "billing_currency": ('c."billing_currency"', _norm),
    "segment": ('c."segment"', _norm), "name": ('c."name"', _norm), "number": ('c."number"', _norm),
    "locale": ('c."locale"', _norm), "account_type": ('a."account_type"', _norm),
    "sf_owner_email": ('u."email"', _norm),
    # not rule fields: what arr_reporting is computed from
    "_arr": ('c."arr"', _decimal), "_currency": ('c."billing_currency"', _identity),
}


def _sf_column(name: str) -> tuple[str, tuple]:
    """SQL reading one pulled field of the linked account (booleans as 'true'/'false' on both dialects)."""
    path = name[len(SF_FIELD):]
    if is_sqlite():
        return ("CASE json_type(a.\"fields\", ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
                "ELSE json_extract(a.\"fields\", ?) END", ("$." + path, "$." + path))
    return 'CAST(a."fields" AS jsonb) ->> %s', (path,)


def _load_facts(needs: set[str], customer_ids, as_of: date, reporting_currency: str | None
                ) -> tuple[dict[int, dict], dict[int, tuple[str | None, str | None]]]:
    """``({id: facts}, {id: (collector, segment) as stored})`` for live customers. Facts hold only
    the fields some rule tests, normalised once: text casefolded, numbers Decimal, blanks None;
    Salesforce fields raw, read from the JSON by the database."""
    wanted = [n for n in sorted(needs) if n in _COLUMNS or n.startswith(SF_FIELD)]
    if "arr_reporting" in needs:
        wanted += ["_arr", "_currency"]
    select, params, convert = ['c."id"', 'c."collector"', 'c."segment"'], [], []
    for name in wanted:
        if name.startswith(SF_FIELD):
            expr, args = _sf_column(name)
            select.append(expr)
            params.extend(args)
            convert.append((name, _identity))
        else:
            expr, norm = _COLUMNS[name]
            select.append(expr)
            convert.append((name, norm))
    joined = " ".join(select)
    sql = f'SELECT {", ".join(select)} FROM "customer" c'
    if 'a."' in joined or 'u."' in joined:
        sql += ' LEFT JOIN "sf_account" a ON a."sf_id" = c."sf_account_id" AND NOT a."is_deleted"'
    if 'u."' in joined:
        sql += ' LEFT JOIN "sf_user" u ON u."sf_id" = a."owner_sf_id" AND u."source_id" = a."source_id"'
    sql += ' WHERE c."deleted_at" IS NULL'
    facts: dict[int, dict] = {}
    stored: dict[int, tuple[str | None, str | None]] = {}
    indexed = list(enumerate(convert, start=3))
    for row in _in_batches(sql, tuple(params), customer_ids, 'c."id"'):
        cid = row[0]
        stored[cid] = (row[1], row[2])
        facts[cid] = {name: norm(row[i]) for i, (name, norm) in indexed}
    if "open_balance" in needs:
        for f in facts.values():
            f["open_balance"] = Decimal("0.0000")
        for cid, total in _open_balances(None if customer_ids is None else list(facts)):
            if cid in facts:
                facts[cid]["open_balance"] = (to_decimal(total) or Decimal(0)).quantize(Decimal("0.0001"))
    if "arr_reporting" in needs:
        from .fx import RateBook
        from .settings import get_settings

        book = RateBook.load(reporting_currency or get_settings().reporting_currency)
        for f in facts.values():
            conv = book.convert(f["_arr"], f["_currency"], as_of) if f["_arr"] is not None and f["_currency"] else None
            f["arr_reporting"] = conv.amount if conv else None
    return facts, stored


def _open_balances(customer_ids) -> Iterator[tuple[int, Any]]:
    sql = (f'SELECT "customer_id", SUM("open_amount_reporting") FROM "invoice" WHERE "deleted_at" IS NULL '
           f'AND "customer_id" IS NOT NULL AND "open_amount" > 0 AND "status" IN ({placeholders(len(OPEN_STATUSES))})')
    return _in_batches(sql, OPEN_STATUSES, customer_ids, '"customer_id"', ' GROUP BY "customer_id"')


def _first(rules: list[_Compiled], facts: dict, matched: Counter) -> tuple[str | None, str | None]:
    """(value, rule name) of the first rule that matches, by priority."""
    for rule in rules:
        if rule.matches(facts):
            matched[rule.key] += 1
            return rule.value, rule.name
    return None, None


def _own_rule_origin(origin: str) -> bool:
    return origin.startswith(RULE_ORIGIN) and not origin.startswith(SF_ORIGIN)


def apply_rules(now: datetime | None = None, *, customer_ids: Iterable[int] | None = None, actor: str = "rules",
                reporting_currency: str | None = None) -> RulesResult:
    """Evaluate every enabled rule over every live customer (or only ``customer_ids``) and write
    the differences: rule tags added and removed, segments and collectors changed (except those
    a person holds). Audited per changed customer, plus one ``rules.apply`` summary row."""
    started = time.monotonic()
    now = now or utcnow()
    if customer_ids is None:
        with exclusive("assignment-rules"):  # one full run at a time; subsets rely on the write lock
            result = _apply(now, None, actor, reporting_currency)
    else:
        result = _apply(now, list(customer_ids), actor, reporting_currency)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _apply(now: datetime, customer_ids, actor: str, reporting_currency) -> RulesResult:
    rules = [_compile(r) for r in AssignmentRule.select().where(AssignmentRule.enabled)
             .order_by(AssignmentRule.priority, AssignmentRule.id)]
    tag_rules = [r for r in rules if r.kind == RuleKind.TAG.value]
    segment_rules = [r for r in rules if r.kind == RuleKind.SEGMENT.value]
    collector_rules = [r for r in rules if r.kind == RuleKind.COLLECTOR.value]
    needs = set().union(*(r.fields for r in rules)) if rules else set()
    tag_ids = {name: Tag.get_or_create(name=name)[0].id for name in {r.value for r in tag_rules}}

    facts, stored = _load_facts(needs, customer_ids, now.date(), reporting_currency)
    subset = None if customer_ids is None else list(facts)
    base_tags: dict[int, set] = {}
    existing_pairs: set[tuple[int, int]] = set()
    own_rows: dict[tuple[int, int], tuple[int, str]] = {}
    sql = ('SELECT ct."id", ct."customer_id", ct."tag_id", ct."origin", t."name" FROM "customer_tag" ct '
           'JOIN "tag" t ON t."id" = ct."tag_id" WHERE 1 = 1')
    for row_id, cid, tid, origin, name in _in_batches(sql, (), subset, 'ct."customer_id"'):
        if cid not in facts:
            continue
        existing_pairs.add((cid, tid))
        if _own_rule_origin(origin):
            own_rows[(cid, tid)] = (row_id, origin)
        else:
            base_tags.setdefault(cid, set()).add(name.casefold())
    held_segment = _open_holds(HOLD_SEGMENT, subset)
    held_collector = _open_holds(HOLD_COLLECTOR, subset)

    result = RulesResult(customers=len(facts))
    matched: Counter = Counter()
    wanted: dict[tuple[int, int], str] = {}
    segment_changes: dict[int, tuple[str | None, str | None, str | None]] = {}  # id -> (before, after, rule)
    collector_changes: dict[int, tuple[str | None, str | None, str | None]] = {}
    for cid, f in facts.items():
        tags = base_tags.get(cid)
        f["tags"] = tags = frozenset(tags) if tags else _EMPTY
        added = None
        for rule in tag_rules:
            if rule.matches(f):
                key = (cid, tag_ids[rule.value])
                if key not in wanted:
                    wanted[key] = RULE_ORIGIN + rule.name
                    added = (added or set()) | {rule.value}
                matched[rule.key] += 1
        if added:
            f["tags"] = tags | added
        old_collector, old_segment = stored[cid]
        if cid in held_segment:
            result.segment_held += 1
        else:
            segment, won = _first(segment_rules, f, matched)
            f["segment"] = _norm(segment)
            if segment != old_segment:
                segment_changes[cid] = (old_segment, segment, won)
        if cid in held_collector:
            result.collector_held += 1
            collector = old_collector
        else:
            collector, won = _first(collector_rules, f, matched)
            if collector != old_collector:
                collector_changes[cid] = (old_collector, collector, won)
        if collector is None:
            result.team_queue += 1
    stamp = _stamp(now)
    new_tags = [(cid, tid, origin, stamp) for (cid, tid), origin in wanted.items() if (cid, tid) not in existing_pairs]
    relabel = [(origin, stamp, own_rows[key][0]) for key, origin in wanted.items()
               if key in own_rows and own_rows[key][1] != origin]
    stale = [row_id for key, (row_id, _) in own_rows.items() if key not in wanted]

    with _writing():
        # re-read what a person may have changed since the facts were read: their choice wins
        ids = set(segment_changes) | set(collector_changes)
        if ids:
            scope = None if len(ids) > 5000 else ids
            fresh = _current(scope)
            for changes, hold_kind, index in ((segment_changes, HOLD_SEGMENT, 1),
                                              (collector_changes, HOLD_COLLECTOR, 0)):
                held = _open_holds(hold_kind, scope)
                for cid in [c for c, (before, _, _) in changes.items()
                            if c in held or c not in fresh or fresh[c][index] != before]:
                    del changes[cid]
        for batch in chunked(stale, 1000):
            database.execute_sql(f'DELETE FROM "customer_tag" WHERE "id" IN ({placeholders(len(batch))}) '
                                 f'AND "origin" LIKE {placeholders(1)} AND "origin" NOT LIKE {placeholders(1)}',
                                 (*batch, RULE_ORIGIN + "%", SF_ORIGIN + "%"))
        upsert(CustomerTag, ("customer_id", "tag_id", "origin", "created_at"), new_tags, ("customer_id", "tag_id"), ())
        if relabel:
            update_many(CustomerTag, ("id",), ("origin", "created_at"), relabel)
        update_many(Customer, ("id",), ("segment", "updated_at"),
                    [(after, stamp, cid) for cid, (_, after, _) in segment_changes.items()])
        update_many(Customer, ("id",), ("collector", "updated_at"),
                    [(after, stamp, cid) for cid, (_, after, _) in collector_changes.items()])
        result.tags_added, result.tags_removed = len(new_tags), len(stale)
        result.segments_changed, result.collectors_changed = len(segment_changes), len(collector_changes)
        result.matched = dict(sorted(matched.items()))
        audit = [(now, actor, "segment.rule", "customer", str(cid), {"segment": before},
                  {"segment": after, "rule": rule}) for cid, (before, after, rule) in segment_changes.items()]
        audit += [(now, actor, "collector.rule", "customer", str(cid), {"collector": before},
                   {"collector": after, "rule": rule}) for cid, (before, after, rule) in collector_changes.items()]
        summary = {k: v for k, v in result.as_dict().items() if k != "seconds"}
        summary["customer_ids"] = None if customer_ids is None else len(customer_ids)
        audit.append((now, actor, "rules.apply", "rules", None, None, summary))
        _audit_rows(audit)
    return result


# -- a person's choices ---------------------------------------------------------------------
def _email(email: str | None) -> str | None:
    try:
        return None if email is None else normalize_email(email)
    except PeopleError as exc:
        raise RuleError(str(exc)) from None


def _hold(hold_kind: str, column: str, customer_ids: Iterable[int], value: str | None, actor: str,
          now: datetime | None) -> int:
    now = now or utcnow()
    ids = sorted(set(customer_ids))
    with _writing():
        current = _current(ids)
        ids = [cid for cid in ids if cid in current]
        index = 0 if column == "collector" else 1
        _resolve_holds(hold_kind, ids, now)
        _add_holds(hold_kind, {cid: value for cid in ids}, actor, now)
        changed = [cid for cid in ids if current[cid][index] != value]
        update_many(Customer, ("id",), (column, "updated_at"), [(value, now, cid) for cid in changed])
        _audit_rows([(now, actor, f"{column}.{'assign' if column == 'collector' else 'set'}", "customer", str(cid),
                      {column: current[cid][index]}, {column: value, "by": "person"}) for cid in ids])
    return len(ids)


def assign_collector(customer_ids: Iterable[int], email: str | None, actor: str, *,
                     now: datetime | None = None) -> int:
    """A person assigns these customers to ``email`` (``None``: the team queue, on purpose).
    The choice holds against every later rule run until :func:`release_collector` or another
    person's assignment. Returns the number of live customers assigned."""
    return _hold(HOLD_COLLECTOR, "collector", customer_ids, _email(email), actor, now)


def set_segment(customer_ids: Iterable[int], segment: str | None, actor: str, *, now: datetime | None = None) -> int:
    """A person sets the segment; it holds against segment rules until :func:`release_segment`."""
    return _hold(HOLD_SEGMENT, "segment", customer_ids, (segment or "").strip() or None, actor, now)


def _release(hold_kind: str, column: str, customer_ids: Iterable[int], actor: str, now: datetime | None) -> RulesResult:
    now = now or utcnow()
    ids = sorted(set(customer_ids))
    with _writing():
        held = _open_holds(hold_kind, ids)
        _resolve_holds(hold_kind, ids, now)
        _audit_rows([(now, actor, f"{column}.release", "customer", str(cid), {column: value, "by": "person"},
                      {"by": "rules"}) for cid, value in held.items()])
    return apply_rules(now, customer_ids=ids, actor=actor)


def release_collector(customer_ids: Iterable[int], actor: str, *, now: datetime | None = None) -> RulesResult:
    """Hand these customers' collector back to the rules (applied to them at once)."""
    return _release(HOLD_COLLECTOR, "collector", customer_ids, actor, now)


def release_segment(customer_ids: Iterable[int], actor: str, *, now: datetime | None = None) -> RulesResult:
    """Hand these customers' segment back to the rules (applied to them at once)."""
    return _release(HOLD_SEGMENT, "segment", customer_ids, actor, now)


@dataclass
class ReassignResult:
    moved: int = 0  # customers now with ``to_email``
    held: int = 0  # of them, those now held by a person's choice (survive rule runs)
    skipped: int = 0  # requested customers that were not ``from_email``'s
    rules_repointed: list = field(default_factory=list)  # collector rules now giving ``to_email``

    def as_dict(self) -> dict:
        return asdict(self)


def reassign(from_email: str, to_email: str, actor: str, customer_ids: Iterable[int] | None = None, *,
             now: datetime | None = None) -> ReassignResult:
    """Move ``from_email``'s book (or the ``customer_ids`` of it) to ``to_email``.

    The whole book (no ``customer_ids``): every customer and every collector rule whose value
    is ``from_email`` moves, so later rule runs agree; customers a person held stay held, now
    for ``to_email``. Part of a book: those customers become held for ``to_email`` (a person
    picked them), the rules are left as they are. Audited per customer and as one summary."""
    now = now or utcnow()
    source, target = _email(from_email), _email(to_email)
    if source is None or target is None:
        raise RuleError("reassign needs both emails (use assign_collector for the team queue)")
    result = ReassignResult()
    with _writing():
        query = Customer.select(Customer.id).where(Customer.deleted_at.is_null(), Customer.collector == source)
        book = [cid for (cid,) in query.tuples().iterator()]
        if customer_ids is not None:
            wanted = set(customer_ids)
            book = sorted(wanted.intersection(book))
            result.skipped = len(wanted) - len(book)
        held = _open_holds(HOLD_COLLECTOR, book)
        if customer_ids is None:
            holds = {cid: target for cid in held}
            for rule in (AssignmentRule.select().where(AssignmentRule.kind == RuleKind.COLLECTOR.value,
                                                       AssignmentRule.value == source)):
                before = _rule_dict(rule)
                rule.value, rule.updated_at = target, now
                rule.save()
                result.rules_repointed.append(rule.name)
                AuditLog.create(at=now, actor=actor, action="rule.repoint", object_type="assignment_rule",
                                object_id=str(rule.id), before=before, after=_rule_dict(rule))
        else:
            holds = {cid: target for cid in book}
        _resolve_holds(HOLD_COLLECTOR, list(holds), now)
        _add_holds(HOLD_COLLECTOR, holds, actor, now)
        update_many(Customer, ("id",), ("collector", "updated_at"), [(target, now, cid) for cid in book])
        result.moved, result.held = len(book), len(holds)
        audit = [(now, actor, "collector.reassign", "customer", str(cid), {"collector": source},
                  {"collector": target, "by": "person" if cid in holds else "rules"}) for cid in book]
        audit.append((now, actor, "collectors.reassign", "collector", source, {"collector": source},
                      {"collector": target, **result.as_dict()}))
        _audit_rows(audit)
    return result


def team_queue(on: date | None = None):
    """Live customers nobody is assigned to, by name (a query: count, paginate or iterate it).
    With ``on``, also those whose collector is away or inactive that day with no one covering
    (:func:`middleware.people.cover_map`)."""
    unassigned = Customer.collector.is_null()
    if on is not None:
        uncovered = [email for email, effective in cover_map(on).items() if effective is None]
        if uncovered:
            unassigned = unassigned | Customer.collector.in_(uncovered)
    return Customer.select().where(Customer.deleted_at.is_null(), unassigned).order_by(Customer.name, Customer.id)
