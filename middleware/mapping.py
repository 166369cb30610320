"""Admin-edited field mappings: raw source records → canonical records.

A ``FieldMapping`` row says: for canonical ``object_name``, fill ``canonical_field``
from ``source_path`` through ``transform`` (with ``args``), else ``default``.

Source paths::

    DueDate                                   a key
    entity.internalId                         nested keys
    Addresses[0].Country                      a list item by position
    Addresses[AddressType=POBOX].Country      the first list item whose key has that value
    customFieldList.customField[scriptId=custentity_arr].value   a custom field by id
    applyList.apply[].amount                  every item (only for list fields, ``applications[].amount``)

Canonical fields: ``due_date`` a field; ``applications[].amount`` a field of every item of a
list; ``billing_address.city`` a field of one nested object (the object is ``None`` when none
of its fields found a value).

A single element where a list is expected counts as a list of one (SOAP repeats
collapse that way). Transforms turn strings into typed values (``Decimal``, ``date``,
UTC ``datetime``); marshmallow then validates the canonical record (``schemas.py``).
``compile_mappings`` builds plain closures once per run, so the hot path does no
parsing of paths or arguments per record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

UTC = timezone.utc
MISSING = object()
_SEGMENT = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")
_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


class MappingError(ValueError):
    """A mapping definition that cannot work (bad path, unknown transform, bad arguments)."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str
    path: str | None = None
    value: Any = None

    def as_dict(self) -> dict:
        out = {"field": self.field, "message": self.message}
        if self.path:
            out["path"] = self.path
        if self.value is not None:
            out["value"] = str(self.value)[:200]
        return out


@dataclass
class FieldSpec:
    """A mapping row in plain form (from a preset or a ``FieldMapping`` row)."""

    canonical_field: str
    source_path: str | None = None
    transform: str = "text"
    args: dict = field(default_factory=dict)
    default: str | None = None

    @classmethod
    def from_row(cls, row) -> "FieldSpec":
        return cls(row.canonical_field, row.source_path, row.transform or "text", dict(row.args or {}), row.default)


# ---------------------------------------------------------------- paths
def _parse_path(path: str) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    pos = 0
    for match in _SEGMENT.finditer(path):
        if match.start() != pos and path[pos:match.start()] != ".":
            raise MappingError(f"source path {path!r}: unexpected {path[pos:match.start()]!r}")
        key, selector = match.groups()
        if key is not None:
            steps.append(("key", key))
        elif selector == "":
            steps.append(("each", None))
        elif selector.lstrip("-").isdigit():
            steps.append(("index", int(selector)))
        elif "=" in selector:
            name, _, value = selector.partition("=")
            steps.append(("where", (name.strip(), value.strip().strip("'\""))))
        else:
            raise MappingError(f"source path {path!r}: bad selector [{selector}]")
        pos = match.end()
    if not steps or pos != len(path):
        raise MappingError(f"source path {path!r} is empty or malformed")
    return steps


def _as_list(value) -> list:
    if value is None or value is MISSING:
        return []
    return value if isinstance(value, list) else [value]


def compile_path(path: str) -> Callable[[Any], Any]:
    """A getter for ``path`` returning the value or ``MISSING``. ``[]`` is not allowed here."""
    steps = _parse_path(path)
    if any(kind == "each" for kind, _ in steps):
        raise MappingError(f"source path {path!r}: [] only in list fields (canonical name with [])")
    if all(kind == "key" for kind, _ in steps):
        keys = [arg for _, arg in steps]
        if len(keys) == 1:
            key = keys[0]
            return lambda rec: rec.get(key, MISSING) if isinstance(rec, dict) else MISSING

        def get_keys(rec):
            for key in keys:
                if isinstance(rec, list):
                    rec = rec[0] if rec else MISSING
                if not isinstance(rec, dict):
                    return MISSING
                rec = rec.get(key, MISSING)
                if rec is None:
                    return None
            return rec
        return get_keys

    def get(rec):
        for kind, arg in steps:
            if rec is MISSING or rec is None:
                return rec
            if kind == "key":
                if isinstance(rec, list):
                    rec = rec[0] if rec else MISSING
                rec = rec.get(arg, MISSING) if isinstance(rec, dict) else MISSING
            elif kind == "index":
                items = _as_list(rec)
                rec = items[arg] if -len(items) <= arg < len(items) else MISSING
            else:  # where
                name, wanted = arg
                rec = next((item for item in _as_list(rec)
                            if isinstance(item, dict) and str(item.get(name)) == wanted), MISSING)
        return rec
    return get


