"""A Salesforce REST + Bulk API 2.0 emulator (WSGI, werkzeug) over HTTPS on loopback.

What it serves, at the root of its own server (simple-salesforce keeps only host:port of an
instance URL):

``POST /services/oauth2/token``       password, client_credentials and JWT bearer grants
``POST /services/Soap/u/<ver>``       the SOAP ``login`` call
``/services/data/``                   versions; ``/services/data/vXX.X/``: resources, ``limits``,
                                      ``query``/``queryAll`` (+ ``nextRecordsUrl`` paging), ``sobjects``
                                      (describe, CRUD, upsert by external id, ``updated``/``deleted``),
                                      ``composite/sobjects`` (≤ 200 records, ``allOrNone``),
                                      ``jobs/ingest`` and ``jobs/query`` (Bulk API 2.0)
``/_sandbox/``                        control API for tests (no auth): faults, session expiry, API
                                      budget, dropped fields, stats, seed truth

The org (:class:`Org`) keeps sObject descriptions and records (plain dicts keyed by 18-character
ids) in memory, behind one re-entrant lock, with indexes on external-id and lookup fields. Writes
are checked the way Salesforce checks them and fail with its error codes and messages; see
``docs/salesforce-sandbox.md``. :meth:`Org.from_book` seeds users, accounts, contacts and
opportunities from the ERP sandbox's :class:`~connectors.sandbox.book.Book`, with the mismatches
real orgs have, and records in ``org.seed_truth`` which customer should match which account.

:class:`SalesforceServer` runs it with a trustme certificate in a daemon thread.

This module imports nothing of the project but the sandbox's book, fault switches and SOQL.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import os
import random
import re
import secrets
import ssl
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from html import escape
from typing import Any, Callable, Iterable

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from connectors.sandbox import soql
from connectors.sandbox.book import Book
from connectors.sandbox.faults import Fault, Faults
from connectors.sandbox.soql import SoqlError, id_checksum, parse_datetime, sf_datetime, to18

UTC = timezone.utc
_ORG15 = "00DDn00000ARHUB"
ORG_ID = _ORG15 + id_checksum(_ORG15)
SANDBOX_CREDENTIALS = {
    "username": "arhub.integration@arhub-sandbox.example.com",
    "password": "Sandbox-Pa55word",
    "security_token": "SBXTOKEN7f3b2c9d1e0a",
    "client_id": "3MVG9ARHUBSANDBOX.ConsumerKey.7f3b2c9d1e0a4b6c8d2e0f1a3b5c7d9e",
    "client_secret": "ARHUBSANDBOXSECRET7F3B2C9D1E0A4B6C",
    "organization_id": ORG_ID,
}
API_VERSIONS = tuple(f"{v}.0" for v in range(31, 63))
DEFAULT_API_BUDGET = 100_000
DEFAULT_SESSION_SECONDS = 7200
QUERY_BATCH = 2000
MIN_QUERY_BATCH = 200
COMPOSITE_LIMIT = 200
MAX_INGEST_BYTES = 150 * 1024 * 1024
_CURSOR_LIMIT = 256
_CURSOR_IDLE_SECONDS = 15 * 60
_VERSION_RE = re.compile(r"/services/data/v(\d+\.\d)(?:/(.*))?\Z")
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UPPER_BIT = {ch: int("A" <= ch <= "Z") for ch in _B62}
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

COUNTRIES = {"US": "United States", "CA": "Canada", "MX": "Mexico", "DE": "Germany", "FR": "France",
             "NL": "Netherlands", "IE": "Ireland", "ES": "Spain", "GB": "United Kingdom", "JP": "Japan",
             "AU": "Australia", "NZ": "New Zealand", "CH": "Switzerland", "SE": "Sweden", "IT": "Italy",
             "BR": "Brazil", "IN": "India", "SG": "Singapore"}
CURRENCY_CODES = ("USD", "EUR", "GBP", "JPY", "AUD", "CAD", "CHF")
STAGES = (("Prospecting", False, False), ("Qualification", False, False), ("Needs Analysis", False, False),
          ("Value Proposition", False, False), ("Id. Decision Makers", False, False),
          ("Perception Analysis", False, False), ("Proposal/Price Quote", False, False),
          ("Negotiation/Review", False, False), ("Closed Won", True, True), ("Closed Lost", True, False))
_STAGE_STATE = {name: (closed, won) for name, closed, won in STAGES}
INDUSTRIES = ("Technology", "Manufacturing", "Retail", "Finance", "Healthcare", "Media", "Education",
              "Hospitality", "Transportation", "Energy", "Consulting", "Telecommunications")


def _b62_chunk(n: int, width: int) -> tuple[str, int]:
    """``n`` as ``width`` base-62 digits and the bit mask of which of them are upper case."""
    digits, bits = [], 0
    for i in range(width):
        n, r = divmod(n, 62)
        digits.append(_B62[r])
    text = "".join(reversed(digits))
    for i, ch in enumerate(text):
        if "A" <= ch <= "Z":
            bits |= 1 << i
    return text, bits


_LOW = [_b62_chunk(n, 2) for n in range(62 * 62)]
_HIGH_CACHE: dict[int, tuple[str, int]] = {}
_HEAD_CACHE: dict[str, tuple[str, str]] = {}


def _make_id(prefix: str, n: int) -> str:
    """Id number ``n`` of a key prefix: ``prefix + "Dn0" + 9 base-62 digits + checksum`` (fast path
    for n < 62**5, the counter living in the last five-character chunk)."""
    if n >= 62 ** 5:
        body = prefix + "Dn0" + _b62_chunk(n, 9)[0]
        return body + id_checksum(body)
    cached = _HEAD_CACHE.get(prefix)
    if cached is None:
        head = prefix + "Dn00000"
        cached = _HEAD_CACHE[prefix] = (head, id_checksum(head)[:2])
    hi, lo = divmod(n, 3844)
    high = _HIGH_CACHE.get(hi)
    if high is None:
        high = _HIGH_CACHE[hi] = _b62_chunk(hi, 3)
    low = _LOW[lo]
    return cached[0] + high[0] + low[0] + cached[1] + _CHECKSUM_CHARS[high[1] | low[1] << 3]


# =============================================================================== schema
@dataclass
class FieldDef:
    name: str
    type: str  # id string textarea email url phone picklist multipicklist boolean date datetime currency
    #            double int percent reference
    label: str = ""
    length: int = 0
    precision: int = 0
    scale: int = 0
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    external_id: bool = False
    unique: bool = False
    createable: bool = True
    updateable: bool = True
    nillable: bool = True
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    child_relationship: str | None = None
    cascade_delete: bool = False
    custom: bool = False
    default: Any = None
    name_field: bool = False
    id_lookup: bool = False
    calculated: bool = False

    def __post_init__(self):
        self.label = self.label or _label(self.name)
        self.custom = self.custom or self.name.endswith("__c")
        if self.external_id or self.type == "id":
            self.id_lookup = True

    @property
    def required(self) -> bool:
        return not self.nillable and self.createable and self.default is None and self.type != "boolean"

    def describe(self) -> dict:
        soap = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean", "date": "xsd:date",
                "datetime": "xsd:dateTime", "currency": "xsd:double", "double": "xsd:double",
                "percent": "xsd:double", "int": "xsd:int"}.get(self.type, "xsd:string")
        numeric = self.type in soql.NUMBER_TYPES
        return {
            "aggregatable": self.type not in ("textarea", "multipicklist"), "autoNumber": False,
            "byteLength": self.length * 3, "calculated": self.calculated, "calculatedFormula": None,
            "cascadeDelete": False, "caseSensitive": False, "createable": self.createable,
            "custom": self.custom, "defaultValue": self.default if self.type == "boolean" else None,
            "defaultedOnCreate": self.default is not None or self.type == "boolean" or self.name in _SYSTEM,
            "dependentPicklist": False, "deprecatedAndHidden": False,
            "digits": self.precision if self.type == "int" else 0, "externalId": self.external_id,
            "filterable": self.type != "textarea", "groupable": not numeric and self.type != "textarea",
            "htmlFormatted": False, "idLookup": self.id_lookup, "inlineHelpText": None, "label": self.label,
            "length": self.length, "name": self.name, "nameField": self.name_field, "namePointing": False,
            "nillable": self.nillable, "permissionable": self.custom and self.nillable,
            "picklistValues": [{"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
                               for v in self.picklist],
            "polymorphicForeignKey": False, "precision": self.precision if numeric and self.type != "int" else 0,
            "referenceTargetField": None, "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name, "relationshipOrder": None,
            "restrictedPicklist": self.restricted, "scale": self.scale, "soapType": soap,
            "sortable": self.type not in ("textarea", "multipicklist"), "type": self.type,
            "unique": self.unique, "updateable": self.updateable,
        }


_DERIVED = frozenset({"Contact", "User", "Opportunity"})
_SYSTEM = ("Id", "IsDeleted", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById",
           "SystemModstamp")


def _label(name: str) -> str:
    base = name[:-3] if name.endswith("__c") else name
    if base.endswith("Id") and len(base) > 2:
        base = base[:-2] + " ID"
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base.replace("_", " ")).strip()


def _text(name, length, **kw):
    return FieldDef(name, "string", length=length, **kw)


def _money(name, precision=16, scale=2, **kw):
    return FieldDef(name, "currency", precision=precision, scale=scale, **kw)


def _number(name, precision, scale, **kw):
    return FieldDef(name, "double", precision=precision, scale=scale, **kw)


def _ref(name, target, rel, child=None, **kw):
    return FieldDef(name, "reference", length=18, reference_to=(target,), relationship_name=rel,
                    child_relationship=child, **kw)


def _pick(name, values, restricted=False, **kw):
    return FieldDef(name, "picklist", length=255, picklist=tuple(values), restricted=restricted, **kw)


def _system_fields() -> list[FieldDef]:
    ro = {"createable": False, "updateable": False, "nillable": False}
    return [FieldDef("Id", "id", label="Record ID", length=18, **ro),
            FieldDef("IsDeleted", "boolean", label="Deleted", default=False, **ro),
            FieldDef("CreatedDate", "datetime", **ro),
            _ref("CreatedById", "User", "CreatedBy", **ro),
            FieldDef("LastModifiedDate", "datetime", **ro),
            _ref("LastModifiedById", "User", "LastModifiedBy", **ro),
            FieldDef("SystemModstamp", "datetime", **ro)]


def _owner() -> FieldDef:
    return _ref("OwnerId", "User", "Owner", nillable=False, default="$user")


def _currency_field() -> FieldDef:
    return _pick("CurrencyIsoCode", CURRENCY_CODES, restricted=True, label="Currency ISO Code", default="$currency",
                 nillable=False)


class SObjectType:
    """One sObject's description: ordered fields, looked up case-insensitively."""

    def __init__(self, name: str, label: str, plural: str, key_prefix: str, fields: list[FieldDef],
                 custom: bool = False, writable: bool = True):
        self.name, self.label, self.plural, self.key_prefix, self.custom = name, label, plural, key_prefix, custom
        self.writable = writable
        self.fields: dict[str, FieldDef] = {}
        self.dropped: dict[str, FieldDef] = {}
        for f in fields:
            self.fields[f.name] = f
        self._reindex()

    def _reindex(self) -> None:
        self._ci = {n.lower(): f for n, f in self.fields.items()}
        self._rels = {f.relationship_name.lower(): f for f in self.fields.values() if f.relationship_name}
        self.required = [f for f in self.fields.values() if f.required]
        self.index_keys = [(f.name, f.type != "reference") for f in self.fields.values()
                           if (f.external_id or f.unique or f.type == "reference")
                           and f.name not in ("CreatedById", "LastModifiedById")]
        self.template = {n: (None if f.default in ("$user", "$currency") else f.default)
                         for n, f in self.fields.items()}
        self.has_owner = "OwnerId" in self.fields
        self.has_currency = "CurrencyIsoCode" in self.fields
        self.unique_fields = [f for f in self.fields.values() if f.unique]

    def field(self, name: str) -> FieldDef | None:
        return self._ci.get(name.lower()) if isinstance(name, str) else None

    def relationship(self, name: str) -> FieldDef | None:
        return self._rels.get(name.lower())

    def drop(self, name: str) -> FieldDef:
        f = self.field(name)
        if f is None:
            raise KeyError(f"{self.name}.{name}")
        if not f.custom:
            raise ValueError(f"{self.name}.{f.name} is a standard field; only custom fields can be deleted")
        self.dropped[f.name] = self.fields.pop(f.name)
        self._reindex()
        return f

    def restore(self, name: str) -> FieldDef:
        for key in list(self.dropped):
            if key.lower() == name.lower():
                f = self.fields[key] = self.dropped.pop(key)
                self._reindex()
                return f
        raise KeyError(f"{self.name}.{name}")

    def summary(self, version: str) -> dict:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {"activateable": False, "createable": self.writable, "custom": self.custom, "customSetting": False,
                "deletable": self.writable, "deprecatedAndHidden": False, "feedEnabled": False, "hasSubtypes": False,
                "isSubtype": False, "keyPrefix": self.key_prefix, "label": self.label,
                "labelPlural": self.plural, "layoutable": True, "mergeable": self.name in ("Account", "Contact"),
                "mruEnabled": True, "name": self.name, "queryable": True, "replicateable": True,
                "retrieveable": True, "searchable": True, "triggerable": True, "undeletable": self.writable,
                "updateable": self.writable,
                "urls": {"sobject": base, "describe": base + "/describe", "rowTemplate": base + "/{ID}"}}


