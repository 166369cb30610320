"""The write-back schema: what each canonical AR field is, how it fits a Salesforce field,
and the checks and metadata that follow from it.

The push mapping (``source.config["push"]["objects"]``, from the preset, edited by admins)
maps Salesforce field → canonical field. :data:`CANONICAL` says what every canonical field
holds; :func:`check_mapping` compares the mapping with the org's ``describe`` and names every
missing, unwritable or incompatible field before anything is pushed; :func:`write_metadata`
writes the custom objects as deployable SFDX source (objects, fields, a permission set).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

COLLECTION_STATUSES = ("Current", "Overdue", "Paused", "Disputed", "Promised", "Credit")
INVOICE_STATUSES = ("Open", "Overdue", "Disputed", "Paid", "Void")


@dataclass(frozen=True)
class FieldKind:
    """A canonical field: its kind and the Salesforce field we create for it."""

    kind: str  # text | money | number | int | date | datetime | bool | reference | url | picklist
    label: str
    length: int = 0  # text: the longest value we write
    precision: int = 16
    scale: int = 2
    values: tuple[str, ...] = ()  # picklist
    reference_to: str = ""

    @property
    def sf_types(self) -> set[str]:
        """describe types a field of this kind may have."""
        return {"text": {"string", "textarea", "picklist", "email", "phone", "url"},
                "money": {"currency", "double"}, "number": {"double", "currency", "percent"},
                "int": {"double", "int"}, "date": {"date"}, "datetime": {"datetime"}, "bool": {"boolean"},
                "reference": {"reference"}, "url": {"url", "string"},
                "picklist": {"picklist", "string"}}[self.kind]


CANONICAL: dict[str, FieldKind] = {
    # summary (one per linked customer)
    "key": FieldKind("text", "arhub key", 64),
    "name": FieldKind("text", "Name", 80),
    "sf_account_id": FieldKind("reference", "Account", reference_to="Account"),
    "open_reporting": FieldKind("money", "Open balance"),
    "overdue_reporting": FieldKind("money", "Overdue balance"),
    "reporting_currency": FieldKind("text", "Reporting currency", 3),
    "billing_balance": FieldKind("number", "Billing-currency balance"),
    "billing_currency": FieldKind("text", "Billing currency", 3),
    "aging_current": FieldKind("money", "Current (not yet due)"),
    "aging_1_30": FieldKind("money", "1-30 days past due"),
    "aging_31_60": FieldKind("money", "31-60 days past due"),
    "aging_61_90": FieldKind("money", "61-90 days past due"),
    "aging_91_plus": FieldKind("money", "91+ days past due"),
    "oldest_overdue_days": FieldKind("int", "Oldest overdue (days)", precision=6, scale=0),
    "add_days": FieldKind("number", "Average days delinquent", precision=6, scale=1),
    "last_payment_date": FieldKind("date", "Last payment date"),
    "last_payment_amount": FieldKind("money", "Last payment amount"),
    "open_invoice_count": FieldKind("int", "Open invoices", precision=8, scale=0),
    "collection_status": FieldKind("picklist", "Collection status", 40, values=COLLECTION_STATUSES),
    "dunning_stage": FieldKind("text", "Dunning stage", 80),
    "paused": FieldKind("bool", "Dunning paused"),
    "paused_reason": FieldKind("text", "Paused because", 255),
    "promise_date": FieldKind("date", "Promise to pay"),
    "disputed": FieldKind("bool", "Disputed"),
    "collector": FieldKind("text", "Collector", 80),
    "tags": FieldKind("text", "Tags", 255),
    "console_url": FieldKind("url", "Open in arhub", 255),
    "synced_at": FieldKind("datetime", "Last synced at"),
    # invoice (one per open invoice of a linked customer)
    "number": FieldKind("text", "Invoice number", 80),
    "customer_key": FieldKind("text", "arhub customer key", 64),
    "issue_date": FieldKind("date", "Issue date"),
    "due_date": FieldKind("date", "Due date"),
    "currency": FieldKind("text", "Currency", 3),
    "amount": FieldKind("number", "Amount (billing currency)"),
    "open_amount": FieldKind("number", "Open amount (billing currency)"),
    # "open_reporting" (above) is on invoices too
    "days_overdue": FieldKind("int", "Days overdue", precision=6, scale=0),
    "status": FieldKind("picklist", "Status", 40, values=INVOICE_STATUSES),
    "po_number": FieldKind("text", "PO number", 80),
}
OBJECT_LABELS = {"summary": ("AR Summary", "AR Summaries"), "invoice": ("AR Invoice", "AR Invoices")}


@dataclass
class Problem:
    object: str
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.object}.{self.field}: {self.message}" if self.field else f"{self.object}: {self.message}"


def push_objects(config: dict) -> dict[str, dict]:
    """``{"summary": {"object", "external_id", "fields": {sf field: canonical}}, "invoice": {...}}``."""
    return (config.get("push") or {}).get("objects") or {}


def check_mapping(config: dict, describes: dict[str, dict | None]) -> list[Problem]:
    """Every reason the push mapping cannot be written to the org as described.

    ``describes`` maps sObject name → its describe result (None when the org has no such object)."""
    problems: list[Problem] = []
    for role, spec in push_objects(config).items():
        sobject = spec.get("object")
        described = describes.get(sobject)
        if described is None:
            problems.append(Problem(sobject or role, None, "no such object in the org (deploy `arhub salesforce "
                                                          "metadata` output first)"))
            continue
        fields = {f["name"]: f for f in described.get("fields", [])}
        ext = spec.get("external_id")
        ext_field = fields.get(ext)
        if ext_field is None:
            problems.append(Problem(sobject, ext, "the external-id field does not exist"))
        elif not ext_field.get("externalId"):
            problems.append(Problem(sobject, ext, "is not marked External ID: upserts cannot use it"))
        for sf_name, canonical in (spec.get("fields") or {}).items():
            kind = CANONICAL.get(canonical)
            if kind is None:
                problems.append(Problem(sobject, sf_name, f"maps to unknown canonical field {canonical!r} "
                                                          f"(known: {', '.join(sorted(CANONICAL))})"))
                continue
            field = fields.get(sf_name)
            if field is None:
                problems.append(Problem(sobject, sf_name, "does not exist in the org (deleted, renamed, or not deployed)"))
                continue
            if not field.get("createable") or not field.get("updateable"):
                problems.append(Problem(sobject, sf_name, "is not createable and updateable for the integration user "
                                                          "(field-level security or a formula field)"))
            sf_type = field.get("type")
            if sf_type not in kind.sf_types:
                problems.append(Problem(sobject, sf_name, f"is {sf_type}, cannot hold {canonical} ({kind.kind})"))
                continue
            if kind.kind in ("text", "url", "picklist") and sf_type not in ("picklist",) \
                    and field.get("length") and kind.length and field["length"] < kind.length:
                problems.append(Problem(sobject, sf_name, f"length {field['length']} < {kind.length} needed for "
                                                          f"{canonical}: values would be cut"))
            if kind.kind in ("money", "number", "int") and field.get("precision"):
                whole = int(field["precision"]) - int(field.get("scale") or 0)
                needed = kind.precision - kind.scale
                if whole < needed:
                    problems.append(Problem(sobject, sf_name, f"holds {whole} integer digits, {canonical} "
                                                              f"needs {needed}"))
            if sf_type == "picklist" and kind.values:
                allowed = {v.get("value") for v in field.get("picklistValues", []) if v.get("active", True)}
                missing = [v for v in kind.values if v not in allowed]
                if missing and field.get("restrictedPicklist", True):
                    problems.append(Problem(sobject, sf_name, f"picklist lacks value(s) {', '.join(missing)}"))
            if kind.kind == "reference" and kind.reference_to not in (field.get("referenceTo") or []):
                problems.append(Problem(sobject, sf_name, f"does not look up {kind.reference_to}"))
    return problems


def sf_value(value: Any, field: dict | None) -> Any:
    """A canonical value as Salesforce takes it: decimals to the field's scale (half up) as exact
    strings, dates ISO, datetimes ``...T...+0000``, text cut to the field's length. A number
    with more integer digits than the field holds (e.g. days delinquent of a customer whose
    period sales are a few cents) is sent empty: Salesforce would reject the whole record."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (Decimal, int)) and (field or {}).get("precision"):
        whole = int(field["precision"]) - int(field.get("scale") or 0)
        if abs(value) >= Decimal(10) ** whole:
            return None
    if isinstance(value, Decimal):
        scale = int((field or {}).get("scale") if (field or {}).get("scale") is not None else 2)
        return str(value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP))
    if hasattr(value, "strftime") and hasattr(value, "hour"):
        return value.strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, int):
        return value
    text = str(value)
    length = (field or {}).get("length")
    if length and (field or {}).get("type") in ("string", "textarea", "url") and len(text) > length:
        text = text[:length]
    return text


