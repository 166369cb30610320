"""The in-memory org (:class:`Org`): sObject types, records, external-id and lookup indexes, a
recycle bin, undo for allOrNone, SOQL execution, and writes checked and refused the way Salesforce
does (:meth:`Org.clean`, :meth:`Org.coerce`). Custom objects are deployed and custom fields dropped
and restored here; :meth:`Org.from_book` seeds it (:mod:`connectors.sandbox.salesforce.seed`).
"""
from __future__ import annotations

import json
import random
import re
import threading
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Callable, Iterable

from connectors.sandbox import soql
from connectors.sandbox.book import Book
from connectors.sandbox.salesforce.schema import (
    _B62, _DERIVED, _STAGE_STATE, ORG_ID, SANDBOX_CREDENTIALS, UTC, ApiError, FieldDef, RecordError, SfError,
    SObjectType, _label, _make_id, _MultipleMatches, _owner, _system_fields, _text, standard_types)
from connectors.sandbox.salesforce.seed import _Seeder
from connectors.sandbox.soql import parse_datetime, sf_datetime, to18

_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")


def _ix_add(ix: dict, key, rid: str) -> None:
    cur = ix.get(key)
    if cur is None:
        ix[key] = rid
    elif isinstance(cur, set):
        cur.add(rid)
    elif cur != rid:
        ix[key] = {cur, rid}


def _ix_del(ix: dict, key, rid: str) -> None:
    cur = ix.get(key)
    if cur is None:
        return
    if isinstance(cur, set):
        cur.discard(rid)
        if len(cur) == 1:
            ix[key] = next(iter(cur))
    elif cur == rid:
        del ix[key]


def _ix_get(ix: dict, key) -> list[str]:
    """Ids under ``key``, in creation order (ids sort as they were issued)."""
    cur = ix.get(key)
    if cur is None:
        return []
    return sorted(cur) if isinstance(cur, set) else [cur]


