"""Audience rules: validation, checks against a customer's facts, compiled matchers, explanations."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Callable, Iterable

from .base import DunningError, OPPORTUNITY_TYPES


# ---------------------------------------------------------------------------------- audience
_RANGE_OPS = {"gte": ("≥", lambda a, b: a >= b), "gt": (">", lambda a, b: a > b),
              "lte": ("≤", lambda a, b: a <= b), "lt": ("<", lambda a, b: a < b)}
_LIST_KEYS = ("tags_any", "tags_all", "tags_none", "segments", "currencies", "countries", "sources")
AUDIENCE_KEYS = frozenset(_LIST_KEYS) | {f"{f}_{op}" for f in ("arr", "balance") for op in _RANGE_OPS} | {
    "open_opportunity"}


@dataclass(frozen=True)
class Check:
    """One condition of a rule, with what it wanted and what the customer has."""
    name: str
    wanted: str
    actual: str
    ok: bool

    def __str__(self) -> str:
        return f"{self.name}: {self.actual} (wanted {self.wanted}) → {'yes' if self.ok else 'no'}"


class Facts:
    """What audience and approval rules look at, for one customer on one day. ``balance`` (open
    amount in reporting currency; None: unknown, a rate is missing) may be given as a function,
    computed on first use: only customers that reach a rule on the balance pay for it."""
    __slots__ = ("customer_id", "name", "arr", "segment", "country", "currency", "tags", "_balance",
                 "opportunities", "as_of", "source")

    def __init__(self, customer_id: int, name: str = "", arr: Decimal | None = None, segment: str | None = None,
                 country: str | None = None, currency: str | None = None, tags: frozenset = frozenset(),
                 balance: Decimal | None | Callable[[], Decimal | None] = None, opportunities: list | None = None,
                 as_of: date | None = None, source: str | None = None):
        self.customer_id, self.name, self.arr, self.segment = customer_id, name, arr, segment
        self.country, self.currency, self.tags, self._balance = country, currency, tags, balance
        self.opportunities, self.as_of = opportunities or [], as_of
        self.source = source  # the name of the ERP source the customer comes from

    @property
    def balance(self) -> Decimal | None:
        if callable(self._balance):
            self._balance = self._balance()
        return self._balance


def validate_audience(rule: dict | None, *, allow: Iterable[str] = ()) -> dict:
    """The rule, checked: unknown keys and malformed values raise :class:`DunningError` (a typo
    must not silently match every customer). ``{}`` matches everyone."""
    rule = dict(rule or {})
    extra = set(allow)
    for key, value in rule.items():
        if key in extra:
            continue
        if key not in AUDIENCE_KEYS:
            raise DunningError(f"audience: unknown condition {key!r} (known: {', '.join(sorted(AUDIENCE_KEYS))})")
        if key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DunningError(f"audience: {key} must be a list of strings, got {value!r}")
        elif key == "open_opportunity":
            if not isinstance(value, dict) or set(value) - {"within_days", "types"} or not isinstance(
                    value.get("within_days"), int):
                raise DunningError('audience: open_opportunity must be {"within_days": N, "types": [...]}')
        else:
            try:
                Decimal(str(value))
            except InvalidOperation:
                raise DunningError(f"audience: {key} must be a number, got {value!r}") from None
    return rule


def _num(value: Decimal) -> str:
    """A Decimal without trailing zeros and never in exponent form: 150000.0000 → 150000."""
    return format(value.normalize(), "f")


def _fmt(value) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, Decimal):
        return _num(value)
    if isinstance(value, (set, frozenset, list, tuple)):
        return "[" + ", ".join(sorted(map(str, value))) + "]" if value else "none"
    return str(value)


def check_audience(rule: dict | None, facts: Facts, *, details: bool = False,
                   ignore: Iterable[str] = ()) -> tuple[bool, list[Check]]:
    """Whether ``facts`` match ``rule`` (every condition must hold). With ``details`` every
    condition is evaluated and returned as a :class:`Check`; without, evaluation stops at the
    first failure and the list is empty (the planner's fast path)."""
    checks: list[Check] = []
    ok_all = True
    skip = set(ignore)
    for key, want in (rule or {}).items():
        if key in skip:
            continue
        ok, wanted, actual = _check_one(key, want, facts)
        ok_all = ok_all and ok
        if details:
            checks.append(Check(key, wanted, actual, ok))
        elif not ok:
            return False, checks
    return ok_all, checks


def _check_one(key: str, want, f: Facts) -> tuple[bool, str, str]:
    if key == "tags_any":
        return bool(f.tags & set(want)), f"any of {_fmt(want)}", _fmt(f.tags)
    if key == "tags_all":
        return set(want) <= f.tags, f"all of {_fmt(want)}", _fmt(f.tags)
    if key == "tags_none":
        return not (f.tags & set(want)), f"none of {_fmt(want)}", _fmt(f.tags)
    if key == "segments":
        return f.segment in want, f"one of {_fmt(want)}", _fmt(f.segment)
    if key == "currencies":
        return (f.currency or "").upper() in {w.upper() for w in want}, f"one of {_fmt(want)}", _fmt(f.currency)
    if key == "countries":
        return (f.country or "").upper() in {w.upper() for w in want}, f"one of {_fmt(want)}", _fmt(f.country)
    if key == "sources":
        return f.source in want, f"one of {_fmt(want)}", _fmt(f.source)
    if key == "open_opportunity":
        days, types = want["within_days"], set(want.get("types") or OPPORTUNITY_TYPES)
        limit = f.as_of + timedelta(days=days) if f.as_of else None
        hits = [o for o in f.opportunities if o["type"] in types and o["close_date"] is not None
                and limit is not None and o["close_date"] <= limit]
        actual = ", ".join(f"{o['type']} '{o['name']}' closing {o['close_date']}" for o in hits) or "none"
        return bool(hits), f"an open {'/'.join(sorted(types))} closing within {days} days", actual
    attr, op = key.rsplit("_", 1)
    symbol, compare = _RANGE_OPS[op]
    value = f.arr if attr == "arr" else f.balance
    bound = Decimal(str(want))
    return value is not None and compare(value, bound), f"{symbol} {_num(bound)}", _fmt(value)


def compile_audience(rule: dict | None, *, ignore: Iterable[str] = ()) -> Callable[[Facts], bool]:
    """A predicate equal to ``check_audience(rule, facts)[0]`` without building any text: the
    planner runs it for every candidate customer and campaign."""
    tests: list[Callable[[Facts], bool]] = []
    skip = set(ignore)
    costly = ("balance_", "open_opportunity")  # evaluated last: a cheap condition that fails spares them
    for key, want in sorted((rule or {}).items(), key=lambda kv: kv[0].startswith(costly)):
        if key in skip:
            continue
        if key in ("tags_any", "tags_all", "tags_none", "segments", "sources"):
            wanted = frozenset(want)
            tests.append({"tags_any": lambda f, w=wanted: not w.isdisjoint(f.tags),
                          "tags_all": lambda f, w=wanted: w <= f.tags,
                          "tags_none": lambda f, w=wanted: w.isdisjoint(f.tags),
                          "segments": lambda f, w=wanted: f.segment in w,
                          "sources": lambda f, w=wanted: f.source in w}[key])
        elif key in ("currencies", "countries"):
            wanted = frozenset(w.upper() for w in want)
            attr = "currency" if key == "currencies" else "country"
            tests.append(lambda f, w=wanted, a=attr: (getattr(f, a) or "").upper() in w)
        elif key == "open_opportunity":
            tests.append(lambda f, w=want: _check_one("open_opportunity", w, f)[0])
        else:
            attr, op = key.rsplit("_", 1)
            compare, bound = _RANGE_OPS[op][1], Decimal(str(want))
            tests.append(lambda f, a=attr, c=compare, b=bound: (
                (f.arr if a == "arr" else f.balance) is not None and c(f.arr if a == "arr" else f.balance, b)))
    if not tests:
        return lambda f: True
    if len(tests) == 1:
        return tests[0]
    return lambda f: all(t(f) for t in tests)


def _describe(check: Check) -> str:
    """``ARR 150000 ≥ 100000``, ``tags [strategic] any of [strategic]``: a condition that held."""
    label = {"arr": "ARR", "balance": "balance"}.get(check.name.split("_")[0], check.name.replace("_", " "))
    return f"{label} {check.actual} {check.wanted}"


def _rule_needs(rules: Iterable[dict | None]) -> set[str]:
    needs: set[str] = set()
    for rule in rules:
        for key in rule or {}:
            if key.startswith("tags_"):
                needs.add("tags")
            elif key.startswith("balance_"):
                needs.add("balance")
            elif key == "open_opportunity":
                needs.add("opportunities")
    return needs
