"""The SOQL subset the Salesforce emulator (:mod:`connectors.sandbox.salesforce`) answers.

``parse(text)`` turns a query into a :class:`Query` (syntax only); ``compile_query(query,
text, objects, fetch)`` checks it against the org's sObject descriptions and returns a
:class:`Plan` that filters, sorts and renders records stored as plain dicts.

Supported: ``SELECT f1, Rel.f2, COUNT() FROM Object [WHERE ...] [ORDER BY ...] [LIMIT n]
[OFFSET n]``; ``= != <> < > <= >=``, ``[NOT] IN (...)``, ``LIKE`` (``%``, ``_``, ``\\%``),
``AND``, ``OR``, ``NOT``, parentheses (mixing AND and OR without parentheses is rejected, as
Salesforce does), ``null``, ``TRUE``/``FALSE``, quoted strings with escapes, numbers, date and
datetime literals, and the relative dates ``TODAY``, ``YESTERDAY``, ``TOMORROW``,
``LAST_N_DAYS:n``, ``NEXT_N_DAYS:n``.  Anything else is ``MALFORMED_QUERY``.

Values are compared the way Salesforce compares them: text case-insensitively, ``!=`` and
``NOT IN`` match nulls, ``ASC`` sorts nulls first and ``DESC`` last unless told otherwise, a
filter value must have the field's type (a quoted date is an error).  Stored values are the
emulator's representation: text, 18-character ids, ``YYYY-MM-DD`` dates, datetimes as
``YYYY-MM-DDTHH:MM:SS.000+0000`` in UTC (so both order as strings), floats, booleans, None.

This module imports nothing of the project.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable

UTC = timezone.utc
MAX_OFFSET = 2000

TEXT_TYPES = frozenset({"string", "textarea", "email", "url", "phone", "picklist", "multipicklist",
                        "combobox", "encryptedstring"})
ID_TYPES = frozenset({"id", "reference"})
NUMBER_TYPES = frozenset({"double", "currency", "int", "percent"})

_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?\Z")


class SoqlError(Exception):
    """A query Salesforce would refuse: ``code`` is its errorCode."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def __reduce__(self):
        return (self.__class__, (self.code, self.message))


# ----------------------------------------------------------------------------- ids, datetimes
def id_checksum(id15: str) -> str:
    """The three-character suffix that makes a 15-character id case-insensitive."""
    out = []
    for chunk in range(3):
        bits = 0
        for i, ch in enumerate(id15[chunk * 5:chunk * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        out.append(_CHECKSUM[bits])
    return "".join(out)


def to18(value: str) -> str | None:
    """An id as its 18-character form (checksum checked), or None if it is not a well-formed id."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        return None
    if len(value) == 15:
        return value + id_checksum(value)
    if id_checksum(value[:15]) != value[15:].upper():
        return None
    return value[:15] + id_checksum(value[:15])


def sf_datetime(stamp: datetime) -> str:
    """``2026-11-23T10:15:00.000+0000``: Salesforce's JSON datetime, in UTC."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    elif stamp.utcoffset():
        stamp = stamp.astimezone(UTC)
    return stamp.isoformat(timespec="milliseconds")[:23] + "+0000"


_DT_RE = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?"
                    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?\Z", re.IGNORECASE)


def parse_datetime(text: str) -> datetime | None:
    """An ISO 8601 datetime (``Z``, ``+01:00``, ``+0100``, naive = UTC) as aware UTC, else None."""
    match = _DT_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        return None
    day, hh, mm, ss, frac, tz = match.groups()
    try:
        base = datetime.fromisoformat(f"{day}T{hh}:{mm}:{ss or '00'}")
    except ValueError:
        return None
    micro = int((frac or "0").ljust(6, "0"))
    offset = timedelta(0)
    if tz and tz.upper() != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
    return (base.replace(microsecond=micro) - offset).replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- tokens
_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\dT]))
  | (?P<number>[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?![\w.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),:])