def split_list_path(path: str) -> tuple[str | None, str]:
    """``applyList.apply[].amount`` → (``applyList.apply``, ``amount``); no ``[]`` → (None, path)."""
    if "[]" not in path:
        return None, path
    head, _, tail = path.partition("[]")
    return head, tail.lstrip(".")


# ----------------------------------------------------------- transforms
def _blank(value) -> bool:
    return value is None or value is MISSING or (isinstance(value, str) and not value.strip())


def _text(args):
    max_length = args.get("max_length")

    def run(value):
        if isinstance(value, dict):  # a reference: prefer its name, then its id
            value = value.get("name", value.get("internalId", value.get("id")))
            if value is None:
                raise ValueError("a structure, not text")
        text = str(value).strip()
        if max_length and len(text) > max_length:
            raise ValueError(f"longer than {max_length} characters")
        return text
    return run


def _case(method):
    def factory(args):
        return lambda value: getattr(str(value).strip(), method)()
    return factory


def _decimal(args):
    minor = args.get("minor_units")
    scale = Decimal(10) ** -int(minor) if minor not in (None, False) else None
    negate = bool(args.get("negate"))

    def run(value):
        if isinstance(value, bool):
            raise ValueError("not a number")
        if isinstance(value, float):  # JSON parsed without parse_float=Decimal
            value = repr(value)
        try:
            number = value if isinstance(value, Decimal) else Decimal(str(value).strip().replace(",", ""))
        except InvalidOperation:
            raise ValueError("not a number") from None
        if not number.is_finite():
            raise ValueError("not a finite number")
        if scale is not None:
            number = number * scale
        return -number if negate else number
    return run


def _integer(args):
    def run(value):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError("not an integer") from None
        if number != number.to_integral_value():
            raise ValueError("not an integer")
        return int(number)
    return run


def _parse_datetime(value, fmt: str | None, tz) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        if fmt:
            moment = datetime.strptime(text, fmt)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment


def _datetime(args):
    fmt = args.get("format")
    tz = ZoneInfo(args["timezone"]) if args.get("timezone") else UTC
    return lambda value: _parse_datetime(value, fmt, tz).astimezone(UTC)


def _date(args):
    fmt = args.get("format")
    tz_name = args.get("timezone")
    tz = ZoneInfo(tz_name) if tz_name else None

    def run(value):
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        text = value if isinstance(value, datetime) else str(value).strip()
        if not fmt and isinstance(text, str) and len(text) == 10:
            return date.fromisoformat(text)
        moment = _parse_datetime(text, fmt, tz or UTC)
        # a timestamp names a business date in the company's (or the given) time zone
        return moment.astimezone(tz).date() if tz else moment.date()
    return run


def parse_ms_json_date(value) -> datetime:
    """``/Date(1550793549320+0000)/`` → aware UTC datetime (milliseconds since the epoch, UTC)."""
    match = _MS_DATE.match(str(value).strip())
    if not match:
        raise ValueError("not a /Date(ms+zone)/ value")
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(match.group(1)))


def _ms_json_datetime(args):
    return parse_ms_json_date


def _ms_json_date(args):
    tz = ZoneInfo(args["timezone"]) if args.get("timezone") else UTC
    return lambda value: parse_ms_json_date(value).astimezone(tz).date()


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def _boolean(args):
    def run(value):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("not a boolean")
    return run