def standard_types() -> list[SObjectType]:
    """User, Account, Contact, Opportunity and arhub's custom AR_Summary__c and AR_Invoice__c."""
    sysf = _system_fields
    user = SObjectType("User", "User", "Users", "005", sysf() + [
        _text("Username", 80, nillable=False, unique=True, id_lookup=True),
        _text("FirstName", 40), _text("LastName", 80, nillable=False),
        _text("Name", 121, label="Full Name", createable=False, updateable=False, calculated=True,
              name_field=True),
        FieldDef("Email", "email", length=128, nillable=False), _text("Alias", 8),
        _text("Title", 80), FieldDef("IsActive", "boolean", label="Active", default=True, nillable=False),
    ])
    account = SObjectType("Account", "Account", "Accounts", "001", sysf() + [
        _text("Name", 255, label="Account Name", nillable=False, name_field=True, id_lookup=True),
        _pick("Type", ("Customer", "Prospect", "Partner", "Strategic", "Reseller"), label="Account Type"),
        _pick("Industry", INDUSTRIES),
        _ref("ParentId", "Account", "Parent", "ChildAccounts"),
        _text("BillingCountry", 80),
        _pick("BillingCountryCode", tuple(COUNTRIES), restricted=True, label="Billing Country Code"),
        FieldDef("Website", "url", length=255), FieldDef("Phone", "phone", length=40, label="Account Phone"),
        _money("AnnualRevenue", 18, 0), FieldDef("NumberOfEmployees", "int", label="Employees", precision=8),
        _currency_field(), _owner(),
        FieldDef("Description", "textarea", length=32000, label="Account Description"),
        _text("ERP_Customer_Number__c", 40, label="ERP Customer Number", external_id=True, unique=True),
        _pick("Customer_Tier__c", ("Enterprise", "Mid-Market", "SMB"), restricted=True),
    ])
    contact = SObjectType("Contact", "Contact", "Contacts", "003", sysf() + [
        _ref("AccountId", "Account", "Account", "Contacts", cascade_delete=True),
        _text("FirstName", 40), _text("LastName", 80, nillable=False),
        _text("Name", 121, label="Full Name", createable=False, updateable=False, calculated=True,
              name_field=True),
        FieldDef("Email", "email", length=80), FieldDef("Phone", "phone", length=40, label="Business Phone"),
        _text("Title", 128), _currency_field(), _owner(),
        _pick("AR_Role__c", ("Billing", "Escalation"), restricted=True, label="AR Role"),
        FieldDef("Preferred_Channels__c", "multipicklist", length=4099, picklist=("Email", "Phone", "Portal", "Post"),
                 restricted=True),
    ])
    opportunity = SObjectType("Opportunity", "Opportunity", "Opportunities", "006", sysf() + [
        _ref("AccountId", "Account", "Account", "Opportunities", cascade_delete=True),
        _text("Name", 120, nillable=False, name_field=True),
        _pick("Type", ("New Business", "Renewal", "Expansion", "Upsell"), label="Opportunity Type"),
        _pick("StageName", [s[0] for s in STAGES], restricted=True, label="Stage", nillable=False),
        FieldDef("IsClosed", "boolean", label="Closed", createable=False, updateable=False, default=False,
                 nillable=False, calculated=True),
        FieldDef("IsWon", "boolean", label="Won", createable=False, updateable=False, default=False,
                 nillable=False, calculated=True),
        FieldDef("CloseDate", "date", nillable=False), _money("Amount", 18, 2),
        FieldDef("Probability", "percent", label="Probability (%)", precision=3, scale=0),
        _currency_field(), _owner(),
    ])
    aging = [_money(n) for n in ("Aging_Current__c", "Aging_1_30__c", "Aging_31_60__c", "Aging_61_90__c",
                                 "Aging_91_Plus__c")]
    summary = SObjectType("AR_Summary__c", "AR Summary", "AR Summaries", "a0X", sysf() + [
        _text("Name", 80, label="AR Summary Name", nillable=False, name_field=True, id_lookup=True),
        _text("ARHub_Key__c", 64, label="ARHub Key", external_id=True, unique=True),
        _ref("Account__c", "Account", "Account__r", "AR_Summaries__r", label="Account"),
        _money("Open_Balance__c"), _money("Overdue_Balance__c"), _text("Reporting_Currency__c", 3),
        _number("Billing_Balance__c", 16, 2), _text("Billing_Currency__c", 3), *aging,
        _number("Oldest_Overdue_Days__c", 6, 0), _number("Avg_Days_Delinquent__c", 6, 1),
        FieldDef("Last_Payment_Date__c", "date"), _money("Last_Payment_Amount__c"),
        _number("Open_Invoice_Count__c", 8, 0),
        _pick("Collection_Status__c", ("Current", "Overdue", "Paused", "Disputed", "Promised", "Credit"),
              restricted=True),
        _text("Dunning_Stage__c", 80), FieldDef("Paused__c", "boolean", default=False, nillable=False),
        _text("Paused_Reason__c", 255), FieldDef("Promise_To_Pay_Date__c", "date"),
        FieldDef("Disputed__c", "boolean", default=False, nillable=False), _text("Collector__c", 80),
        _text("Tags__c", 255), FieldDef("Console_URL__c", "url", length=255, label="Console URL"),
        FieldDef("Last_Synced_At__c", "datetime"), _currency_field(), _owner(),
    ], custom=True)
    invoice = SObjectType("AR_Invoice__c", "AR Invoice", "AR Invoices", "a0Y", sysf() + [
        _text("Name", 80, label="AR Invoice Name", nillable=False, name_field=True, id_lookup=True),
        _text("ARHub_Key__c", 64, label="ARHub Key", external_id=True, unique=True),
        _ref("Account__c", "Account", "Account__r", "AR_Invoices__r", label="Account"),
        _text("Customer_Key__c", 64), _text("Invoice_Number__c", 80), FieldDef("Issue_Date__c", "date"),
        FieldDef("Due_Date__c", "date"), _text("Currency_Code__c", 3), _number("Amount__c", 16, 2),
        _number("Open_Amount__c", 16, 2), _money("Open_Amount_Reporting__c"),
        _number("Days_Overdue__c", 6, 0),
        _pick("Status__c", ("Open", "Overdue", "Disputed", "Paid", "Void"), restricted=True),
        _text("PO_Number__c", 80, label="PO Number"), FieldDef("Last_Synced_At__c", "datetime"),
        _currency_field(), _owner(),
    ], custom=True)
    ro = {"createable": False, "updateable": False}
    organization = SObjectType("Organization", "Organization", "Organizations", "00D", [
        FieldDef("Id", "id", label="Organization ID", length=18, nillable=False, **ro),
        _text("Name", 80, **ro), FieldDef("IsSandbox", "boolean", default=True, **ro),
        _text("OrganizationType", 40, **ro), _text("InstanceName", 5, **ro),
        _text("DefaultLocaleSidKey", 40, **ro), _text("TimeZoneSidKey", 40, **ro),
        FieldDef("IsDeleted", "boolean", default=False, **ro), FieldDef("CreatedDate", "datetime", **ro),
        FieldDef("SystemModstamp", "datetime", **ro),
    ], writable=False)
    return [user, account, contact, opportunity, summary, invoice, organization]


# =============================================================================== errors
class SfError(Exception):
    """One Salesforce error: ``code`` (errorCode / statusCode), message, fields."""

    def __init__(self, code: str, message: str, fields: Iterable[str] = ()):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.fields = code, message, list(fields)

    def __reduce__(self):
        return (self.__class__, (self.code, self.message, self.fields))

    def rest(self) -> dict:
        return {"message": self.message, "errorCode": self.code, "fields": self.fields}

    def status(self) -> dict:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def bulk(self) -> str:
        return f"{self.code}:{self.message}:{','.join(self.fields)} --"


class RecordError(Exception):
    """A record Salesforce refused, with every error it found."""

    def __init__(self, errors: list[SfError], status: int = 400):
        super().__init__("; ".join(str(e) for e in errors))
        self.errors, self.http_status = errors, status

    def __reduce__(self):
        return (self.__class__, (self.errors, self.http_status))