""", re.VERBOSE | re.DOTALL)

_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
             "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "NULL", "TRUE", "FALSE", "COUNT",
             "GROUP", "HAVING", "WITH", "FOR", "USING", "INCLUDES", "EXCLUDES", "TYPEOF"}
_RELATIVE = {"TODAY", "YESTERDAY", "TOMORROW", "LAST_N_DAYS", "NEXT_N_DAYS"}
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'", '"': '"', "\\": "\\"}


@dataclass(slots=True)
class Token:
    kind: str  # string date datetime number ident keyword op punct end
    value: Any
    pos: int
    text: str


def _error_at(text: str, pos: int, message: str, code: str = "MALFORMED_QUERY") -> SoqlError:
    """Salesforce's error text: the query, a caret under the offending token, row and column."""
    before = text[:pos]
    row = before.count("\n") + 1
    line_start = before.rfind("\n") + 1
    col = pos - line_start + 1
    line = text[line_start:].split("\n", 1)[0]
    return SoqlError(code, f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{message}")


def _unescape(body: str, text: str, pos: int, like: bool = False) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1:i + 2]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
            elif nxt in ("%", "_"):
                out.append("\\" + nxt)  # kept escaped: only meaningful to LIKE
            elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2:i + 6] or ""):
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 4
            else:
                raise _error_at(text, pos, f"Invalid string literal '{body}'. Illegal character sequence "
                                           f"'\\{nxt}' in string literal.")
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            bad = text[pos:].split(None, 1)[0]
            raise _error_at(text, pos, f"unexpected token: '{bad}'")
        kind, raw = match.lastgroup, match.group()
        if kind != "ws":
            value: Any = raw
            if kind == "string":
                value = _unescape(raw[1:-1], text, pos)
            elif kind == "ident" and "." not in raw and raw.upper() in _KEYWORDS:
                kind, value = "keyword", raw.upper()
            tokens.append(Token(kind, value, pos, raw))
        pos = match.end()
    tokens.append(Token("end", None, len(text), ""))
    return tokens


# ----------------------------------------------------------------------------- syntax tree
@dataclass(slots=True)
class Path:
    parts: tuple[str, ...]
    pos: int

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclass(slots=True)
class Literal:
    kind: str  # string number date datetime null bool relative
    value: Any
    pos: int
    text: str


@dataclass(slots=True)
class Cond:
    op: str  # cmp in like and or not
    path: Path | None = None
    operator: str = ""
    value: Any = None  # Literal, list[Literal] or list[Cond]
    negate: bool = False
    pos: int = 0


@dataclass(slots=True)
class Order:
    path: Path
    desc: bool
    nulls_first: bool