def _enum(args):
    table = {str(k): v for k, v in (args.get("map") or {}).items()}
    if not table:
        raise MappingError("enum transform needs args.map")
    fallback = args.get("default", MISSING)
    case_insensitive = bool(args.get("ignore_case"))
    if case_insensitive:
        table = {k.lower(): v for k, v in table.items()}

    def run(value):
        if isinstance(value, dict):
            value = value.get("name", value.get("internalId"))
        key = str(value).strip()
        key = key.lower() if case_insensitive else key
        if key in table:
            return table[key]
        if fallback is not MISSING:
            return fallback
        raise ValueError(f"{value!r} is not one of {sorted(table)}")
    return run


def _constant(args):
    if "value" not in args:
        raise MappingError("constant transform needs args.value")
    value = args["value"]
    return lambda _ignored: value


def _reciprocal(args):
    dec = _decimal(args)

    def run(value):
        number = dec(value)
        if number == 0:
            raise ValueError("rate is zero")
        return Decimal(1) / number
    return run


#: names people type for countries that CLDR spells otherwise
_COUNTRY_ALIASES = {"usa": "US", "u.s.a.": "US", "u.s.": "US", "united states of america": "US", "america": "US",
                    "uk": "GB", "u.k.": "GB", "great britain": "GB", "england": "GB", "scotland": "GB",
                    "wales": "GB", "northern ireland": "GB", "holland": "NL", "the netherlands": "NL",
                    "gbr": "GB", "deu": "DE", "fra": "FR", "nld": "NL", "aus": "AU", "nzl": "NZ", "can": "CA",
                    "jpn": "JP", "irl": "IE", "esp": "ES", "ita": "IT", "che": "CH", "aut": "AT", "bel": "BE",
                    "swe": "SE", "nor": "NO", "dnk": "DK", "fin": "FI", "sgp": "SG", "ind": "IN", "bra": "BR"}
_COUNTRY_NAME_LOCALES = ("en", "de", "fr", "es", "it", "nl", "pt", "sv", "da", "ja")
_country_names: dict[str, str] = {}


def _country_table() -> dict[str, str]:
    """Lower-cased country name (CLDR, in several languages) or alias -> ISO 3166 alpha-2."""
    if not _country_names:
        from babel import Locale

        table = {}
        for tag in _COUNTRY_NAME_LOCALES:
            for code, name in Locale.parse(tag).territories.items():
                if len(code) == 2 and code.isalpha() and code not in ("ZZ", "EU", "EZ", "UN", "QO"):
                    table.setdefault(name.casefold(), code)
        table.update(_COUNTRY_ALIASES)
        _country_names.update(table)
    return _country_names


def _country(args):
    """ISO 3166 alpha-2 from a code or a country's name ("New Zealand", "Deutschland", "USA").
    ``args.unknown: null`` maps a value that is neither to no value instead of an error (for
    optional fields such as an address's country, so a typo does not reject the whole record)."""
    lenient = "unknown" in args and args["unknown"] is None

    def run(value):
        text = " ".join(str(value).split())
        if len(text) == 2 and text.isalpha():
            return text.upper()
        code = _country_table().get(text.casefold())
        if code is None:
            if lenient:
                return None
            raise ValueError(f"{text!r} is not an ISO 3166 country code or a country name")
        return code
    return run


TRANSFORMS: dict[str, Callable[[dict], Callable[[Any], Any]]] = {
    "text": _text,
    "country": _country,
    "upper": _case("upper"),
    "lower": _case("lower"),
    "decimal": _decimal,
    "integer": _integer,
    "date": _date,
    "datetime": _datetime,
    "ms_json_date": _ms_json_date,
    "ms_json_datetime": _ms_json_datetime,
    "boolean": _boolean,
    "enum": _enum,
    "constant": _constant,
    "reciprocal": _reciprocal,
    # "concat", "collect" and "lookup" need the record or the preset's tables: built in _compile_field
}
#: transforms built in ``_compile_field`` (not in ``TRANSFORMS``)
RECORD_TRANSFORMS = ("collect", "concat", "lookup")


# -------------------------------------------------------------- compile
@dataclass
class _Compiled:
    name: str  # canonical field (item field name for list fields)
    path: str | None
    getter: Callable[[Any], Any]
    convert: Callable[[Any], Any]
    default: Any
    list_path: str | None = None
    constant: bool = False