# ------------------------------------------------------------------------- metadata
_META_NS = "http://soap.sforce.com/2006/04/metadata"


def _field_xml(sf_name: str, kind: FieldKind, sobject: str, plural: str, external_id: bool) -> str:
    parts = [f"<fullName>{escape(sf_name)}</fullName>", f"<label>{escape(kind.label)}</label>"]
    if external_id:
        parts += ["<externalId>true</externalId>", "<unique>true</unique>", "<caseSensitive>false</caseSensitive>",
                  "<required>false</required>", f"<length>{kind.length or 64}</length>", "<type>Text</type>"]
    elif kind.kind in ("text",):
        parts += [f"<length>{kind.length or 255}</length>", "<required>false</required>", "<type>Text</type>"]
    elif kind.kind == "url":
        parts += ["<required>false</required>", "<type>Url</type>"]
    elif kind.kind == "money":
        parts += [f"<precision>{kind.precision}</precision>", f"<scale>{kind.scale}</scale>",
                  "<required>false</required>", "<type>Currency</type>"]
    elif kind.kind in ("number", "int"):
        parts += [f"<precision>{kind.precision}</precision>", f"<scale>{kind.scale}</scale>",
                  "<required>false</required>", "<type>Number</type>"]
    elif kind.kind == "date":
        parts += ["<required>false</required>", "<type>Date</type>"]
    elif kind.kind == "datetime":
        parts += ["<required>false</required>", "<type>DateTime</type>"]
    elif kind.kind == "bool":
        parts += ["<defaultValue>false</defaultValue>", "<type>Checkbox</type>"]
    elif kind.kind == "reference":
        # the child relationship as the parent's related list sees it: Account → "AR Summaries"
        parts += [f"<referenceTo>{kind.reference_to}</referenceTo>", "<deleteConstraint>SetNull</deleteConstraint>",
                  f"<relationshipLabel>{escape(plural)}</relationshipLabel>",
                  f"<relationshipName>{escape(plural.replace(' ', '_'))}</relationshipName>",
                  "<required>false</required>", "<type>Lookup</type>"]
    elif kind.kind == "picklist":
        values = "".join(f"<value><fullName>{escape(v)}</fullName><default>false</default><label>{escape(v)}</label>"
                         "</value>" for v in kind.values)
        parts += ["<required>false</required>", "<type>Picklist</type>",
                  f"<valueSet><restricted>true</restricted><valueSetDefinition><sorted>false</sorted>{values}"
                  "</valueSetDefinition></valueSet>"]
    body = "\n    ".join(parts)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<CustomField xmlns="{_META_NS}">\n    {body}\n'
            "</CustomField>\n")