@dataclass
class Query:
    fields: list[Path]
    count: bool
    object: str
    object_pos: int
    where: Cond | None = None
    order: list[Order] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def unexpected(self, tok: Token | None = None) -> SoqlError:
        tok = tok or self.tok
        if tok.kind == "end":
            return _error_at(self.text, tok.pos, "unexpected token: <EOF>")
        return _error_at(self.text, tok.pos, f"unexpected token: '{tok.text}'")

    def keyword(self, *words: str) -> Token:
        tok = self.tok
        if tok.kind != "keyword" or tok.value not in words:
            raise self.unexpected()
        return self.next()

    def at(self, *words: str) -> bool:
        return self.tok.kind == "keyword" and self.tok.value in words

    def path(self) -> Path:
        tok = self.tok
        if tok.kind != "ident":
            raise self.unexpected()
        self.next()
        return Path(tuple(tok.value.split(".")), tok.pos)

    def parse(self) -> Query:
        self.keyword("SELECT")
        fields: list[Path] = []
        count = False
        if self.at("COUNT"):
            self.next()
            if self.tok.value != "(":
                raise self.unexpected()
            self.next()
            if self.tok.value != ")":
                raise _error_at(self.text, self.tok.pos, "COUNT(field) and aggregate queries are not supported "
                                                         "by this sandbox; use COUNT()")
            self.next()
            count = True
        else:
            while True:
                fields.append(self.path())
                if self.tok.value == ",":
                    self.next()
                    continue
                break
        self.keyword("FROM")
        obj = self.tok
        if obj.kind != "ident" or "." in obj.value:
            raise self.unexpected()
        self.next()
        query = Query(fields, count, obj.value, obj.pos)
        if self.at("WHERE"):
            self.next()
            query.where = self.condition()
        if self.at("ORDER"):
            self.next()
            self.keyword("BY")
            while True:
                path = self.path()
                desc = False
                if self.at("ASC", "DESC"):
                    desc = self.next().value == "DESC"
                nulls_first = not desc
                if self.at("NULLS"):
                    self.next()
                    nulls_first = self.keyword("FIRST", "LAST").value == "FIRST"
                query.order.append(Order(path, desc, nulls_first))
                if self.tok.value == ",":
                    self.next()
                    continue
                break
        if self.at("LIMIT"):
            self.next()
            query.limit = self.integer("LIMIT")
        if self.at("OFFSET"):
            self.next()
            query.offset = self.integer("OFFSET")
            if query.offset > MAX_OFFSET:
                raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE",
                                f"Maximum SOQL offset allowed is {MAX_OFFSET}")
        if self.tok.kind != "end":
            raise self.unexpected()
        return query

    def integer(self, what: str) -> int:
        tok = self.tok
        if tok.kind != "number" or not re.fullmatch(r"\d+", tok.value):
            raise self.unexpected()
        self.next()
        return int(tok.value)

    def condition(self) -> Cond:
        first = self.unary()
        joiner = None
        items = [first]
        while self.at("AND", "OR"):
            tok = self.next()
            if joiner is not None and tok.value != joiner:
                raise _error_at(self.text, tok.pos, f"unexpected token: '{tok.text}'")
            joiner = tok.value
            items.append(self.unary())
        if joiner is None:
            return first
        return Cond(joiner.lower(), value=items, pos=first.pos)

    def unary(self) -> Cond:
        tok = self.tok
        if self.at("NOT"):
            self.next()
            return Cond("not", value=[self.unary()], pos=tok.pos)
        if tok.kind == "punct" and tok.value == "(":
            self.next()
            inner = self.condition()
            if self.tok.value != ")":
                raise self.unexpected()
            self.next()
            return inner
        return self.comparison()

    def comparison(self) -> Cond:
        path = self.path()
        tok = self.tok
        if tok.kind == "op":
            self.next()
            op = "!=" if tok.value == "<>" else tok.value
            return Cond("cmp", path, op, self.literal(), pos=path.pos)
        if self.at("LIKE"):
            self.next()
            lit = self.literal()
            if lit.kind != "string":
                raise _error_at(self.text, lit.pos, "LIKE needs a quoted string pattern")
            return Cond("like", path, "LIKE", lit, pos=path.pos)
        negate = False
        if self.at("NOT"):
            self.next()
            negate = True
            if not self.at("IN"):
                raise self.unexpected()
        if self.at("IN"):
            self.next()
            if self.tok.value != "(":
                raise self.unexpected()
            self.next()
            values = [self.literal()]
            while self.tok.value == ",":
                self.next()
                values.append(self.literal())
            if self.tok.value != ")":
                raise self.unexpected()
            self.next()
            return Cond("in", path, "NOT IN" if negate else "IN", values, negate=negate, pos=path.pos)
        raise self.unexpected()

    def literal(self) -> Literal:
        tok = self.next()
        if tok.kind == "string":
            return Literal("string", tok.value, tok.pos, tok.text)
        if tok.kind == "number":
            return Literal("number", float(tok.value), tok.pos, tok.text)
        if tok.kind == "date":
            try:
                day = date.fromisoformat(tok.value)
            except ValueError:
                raise _error_at(self.text, tok.pos, f"line 1:{tok.pos} no viable alternative at character "
                                                    f"'{tok.text}'") from None
            return Literal("date", day.isoformat(), tok.pos, tok.text)
        if tok.kind == "datetime":
            stamp = parse_datetime(tok.value)
            if stamp is None:
                raise _error_at(self.text, tok.pos, f"invalid datetime: '{tok.text}'")
            return Literal("datetime", sf_datetime(stamp), tok.pos, tok.text)
        if tok.kind == "keyword" and tok.value == "NULL":
            return Literal("null", None, tok.pos, tok.text)
        if tok.kind == "keyword" and tok.value in ("TRUE", "FALSE"):
            return Literal("bool", tok.value == "TRUE", tok.pos, tok.text)
        if tok.kind == "ident" and tok.value.upper() in _RELATIVE:
            name = tok.value.upper()
            n = None
            if name.endswith("_N_DAYS"):
                if self.tok.value != ":":
                    raise self.unexpected()
                self.next()
                n = self.integer(name)
            return Literal("relative", (name, n), tok.pos, tok.text)
        raise self.unexpected(tok)


def parse(text: str) -> Query:
    """The syntax of one SOQL query; :class:`SoqlError` (``MALFORMED_QUERY``) if it is not SOQL we know."""
    if not isinstance(text, str) or not text.strip():
        raise SoqlError("MALFORMED_QUERY", "unexpected token: <EOF>")
    return _Parser(text).parse()


# ----------------------------------------------------------------------------- compilation
@dataclass
class Column:
    """One selected path: ``hops`` are (relationship name, fk field, target object) steps."""
    hops: list[tuple[str, str, str]]
    field: str
    type: str
    getter: Callable[[dict], Any]