def _compile_field(spec: FieldSpec, lookups: dict, item_path: str | None = None) -> _Compiled:
    transform = spec.transform or "text"
    args = spec.args or {}
    path = item_path if item_path is not None else spec.source_path
    name = spec.canonical_field.split("[].", 1)[-1]
    if transform in ("concat", "collect"):
        getters = [compile_path(p) for p in args.get("paths") or ([path] if path else [])]
        if not getters:
            raise MappingError(f"{spec.canonical_field}: {transform} needs args.paths")
        sep = args.get("separator", " ")
        joined = transform == "concat"

        def getter(rec):
            parts = [g(rec) for g in getters]
            parts = [str(p).strip() for p in parts if not _blank(p)]
            if not parts:
                return MISSING
            return sep.join(parts) if joined else parts
        return _Compiled(name, path, getter, lambda v: v, spec.default)
    if transform == "lookup":
        table_name = args.get("table")
        if table_name not in lookups:
            raise MappingError(f"{spec.canonical_field}: lookup table {table_name!r} is not defined in the preset")
        table = {str(k): v for k, v in lookups[table_name].items()}
        key_of = compile_path(args["key"]) if args.get("key") else None

        def convert(value):
            if isinstance(value, dict):
                value = key_of(value) if key_of else value.get("internalId", value.get("name"))
            if str(value) in table:
                return table[str(value)]
            raise ValueError(f"{value!r} is not in lookup table {table_name!r}")
        getter = compile_path(path) if path else (lambda rec: MISSING)
        return _Compiled(name, path, getter, convert, spec.default)
    factory = TRANSFORMS.get(transform)
    if factory is None:
        raise MappingError(f"{spec.canonical_field}: unknown transform {transform!r} "
                           f"(one of {sorted([*TRANSFORMS, *RECORD_TRANSFORMS])})")
    convert = factory(args)
    if transform == "constant":
        return _Compiled(name, None, lambda rec: True, convert, spec.default, constant=True)
    if not path:
        if spec.default is None:
            raise MappingError(f"{spec.canonical_field}: no source path, constant or default")
        return _Compiled(name, None, lambda rec: MISSING, convert, spec.default)
    return _Compiled(name, path, compile_path(path), convert, spec.default)