def write_metadata(config: dict, outdir: str | Path, *, permission_set: str = "ARHub_Write_Back") -> list[Path]:
    """SFDX source for the push objects under ``outdir``: ``sfdx-project.json``,
    ``force-app/main/default/objects/<Object>/<Object>.object-meta.xml`` and ``fields/*``, and a
    permission set granting the integration user read/edit on every field. Deploy with
    ``sf project deploy start --source-dir force-app``."""
    root = Path(outdir)
    base = root / "force-app" / "main" / "default"
    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)

    write(root / "sfdx-project.json", json.dumps({
        "packageDirectories": [{"path": "force-app", "default": True}], "name": "arhub-write-back",
        "namespace": "", "sourceApiVersion": str((config.get("connection") or {}).get("api_version", "59.0"))},
        indent=2) + "\n")
    field_perms, object_perms = [], []
    for role, spec in push_objects(config).items():
        sobject = spec["object"]
        label, plural = OBJECT_LABELS.get(role, (sobject.replace("__c", "").replace("_", " "),) * 2)
        write(base / "objects" / sobject / f"{sobject}.object-meta.xml",
              f'<?xml version="1.0" encoding="UTF-8"?>\n<CustomObject xmlns="{_META_NS}">\n'
              f"    <deploymentStatus>Deployed</deploymentStatus>\n    <label>{escape(label)}</label>\n"
              f"    <pluralLabel>{escape(plural)}</pluralLabel>\n"
              "    <nameField><label>Name</label><type>Text</type></nameField>\n"
              "    <sharingModel>ReadWrite</sharingModel>\n    <enableReports>true</enableReports>\n"
              "    <enableSearch>true</enableSearch>\n</CustomObject>\n")
        object_perms.append(f"<objectPermissions><allowCreate>true</allowCreate><allowDelete>false</allowDelete>"
                            f"<allowEdit>true</allowEdit><allowRead>true</allowRead><modifyAllRecords>false"
                            f"</modifyAllRecords><object>{sobject}</object><viewAllRecords>true</viewAllRecords>"
                            "</objectPermissions>")
        for sf_name, canonical in (spec.get("fields") or {}).items():
            if sf_name == "Name" or not sf_name.endswith("__c"):
                continue  # standard fields exist already
            kind = CANONICAL[canonical]
            write(base / "objects" / sobject / "fields" / f"{sf_name}.field-meta.xml",
                  _field_xml(sf_name, kind, sobject, plural, sf_name == spec.get("external_id")))
            field_perms.append(f"<fieldPermissions><editable>true</editable><field>{sobject}.{sf_name}</field>"
                               "<readable>true</readable></fieldPermissions>")
    write(base / "permissionsets" / f"{permission_set}.permissionset-meta.xml",
          f'<?xml version="1.0" encoding="UTF-8"?>\n<PermissionSet xmlns="{_META_NS}">\n'
          f"    <label>arhub write-back</label>\n    <description>Lets the arhub integration user write AR "
          "status; give reps read access with a copy without edit rights.</description>\n"
          + "".join(f"    {p}\n" for p in field_perms + object_perms) + "</PermissionSet>\n")
    return written