@dataclass
class Plan:
    object: str
    count: bool
    columns: list[Column]
    predicate: Callable[[dict], bool] | None
    index_terms: list[tuple[str, list[Any]]]  # (direct field, normalised values): candidates for an index
    sorters: list[tuple[Callable[[dict], Any], bool, bool]]  # (key getter, desc, nulls_first)
    limit: int | None
    offset: int | None
    tree: list[tuple]  # render shape: ("f", name, getter) | ("r", relname, fk, target, subtree)

    def filter(self, records: Iterable[dict]) -> list[dict]:
        pred = self.predicate
        if pred is None:
            return list(records)
        return [rec for rec in records if pred(rec)]

    def sort(self, records: list[dict]) -> list[dict]:
        for key, desc, nulls_first in reversed(self.sorters):
            null_rank = (1 if nulls_first else 0) if desc else (0 if nulls_first else 1)
            value_rank = 1 - null_rank

            def sort_key(rec, key=key, null_rank=null_rank, value_rank=value_rank):
                value = key(rec)
                return (null_rank, 0) if value is None else (value_rank, value)

            records.sort(key=sort_key, reverse=desc)
        return records

    def window(self, records: list[dict]) -> list[dict]:
        start = self.offset or 0
        end = None if self.limit is None else start + self.limit
        return records[start:end] if (start or end is not None) else records


def _type_name(ftype: str) -> str:
    if ftype in TEXT_TYPES or ftype in ID_TYPES:
        return "string"
    return {"double": "double", "currency": "double", "percent": "double", "int": "integer",
            "boolean": "boolean", "date": "date", "datetime": "dateTime"}.get(ftype, ftype)


def _relative_range(name: str, n: int | None, today: date) -> tuple[date, date]:
    if name == "TODAY":
        return today, today + timedelta(days=1)
    if name == "YESTERDAY":
        return today - timedelta(days=1), today
    if name == "TOMORROW":
        return today + timedelta(days=1), today + timedelta(days=2)
    if name == "LAST_N_DAYS":
        return today - timedelta(days=n), today + timedelta(days=1)
    return today + timedelta(days=1), today + timedelta(days=n + 1)  # NEXT_N_DAYS


