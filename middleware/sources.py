"""Sources: an ERP connection configured from a preset, with encrypted credentials.

A preset is data (YAML or JSON): ``kind``, ``connection``, ``objects`` (requests),
``lookups`` and ``fields``. ``configure_source`` stores everything but ``fields`` on
the ``Source`` and seeds ``FieldMapping`` rows from ``fields``; from then on the rows
are what counts, and admins edit them.
"""
from __future__ import annotations

from .db import database
from .mapping import FieldSpec
from .models import AuditLog, FieldMapping, Source, utcnow
from .secrets import decrypt_json, encrypt_json


class SourceError(ValueError):
    """A source that cannot be configured: names the preset key at fault."""


def preset_specs(preset: dict) -> dict[str, list[FieldSpec]]:
    out: dict[str, list[FieldSpec]] = {}
    for object_name, rows in (preset.get("fields") or {}).items():
        specs = []
        for n, row in enumerate(rows or []):
            if "field" not in row:
                raise SourceError(f"preset {preset.get('name')!r}: fields.{object_name}[{n}] has no 'field'")
            specs.append(FieldSpec(row["field"], row.get("path"), row.get("transform", "text"),
                                   dict(row.get("args") or {}), None if row.get("default") is None else str(row["default"])))
        out[object_name] = specs
    return out


def configure_source(name: str, preset: dict, *, endpoint: str | None = None, credentials: dict | None = None,
                     replace_mappings: bool = False, actor: str = "system") -> Source:
    kind = preset.get("kind")
    if kind not in ("soap", "rest"):
        raise SourceError(f"preset {preset.get('name')!r}: kind must be 'soap' or 'rest', not {kind!r}")
    for key in ("connection", "objects"):
        if not isinstance(preset.get(key), dict):
            raise SourceError(f"preset {preset.get('name')!r}: missing the {key!r} section")
    specs = preset_specs(preset)
    config = {k: v for k, v in preset.items() if k != "fields"}
    with database.atomic():
        source = Source.get_or_none(Source.name == name)
        created = source is None
        if created:
            source = Source(name=name, created_at=utcnow())
        source.kind, source.preset, source.config = kind, preset.get("name"), config
        source.endpoint = endpoint
        if credentials is not None:
            source.credentials_encrypted = encrypt_json(credentials)
        source.updated_at = utcnow()
        source.save()
        has_rows = FieldMapping.select().where(FieldMapping.source == source).exists()
        if replace_mappings or not has_rows:
            FieldMapping.delete().where(FieldMapping.source == source).execute()
            rows = [{"source": source.id, "object_name": obj, "canonical_field": s.canonical_field,
                     "source_path": s.source_path, "transform": s.transform, "args": s.args, "default": s.default,
                     "position": n} for obj, obj_specs in specs.items() for n, s in enumerate(obj_specs)]
            if rows:
                FieldMapping.insert_many(rows).execute()
        AuditLog.create(actor=actor, action="create" if created else "update", object_type="source",
                        object_id=name, after={"preset": preset.get("name"), "endpoint": endpoint,
                                               "credentials": "(changed)" if credentials is not None else "(kept)"})
    return source


def source_credentials(source: Source) -> dict:
    return decrypt_json(source.credentials_encrypted) if source.credentials_encrypted else {}


def configure_salesforce(name: str, preset: dict, *, connection: dict | None = None,
                         credentials: dict | None = None, actor: str = "system") -> Source:
    """Create or update a Salesforce source from ``preset`` (kind ``salesforce``).

    ``connection`` overrides the preset's connection keys (``login_url``, ``auth``,
    ``ca_bundle``, ``api_version``); the pull, tag, matching and push sections of an existing
    source are kept (admins may have edited them) unless it is new."""
    if preset.get("kind") != "salesforce":
        raise SourceError(f"preset {preset.get('name')!r}: kind must be 'salesforce', not {preset.get('kind')!r}")
    for key in ("connection", "pull", "push"):
        if not isinstance(preset.get(key), dict):
            raise SourceError(f"preset {preset.get('name')!r}: missing the {key!r} section")
    with database.atomic():
        source = Source.get_or_none(Source.name == name)
        created = source is None
        if created:
            source = Source(name=name, created_at=utcnow(), config=dict(preset))
        elif source.kind != "salesforce":
            raise SourceError(f"source {name!r} exists and is a {source.kind} source, not Salesforce")
        config = dict(source.config or preset)
        config["connection"] = {**preset["connection"], **(config.get("connection") or {}), **(connection or {})}
        source.kind, source.preset, source.config = "salesforce", preset.get("name"), config
        source.endpoint = config["connection"].get("login_url")
        if credentials is not None:
            source.credentials_encrypted = encrypt_json(credentials)
        source.updated_at = utcnow()
        source.save()
        AuditLog.create(actor=actor, action="create" if created else "update", object_type="source",
                        object_id=name, after={"preset": preset.get("name"), "connection": config["connection"],
                                               "credentials": "(changed)" if credentials is not None else "(kept)"})
    return source
