"""``arhub salesforce add|check|metadata`` and ``arhub sync salesforce`` as real subprocesses, against
the NetSuite emulator and the Salesforce emulator (HTTPS, trustme CA), on SQLite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import pytest

from connectors.sandbox.book import Book
from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS as NS_CREDS
from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as SF_CREDS
from connectors.sandbox.salesforce import Org, SalesforceServer
from connectors.sandbox.server import SandboxServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "arhub-e2e-secret-key-not-for-production"
META_NS = "{http://soap.sforce.com/2006/04/metadata}"


def arhub(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The ERP emulators and a Salesforce org seeded from the same book, and one CLI installation
    whose ERP is synced and whose Salesforce source is added."""
    tmp = tmp_path_factory.mktemp("cli-sf")
    book = Book(120, 1200, seed=13, as_of=date(2026, 11, 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_DATABASE_URL=f"sqlite:///{tmp / 'arhub.db'}", ARHUB_VAR_DIR=str(tmp / "var"),
               ARHUB_SECRET_KEY=SECRET, ARHUB_ENV_FILE="", COLUMNS="160", PYTHONUNBUFFERED="1")
    with SandboxServer(book) as erp, SalesforceServer(Org.from_book(book, seed=3)) as org:
        creds = tmp / "ns.json"
        creds.write_text(json.dumps(NS_CREDS))
        done = arhub(env, "source", "add", "netsuite", "--preset", "netsuite-2023_2", "--endpoint",
                     erp.netsuite_url + "/services/NetSuitePort_2023_2", "--credentials-file", str(creds))
        assert done.returncode == 0, done.stdout + done.stderr
        done = arhub(env, "sync", "erp")
        assert done.returncode == 0, done.stdout + done.stderr
        sf_creds = tmp / "sf.json"
        sf_creds.write_text(json.dumps(SF_CREDS))
        done = arhub(env, "salesforce", "add", "org", "--login-url", org.url, "--ca-bundle", org.ca_file,
                     "--credentials-file", str(sf_creds))
        assert done.returncode == 0, done.stdout + done.stderr
        yield env, org, tmp


def test_add_stores_the_credentials_encrypted_and_never_prints_them(stack):
    """``arhub salesforce add`` confirms the connection without echoing any secret; the
    database holds the credentials only as a Fernet token."""
    env, org, tmp = stack
    done = arhub(env, "source", "list")
    assert "org" in done.stdout and "salesforce" in done.stdout
    raw = (tmp / "arhub.db").read_bytes()
    for secret in (SF_CREDS["password"], SF_CREDS["security_token"], SF_CREDS["client_secret"]):
        assert secret.encode() not in raw
        assert secret not in done.stdout + done.stderr


def test_check_passes_then_names_a_deleted_field_and_exits_1(stack):
    """``arhub salesforce check`` says every mapped field is writable; after an admin deletes a
    field it names object and field and exits 1."""
    env, org, _ = stack
    done = arhub(env, "salesforce", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok:" in done.stdout and "AR_Summary__c" in done.stdout
    org.drop_field("AR_Invoice__c", "PO_Number__c")
    try:
        done = arhub(env, "salesforce", "check")
        assert done.returncode == 1
        assert "AR_Invoice__c" in done.stdout and "PO_Number__c" in done.stdout and "does not exist" in done.stdout
    finally:
        org.restore_field("AR_Invoice__c", "PO_Number__c")


def test_sync_salesforce_pulls_links_and_pushes_then_sends_nothing_the_second_time(stack):
    """``arhub sync salesforce`` prints what it pulled, linked and pushed with the API calls
    spent; run again, it pushes nothing and says so."""
    env, org, _ = stack
    first = arhub(env, "sync", "salesforce")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "linked by external id" in first.stdout and "API calls" in first.stdout
    summaries = len(org.org.tables["AR_Summary__c"])
    assert summaries > 100
    second = arhub(env, "sync", "salesforce", "--push")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "summary: 0 sent" in second.stdout and "invoice: 0 sent" in second.stdout
    assert "0 API calls" in second.stdout
    assert len(org.org.tables["AR_Summary__c"]) == summaries


def test_metadata_writes_deployable_sfdx_source_for_every_mapped_field(stack):
    """``arhub salesforce metadata OUTDIR`` writes sfdx-project.json, the two custom objects with
    one field file per mapped custom field (external ids marked), and a permission set that
    grants edit on each of them."""
    env, _, tmp = stack
    out = tmp / "meta"
    done = arhub(env, "salesforce", "metadata", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "sfdx-project.json").read_text())["packageDirectories"][0]["path"] == "force-app"
    base = out / "force-app" / "main" / "default"
    import yaml

    preset = yaml.safe_load((ROOT / "connectors/presets/salesforce.yaml").read_text())
    perms = ET.parse(base / "permissionsets" / "ARHub_Write_Back.permissionset-meta.xml").getroot()
    granted = {p.findtext(f"{META_NS}field") for p in perms.iter(f"{META_NS}fieldPermissions")}
    for spec in preset["push"]["objects"].values():
        sobject = spec["object"]
        assert (base / "objects" / sobject / f"{sobject}.object-meta.xml").exists()
        for sf_field in spec["fields"]:
            if not sf_field.endswith("__c"):
                continue
            root = ET.parse(base / "objects" / sobject / "fields" / f"{sf_field}.field-meta.xml").getroot()
            assert root.findtext(f"{META_NS}fullName") == sf_field
            assert f"{sobject}.{sf_field}" in granted
            if sf_field == spec["external_id"]:
                assert root.findtext(f"{META_NS}externalId") == "true"