class CompiledMapping:
    """The mapping of one source object to one canonical object, ready to apply."""

    def __init__(self, object_name: str, specs: Iterable[FieldSpec], lookups: dict | None = None,
                 record_filter: dict | None = None):
        self.object_name = object_name
        self.fields: list[_Compiled] = []
        self.lists: dict[str, tuple[Callable[[Any], Any] | None, list[_Compiled]]] = {}
        self.objects: dict[str, list[_Compiled]] = {}  # "billing_address.city" → objects["billing_address"]
        self.errors: list[FieldError] = []
        lookups = lookups or {}
        for spec in specs:
            try:
                if "[]" in spec.canonical_field:
                    group = spec.canonical_field.split("[]", 1)[0]
                    list_path, item_path = split_list_path(spec.source_path or "")
                    compiled = _compile_field(spec, lookups, item_path or None)
                    compiled.list_path = list_path
                    getter, members = self.lists.get(group, (None, []))
                    readers = [m for m in members if not m.constant]
                    if not compiled.constant:
                        if readers and readers[0].list_path != list_path:
                            raise MappingError(f"{spec.canonical_field}: all fields of {group}[] must read the same "
                                               f"list ({readers[0].list_path!r} vs {list_path!r})")
                        getter = compile_path(list_path) if list_path else None
                    self.lists[group] = (getter, members + [compiled])
                elif "." in spec.canonical_field:
                    group, _, member = spec.canonical_field.partition(".")
                    if not group or not member or "." in member:
                        raise MappingError(f"{spec.canonical_field}: one level of object field (object.field)")
                    compiled = _compile_field(spec, lookups)
                    compiled.name = member
                    self.objects.setdefault(group, []).append(compiled)
                else:
                    self.fields.append(_compile_field(spec, lookups))
            except MappingError as exc:
                self.errors.append(FieldError(spec.canonical_field, str(exc), spec.source_path))
        self._plain_cache: list[tuple] | None = None
        self.filter = None
        if record_filter:
            getter = compile_path(record_filter["path"])
            allowed = {str(v).lower() for v in _as_list(record_filter.get("in", record_filter.get("equals")))}
            self.filter = lambda rec: str(getter(rec)).lower() in allowed

    @property
    def _plain(self) -> list[tuple]:
        if self._plain_cache is None:
            self._plain_cache = [(f.name, f.getter, f.convert, f.default, f) for f in self.fields]
        return self._plain_cache

    def wants(self, raw: dict) -> bool:
        return self.filter is None or self.filter(raw)

    @staticmethod
    def _value(spec: _Compiled, rec, errors: list[FieldError], label: str):
        try:
            value = spec.getter(rec)
        except (TypeError, AttributeError):
            value = MISSING
        if _blank(value):
            if spec.default is None:
                return value  # None or MISSING: let validation decide if it is required
            value = spec.default
        try:
            return spec.convert(value)
        except (ValueError, TypeError, ArithmeticError) as exc:
            errors.append(FieldError(label, str(exc), spec.path, value))
            return MISSING

    def apply(self, raw: dict) -> tuple[dict, list[FieldError]]:
        """The canonical record for ``raw`` and the per-field conversion errors."""
        errors: list[FieldError] = []
        record: dict[str, Any] = {}
        for name, getter, convert, default, spec in self._plain:  # the hot loop: _value inlined
            try:
                value = getter(raw)
            except (TypeError, AttributeError):
                value = MISSING
            if value is None or value is MISSING or (value.__class__ is str and not value.strip()):
                if default is None:
                    if value is not MISSING:
                        record[name] = None  # blank text counts as no value
                    continue
                value = default
            try:
                record[name] = convert(value)
            except (ValueError, TypeError, ArithmeticError) as exc:
                errors.append(FieldError(name, str(exc), spec.path, value))
        for group, (getter, members) in self.lists.items():
            items = _as_list(getter(raw)) if getter else [raw]
            rows = []
            for n, item in enumerate(items):
                row, found = {}, False
                for spec in members:
                    value = self._value(spec, item, errors, f"{group}[{n}].{spec.name}")
                    if value is not MISSING and value is not None:
                        row[spec.name] = value
                        found = found or not spec.constant
                if found:  # an item made only of constants is no item
                    rows.append(row)
            record[group] = rows
        for group, members in self.objects.items():
            obj, found = {}, False
            for spec in members:
                value = self._value(spec, raw, errors, f"{group}.{spec.name}")
                if value is not MISSING and value is not None:
                    obj[spec.name] = value
                    found = found or not spec.constant
            record[group] = obj if found else None  # nothing but constants: no object (clears a stored one)
        return record, errors

    def unmatched(self, raws: Iterable[dict], among: set[str] | None = None) -> list[str]:
        """Source paths (of fields without a default) that matched nothing in any of ``raws``."""
        seen: set[str] = set()
        fields = self.fields + [m for members in self.objects.values() for m in members]
        candidates = [s for s in fields if s.path and s.default is None and (among is None or s.path in among)]
        for raw in raws:
            for spec in candidates:
                if spec.path not in seen and not _blank(spec.getter(raw)):
                    seen.add(spec.path)
            if len(seen) == len(candidates):
                break
        return [s.path for s in candidates if s.path not in seen]


def preview(specs: Iterable[FieldSpec], sample: dict, object_name: str, lookups: dict | None = None,
            validate: Callable[[dict], list[FieldError]] | None = None) -> dict:
    """What a mapping makes of one sample record: the canonical record and every per-field error.

    The console shows this next to the editor, so an admin sees a broken path or
    transform before a sync runs.
    """
    mapping = CompiledMapping(object_name, specs, lookups)
    record, errors = mapping.apply(sample)
    errors = mapping.errors + errors
    if validate is not None and not mapping.errors:
        errors += validate(record)
    unmatched = mapping.unmatched([sample])
    return {
        "object": object_name,
        "record": record,
        "errors": [e.as_dict() for e in errors],
        "unmatched_paths": unmatched,
        "ok": not errors,
    }