class _Compiler:
    def __init__(self, query: Query, text: str, objects: Callable[[str], Any], fetch: Callable[[str, str], Any],
                 today: date | None):
        self.query, self.text, self.objects, self.fetch = query, text, objects, fetch
        self.today = today or datetime.now(UTC).date()
        self.root = objects(query.object)
        if self.root is None:
            raise _error_at(text, query.object_pos,
                            f"sObject type '{query.object}' is not supported. If you are attempting to use a "
                            f"custom object, be sure to append the '__c' after the entity name. Please reference "
                            f"your WSDL or the describe call for the appropriate names.", "INVALID_TYPE")

    def resolve(self, path: Path) -> Column:
        sobject = self.root
        hops: list[tuple[str, str, str]] = []
        parts = list(path.parts)
        if len(parts) > 1 and parts[0].lower() == sobject.name.lower():
            parts = parts[1:]  # "Account.Name" FROM Account is allowed
        for rel in parts[:-1]:
            ref = sobject.relationship(rel)
            if ref is None:
                raise _error_at(self.text, path.pos,
                                f"Didn't understand relationship '{rel}' in field path. If you are attempting to "
                                f"use a custom relationship, be sure to append the '__r' after the custom "
                                f"relationship name. Please reference your WSDL or the describe call for the "
                                f"appropriate names.", "INVALID_FIELD")
            target = self.objects(ref.reference_to[0])
            hops.append((ref.relationship_name, ref.name, target.name))
            sobject = target
        fdef = sobject.field(parts[-1])
        if fdef is None:
            where = f"entity '{sobject.name}'"
            raise _error_at(self.text, path.pos,
                            f"No such column '{parts[-1]}' on {where}. If you are attempting to use a custom "
                            f"field, be sure to append the '__c' after the custom field name. Please reference "
                            f"your WSDL or the describe call for the appropriate names.", "INVALID_FIELD")
        name = fdef.name
        if not hops:
            getter = _direct(name)
        else:
            fetch, steps = self.fetch, [(fk, target) for _, fk, target in hops]

            def getter(rec, steps=steps, name=name, fetch=fetch):
                for fk, target in steps:
                    ref_id = rec.get(fk)
                    if ref_id is None:
                        return None
                    rec = fetch(target, ref_id)
                    if rec is None:
                        return None
                return rec.get(name)
        return Column(hops, name, fdef.type, getter)

    # ------------------------------------------------------------------ filters
    def literal_value(self, col: Column, lit: Literal, path: Path) -> Any:
        ftype = col.type
        kind = lit.kind
        bad = None
        if kind == "null":
            return None
        if ftype in TEXT_TYPES:
            if kind != "string":
                bad = "string and should be enclosed in quotes"
            else:
                return lit.value.lower()
        elif ftype in ID_TYPES:
            if kind != "string":
                bad = "string and should be enclosed in quotes"
            else:
                value = to18(lit.value)
                if value is None:
                    raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {lit.value}")
                return value
        elif ftype in NUMBER_TYPES:
            if kind != "number":
                bad = f"{_type_name(ftype)} and should not be enclosed in quotes"
            else:
                return lit.value
        elif ftype == "boolean":
            if kind != "bool":
                bad = "boolean and should not be enclosed in quotes"
            else:
                return lit.value
        elif ftype == "date":
            if kind == "date":
                return lit.value
            if kind == "relative":
                lo, hi = _relative_range(*lit.value, self.today)
                return ("range", lo.isoformat(), hi.isoformat())
            bad = "date and should not be enclosed in quotes"
        elif ftype == "datetime":
            if kind == "datetime":
                return lit.value
            if kind == "relative":
                lo, hi = _relative_range(*lit.value, self.today)
                midnight = datetime.min.time()
                return ("range", sf_datetime(datetime.combine(lo, midnight, UTC)),
                        sf_datetime(datetime.combine(hi, midnight, UTC)))
            bad = "dateTime and should not be enclosed in quotes"
        else:
            bad = f"{ftype}"
        raise _error_at(self.text, lit.pos, f"value of filter criterion for field '{path.text}' must be of type "
                                            f"{bad}")

    def build(self, cond: Cond) -> Callable[[dict], bool]:
        if cond.op in ("and", "or"):
            parts = [self.build(c) for c in cond.value]
            if cond.op == "and":
                return lambda rec: all(p(rec) for p in parts)
            return lambda rec: any(p(rec) for p in parts)
        if cond.op == "not":
            inner = self.build(cond.value[0])
            return lambda rec: not inner(rec)
        col = self.resolve(cond.path)
        get = col.getter
        lower = col.type in TEXT_TYPES
        if lower:
            base = get

            def get(rec, base=base):
                value = base(rec)
                return value.lower() if value is not None else None
        if cond.op == "like":
            if col.type not in TEXT_TYPES and col.type not in ID_TYPES:
                raise _error_at(self.text, cond.path.pos, f"invalid operator on {_type_name(col.type)} field: "
                                                          f"{cond.path.text}", "INVALID_FIELD")
            regex = _like_regex(cond.value.value)
            return lambda rec: (v := get(rec)) is not None and regex.match(v) is not None
        if cond.op == "in":
            values = [self.literal_value(col, lit, cond.path) for lit in cond.value]
            if any(isinstance(v, tuple) for v in values):
                raise _error_at(self.text, cond.value[0].pos, "relative dates are not supported inside IN")
            has_null = None in values
            wanted = frozenset(v for v in values if v is not None)
            if cond.negate:
                return lambda rec: (v := get(rec)) is None and not has_null or (v is not None and v not in wanted)
            return lambda rec: (v := get(rec)) in wanted or (v is None and has_null)
        op = cond.operator
        value = self.literal_value(col, cond.value, cond.path)
        if col.type == "boolean" and op not in ("=", "!="):
            raise _error_at(self.text, cond.value.pos, f"invalid operator on boolean field: {cond.path.text}")
        if value is None:
            if op == "=":
                return lambda rec: get(rec) is None
            if op == "!=":
                return lambda rec: get(rec) is not None
            raise _error_at(self.text, cond.value.pos, f"invalid operator on null value: {op}")
        if isinstance(value, tuple):  # a relative date range [lo, hi)
            _, lo, hi = value
            tests = {"=": lambda v: lo <= v < hi, "!=": lambda v: not lo <= v < hi, "<": lambda v: v < lo,
                     "<=": lambda v: v < hi, ">": lambda v: v >= hi, ">=": lambda v: v >= lo}
            test = tests[op]
            if op == "!=":
                return lambda rec: (v := get(rec)) is None or test(v)
            return lambda rec: (v := get(rec)) is not None and test(v)
        if op == "=":
            return lambda rec: get(rec) == value
        if op == "!=":
            return lambda rec: get(rec) != value
        if op == "<":
            return lambda rec: (v := get(rec)) is not None and v < value
        if op == "<=":
            return lambda rec: (v := get(rec)) is not None and v <= value
        if op == ">":
            return lambda rec: (v := get(rec)) is not None and v > value
        return lambda rec: (v := get(rec)) is not None and v >= value

    def index_terms(self, cond: Cond | None) -> list[tuple[str, list[Any]]]:
        """Equality / IN terms on direct fields that every matching record must satisfy."""
        if cond is None:
            return []
        if cond.op == "and":
            return [t for c in cond.value for t in self.index_terms(c)]
        if cond.op == "cmp" and cond.operator == "=" or cond.op == "in" and not cond.negate:
            col = self.resolve(cond.path)
            if col.hops:
                return []
            lits = [cond.value] if cond.op == "cmp" else cond.value
            values = [self.literal_value(col, lit, cond.path) for lit in lits]
            if any(v is None or isinstance(v, tuple) for v in values):
                return []
            return [(col.field, values)]
        return []

    def compile(self) -> Plan:
        q = self.query
        columns = [self.resolve(p) for p in q.fields]
        seen = set()
        unique = []
        for col in columns:
            key = (tuple(h[0] for h in col.hops), col.field)
            if key in seen:
                raise _error_at(self.text, q.fields[columns.index(col)].pos,
                                f"duplicate field selected: {'.'.join(key[0] + (col.field,))}", "MALFORMED_QUERY")
            seen.add(key)
            unique.append(col)
        predicate = self.build(q.where) if q.where is not None else None
        sorters = []
        for order in q.order:
            col = self.resolve(order.path)
            if col.type == "multipicklist" or col.type == "textarea":
                raise _error_at(self.text, order.path.pos, f"field '{order.path.text}' can not be sorted in a "
                                                           f"query call", "INVALID_FIELD")
            key = col.getter
            if col.type in TEXT_TYPES:
                base = key

                def key(rec, base=base):
                    value = base(rec)
                    return value.lower() if value is not None else None
            sorters.append((key, order.desc, order.nulls_first))
        return Plan(q.object and self.root.name, q.count, unique, predicate, self.index_terms(q.where), sorters,
                    q.limit, q.offset, _tree(unique))


