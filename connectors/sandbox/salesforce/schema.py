"""The emulated org's identity and schema: its id and credentials, 18-character record ids,
:class:`FieldDef` and :class:`SObjectType` with the field helpers, the standard sObject types
(:func:`standard_types`) with their picklist values, and the Salesforce errors the org and the API
raise (:class:`SfError`, :class:`RecordError`, :class:`ApiError`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Iterable

from connectors.sandbox import soql
from connectors.sandbox.soql import id_checksum

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
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UPPER_BIT = {ch: int("A" <= ch <= "Z") for ch in _B62}
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


class _MultipleMatches(Exception):
    def __init__(self, ids: list[str]):
        super().__init__(f"{len(ids)} records match")
        self.ids = ids