# =============================================================================== the org
class Org:
    """An in-memory Salesforce org: sObject types, records, indexes, a recycle bin. Thread-safe."""

    def __init__(self, *, org_id: str = ORG_ID, currency: str = "USD",
                 api_username: str = SANDBOX_CREDENTIALS["username"], clock: Callable[[], datetime] | None = None):
        self.org_id, self.currency = org_id, currency
        self.lock = threading.RLock()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.types: dict[str, SObjectType] = {}
        self._types_ci: dict[str, SObjectType] = {}
        self._prefixes: dict[str, str] = {}
        self.tables: dict[str, dict[str, dict]] = {}
        self.indexes: dict[str, dict[str, dict]] = {}
        self.deleted_at: dict[str, dict[str, str]] = {}
        self._seq: dict[str, int] = {}
        self._undo: list | None = None
        self.seed_truth: dict[str, Any] = {"accounts": {}, "without_account": [], "duplicates": [],
                                           "prospects": [], "with_external_id": [], "renamed": {},
                                           "inactive_owner_accounts": []}
        for sobject in standard_types():
            self.add_type(sobject)
        now = sf_datetime(self.clock())
        self.api_user_id = self._insert_raw("User", {
            "Username": api_username, "FirstName": "arhub", "LastName": "Integration",
            "Name": "arhub Integration", "Email": api_username, "Alias": "arhub", "Title": "Integration User",
            "IsActive": True}, None, now)
        for rec in self.tables["User"].values():  # the first user created itself
            rec["CreatedById"] = rec["LastModifiedById"] = self.api_user_id
        self.tables["Organization"][org_id] = {
            "Id": org_id, "Name": "arhub Sandbox", "IsSandbox": True, "OrganizationType": "Enterprise Edition",
            "InstanceName": "SBX1", "DefaultLocaleSidKey": "en_US", "TimeZoneSidKey": "UTC", "IsDeleted": False,
            "CreatedDate": now, "SystemModstamp": now}

    # ------------------------------------------------------------------ schema
    def add_type(self, sobject: SObjectType) -> None:
        with self.lock:
            self.types[sobject.name] = sobject
            self._types_ci[sobject.name.lower()] = sobject
            self._prefixes[sobject.key_prefix] = sobject.name
            self.tables.setdefault(sobject.name, {})
            self.indexes.setdefault(sobject.name, {})
            self.deleted_at.setdefault(sobject.name, {})
            for fname, _ in sobject.index_keys:
                self.indexes[sobject.name].setdefault(fname, {})

    def deploy(self, name: str, fields: list[FieldDef], *, label: str | None = None, plural: str | None = None,
               key_prefix: str | None = None) -> SObjectType:
        """Deploy a custom object (system fields, a required Name, OwnerId and ``fields``)."""
        if not name.endswith("__c"):
            raise ValueError("custom object names end with __c")
        with self.lock:
            n = _B62.index("Z")  # a0Z, a10, a11 ... after the seeded a0X and a0Y
            while key_prefix is None or key_prefix in self._prefixes:
                key_prefix = "a" + _B62[n // 62 % 62] + _B62[n % 62]
                n += 1
            label = label or _label(name)
            sobject = SObjectType(name, label, plural or label + "s", key_prefix, _system_fields() + [
                _text("Name", 80, label=f"{label} Name", nillable=False, name_field=True, id_lookup=True),
                *fields, _owner()], custom=True)
            self.add_type(sobject)
            return sobject

    def sobject(self, name: str) -> SObjectType | None:
        return self._types_ci.get(name.lower()) if isinstance(name, str) else None

    def require_type(self, name: str) -> SObjectType:
        sobject = self.sobject(name)
        if sobject is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return sobject

    def drop_field(self, obj: str, name: str) -> str:
        """An admin deleted a custom field: it disappears from describe, SOQL and writes."""
        with self.lock:
            sobject = self.sobject(obj)
            if sobject is None:
                raise KeyError(obj)
            f = sobject.drop(name)
            self.indexes[sobject.name].pop(f.name, None)
            return f.name

    def restore_field(self, obj: str, name: str) -> str:
        with self.lock:
            sobject = self.sobject(obj)
            if sobject is None:
                raise KeyError(obj)
            f = sobject.restore(name)
            if any(fname == f.name for fname, _ in sobject.index_keys):
                self._rebuild_index(sobject, f.name)
            return f.name

    def _rebuild_index(self, sobject: SObjectType, fname: str) -> None:
        lower = dict(sobject.index_keys)[fname]
        ix = self.indexes[sobject.name][fname] = {}
        for rid, rec in self.tables[sobject.name].items():
            value = rec.get(fname)
            if value is not None:
                _ix_add(ix, value.lower() if lower else value, rid)

    # ------------------------------------------------------------------ ids
    def new_id(self, obj: str) -> str:
        """The next 18-character id of ``obj``: key prefix, pod, counter in base 62, checksum."""
        prefix = self.types[obj].key_prefix
        n = self._seq.get(prefix, 0) + 1
        self._seq[prefix] = n
        return _make_id(prefix, n)

    def type_of_id(self, rid: str) -> str | None:
        return self._prefixes.get(rid[:3]) if isinstance(rid, str) else None

    # ------------------------------------------------------------------ reads
    def fetch(self, obj: str, rid: str) -> dict | None:
        return self.tables[obj].get(rid)

    def get(self, obj: str, rid: str) -> dict:
        """A live record by id (15 or 18 characters); 404 NOT_FOUND / ENTITY_IS_DELETED otherwise."""
        full = to18(rid)
        rec = self.tables[obj].get(full) if full else None
        if rec is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if rec["IsDeleted"]:
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return rec

    def find(self, obj: str, fname: str, value: Any, include_deleted: bool = False) -> list[str]:
        """Ids whose ``fname`` equals ``value`` (external ids case-insensitively), by index when there is one."""
        sobject = self.types[obj]
        f = sobject.field(fname)
        if f is None:
            return []
        table = self.tables[obj]
        if f.name == "Id":
            full = to18(value) if isinstance(value, str) else None
            ids = [full] if full in table else []
        elif f.name in self.indexes[obj]:
            lower = dict(sobject.index_keys)[f.name]
            key = str(value).lower() if lower else value
            ids = _ix_get(self.indexes[obj][f.name], key)
        else:
            want = str(value).lower()
            ids = [rid for rid, rec in table.items() if rec.get(f.name) is not None
                   and str(rec[f.name]).lower() == want]
        return ids if include_deleted else [rid for rid in ids if not table[rid]["IsDeleted"]]

    def record_view(self, obj: str, rec: dict, version: str, fields: Iterable[str] | None = None) -> dict:
        sobject = self.types[obj]
        names = sobject.fields if fields is None else [sobject.field(n).name for n in fields]
        out = {"attributes": {"type": obj, "url": f"/services/data/v{version}/sobjects/{obj}/{rec['Id']}"}}
        for name in names:
            out[name] = rec.get(name)
        return out

    def count(self, obj: str, include_deleted: bool = False) -> int:
        table = self.tables[obj]
        if include_deleted:
            return len(table)
        return len(table) - len(self.deleted_at[obj])

    # ------------------------------------------------------------------ SOQL
    def run_query(self, text: str, include_deleted: bool = False) -> tuple[soql.Plan, list[dict]]:
        """Parse, check and run one SOQL query: its plan and the matching records (a snapshot list)."""
        with self.lock:
            query = soql.parse(text)
            plan = soql.compile_query(query, text, self.sobject, self.fetch, today=self.clock().date())
            table = self.tables[plan.object]
            candidates: Iterable[dict] = table.values()
            for fname, values in plan.index_terms:
                if fname == "Id":
                    ids = values
                elif fname in self.indexes[plan.object]:
                    ix = self.indexes[plan.object][fname]
                    ids = [rid for v in values for rid in _ix_get(ix, v)]
                else:
                    continue
                candidates = [table[rid] for rid in sorted(set(ids)) if rid in table]
                break
            pred = plan.predicate
            if include_deleted:
                records = [r for r in candidates if pred is None or pred(r)]
            elif pred is None:
                records = [r for r in candidates if not r["IsDeleted"]]
            else:
                records = [r for r in candidates if not r["IsDeleted"] and pred(r)]
            if plan.sorters:
                plan.sort(records)
            return plan, plan.window(records)

    # ------------------------------------------------------------------ transactions
    def begin(self) -> int:
        """Start recording undo entries (re-entrant); the mark to roll back to."""
        if self._undo is None:
            self._undo = []
        return len(self._undo)

    def rollback(self, mark: int) -> None:
        undo = self._undo or []
        while len(undo) > mark:
            obj, rid, old, old_deleted = undo.pop()
            table = self.tables[obj]
            current = table.get(rid)
            if old is None:
                if current is not None:
                    self._index(self.types[obj], rid, current, None)
                    del table[rid]
            else:
                if current is None:
                    table[rid] = current = {}
                self._index(self.types[obj], rid, current, old)
                current.clear()
                current.update(old)
            if old_deleted is None:
                self.deleted_at[obj].pop(rid, None)
            else:
                self.deleted_at[obj][rid] = old_deleted

    def end(self, mark: int) -> None:
        if mark == 0:
            self._undo = None

    def _remember(self, obj: str, rid: str) -> None:
        if self._undo is not None:
            rec = self.tables[obj].get(rid)
            self._undo.append((obj, rid, dict(rec) if rec is not None else None, self.deleted_at[obj].get(rid)))

    def _index(self, sobject: SObjectType, rid: str, old: dict | None, new: dict | None) -> None:
        ixs = self.indexes[sobject.name]
        for fname, lower in sobject.index_keys:
            ov = old.get(fname) if old else None
            nv = new.get(fname) if new else None
            if ov == nv:
                continue
            ix = ixs.get(fname)
            if ix is None:
                continue
            if ov is not None:
                _ix_del(ix, ov.lower() if lower else ov, rid)
            if nv is not None:
                _ix_add(ix, nv.lower() if lower else nv, rid)

    def _insert_raw(self, obj: str, values: dict, user_id: str | None, now: str, derive: bool = True) -> str:
        """Store a new record without checks (seeding; :meth:`create` checks first)."""
        sobject = self.types[obj]
        rid = self.new_id(obj)
        user_id = user_id or getattr(self, "api_user_id", None)
        rec = sobject.template.copy()
        rec.update(values)
        rec.update(Id=rid, IsDeleted=False, CreatedDate=now, CreatedById=user_id, LastModifiedDate=now,
                   LastModifiedById=user_id, SystemModstamp=now)
        if sobject.has_owner and rec["OwnerId"] is None:
            rec["OwnerId"] = user_id
        if sobject.has_currency and rec["CurrencyIsoCode"] is None:
            rec["CurrencyIsoCode"] = self.currency
        if derive and obj in _DERIVED:
            self._derive(obj, rec)
        if self._undo is not None:
            self._undo.append((obj, rid, None, None))
        self.tables[obj][rid] = rec
        ixs = self.indexes[obj]
        for fname, lower in sobject.index_keys:
            value = rec[fname]
            if value is not None:
                _ix_add(ixs[fname], value.lower() if lower else value, rid)
        return rid

    @staticmethod
    def _derive(obj: str, rec: dict) -> None:
        if obj in ("Contact", "User"):
            rec["Name"] = " ".join(p for p in (rec.get("FirstName"), rec.get("LastName")) if p)
        elif obj == "Opportunity":
            rec["IsClosed"], rec["IsWon"] = _STAGE_STATE.get(rec.get("StageName"), (False, False))

    # ------------------------------------------------------------------ validation
    def clean(self, obj: str, data: dict, *, creating: bool, record_id: str | None = None) -> dict:
        """``data`` checked and converted to stored values; :class:`RecordError` with every problem."""
        sobject = self.types[obj]
        if not isinstance(data, dict):
            raise RecordError([SfError("JSON_PARSER_ERROR", "Expected a JSON object for the record")])
        values: dict[str, Any] = {}
        errors: list[SfError] = []
        locked: list[str] = []
        for key, raw in data.items():
            if key == "attributes":
                continue
            f = sobject.field(key)
            if f is None:
                rel = sobject.relationship(key) if isinstance(key, str) else None
                if rel is not None and isinstance(raw, dict):
                    if not (rel.createable if creating else rel.updateable):
                        locked.append(rel.name)
                        continue
                    try:
                        values[rel.name] = self.resolve_foreign(rel, raw)
                    except SfError as exc:
                        errors.append(exc)
                    continue
                raise RecordError([SfError("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj}")])
            if not (f.createable if creating else f.updateable):
                if f.name == "Id" and not creating and raw == record_id:
                    continue
                locked.append(f.name)
                continue
            try:
                values[f.name] = self.coerce(obj, f, raw)
            except SfError as exc:
                errors.append(exc)
        if locked:
            errors.insert(0, SfError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                     f"Unable to create/update fields: {', '.join(locked)}. Please check the "
                                     f"security settings of this field and verify that it is read/write for your "
                                     f"profile or permission set.", locked))
        if creating:
            missing = [f.name for f in sobject.required if values.get(f.name) is None]
        else:
            missing = [name for name, value in values.items() if value is None and sobject.fields[name].required]
        if missing:
            errors.append(SfError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                                  missing))
        if not errors:
            for f in sobject.unique_fields:
                value = values.get(f.name)
                if value is None:
                    continue
                others = [rid for rid in self.find(obj, f.name, value) if rid != record_id]
                if others:
                    errors.append(SfError("DUPLICATE_VALUE", f"duplicate value found: {f.name} duplicates value "
                                                             f"on record with id: {others[0]}", []))
        if errors:
            raise RecordError(errors)
        return values

    def resolve_foreign(self, rel: FieldDef, spec: dict) -> str:
        """``{"ERP_Customer_Number__c": "CUST-1"}`` for a lookup → the parent's id."""
        target = self.types[rel.reference_to[0]]
        keys = [k for k in spec if k != "attributes"]
        if len(keys) != 1:
            raise SfError("INVALID_FIELD", f"Foreign key external ID for {rel.relationship_name} must name exactly "
                                           f"one external ID field of {target.name}", [])
        f = target.field(keys[0])
        if f is None:
            raise SfError("INVALID_FIELD", f"No such column '{keys[0]}' on sobject of type {target.name}", [])
        if not (f.external_id or f.name == "Id"):
            raise SfError("INVALID_FIELD", f"Field {f.name} is not an External ID or indexed field for "
                                           f"{target.name}", [])
        value = spec[keys[0]]
        if value is None or value == "":
            raise SfError("INVALID_FIELD", f"Foreign key external ID: {value} not found for field {f.name} in "
                                           f"entity {target.name}", [])
        ids = self.find(target.name, f.name, value)
        if not ids:
            raise SfError("INVALID_FIELD", f"Foreign key external ID: {str(value).lower()} not found for field "
                                           f"{f.name} in entity {target.name}", [])
        if len(ids) > 1:
            raise SfError("DUPLICATE_EXTERNAL_ID", f"Foreign key external ID: {value} matched more than one "
                                                   f"record of {target.name} on {f.name}", [])
        return ids[0]

    def coerce(self, obj: str, f: FieldDef, raw: Any) -> Any:
        """One value checked against its field (JSON value or CSV text) → the stored value."""
        t = f.type
        label = f.label
        if raw is None or (raw == "" and t != "boolean"):
            return False if t == "boolean" else None
        if isinstance(raw, (dict, list)):
            raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: "
                                                              f"{json.dumps(raw)}", [f.name])
        if t in ("string", "textarea", "email", "url", "phone", "picklist", "multipicklist"):
            value = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
            if t == "multipicklist":
                parts = [p.strip() for p in value.split(";") if p.strip()]
                bad = [p for p in parts if f.restricted and p not in f.picklist]
                if bad:
                    raise SfError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                  f"{label}: bad value for restricted picklist field: {bad[0]}", [f.name])
                return ";".join(parts)
            if t == "picklist" and f.restricted and value not in f.picklist:
                raise SfError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              f"{label}: bad value for restricted picklist field: {value}", [f.name])
            if f.length and len(value) > f.length:
                raise SfError("STRING_TOO_LONG", f"{label}: data value too large: {value} (max length={f.length})",
                              [f.name])
            if t == "email" and not _EMAIL_RE.match(value):
                raise SfError("INVALID_EMAIL_ADDRESS", f"{label}: invalid email address: {value}", [f.name])
            return value
        if t == "boolean":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "1"):
                return True
            if text in ("false", "0", ""):
                return False
            raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [f.name])
        if t in soql.NUMBER_TYPES:
            if isinstance(raw, bool):
                raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}",
                              [f.name])
            try:
                number = Decimal(str(raw).strip())
            except InvalidOperation:
                raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}",
                              [f.name]) from None
            if not number.is_finite():
                raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}",
                              [f.name])
            rounded = number.quantize(Decimal(1).scaleb(-f.scale), rounding=ROUND_HALF_UP)
            whole = len(str(int(abs(rounded)))) if abs(rounded) >= 1 else 0
            if f.precision and whole > f.precision - f.scale:
                raise SfError("NUMBER_OUTSIDE_VALID_RANGE",
                              f"{label}: value outside of valid range on numeric field: {raw}", [f.name])
            return int(rounded) if t == "int" else float(rounded)
        if t == "date":
            text = str(raw).strip()
            try:
                day = date.fromisoformat(text[:10]) if re.fullmatch(r"\d{4}-\d{2}-\d{2}(T.*)?", text) else None
            except ValueError:
                day = None
            if day is None or not 1700 <= day.year <= 4000:
                raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}",
                              [f.name])
            return day.isoformat()
        if t == "datetime":
            text = str(raw).strip()
            stamp = parse_datetime(text)
            if stamp is None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                stamp = parse_datetime(text + "T00:00:00Z")
            if stamp is None or not 1700 <= stamp.year <= 4000:
                raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}",
                              [f.name])
            return sf_datetime(stamp)
        if t == "reference":
            full = to18(str(raw).strip())
            targets = [self.types[name] for name in f.reference_to if name in self.types]
            if full is None or not any(full.startswith(s.key_prefix) for s in targets):
                raise SfError("MALFORMED_ID", f"{label}: id value of incorrect type: {raw}", [f.name])
            target = self.types[self.type_of_id(full)]
            parent = self.tables[target.name].get(full)
            if parent is None:
                raise SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [f.name])
            if parent["IsDeleted"]:
                raise SfError("ENTITY_IS_DELETED", "entity is deleted", [f.name])
            if f.name == "OwnerId" and target.name == "User" and not parent.get("IsActive"):
                raise SfError("INACTIVE_OWNER_OR_USER", f"operation performed with inactive user [{full}] as "
                                                        f"owner of {obj.lower()}", [f.name])
            return full
        raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [f.name])

    # ------------------------------------------------------------------ writes
    def _writable(self, obj: str, verb: str) -> None:
        if not self.types[obj].writable:
            raise RecordError([SfError("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                                       f"entity type cannot be {verb}: {obj}", [])])

    def create(self, obj: str, data: dict, user_id: str | None = None) -> str:
        with self.lock:
            self._writable(obj, "inserted")
            values = self.clean(obj, data, creating=True)
            return self._insert_raw(obj, values, user_id, sf_datetime(self.clock()))

    def update(self, obj: str, rid: str, data: dict, user_id: str | None = None) -> str:
        with self.lock:
            rec = self.get(obj, rid)
            rid = rec["Id"]
            self._writable(obj, "updated")
            values = self.clean(obj, data, creating=False, record_id=rid)
            self._remember(obj, rid)
            old = dict(rec)
            rec.update(values)
            self._derive(obj, rec)
            now = sf_datetime(self.clock())
            rec["LastModifiedDate"] = rec["SystemModstamp"] = now
            rec["LastModifiedById"] = user_id or self.api_user_id
            self._index(self.types[obj], rid, old, rec)
            return rid

    def upsert(self, obj: str, fname: str, value: Any, data: dict, user_id: str | None = None) -> tuple[str, bool]:
        """Create or update by external id; ``(id, created)``. More than one match → ApiError 300."""
        with self.lock:
            sobject = self.types[obj]
            f = sobject.field(fname)
            data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.lower() == f.name.lower())}
            if value is None or value == "":
                raise RecordError([SfError("MISSING_ARGUMENT", f"{f.name} not specified", [f.name])])
            ids = self.find(obj, f.name, value)
            if len(ids) > 1:
                raise _MultipleMatches(ids)
            if ids:
                return self.update(obj, ids[0], data, user_id), False
            if f.name == "Id":
                raise RecordError([SfError("NOT_FOUND", "Provided external ID field does not exist or is not "
                                                        "accessible: Id", [])], 404)
            data[f.name] = value
            return self.create(obj, data, user_id), True

    def delete(self, obj: str, rid: str, user_id: str | None = None, hard: bool = False) -> str:
        """Soft delete (to the recycle bin; children with cascade delete follow, custom lookups clear)."""
        with self.lock:
            full = to18(rid)
            rec = self.tables[obj].get(full) if full else None
            if rec is None:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            self._writable(obj, "deleted")
            if rec["IsDeleted"] and not hard:
                raise RecordError([SfError("ENTITY_IS_DELETED", "entity is deleted", [])], 404)
            now = sf_datetime(self.clock())
            self._delete_one(obj, full, rec, now, user_id, hard)
            return full

    def _delete_one(self, obj: str, rid: str, rec: dict, now: str, user_id: str | None, hard: bool) -> None:
        for child in self.types.values():
            for f in child.fields.values():
                if f.type != "reference" or obj not in f.reference_to or f.name in ("CreatedById",
                                                                                    "LastModifiedById"):
                    continue
                ix = self.indexes[child.name].get(f.name, {})
                for cid in _ix_get(ix, rid):
                    crec = self.tables[child.name].get(cid)
                    if crec is None or (crec["IsDeleted"] and not hard):
                        continue
                    if f.cascade_delete:
                        self._delete_one(child.name, cid, crec, now, user_id, hard)
                    elif f.nillable and not crec["IsDeleted"]:
                        self._remember(child.name, cid)
                        old = dict(crec)
                        crec[f.name] = None
                        crec["SystemModstamp"] = now
                        self._index(child, cid, old, crec)
        self._remember(obj, rid)
        if hard:
            self._index(self.types[obj], rid, rec, None)
            del self.tables[obj][rid]
            self.deleted_at[obj].pop(rid, None)
            return
        rec["IsDeleted"] = True
        rec["LastModifiedDate"] = rec["SystemModstamp"] = now
        rec["LastModifiedById"] = user_id or self.api_user_id
        self.deleted_at[obj][rid] = now

    # ------------------------------------------------------------------ seeding
    @classmethod
    def from_book(cls, book: Book, seed: int | None = None, **kwargs) -> "Org":
        """An org whose accounts correspond to ``book``'s customers, with realistic mismatches."""
        org = cls(**kwargs)
        with org.lock:
            _Seeder(org, book, random.Random(book.seed if seed is None else seed)).run()
        return org