def _direct(name: str) -> Callable[[dict], Any]:
    return lambda rec: rec.get(name)


def _tree(columns: list[Column]) -> list[tuple]:
    root: list = []
    for col in columns:
        level = root
        for rel, fk, target in col.hops:
            for node in level:
                if node[0] == "r" and node[1] == rel:
                    level = node[4]
                    break
            else:
                node = ("r", rel, fk, target, [])
                level.append(node)
                level = node[4]
        level.append(("f", col.field))
    return root


def _like_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and pattern[i + 1:i + 2] in ("%", "_"):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


def compile_query(query: Query, text: str, objects: Callable[[str], Any], fetch: Callable[[str, str], Any],
                  today: date | None = None) -> Plan:
    """Check ``query`` against the org and build its :class:`Plan`.

    ``objects(name)`` returns the sObject description (case-insensitive name) or None; it must
    offer ``.name``, ``.field(name)`` and ``.relationship(name)`` (each case-insensitive, None when
    unknown), fields offering ``.name``, ``.type``, ``.reference_to`` and ``.relationship_name``.
    ``fetch(object, id)`` returns a stored record dict (for parent relationship paths).
    """
    return _Compiler(query, text, objects, fetch, today).compile()


def render(record: dict, tree: list[tuple], attributes: Callable[[str, dict], dict], object_name: str,
           fetch: Callable[[str, str], Any]) -> dict:
    """A record as the REST API returns it: ``attributes`` first, then the selected fields in order,
    parent relationships as nested records (or null)."""
    out = {"attributes": attributes(object_name, record)}
    for node in tree:
        if node[0] == "f":
            out[node[1]] = record.get(node[1])
        else:
            _, rel, fk, target, sub = node
            ref_id = record.get(fk)
            parent = fetch(target, ref_id) if ref_id is not None else None
            out[rel] = None if parent is None else render(parent, sub, attributes, target, fetch)
    return out


def flat_values(record: dict, columns: list[Column]) -> list[Any]:
    """The selected values in column order (for Bulk API CSV results)."""
    return [col.getter(record) for col in columns]


def column_names(plan: Plan) -> list[str]:
    return [".".join([h[0] for h in col.hops] + [col.field]) for col in plan.columns]