class ApiError(Exception):
    """A whole request refused: HTTP ``status`` and Salesforce's error list."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    def __reduce__(self):
        return (self.__class__, (self.status, self.code, self.message))


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


class _MultipleMatches(Exception):
    def __init__(self, ids: list[str]):
        super().__init__(f"{len(ids)} records match")
        self.ids = ids


# =============================================================================== seeding
_FIRST_NAMES = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn",
                "Harper", "Rowan", "Emery", "Parker", "Reese", "Skyler", "Dakota", "Hayden", "Kendall", "Logan")
_LAST_NAMES = ("Nguyen", "Schmidt", "Garcia", "Okafor", "Tanaka", "Rossi", "Dubois", "Kowalski", "Silva",
               "Andersen", "Murphy", "Cohen", "Patel", "Müller", "O'Connor", "Fernández", "Larsen", "Ivanova",
               "Kim", "Walker")
_SUFFIX_VARIANTS = (("Inc.", "Inc"), ("Inc.", "Incorporated"), ("Corp.", "Corporation"), ("Corp.", "Corp"),
                    ("LLC", "L.L.C."), (" GmbH", ""), (" AG", ""), ("Ltd.", "Ltd"), ("Ltd", "Limited"),
                    ("PLC", "plc"), ("B.V.", "BV"), ("S.L.", "SL"), ("SAS", "S.A.S."), ("Pty Ltd", "Pty. Ltd."),
                    ("K.K.", "KK"), ("S.A. de C.V.", "SA de CV"), ("Limited", "Ltd"))


def name_variant(name: str, rng: random.Random) -> str:
    """The same company as a sales rep would type it: suffix, punctuation, '&'/'and', case, spaces.
    The trailing customer number is kept, so a fuzzy match remains possible."""
    stem, _, number = name.rpartition(" ")
    if not number.isdigit():
        stem, number = name, ""
    out = stem
    for _ in range(6):
        choice = rng.randrange(6)
        if choice == 0:
            options = [(a, b) for a, b in _SUFFIX_VARIANTS if a in out]
            if options:
                a, b = rng.choice(options)
                out = out.replace(a, b, 1)
        elif choice == 1 and ("&" in out or " and " in out):
            out = out.replace("&", "and") if "&" in out else out.replace(" and ", " & ")
        elif choice == 2:
            out = rng.choice((out.upper(), out.lower(), out.title()))
        elif choice == 3 and " " in out:
            words = out.split(" ")
            i = rng.randrange(len(words) - 1) if len(words) > 1 else 0
            words[i] += rng.choice((" ", ","))
            out = " ".join(words)
        elif choice == 4:
            out = out.replace(".", "") if "." in out else out + rng.choice((" Inc", " Co", ""))
        else:
            out = out.replace(" - ", " ") if " - " in out else out.replace("'", "")
        if out != stem and rng.random() < 0.6:
            break
    if out == stem:
        out = stem.upper()
    return f"{out} {number}".strip() if number else out


def _seed_inserter(org: Org, obj: str) -> Callable[[dict, str, str], str]:
    """A fast unchecked insert for seeding ``obj``: the values must be complete (owner, currency)."""
    sobject = org.types[obj]
    table, template, prefix, seq = org.tables[obj], sobject.template, sobject.key_prefix, org._seq
    indexes = [(org.indexes[obj][fname], fname, lower) for fname, lower in sobject.index_keys]

    def insert(values: dict, user_id: str, now: str) -> str:
        n = seq.get(prefix, 0) + 1
        seq[prefix] = n
        rid = _make_id(prefix, n)
        rec = template.copy()
        rec.update(values)
        rec["Id"] = rid
        rec["IsDeleted"] = False
        rec["CreatedDate"] = rec["LastModifiedDate"] = rec["SystemModstamp"] = now
        rec["CreatedById"] = rec["LastModifiedById"] = user_id
        table[rid] = rec
        for ix, fname, lower in indexes:
            value = rec[fname]
            if value is not None:
                key = value.lower() if lower else value
                cur = ix.get(key)
                if cur is None:
                    ix[key] = rid
                elif type(cur) is set:
                    cur.add(rid)
                else:
                    ix[key] = {cur, rid}
        return rid

    return insert


class _Seeder:
    """Builds the seeded org; written for speed (150,000 accounts and their children in seconds):
    records are stored unchecked through :meth:`Org._insert_raw`, random draws avoid ``choice``."""

    def __init__(self, org: Org, book: Book, rng: random.Random):
        self.org, self.book, self.rng = org, book, rng
        self.truth = org.seed_truth
        self.r = rng.random
        as_of = book.as_of
        self.past_days = [(as_of - timedelta(days=d)).isoformat() for d in range(0, 701)]
        self.next_days = [(as_of + timedelta(days=d)).isoformat() for d in range(0, 121)]
        self.insert_account = _seed_inserter(org, "Account")
        self.insert_contact = _seed_inserter(org, "Contact")
        self.insert_opportunity = _seed_inserter(org, "Opportunity")

    def pick(self, seq):
        return seq[int(self.r() * len(seq))]

    def run(self) -> None:
        org, book, r, pick, truth = self.org, self.book, self.r, self.pick, self.truth
        as_of_midnight = datetime.combine(book.as_of, datetime.min.time(), UTC)
        users = self.seed_users()
        active = [u for u, is_active in users if is_active]
        inactive = [u for u, is_active in users if not is_active]
        account_of: dict[int, str] = {}
        with book.lock:
            customers = [book.customers[cid] for cid in sorted(book.customers)]
        insert = self.insert_account
        accounts_truth, renamed = truth["accounts"], truth["renamed"]
        n_accounts = 0
        for cust in customers:
            if r() < 0.03:
                accounts_truth[cust.number] = None
                truth["without_account"].append(cust.number)
                continue
            has_ext = r() < 0.70
            name = cust.name
            if not has_ext or r() < 0.08:
                name = name_variant(cust.name, self.rng)
                renamed[cust.number] = name
            owner = pick(inactive) if inactive and r() < 0.01 else pick(active)
            domain = cust.email.partition("@")[2]
            roll = r()
            kind = "Strategic" if roll < 0.05 else "Partner" if roll < 0.07 else "Reseller" if roll < 0.08 \
                else "Customer"
            created = cust.created + timedelta(minutes=int(r() * 20 * 1440))
            stamp = sf_datetime(created if created < as_of_midnight else as_of_midnight)
            arr = float(cust.arr)
            values = {
                "Name": name, "Type": kind, "Industry": pick(INDUSTRIES),
                "ParentId": account_of.get(cust.parent_id) if cust.parent_id else None,
                "BillingCountry": COUNTRIES.get(cust.country), "BillingCountryCode": cust.country,
                "Website": f"https://www.{domain}", "Phone": cust.contacts[0].phone if cust.contacts else None,
                "AnnualRevenue": arr, "CurrencyIsoCode": cust.currency, "OwnerId": owner,
                "ERP_Customer_Number__c": cust.number if has_ext else None,
                "Customer_Tier__c": "Enterprise" if arr >= 50000 else "Mid-Market" if arr >= 10000 else "SMB",
            }
            aid = insert(values, owner, stamp)
            n_accounts += 1
            account_of[cust.id] = aid
            accounts_truth[cust.number] = aid
            if has_ext:
                truth["with_external_id"].append(cust.number)
            if owner in inactive:
                truth["inactive_owner_accounts"].append(aid)
            self.seed_children(aid, name, arr, cust, domain, owner, stamp)
            if r() < 0.02:  # the same customer entered twice, the second time without the ERP number
                dup_owner = pick(active)
                dup = dict(values, Name=name_variant(cust.name, self.rng), ERP_Customer_Number__c=None,
                           OwnerId=dup_owner, Website=values["Website"] if r() < 0.5 else None, ParentId=None)
                dup_id = insert(dup, dup_owner, stamp)
                n_accounts += 1
                truth["duplicates"].append((aid, dup_id))
                if r() < 0.5:
                    self.contact(dup_id, dup_owner, stamp, "Accounts", f"Payable {cust.id}", cust.email,
                                 "Billing", cust.currency)
        self.seed_prospects(customers, round(n_accounts * 0.05) if customers else 0, active)

    def seed_prospects(self, customers, count: int, active: list[str]) -> None:
        """Accounts with no ERP customer behind them (Type Prospect)."""
        org, r, pick, book = self.org, self.r, self.pick, self.book
        stems = [c.name.rsplit(" ", 1)[0] for c in customers[:500]] or ["Prospect Holdings Inc."]
        next_number = (max(book.customers) if book.customers else 0) + 1
        as_of_midnight = datetime.combine(book.as_of, datetime.min.time(), UTC)
        for i in range(count):
            owner = pick(active)
            number = next_number + i
            stem = pick(stems)
            slug = "".join(ch for ch in stem.lower() if ch.isascii() and ch.isalnum()) or "prospect"
            stamp = sf_datetime(as_of_midnight - timedelta(minutes=int(r() * 400 * 1440) + 1))
            values = {"Name": f"{stem} {number}", "Type": "Prospect", "Industry": pick(INDUSTRIES),
                      "BillingCountryCode": "US", "BillingCountry": "United States",
                      "Website": f"https://www.{slug}{number}.example.org", "OwnerId": owner,
                      "CurrencyIsoCode": "USD", "AnnualRevenue": float(int(r() * 500 + 1) * 1000)}
            aid = self.insert_account(values, owner, stamp)
            self.truth["prospects"].append(aid)
            if r() < 0.6:
                self.contact(aid, owner, stamp, pick(_FIRST_NAMES), pick(_LAST_NAMES),
                             f"info@{slug}{number}.example.org", None, "USD")
            if r() < 0.4:
                self.opportunity(aid, owner, stamp, f"{values['Name']} - New Business", "New Business",
                                 pick(STAGES[:8])[0], pick(self.next_days), values["AnnualRevenue"], "USD")

    def seed_users(self) -> list[tuple[str, bool]]:
        """Twenty sales reps, one of them inactive (it still owns a few accounts)."""
        org = self.org
        users = []
        now = sf_datetime(datetime.combine(self.book.start, datetime.min.time(), UTC))
        for i in range(20):
            first, last = _FIRST_NAMES[i], _LAST_NAMES[(i * 7) % len(_LAST_NAMES)]
            slug = "".join(ch for ch in f"{first}.{last}".lower() if ch.isascii() and (ch.isalnum() or ch == "."))
            active = i != 13
            uid = org._insert_raw("User", {
                "Username": f"{slug}@arhub-sandbox.example.com", "FirstName": first, "LastName": last,
                "Email": f"{slug}@example.com", "Alias": slug[:8], "Title": self.pick(
                    ("Account Executive", "Account Manager", "Sales Director", "Customer Success Manager")),
                "IsActive": active}, None, now)
            users.append((uid, active))
        return users

    def contact(self, aid, owner, stamp, first, last, email, role, currency) -> str:
        return self.insert_contact({
            "AccountId": aid, "FirstName": first, "LastName": last,
            "Name": f"{first} {last}" if first else last, "Email": email, "AR_Role__c": role,
            "OwnerId": owner, "CurrencyIsoCode": currency}, owner, stamp)

    def opportunity(self, aid, owner, stamp, name, kind, stage, close, amount, currency) -> str:
        closed, won = _STAGE_STATE[stage]
        return self.insert_opportunity({
            "AccountId": aid, "Name": name, "Type": kind, "StageName": stage, "IsClosed": closed, "IsWon": won,
            "CloseDate": close, "Amount": round(amount, 2), "CurrencyIsoCode": currency, "OwnerId": owner},
            owner, stamp)

    def seed_children(self, aid, name, arr, cust, domain, owner, stamp) -> None:
        """The ERP's billing (often) and escalation (sometimes) contacts, a Salesforce-only escalation
        contact now and then, other contacts without an AR role; closed and open opportunities."""
        r, pick = self.r, self.pick
        currency = cust.currency
        for contact in cust.contacts:
            billing = contact.role == "billing"
            if r() >= (0.85 if billing else 0.5):
                continue
            first, _, last = contact.name.rpartition(" ")
            email = contact.email if r() < 0.95 else contact.email.upper()
            self.contact(aid, owner, stamp, first or None, last, email, "Billing" if billing else "Escalation",
                         currency)
        if r() < 0.15:
            self.contact(aid, owner, stamp, pick(_FIRST_NAMES), pick(_LAST_NAMES), f"finance.director@{domain}",
                         "Escalation", currency)
        if r() < 0.2:
            first, last = pick(_FIRST_NAMES), pick(_LAST_NAMES)
            self.contact(aid, owner, stamp, first, last, f"{first.lower()}@{domain}", None, currency)
        arr = arr or 1000.0
        for n in range(pick((0, 1, 1, 1, 1, 2))):
            close = pick(self.past_days[1:])
            self.opportunity(aid, owner, stamp, f"{name} - {close[:4]} {'Renewal' if n else 'Deal'}",
                             "Renewal" if n else "New Business", "Closed Won" if r() < 0.8 else "Closed Lost",
                             close, arr * (0.3 + 0.8 * r()), currency)
        if r() < 0.15:
            kind = "Renewal" if r() < 0.5 else "Expansion"
            self.opportunity(aid, owner, stamp, f"{name} - {kind}", kind, pick(STAGES[1:8])[0],
                             self.next_days[int(r() * 91)], arr * (0.2 + r()), currency)


# =============================================================================== HTTP
def _json(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), status=status,
                    content_type="application/json;charset=UTF-8", headers=headers)


def _errors(status: int, code: str, message: str, fields: list | None = None) -> Response:
    body = {"message": message, "errorCode": code}
    if fields is not None:
        body["fields"] = fields
    return _json([body], status)


@dataclass
class Session:
    token: str
    user_id: str
    expires: float


@dataclass
class Context:
    session: Session
    version: str
    request: Request


@dataclass
class FaultSettings:
    latency_ms: float = 0.0
    error_5xx_rate: float = 0.0
    lock_row_rate: float = 0.0
    seed: int | None = None


@dataclass
class QueryCursor:
    plan: soql.Plan
    records: list[dict]
    include_deleted: bool
    batch: int
    touched: float


@dataclass
class IngestJob:
    id: str
    object: str
    operation: str
    external_id: str | None
    line_ending: str
    delimiter: str
    created_by: str
    created: str
    version: str
    state: str = "Open"
    modstamp: str = ""
    uploads: list[bytes] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    done: int = 0
    success: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failed: list[tuple[str, str, list[str]]] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0
    finished: float = 0.0
    thread: threading.Thread | None = None

    def info(self) -> dict:
        out = {"id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
               "createdDate": self.created, "systemModstamp": self.modstamp or self.created, "state": self.state,
               "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(self.version),
               "jobType": "V2Ingest", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
               "numberRecordsProcessed": len(self.success) + len(self.failed),
               "numberRecordsFailed": len(self.failed), "retries": 0,
               "totalProcessingTime": int((self.finished or self.started) * 1000 - self.started * 1000)
               if self.started else 0, "apiActiveProcessingTime": 0, "apexProcessingTime": 0}
        if self.external_id:
            out["externalIdFieldName"] = self.external_id
        if self.state == "Open":
            out["contentUrl"] = f"services/data/v{self.version}/jobs/ingest/{self.id}/batches"
        if self.error:
            out["errorMessage"] = self.error
        return out


@dataclass
class QueryJob:
    id: str
    operation: str
    query: str
    object: str
    line_ending: str
    delimiter: str
    created_by: str
    created: str
    version: str
    state: str = "UploadComplete"
    plan: soql.Plan | None = None
    records: list[dict] = field(default_factory=list)
    error: str | None = None

    def info(self) -> dict:
        out = {"id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
               "createdDate": self.created, "systemModstamp": self.created, "state": self.state,
               "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(self.version),
               "jobType": "V2Query", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
               "numberRecordsProcessed": len(self.records) if self.state == "JobComplete" else 0, "retries": 0,
               "totalProcessingTime": 0}
        if self.error:
            out["errorMessage"] = self.error
        return out


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
_LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
_INGEST_OPERATIONS = ("insert", "upsert", "update", "delete", "hardDelete")
_TERMINAL = ("JobComplete", "Failed", "Aborted")


class SalesforceApp:
    """The WSGI application: authentication, API accounting, faults, routing over an :class:`Org`."""

    def __init__(self, org: Org | Callable[[], Org], *, credentials: dict | None = None,
                 api_budget: int = DEFAULT_API_BUDGET, session_seconds: int = DEFAULT_SESSION_SECONDS,
                 jwt_public_key: str | bytes | None = None):
        """``org`` may be a zero-argument factory: the org is then built on first use (``arhub sandbox
        serve`` does so, a big seeded org costs seconds and hundreds of MB nobody may need)."""
        self._org = org if isinstance(org, Org) else None
        self._org_factory = None if isinstance(org, Org) else org
        self._org_lock = threading.Lock()
        self.credentials = dict(SANDBOX_CREDENTIALS, **(credentials or {}))
        self.api_max, self.api_used = api_budget, 0
        self.session_seconds = session_seconds
        self.jwt_key = _load_public_key(jwt_public_key) if jwt_public_key else None
        self.sessions: dict[str, Session] = {}
        self.faults = FaultSettings()
        self.queue = Faults()
        self._rng = random.Random()
        self.stats: dict[str, int] = {}
        self.cursors: OrderedDict[str, QueryCursor] = OrderedDict()
        self.ingest_jobs: dict[str, IngestJob] = {}
        self.query_jobs: dict[str, QueryJob] = {}
        self.bulk_batches = 0
        self.lock = threading.Lock()  # sessions, counters, cursors, jobs (the org has its own)
        self._seq = 0

    @property
    def org(self) -> Org:
        if self._org is None:
            with self._org_lock:
                if self._org is None:
                    self._org = self._org_factory()
        return self._org

    # ------------------------------------------------------------------ control (also via /_sandbox/)
    def set_faults(self, latency_ms: float = 0.0, error_5xx_rate: float = 0.0, lock_row_rate: float = 0.0,
                   seed: int | None = None) -> FaultSettings:
        with self.lock:
            self.faults = FaultSettings(float(latency_ms), float(error_5xx_rate), float(lock_row_rate), seed)
            self._rng = random.Random(seed)
            return self.faults

    def clear_faults(self) -> None:
        self.set_faults()
        self.queue.clear()

    def expire_sessions(self) -> int:
        with self.lock:
            count = len(self.sessions)
            self.sessions.clear()
            return count

    def set_budget(self, max: int | None = None, used: int | None = None) -> dict:  # noqa: A002 - the API's word
        with self.lock:
            if max is not None:
                self.api_max = int(max)
            if used is not None:
                self.api_used = int(used)
            return {"max": self.api_max, "used": self.api_used}

    def get_stats(self) -> dict:
        with self.lock:
            return {"api_used": self.api_used, "api_max": self.api_max, "by_endpoint": dict(self.stats),
                    "sessions": len(self.sessions), "bulk_batches": self.bulk_batches,
                    "ingest_jobs": {jid: job.state for jid, job in self.ingest_jobs.items()}}

    def reset_stats(self) -> None:
        with self.lock:
            self.stats.clear()
            self.api_used = 0
            self.bulk_batches = 0

    def issue_token(self, user_id: str) -> str:
        token = f"{self.org.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        with self.lock:
            self.sessions[token] = Session(token, user_id, time.monotonic() + self.session_seconds)
        return token

    def _new_id(self, prefix: str) -> str:
        with self.lock:
            self._seq += 1
            n = self._seq
        body = prefix + "Dn0" + format(n, "09d")
        return body + id_checksum(body)

    # ------------------------------------------------------------------ WSGI
    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except ApiError as exc:
            response = _errors(exc.status, exc.code, exc.message)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/_sandbox/"):
            return self.control(request, path[len("/_sandbox/"):].strip("/"))
        if path.rstrip("/") == "/services/oauth2/token":
            return self.oauth_token(request) if request.method == "POST" else _errors(
                405, "METHOD_NOT_ALLOWED", "HTTP Method 'GET' not allowed. Allowed are POST")
        if path.rstrip("/") == "/services/oauth2/revoke" and request.method == "POST":
            with self.lock:
                self.sessions.pop(request.values.get("token", ""), None)
            return Response(status=200)
        if path.startswith("/services/Soap/u/") and request.method == "POST":
            return self.soap_login(request)
        if path.rstrip("/") == "/services/data":
            return _json([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in API_VERSIONS])
        match = _VERSION_RE.match(path)
        if not match:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        ctx_or_response = self.authenticate(request, match.group(1))
        if isinstance(ctx_or_response, Response):
            return ctx_or_response
        ctx = ctx_or_response
        rest = (match.group(2) or "").strip("/")
        response = self.api_call(ctx, rest)
        response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_max}"
        return response

    def authenticate(self, request: Request, version: str) -> Context | Response:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else header[6:].strip() \
            if header[:6].lower() == "oauth " else ""
        with self.lock:
            session = self.sessions.get(token)
            if session is not None and session.expires < time.monotonic():
                self.sessions.pop(token, None)
                session = None
        if session is None:
            return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return Context(session, version, request)

    def api_call(self, ctx: Context, rest: str) -> Response:
        request = ctx.request
        name = _route_name(request.method, rest)
        with self.lock:
            if self.api_used >= self.api_max:
                return _errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            self.api_used += 1
            self.stats[name] = self.stats.get(name, 0) + 1
            faults = self.faults
            fail_5xx = faults.error_5xx_rate and self._rng.random() < faults.error_5xx_rate
            status_kind = self._rng.random() if fail_5xx else 0.0
        queued = self.queue.take(request.path)
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000.0)
        if queued is not None:
            if queued.delay:
                time.sleep(queued.delay)
            if queued.body == "malformed":
                return Response('{"totalSize": 3, "records": [', status=queued.status or 200,
                                content_type="application/json")
            if queued.status:
                headers = {"Retry-After": str(queued.retry_after)} if queued.retry_after else None
                code = "SERVER_UNAVAILABLE" if queued.status >= 500 else "REQUEST_LIMIT_EXCEEDED" \
                    if queued.status in (403, 429) else "UNKNOWN_EXCEPTION"
                return _json([{"message": f"sandbox fault: HTTP {queued.status}", "errorCode": code}],
                             queued.status, headers)
        if fail_5xx:
            if status_kind < 0.5:
                return _errors(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId "
                                                         "if you contact support: 1234567890-12345 (-1234567890)")
            return _errors(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable. Please try again later.")
        try:
            return self.route(ctx, rest)
        except ApiError as exc:
            return _errors(exc.status, exc.code, exc.message)
        except SoqlError as exc:
            return _errors(400, exc.code, exc.message)
        except RecordError as exc:
            return _json([e.rest() for e in exc.errors], exc.http_status)

    def lock_fault(self, rid: str | None = None) -> None:
        """Raise UNABLE_TO_LOCK_ROW for a write, at the configured rate."""
        rate = self.faults.lock_row_rate
        if rate:
            with self.lock:
                hit = self._rng.random() < rate
            if hit:
                suffix = f" or 1 records: {rid}" if rid else ""
                raise RecordError([SfError("UNABLE_TO_LOCK_ROW",
                                           f"unable to obtain exclusive access to this record{suffix}", [])])

    # ------------------------------------------------------------------ routing
    def route(self, ctx: Context, rest: str) -> Response:
        method = ctx.request.method
        parts = rest.split("/") if rest else []
        head = parts[0] if parts else ""
        if not parts:
            return self.resources(ctx)
        if head == "limits" and len(parts) == 1:
            return self.limits(ctx)
        if head in ("query", "queryAll"):
            if method != "GET":
                return _method_not_allowed(method, "GET")
            if len(parts) == 1:
                return self.query(ctx, head == "queryAll")
            if len(parts) == 2:
                return self.query_more(ctx, parts[1])
        if head == "sobjects":
            return self.sobjects(ctx, parts[1:])
        if head == "composite" and len(parts) >= 2 and parts[1] == "sobjects":
            return self.composite(ctx, parts[2:])
        if head == "jobs" and len(parts) >= 2 and parts[1] == "ingest":
            return self.ingest(ctx, parts[2:])
        if head == "jobs" and len(parts) >= 2 and parts[1] == "query":
            return self.bulk_query(ctx, parts[2:])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def resources(self, ctx: Context) -> Response:
        base = f"/services/data/v{ctx.version}"
        return _json({name: f"{base}/{name}" for name in
                      ("sobjects", "query", "queryAll", "limits", "composite", "jobs/ingest", "jobs/query")})

    def limits(self, ctx: Context) -> Response:
        org = self.org
        records = sum(len(t) for t in org.tables.values())
        storage_max = 10240
        with self.lock:
            ingest_used = len(self.ingest_jobs)
            query_used = len(self.query_jobs)
            return _json({
                "DailyApiRequests": {"Max": self.api_max, "Remaining": max(self.api_max - self.api_used, 0)},
                "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000 - self.bulk_batches},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000 - query_used},
                "DailyBulkV2QueryFileStorageMB": {"Max": 1048576, "Remaining": 1048576},
                "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
                "DataStorageMB": {"Max": storage_max, "Remaining": max(storage_max - records * 2 // 1024, 0)},
                "FileStorageMB": {"Max": 10240, "Remaining": 10240},
                "HourlyODataCallout": {"Max": 20000, "Remaining": 20000},
                "ConcurrentAsyncGetReportInstances": {"Max": 200, "Remaining": 200},
                "MassEmail": {"Max": 5000, "Remaining": 5000},
                "SingleEmail": {"Max": 5000, "Remaining": 5000},
                "PermissionSets": {"Max": 1500, "Remaining": 1500},
                "BulkV2IngestJobs": {"Max": 10000, "Remaining": 10000 - ingest_used},
            })

    # ------------------------------------------------------------------ query
    def _batch_size(self, request: Request) -> int:
        options = request.headers.get("Sforce-Query-Options", "")
        match = re.search(r"batchSize\s*=\s*(\d+)", options)
        if not match:
            return QUERY_BATCH
        return max(MIN_QUERY_BATCH, min(QUERY_BATCH, int(match.group(1))))

    def query(self, ctx: Context, include_deleted: bool) -> Response:
        text = ctx.request.args.get("q")
        if text is None:
            raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        plan, records = self.org.run_query(text, include_deleted)
        if plan.count:
            return _json({"totalSize": len(records), "done": True, "records": []})
        batch = self._batch_size(ctx.request)
        locator = None
        if len(records) > batch:
            locator = self._new_id("01g")
            with self.lock:
                self.cursors[locator] = QueryCursor(plan, records, include_deleted, batch, time.monotonic())
                self._evict_cursors()
        return self._query_page(ctx, plan, records, 0, batch, locator, include_deleted)

    def _evict_cursors(self) -> None:
        now = time.monotonic()
        while self.cursors and (len(self.cursors) > _CURSOR_LIMIT or
                                next(iter(self.cursors.values())).touched < now - _CURSOR_IDLE_SECONDS):
            self.cursors.popitem(last=False)

    def query_more(self, ctx: Context, token: str) -> Response:
        locator, _, offset = token.rpartition("-")
        with self.lock:
            cursor = self.cursors.get(locator)
            if cursor is not None:
                cursor.touched = time.monotonic()
                self.cursors.move_to_end(locator)
        if cursor is None or not offset.isdigit() or int(offset) >= len(cursor.records):
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._query_page(ctx, cursor.plan, cursor.records, int(offset), cursor.batch, locator,
                                cursor.include_deleted)

    def _query_page(self, ctx, plan, records, start, batch, locator, include_deleted) -> Response:
        org, version = self.org, ctx.version

        def attributes(obj, rec):
            return {"type": obj, "url": f"/services/data/v{version}/sobjects/{obj}/{rec['Id']}"}

        with org.lock:
            page = [soql.render(rec, plan.tree, attributes, plan.object, org.fetch)
                    for rec in records[start:start + batch]]
        body: dict[str, Any] = {"totalSize": len(records), "done": start + batch >= len(records)}
        if not body["done"]:
            endpoint = "queryAll" if include_deleted else "query"
            body["nextRecordsUrl"] = f"/services/data/v{version}/{endpoint}/{locator}-{start + batch}"
        body["records"] = page
        return _json(body)

    # ------------------------------------------------------------------ sObjects
    def sobjects(self, ctx: Context, parts: list[str]) -> Response:
        method, org = ctx.request.method, self.org
        if not parts:
            if method != "GET":
                return _method_not_allowed(method, "GET")
            return _json({"encoding": "UTF-8", "maxBatchSize": 200,
                          "sobjects": [t.summary(ctx.version) for t in org.types.values()]})
        sobject = org.require_type(parts[0])
        obj = sobject.name
        if len(parts) == 1:
            if method == "POST":
                return self.create_one(ctx, obj)
            if method == "GET":
                return _json({"objectDescribe": sobject.summary(ctx.version), "recentItems": []})
            return _method_not_allowed(method, "GET, HEAD, POST")
        if len(parts) == 2 and parts[1] == "describe":
            return _json(self.describe(sobject, ctx.version))
        if len(parts) == 2 and parts[1] in ("updated", "deleted"):
            return self.changed(ctx, obj, parts[1])
        if len(parts) == 2:
            rid = parts[1]
            if method == "GET":
                rec = org.get(obj, rid)
                fields = ctx.request.args.get("fields")
                names = [n.strip() for n in fields.split(",")] if fields else None
                if names:
                    unknown = [n for n in names if sobject.field(n) is None]
                    if unknown:
                        raise ApiError(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type "
                                                             f"{obj}")
                with org.lock:
                    return _json(org.record_view(obj, rec, ctx.version, names))
            if method == "PATCH":
                data = _body(ctx.request)
                with org.lock:
                    rec = org.get(obj, rid)
                    self.lock_fault(rec["Id"])
                    org.update(obj, rec["Id"], data, ctx.session.user_id)
                return Response(status=204)
            if method == "DELETE":
                with org.lock:
                    rec = org.get(obj, rid)
                    self.lock_fault(rec["Id"])
                    org.delete(obj, rec["Id"], ctx.session.user_id)
                return Response(status=204)
            return _method_not_allowed(method, "GET, HEAD, PATCH, DELETE")
        if len(parts) == 3:
            return self.by_external_id(ctx, sobject, parts[1], parts[2])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def describe(self, sobject: SObjectType, version: str) -> dict:
        out = sobject.summary(version)
        out["fields"] = [f.describe() for f in sobject.fields.values()]
        children = []
        for other in self.org.types.values():
            for f in other.fields.values():
                if f.type == "reference" and sobject.name in f.reference_to and f.child_relationship:
                    children.append({"cascadeDelete": f.cascade_delete, "childSObject": other.name,
                                     "deprecatedAndHidden": False, "field": f.name,
                                     "relationshipName": f.child_relationship, "restrictedDelete": False})
        out["childRelationships"] = children
        out["recordTypeInfos"] = []
        out["compactLayoutable"] = True
        return out

    def create_one(self, ctx: Context, obj: str) -> Response:
        data = _body(ctx.request)
        if not isinstance(data, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object")
        with self.org.lock:
            self.lock_fault()
            rid = self.org.create(obj, data, ctx.session.user_id)
        return _json({"id": rid, "success": True, "errors": []}, 201)

    def by_external_id(self, ctx: Context, sobject: SObjectType, fname: str, value: str) -> Response:
        method, org, obj = ctx.request.method, self.org, sobject.name
        f = sobject.field(fname)
        if f is None or not (f.external_id or f.name == "Id"):
            raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                                             f"{fname}")
        if method == "PATCH":
            data = _body(ctx.request)
            if not isinstance(data, dict):
                raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object")
            with org.lock:
                self.lock_fault()
                try:
                    rid, created = org.upsert(obj, f.name, value, data, ctx.session.user_id)
                except _MultipleMatches as exc:
                    return _json([f"/services/data/v{ctx.version}/sobjects/{obj}/{i}" for i in exc.ids], 300)
            return _json({"id": rid, "success": True, "errors": [], "created": created}, 201 if created else 200)
        with org.lock:
            ids = org.find(obj, f.name, value)
            if len(ids) > 1:
                return _json([f"/services/data/v{ctx.version}/sobjects/{obj}/{i}" for i in ids], 300)
            if not ids:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            if method == "GET":
                return _json(org.record_view(obj, org.tables[obj][ids[0]], ctx.version))
            if method == "DELETE":
                self.lock_fault(ids[0])
                org.delete(obj, ids[0], ctx.session.user_id)
                return Response(status=204)
        return _method_not_allowed(method, "GET, HEAD, PATCH, DELETE")

    def changed(self, ctx: Context, obj: str, kind: str) -> Response:
        args = ctx.request.args
        start, end = parse_datetime(args.get("start", "")), parse_datetime(args.get("end", ""))
        if start is None or end is None:
            raise ApiError(400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 datetimes")
        lo, hi = sf_datetime(start), sf_datetime(end)
        org = self.org
        with org.lock:
            if kind == "updated":
                ids = [rid for rid, rec in org.tables[obj].items()
                       if not rec["IsDeleted"] and lo <= rec["SystemModstamp"] < hi]
                return _json({"ids": ids, "latestDateCovered": hi})
            gone = [{"deletedDate": stamp, "id": rid} for rid, stamp in org.deleted_at[obj].items()
                    if lo <= stamp < hi]
            earliest = sf_datetime(org.clock() - timedelta(days=15))
            return _json({"deletedRecords": gone, "earliestDateAvailable": earliest, "latestDateCovered": hi})

    # ------------------------------------------------------------------ composite
    def composite(self, ctx: Context, parts: list[str]) -> Response:
        request, org = ctx.request, self.org
        method = request.method
        if method == "DELETE" and not parts:
            ids = [i for i in request.args.get("ids", "").split(",") if i]
            all_or_none = request.args.get("allOrNone", "false").lower() == "true"
            self._check_size(len(ids))
            return self._collection(ids, all_or_none, lambda rid: self._delete_item(ctx, rid))
        if method == "GET" and len(parts) == 1:
            sobject = org.require_type(parts[0])
            ids = [i for i in request.args.get("ids", "").split(",") if i]
            names = [n.strip() for n in request.args.get("fields", "").split(",") if n.strip()]
            self._check_size(len(ids))
            if not names:
                raise ApiError(400, "MALFORMED_QUERY", "fields parameter is required")
            for n in names:
                if sobject.field(n) is None:
                    raise ApiError(400, "INVALID_FIELD", f"No such column '{n}' on sobject of type {sobject.name}")
            out = []
            with org.lock:
                for rid in ids:
                    full = to18(rid)
                    rec = org.tables[sobject.name].get(full) if full else None
                    out.append(None if rec is None or rec["IsDeleted"]
                               else org.record_view(sobject.name, rec, ctx.version, names))
            return _json(out)
        body = _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be an object with a records list")
        records = body["records"]
        all_or_none = bool(body.get("allOrNone", False))
        self._check_size(len(records))
        if method == "POST" and not parts:
            return self._collection(records, all_or_none, lambda rec: self._create_item(ctx, rec))
        if method == "PATCH" and not parts:
            return self._collection(records, all_or_none, lambda rec: self._update_item(ctx, rec))
        if method == "PATCH" and len(parts) == 2:
            sobject = org.require_type(parts[0])
            f = sobject.field(parts[1])
            if f is None or not (f.external_id or f.name == "Id"):
                raise ApiError(404, "NOT_FOUND",
                               f"Provided external ID field does not exist or is not accessible: {parts[1]}")
            return self._collection(records, all_or_none, lambda rec: self._upsert_item(ctx, sobject, f, rec))
        return _method_not_allowed(method, "GET, POST, PATCH, DELETE")

    @staticmethod
    def _check_size(n: int) -> None:
        if n > COMPOSITE_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                                                     f"{COMPOSITE_LIMIT} records into this call")

    def _collection(self, items: list, all_or_none: bool, handle: Callable[[Any], dict]) -> Response:
        org = self.org
        with org.lock:
            mark = org.begin()
            try:
                results = []
                for item in items:
                    try:
                        results.append(handle(item))
                    except RecordError as exc:
                        results.append({"success": False, "errors": [e.status() for e in exc.errors]})
                    except ApiError as exc:
                        results.append({"success": False, "errors": [SfError(exc.code, exc.message).status()]})
                if all_or_none and any(not r["success"] for r in results):
                    org.rollback(mark)
                    rolled = SfError("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all "
                                     "records were valid and the request was using AllOrNone header").status()
                    results = [r if not r["success"] else
                               {"success": False, "errors": [rolled], **({"created": False} if "created" in r else {})}
                               for r in results]
                    for r in results:
                        r.pop("id", None)
            finally:
                org.end(mark)
        return _json(results)

    def _item_type(self, rec: Any, expected: str | None = None) -> SObjectType:
        if not isinstance(rec, dict):
            raise RecordError([SfError("JSON_PARSER_ERROR", "Each record must be a JSON object")])
        attrs = rec.get("attributes")
        name = attrs.get("type") if isinstance(attrs, dict) else None
        if name is None:
            if expected is not None:
                return self.org.types[expected]
            raise RecordError([SfError("INVALID_TYPE", "Must send a concrete entity type.")])
        sobject = self.org.sobject(name)
        if sobject is None:
            raise RecordError([SfError("INVALID_TYPE", f"sObject type '{name}' is not supported.")])
        if expected is not None and sobject.name != expected:
            raise RecordError([SfError("INVALID_TYPE", f"Expected records of type {expected}, got {name}")])
        return sobject

    def _create_item(self, ctx: Context, rec: Any) -> dict:
        sobject = self._item_type(rec)
        if any(isinstance(k, str) and k.lower() == "id" for k in rec):
            raise RecordError([SfError("INVALID_FIELD", "cannot specify Id in an insert call", [])])
        self.lock_fault()
        return {"id": self.org.create(sobject.name, rec, ctx.session.user_id), "success": True, "errors": []}

    def _update_item(self, ctx: Context, rec: Any) -> dict:
        sobject = self._item_type(rec)
        rid = next((v for k, v in rec.items() if isinstance(k, str) and k.lower() == "id"), None)
        if not rid:
            raise RecordError([SfError("MISSING_ARGUMENT", "Id not specified in an update call", [])])
        full = to18(str(rid))
        if full is None or self.org.type_of_id(full) != sobject.name:
            raise RecordError([SfError("MALFORMED_ID", f"{sobject.name} ID: id value of incorrect type: {rid}",
                                       ["Id"])])
        existing = self.org.tables[sobject.name].get(full)
        if existing is None:
            raise RecordError([SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])])
        if existing["IsDeleted"]:
            raise RecordError([SfError("ENTITY_IS_DELETED", "entity is deleted", [])])
        self.lock_fault(full)
        data = {k: v for k, v in rec.items() if not (isinstance(k, str) and k.lower() == "id")}
        return {"id": self.org.update(sobject.name, full, data, ctx.session.user_id), "success": True, "errors": []}

    def _upsert_item(self, ctx: Context, sobject: SObjectType, f: FieldDef, rec: Any) -> dict:
        self._item_type(rec, sobject.name)
        value = next((v for k, v in rec.items() if isinstance(k, str) and k.lower() == f.name.lower()), None)
        self.lock_fault()
        try:
            rid, created = self.org.upsert(sobject.name, f.name, value, rec, ctx.session.user_id)
        except _MultipleMatches as exc:
            raise RecordError([SfError("DUPLICATE_EXTERNAL_ID", f"{f.name}: more than one record found for "
                                       f"external id field: {exc.ids}", [f.name])]) from None
        return {"id": rid, "success": True, "errors": [], "created": created}

    def _delete_item(self, ctx: Context, rid: str) -> dict:
        full = to18(rid)
        obj = self.org.type_of_id(full) if full else None
        if obj is None:
            raise RecordError([SfError("MALFORMED_ID", f"malformed id {rid}", [])])
        rec = self.org.tables[obj].get(full)
        if rec is None:
            raise RecordError([SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])])
        if rec["IsDeleted"]:
            raise RecordError([SfError("ENTITY_IS_DELETED", "entity is deleted", [])])
        self.lock_fault(full)
        self.org.delete(obj, full, ctx.session.user_id)
        return {"id": full, "success": True, "errors": []}

    # ------------------------------------------------------------------ Bulk API 2.0 ingest
    def ingest(self, ctx: Context, parts: list[str]) -> Response:
        method = ctx.request.method
        if not parts:
            if method == "POST":
                return self.create_ingest_job(ctx)
            if method == "GET":
                with self.lock:
                    jobs = [j.info() for j in self.ingest_jobs.values()]
                return _json({"done": True, "records": jobs, "nextRecordsUrl": None})
            return _method_not_allowed(method, "GET, POST")
        with self.lock:
            job = self.ingest_jobs.get(parts[0])
        if job is None:
            raise ApiError(404, "NOT_FOUND", f"Job with id {parts[0]} not found")
        if len(parts) == 1:
            if method == "GET":
                with self.lock:
                    return _json(job.info())
            if method == "PATCH":
                return self.set_ingest_state(job, _body(ctx.request))
            if method == "DELETE":
                with self.lock:
                    if job.state not in ("UploadComplete",) + _TERMINAL:
                        raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} can only be deleted when it is in "
                                                               f"UploadComplete, JobComplete, Aborted or Failed "
                                                               f"state; it is {job.state}")
                    self.ingest_jobs.pop(job.id, None)
                return Response(status=204)
            return _method_not_allowed(method, "GET, PATCH, DELETE")
        if len(parts) == 2 and parts[1] == "batches":
            if method != "PUT":
                return _method_not_allowed(method, "PUT")
            data = ctx.request.get_data()
            with self.lock:
                if job.state != "Open":
                    raise ApiError(409, "INVALIDJOBSTATE", f"Job {job.id} is not in the Open state; it is "
                                                           f"{job.state}")
                if sum(map(len, job.uploads)) + len(data) > MAX_INGEST_BYTES:
                    raise ApiError(400, "INVALIDBATCH", "The job data exceeds the 150 MB limit")
                job.uploads.append(data)
                self.bulk_batches += 1
            return Response(status=201)
        if len(parts) == 2 and parts[1] in ("successfulResults", "failedResults", "unprocessedrecords",
                                            "unprocessedRecords"):
            if method != "GET":
                return _method_not_allowed(method, "GET")
            return self.ingest_results(job, parts[1])
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    def create_ingest_job(self, ctx: Context) -> Response:
        body = _body(ctx.request)
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = body.get("operation")
        if operation not in _INGEST_OPERATIONS:
            raise ApiError(400, "INVALIDJOB", f"Invalid operation: {operation}")
        sobject = self.org.sobject(body.get("object") or "")
        if sobject is None:
            raise ApiError(400, "INVALIDJOB", f"Unable to find object: {body.get('object')}")
        if body.get("contentType", "CSV") != "CSV":
            raise ApiError(400, "INVALIDJOB", f"Invalid contentType: {body.get('contentType')}; only CSV is "
                                              f"supported")
        delimiter = body.get("columnDelimiter", "COMMA")
        line_ending = body.get("lineEnding", "LF")
        if delimiter not in _DELIMITERS or line_ending not in _LINE_ENDINGS:
            raise ApiError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
        ext = body.get("externalIdFieldName")
        if operation == "upsert":
            f = sobject.field(ext or "")
            if f is None or not (f.external_id or f.name == "Id"):
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Field name provided, {ext} does not match an "
                                                  f"External ID, Salesforce Id, or indexed field for "
                                                  f"{sobject.name}")
            ext = f.name
        else:
            ext = None
        job = IngestJob(self._new_id("750"), sobject.name, operation, ext, line_ending, delimiter,
                        ctx.session.user_id, sf_datetime(self.org.clock()), ctx.version)
        with self.lock:
            self.ingest_jobs[job.id] = job
        return _json(job.info())

    def set_ingest_state(self, job: IngestJob, body: Any) -> Response:
        state = body.get("state") if isinstance(body, dict) else None
        with self.lock:
            if state == "UploadComplete":
                if job.state != "Open":
                    raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state} to "
                                                           f"UploadComplete")
                if len(job.uploads) > 1:
                    raise ApiError(400, "INVALIDJOB", f"Found multipe contents for job: <{job.id}>, please "
                                                      f"'Close' / 'Abort' / 'Delete' the current Job then create a "
                                                      f"new Job and make sure you only do 'PUT' once on a given Job.")
                job.state = "UploadComplete"
                job.modstamp = sf_datetime(self.org.clock())
                job.thread = threading.Thread(target=self._process_ingest, args=(job,), daemon=True,
                                              name=f"sf-bulk-{job.id}")
                job.thread.start()
            elif state == "Aborted":
                if job.state in _TERMINAL:
                    raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state} to Aborted")
                if job.state == "Open":
                    self._parse_job(job, fail=False)
                job.state = "Aborted"
                job.modstamp = sf_datetime(self.org.clock())
            else:
                raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state: {state}")
            return _json(job.info())

    def _parse_job(self, job: IngestJob, fail: bool = True) -> bool:
        """Split the uploaded CSV into header and rows; False (job Failed) if it cannot be read."""
        text = b"".join(job.uploads).decode("utf-8-sig", errors="replace")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS[job.delimiter])
        try:
            rows = list(reader)
        except csv.Error as exc:
            if fail:
                job.error = f"InvalidBatch : Failed to parse CSV: {exc}"
            return False
        rows = [r for r in rows if r and any(cell != "" for cell in r)]
        if not rows:
            if fail:
                job.error = "InvalidBatch : No content found for job"
            return False
        job.header, job.rows = [h.strip() for h in rows[0]], rows[1:]
        return True

    def _check_header(self, job: IngestJob) -> list[tuple[str, Any]] | None:
        """Per column: ("field", FieldDef) or ("rel", (lookup FieldDef, external id name)); None if invalid."""
        sobject = self.org.types[job.object]
        columns: list[tuple[str, Any]] = []
        seen = set()
        for name in job.header:
            if name.lower() in seen:
                job.error = f"InvalidBatch : Duplicate field name: {name}"
                return None
            seen.add(name.lower())
            if "." in name:
                rel_name, _, ext_name = name.partition(".")
                rel = sobject.relationship(rel_name)
                target = self.org.types.get(rel.reference_to[0]) if rel else None
                ext = target.field(ext_name) if target else None
                if rel is None or ext is None or not (ext.external_id or ext.name == "Id"):
                    job.error = f"InvalidBatch : Field name not found : {name}"
                    return None
                columns.append(("rel", (rel, ext.name)))
                continue
            f = sobject.field(name)
            if f is None:
                job.error = f"InvalidBatch : Field name not found : {name}"
                return None
            columns.append(("field", f))
        names = [c[1].name for c in columns if c[0] == "field"]
        if job.operation in ("delete", "hardDelete") and names != ["Id"]:
            job.error = "InvalidBatch : The 'delete' batch must contain only 'Id' field"
            return None
        if job.operation == "update" and "Id" not in names:
            job.error = "InvalidBatch : Field name not found : Id"
            return None
        if job.operation == "upsert" and job.external_id not in names:
            job.error = f"InvalidBatch : The external ID field {job.external_id} is not in the CSV header"
            return None
        return columns

    def _process_ingest(self, job: IngestJob) -> None:
        org = self.org
        with self.lock:
            if job.state != "UploadComplete":
                return
            job.state, job.started = "InProgress", time.time()
        ok = self._parse_job(job)
        columns = self._check_header(job) if ok else None
        if columns is None:
            with self.lock:
                job.state, job.finished = "Failed", time.time()
                job.modstamp = sf_datetime(org.clock())
            return
        chunk = 200
        for start in range(0, len(job.rows), chunk):
            with org.lock:
                for row in job.rows[start:start + chunk]:
                    if job.state == "Aborted":
                        break
                    self._ingest_row(job, columns, row)
                    job.done += 1
            if job.state == "Aborted":
                break
            time.sleep(0)  # let API requests in between chunks
        with self.lock:
            if job.state != "Aborted":
                job.state = "JobComplete"
            job.finished = time.time()
            job.modstamp = sf_datetime(org.clock())

    def _ingest_row(self, job: IngestJob, columns: list, row: list[str]) -> None:
        org, obj = self.org, job.object
        data: dict[str, Any] = {}
        if len(row) != len(columns):
            job.failed.append(("", SfError("INVALID_FIELD", f"Row has {len(row)} columns, the header has "
                                                            f"{len(columns)}", []).bulk(), row))
            return
        for (kind, spec), cell in zip(columns, row):
            if cell == "":  # an empty cell leaves the field as it is; "#N/A" sets it to null
                continue
            value = None if cell == "#N/A" else cell
            if kind == "rel":
                rel, ext_name = spec
                if value is None:
                    data[rel.name] = None
                else:
                    data[rel.relationship_name] = {ext_name: value}
            else:
                data[spec.name] = value
        rid = ""
        try:
            op = job.operation
            if op == "insert":
                self.lock_fault()
                rid = org.create(obj, data, job.created_by)
                job.success.append((rid, True, row))
            elif op == "update":
                raw_id = data.pop("Id", None)
                rid = to18(raw_id or "") or ""
                if not rid or org.type_of_id(rid) != obj:
                    raise RecordError([SfError("MALFORMED_ID", f"{obj} ID: id value of incorrect type: {raw_id}",
                                               ["Id"])])
                rec = org.tables[obj].get(rid)
                if rec is None or rec["IsDeleted"]:
                    raise RecordError([SfError("ENTITY_IS_DELETED" if rec else "INVALID_CROSS_REFERENCE_KEY",
                                               "entity is deleted" if rec else "invalid cross reference id", [])])
                self.lock_fault(rid)
                org.update(obj, rid, data, job.created_by)
                job.success.append((rid, False, row))
            elif op == "upsert":
                value = data.get(job.external_id)
                self.lock_fault()
                try:
                    rid, created = org.upsert(obj, job.external_id, value, data, job.created_by)
                except _MultipleMatches as exc:
                    raise RecordError([SfError("DUPLICATE_EXTERNAL_ID", f"{job.external_id}: more than one "
                                               f"record found for external id field: {exc.ids}",
                                               [job.external_id])]) from None
                job.success.append((rid, created, row))
            else:
                raw_id = data.get("Id")
                rid = to18(raw_id or "") or ""
                if not rid or org.type_of_id(rid) != obj:
                    raise RecordError([SfError("MALFORMED_ID", f"bad id {raw_id}", ["Id"])])
                if rid not in org.tables[obj]:
                    raise RecordError([SfError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])])
                self.lock_fault(rid)
                if op == "delete" and org.tables[obj][rid]["IsDeleted"]:
                    raise RecordError([SfError("ENTITY_IS_DELETED", "entity is deleted", [])])
                org.delete(obj, rid, job.created_by, hard=op == "hardDelete")
                job.success.append((rid, False, row))
        except RecordError as exc:
            job.failed.append((rid if job.operation != "insert" else "", exc.errors[0].bulk(), row))
        except ApiError as exc:
            job.failed.append((rid, SfError(exc.code, exc.message).bulk(), row))

    def ingest_results(self, job: IngestJob, kind: str) -> Response:
        delimiter, newline = _DELIMITERS[job.delimiter], _LINE_ENDINGS[job.line_ending]
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline, quoting=csv.QUOTE_ALL)
        with self.lock:
            if kind == "successfulResults":
                writer.writerow(["sf__Id", "sf__Created"] + job.header)
                for rid, created, row in list(job.success):
                    writer.writerow([rid, "true" if created else "false"] + row)
            elif kind == "failedResults":
                writer.writerow(["sf__Id", "sf__Error"] + job.header)
                for rid, error, row in list(job.failed):
                    writer.writerow([rid, error] + row)
            else:
                if job.state == "Open":
                    raise ApiError(400, "INVALIDJOBSTATE", "Unprocessed records are available once the job is "
                                                           "closed or aborted")
                if not job.header and job.uploads:
                    self._parse_job(job, fail=False)
                writer.writerow(job.header)
                if job.state in ("Aborted", "Failed", "UploadComplete", "InProgress"):
                    for row in job.rows[job.done:]:
                        writer.writerow(row)
        return Response(buf.getvalue(), content_type="text/csv; charset=UTF-8")

    # ------------------------------------------------------------------ Bulk API 2.0 query
    def bulk_query(self, ctx: Context, parts: list[str]) -> Response:
        method = ctx.request.method
        if not parts:
            if method == "POST":
                body = _body(ctx.request)
                if not isinstance(body, dict) or body.get("operation") not in ("query", "queryAll"):
                    raise ApiError(400, "INVALIDJOB", "operation must be query or queryAll")
                text = body.get("query") or ""
                plan, records = self.org.run_query(text, body["operation"] == "queryAll")
                if plan.count:
                    raise ApiError(400, "INVALIDJOB", "COUNT() is not supported by Bulk API 2.0 query jobs")
                job = QueryJob(self._new_id("750"), body["operation"], text, plan.object,
                               body.get("lineEnding", "LF"), body.get("columnDelimiter", "COMMA"),
                               ctx.session.user_id, sf_datetime(self.org.clock()), ctx.version,
                               state="JobComplete", plan=plan, records=records)
                if job.delimiter not in _DELIMITERS or job.line_ending not in _LINE_ENDINGS:
                    raise ApiError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
                with self.lock:
                    self.query_jobs[job.id] = job
                info = job.info()
                info["state"] = "UploadComplete"  # as Salesforce answers a create; a GET shows JobComplete
                return _json(info)
            if method == "GET":
                with self.lock:
                    return _json({"done": True, "records": [j.info() for j in self.query_jobs.values()],
                                  "nextRecordsUrl": None})
            return _method_not_allowed(method, "GET, POST")
        with self.lock:
            job = self.query_jobs.get(parts[0])
        if job is None:
            raise ApiError(404, "NOT_FOUND", f"Job with id {parts[0]} not found")
        if len(parts) == 1:
            if method == "GET":
                return _json(job.info())
            if method == "PATCH":
                body = _body(ctx.request)
                if not isinstance(body, dict) or body.get("state") != "Aborted" or job.state in _TERMINAL:
                    raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state}")
                job.state = "Aborted"
                return _json(job.info())
            if method == "DELETE":
                with self.lock:
                    self.query_jobs.pop(job.id, None)
                return Response(status=204)
        if len(parts) == 2 and parts[1] == "results" and method == "GET":
            if job.state != "JobComplete":
                raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is {job.state}; results are available "
                                                       f"when it is JobComplete")
            args = ctx.request.args
            start = int(args.get("locator") or 0) if (args.get("locator") or "0").isdigit() else -1
            if start < 0 or start > len(job.records):
                raise ApiError(400, "INVALID_LOCATOR", "invalid locator")
            size = int(args.get("maxRecords") or 50000)
            page = job.records[start:start + size]
            buf = io.StringIO()
            writer = csv.writer(buf, delimiter=_DELIMITERS[job.delimiter],
                                lineterminator=_LINE_ENDINGS[job.line_ending], quoting=csv.QUOTE_ALL)
            writer.writerow(soql.column_names(job.plan))
            with self.org.lock:
                for rec in page:
                    writer.writerow([_csv_value(v) for v in soql.flat_values(rec, job.plan.columns)])
            nxt = start + len(page)
            headers = {"Sforce-Locator": str(nxt) if nxt < len(job.records) else "null",
                       "Sforce-NumberOfRecords": str(len(page))}
            return Response(buf.getvalue(), content_type="text/csv; charset=UTF-8", headers=headers)
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    # ------------------------------------------------------------------ login
    def _login_error(self, error: str, description: str) -> Response:
        return _json({"error": error, "error_description": description}, 400)

    def _user_by_username(self, username: str) -> dict | None:
        ids = self.org.find("User", "Username", username or "")
        return self.org.tables["User"][ids[0]] if ids else None

    def _token_response(self, request: Request, user_id: str) -> Response:
        token = self.issue_token(user_id)
        issued = str(int(time.time() * 1000))
        host = f"https://{request.host}"
        identity = f"{host}/id/{self.org.org_id}/{user_id}"
        signature = base64.b64encode(hmac.new(self.credentials["client_secret"].encode(),
                                              (identity + issued).encode(), hashlib.sha256).digest()).decode()
        return _json({"access_token": token, "instance_url": host, "id": identity, "token_type": "Bearer",
                      "issued_at": issued, "signature": signature})

    def oauth_token(self, request: Request) -> Response:
        form = request.form
        grant = form.get("grant_type")
        creds = self.credentials
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return self._login_error("invalid_client", "invalid client credentials")
        if grant == "password":
            if not _same(client_id, creds["client_id"]):
                return self._login_error("invalid_client_id", "client identifier invalid")
            if not _same(client_secret, creds["client_secret"]):
                return self._login_error("invalid_client", "invalid client credentials")
            user = self._user_by_username(form.get("username", ""))
            expected = creds["password"] + creds["security_token"]
            if user is None or not user["IsActive"] or user["Username"] != creds["username"] \
                    or not _same(form.get("password", ""), expected):
                return self._login_error("invalid_grant", "authentication failure")
            return self._token_response(request, user["Id"])
        if grant == "client_credentials":
            if not _same(client_id, creds["client_id"]):
                return self._login_error("invalid_client_id", "client identifier invalid")
            if not _same(client_secret, creds["client_secret"]):
                return self._login_error("invalid_client", "invalid client credentials")
            return self._token_response(request, self.org.api_user_id)
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_login(request, form.get("assertion", ""))
        return self._login_error("unsupported_grant_type", "grant type not supported")

    def _jwt_login(self, request: Request, assertion: str) -> Response:
        parts = assertion.split(".")
        if len(parts) != 3:
            return self._login_error("invalid_grant", "invalid assertion")
        try:
            header = json.loads(_b64url(parts[0]))
            claims = json.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except (ValueError, UnicodeDecodeError):
            return self._login_error("invalid_grant", "invalid assertion")
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            return self._login_error("invalid_grant", "invalid assertion")
        if self.jwt_key is None:
            return self._login_error("invalid_client", "no certificate is configured for this connected app "
                                                       "(SalesforceServer(jwt_public_key=...))")
        if not _verify_rs256(self.jwt_key, f"{parts[0]}.{parts[1]}".encode(), signature):
            return self._login_error("invalid_grant", "invalid assertion")
        if not _same(claims.get("iss", ""), self.credentials["client_id"]):
            return self._login_error("invalid_client_id", "client identifier invalid")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        allowed = {"https://login.salesforce.com", "https://test.salesforce.com", f"https://{request.host}"}
        if not any(isinstance(a, str) and a.rstrip("/") in allowed for a in audiences):
            return self._login_error("invalid_grant", "audience is invalid")
        try:
            exp = float(claims.get("exp"))
        except (TypeError, ValueError):
            return self._login_error("invalid_grant", "invalid assertion")
        if exp < time.time():
            return self._login_error("invalid_grant", "expired authorization code")
        user = self._user_by_username(str(claims.get("sub", "")))
        if user is None or not user["IsActive"]:
            return self._login_error("invalid_grant", "user hasn't approved this consumer")
        return self._token_response(request, user["Id"])

    def soap_login(self, request: Request) -> Response:
        version = request.path.rstrip("/").rsplit("/", 1)[-1]
        body = request.get_data()
        if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
            return _soap_fault("INVALID_LOGIN", "DOCTYPE is not allowed")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return _soap_fault("INVALID_LOGIN", "Invalid XML", faultcode="soapenv:Client")
        ns = "{urn:partner.soap.sforce.com}"
        login = root.find(f".//{ns}login")
        if login is None:
            return _soap_fault("INVALID_LOGIN", "No operation available for request login", faultcode="soapenv:Client")
        username = (login.findtext(f"{ns}username") or "").strip()
        password = login.findtext(f"{ns}password") or ""
        scope_org = root.findtext(f".//{ns}organizationId")
        creds = self.credentials
        user = self._user_by_username(username)
        ok = user is not None and user["IsActive"] and user["Username"] == creds["username"]
        if ok and scope_org:
            ok = to18(scope_org.strip()) == self.org.org_id and _same(password, creds["password"])
        elif ok:
            ok = _same(password, creds["password"] + creds["security_token"])
        if not ok:
            return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        token = self.issue_token(user["Id"])
        host = f"https://{request.host}"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<soapenv:Body><loginResponse><result>'
            f'<metadataServerUrl>{host}/services/Soap/m/{escape(version)}/{self.org.org_id}</metadataServerUrl>'
            '<passwordExpired>false</passwordExpired><sandbox>true</sandbox>'
            f'<serverUrl>{host}/services/Soap/u/{escape(version)}/{self.org.org_id}</serverUrl>'
            f'<sessionId>{escape(token)}</sessionId><userId>{user["Id"]}</userId>'
            '<userInfo><accessibilityMode>false</accessibilityMode>'
            f'<currencySymbol>$</currencySymbol><orgAttachmentFileSizeLimit>5242880</orgAttachmentFileSizeLimit>'
            f'<orgDefaultCurrencyIsoCode>{self.org.currency}</orgDefaultCurrencyIsoCode>'
            '<orgDisallowHtmlAttachments>false</orgDisallowHtmlAttachments><orgHasPersonAccounts>false'
            f'</orgHasPersonAccounts><organizationId>{self.org.org_id}</organizationId>'
            '<organizationMultiCurrency>true</organizationMultiCurrency>'
            '<organizationName>arhub Sandbox</organizationName><profileId>00eDn000000ARHUB</profileId>'
            '<roleId xsi:nil="true"/><sessionSecondsValid>'
            f'{self.session_seconds}</sessionSecondsValid><userEmail>{escape(user["Email"])}</userEmail>'
            f'<userFullName>{escape(user["Name"])}</userFullName><userId>{user["Id"]}</userId>'
            f'<userLanguage>en_US</userLanguage><userLocale>en_US</userLocale>'
            f'<userName>{escape(user["Username"])}</userName><userTimeZone>UTC</userTimeZone>'
            '<userType>Standard</userType><userUiSkin>Theme3</userUiSkin></userInfo>'
            '</result></loginResponse></soapenv:Body></soapenv:Envelope>')
        return Response(xml, content_type="text/xml; charset=utf-8")

    # ------------------------------------------------------------------ /_sandbox/
    def control(self, request: Request, action: str) -> Response:
        method = request.method
        try:
            data = json.loads(request.get_data(as_text=True) or "{}") if method in ("POST", "PUT") else {}
        except ValueError:
            return _json({"error": "bad request: body is not JSON"}, 400)
        try:
            if action == "faults":
                if method == "POST":
                    if isinstance(data, list) or "status" in data or "body" in data or "delay" in data:
                        items = data if isinstance(data, list) else [data]
                        self.queue.push(*(Fault.from_json(item) for item in items))
                        return _json({"queued": len(self.queue.queue)})
                    settings = self.set_faults(**{k: data[k] for k in ("latency_ms", "error_5xx_rate",
                                                                       "lock_row_rate", "seed") if k in data})
                    return _json(vars(settings))
                if method == "DELETE":
                    self.clear_faults()
                    return _json({"cleared": True})
                return _json({"settings": vars(self.faults), "queue": [vars(f) for f in self.queue.queue]})
            if action == "expire_sessions" and method == "POST":
                return _json({"expired": self.expire_sessions()})
            if action == "budget" and method == "POST":
                return _json(self.set_budget(data.get("max"), data.get("used")))
            if action == "drop_field" and method == "POST":
                return _json({"dropped": f"{data['object']}.{self.org.drop_field(data['object'], data['field'])}"})
            if action == "restore_field" and method == "POST":
                return _json({"restored": f"{data['object']}.{self.org.restore_field(data['object'], data['field'])}"})
            if action == "stats" and method == "GET":
                return _json(self.get_stats())
            if action == "reset_stats" and method == "POST":
                self.reset_stats()
                return _json(self.get_stats())
            if action == "seed_truth" and method == "GET":
                return _json(self.org.seed_truth)
        except KeyError as exc:
            return _json({"error": f"not found: {exc}"}, 404)
        except (TypeError, ValueError) as exc:
            return _json({"error": f"bad request: {exc}"}, 400)
        return _json({"error": "no such control endpoint"}, 404)


def _route_name(method: str, rest: str) -> str:
    parts = rest.split("/") if rest else []
    if not parts:
        return f"{method} /"
    head = parts[0]
    if head in ("query", "queryAll"):
        return f"{method} {head}" + ("/more" if len(parts) > 1 else "")
    if head == "sobjects":
        shape = ["sobjects", "{object}", "{id}", "{field}/{value}"][:len(parts)]
        if len(parts) == 4:
            shape[2] = ""
        if len(parts) == 3 and parts[2] in ("describe", "updated", "deleted"):
            shape[2] = parts[2]
        return f"{method} {'/'.join(p for p in shape if p)}"
    if head == "composite":
        return f"{method} composite/sobjects" + ("/{object}" if len(parts) > 2 else "")
    if head == "jobs":
        kind = parts[1] if len(parts) > 1 else ""
        tail = "/{id}" if len(parts) > 2 else ""
        tail += f"/{parts[3]}" if len(parts) > 3 else ""
        return f"{method} jobs/{kind}{tail}"
    return f"{method} {head}"


def _method_not_allowed(method: str, allowed: str) -> Response:
    return _errors(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are {allowed}")


def _body(request: Request) -> Any:
    text = request.get_data(as_text=True)
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _same(given: Any, expected: str) -> bool:
    return secrets.compare_digest(str(given or "").encode(), str(expected).encode())


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _load_public_key(pem: str | bytes):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.encode() if isinstance(pem, str) else pem
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return load_pem_public_key(data)


def _verify_rs256(key, message: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _soap_fault(code: str, message: str, faultcode: str | None = None) -> Response:
    xml = ('<?xml version="1.0" encoding="UTF-8"?>'
           '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
           'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           f'<soapenv:Body><soapenv:Fault><faultcode>{faultcode or "sf:" + code}</faultcode>'
           f'<faultstring>{code}: {escape(message)}</faultstring><detail>'
           '<sf:LoginFault xsi:type="sf:LoginFault">'
           f'<sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{escape(message)}'
           '</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>')
    return Response(xml, status=500, content_type="text/xml; charset=utf-8")


# =============================================================================== server
class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # paging tests make thousands of requests
        pass


class SalesforceServer:
    """The emulator over HTTPS on a loopback port, in a daemon thread::

        with SalesforceServer(Org.from_book(Book(customers=300, invoices=1000))) as sf:
            session = requests.Session(); session.verify = sf.ca_file
            ...  # sf.url, sf.org, sf.app (control methods), SANDBOX_CREDENTIALS

    A trustme CA issues the certificate for 127.0.0.1 and localhost (and ``host``); its PEM is
    written to ``ca_file`` (a temporary file when not given, removed on stop).
    """

    def __init__(self, org: Org | Callable[[], Org] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 ca_file: str | os.PathLike | None = None, book: Book | None = None, seed: int = 7,
                 credentials: dict | None = None, api_budget: int = DEFAULT_API_BUDGET,
                 session_seconds: int = DEFAULT_SESSION_SECONDS, jwt_public_key: str | bytes | None = None,
                 quiet: bool = True):
        import trustme

        if org is None:
            org = Org.from_book(book if book is not None else Book(customers=300, invoices=1000, seed=seed),
                                seed=seed)
        self.app = SalesforceApp(org, credentials=credentials, api_budget=api_budget,
                                 session_seconds=session_seconds, jwt_public_key=jwt_public_key)
        self.credentials = self.app.credentials
        self.ca = trustme.CA(organization_name="arhub sandbox")
        names = ["127.0.0.1", "localhost"] + ([host] if host not in ("127.0.0.1", "localhost", "0.0.0.0") else [])
        cert = self.ca.issue_cert(*names)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        self._temp_ca = ca_file is None
        if ca_file is None:
            fd, ca_path = tempfile.mkstemp(prefix="arhub-sf-ca-", suffix=".pem")
            os.close(fd)
        else:
            ca_path = os.fspath(ca_file)
            os.makedirs(os.path.dirname(os.path.abspath(ca_path)), exist_ok=True)
        self.ca.cert_pem.write_to_path(ca_path)
        self.ca_file = ca_path
        try:
            self._server = make_server(host, port, self.app, threaded=True, ssl_context=context,
                                       request_handler=_QuietHandler if quiet else None)
        except SystemExit as exc:  # werkzeug exits the process when the port is taken; a library must not
            raise OSError(f"cannot listen on {host}:{port}: address already in use") from exc
        self._server.daemon_threads = True
        bound_port = self._server.server_address[1]
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"https://{url_host}:{bound_port}"
        self._thread: threading.Thread | None = None

    @property
    def org(self) -> Org:
        """The in-memory org (built now if it was given as a factory)."""
        return self.app.org

    # control shortcuts (the same as /_sandbox/)
    def set_faults(self, **settings) -> FaultSettings:
        return self.app.set_faults(**settings)

    def clear_faults(self) -> None:
        self.app.clear_faults()

    def expire_sessions(self) -> int:
        return self.app.expire_sessions()

    def set_budget(self, max: int | None = None, used: int | None = None) -> dict:  # noqa: A002
        return self.app.set_budget(max, used)

    def stats(self) -> dict:
        return self.app.get_stats()

    def reset_stats(self) -> None:
        self.app.reset_stats()

    def drop_field(self, obj: str, name: str) -> str:
        return self.org.drop_field(obj, name)

    def restore_field(self, obj: str, name: str) -> str:
        return self.org.restore_field(obj, name)

    def token(self, user_id: str | None = None) -> str:
        """A session for ``user_id`` (default: the integration user) without a login call."""
        return self.app.issue_token(user_id or self.org.api_user_id)

    def start(self) -> "SalesforceServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="salesforce-sandbox",
                                            daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
        if self._temp_ca:
            try:
                os.unlink(self.ca_file)
            except OSError:
                pass

    def __enter__(self) -> "SalesforceServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SalesforceServer({self.url!r})"
