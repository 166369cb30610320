"""The console's field mappings: a sample fetched from the ERP sandbox by a real RQ job, the live
preview with per-field errors, audited saves, and the Salesforce push mapping checked against the
emulator's describe."""
from __future__ import annotations

import re

import pytest

from connectors.sandbox import xero
from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS, Org, SalesforceServer
from console import create_app
from jobs.queues import InlineWorker, get_queue, get_redis
from jobs.sync import load_preset
from middleware.models import AuditLog, FieldMapping, Source
from middleware.people import create_user
from middleware.sources import configure_salesforce, configure_source
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf



@pytest.fixture
def app(db, redis_url):
    create_user("ada@example.com", "Ada Admin", "admin", PASSWORD, actor="test")
    create_user("cole@example.com", "Cole Collector", "collector", PASSWORD, actor="test")
    create_user("vic@example.com", "Vic Viewer", "viewer", PASSWORD, actor="test")
    return create_app()


@pytest.fixture
def xero_source(db, sandbox):
    return configure_source("xero", load_preset("xero"), endpoint=sandbox.xero_url + "/api.xro/2.0",
                            credentials=dict(xero.SANDBOX_CREDENTIALS, token_url=sandbox.xero_url + "/connect/token"))


def login(app, email):
    client = app.test_client()
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}).status_code == 302
    return client


def run_jobs() -> None:
    """Drain the sync queue with a real RQ worker (in this process, burst mode)."""
    InlineWorker([get_queue("sync")], connection=get_redis()).work(burst=True)


def editor_form(html: str) -> dict:
    """The editor's form fields as a browser would post them (checked boxes only)."""
    form = html[html.index('id="mapping-form"'):html.index("</form>", html.index('id="mapping-form"'))]
    data = {}
    for tag in re.findall(r"<(?:input|select)[^>]*>", form):
        name = re.search(r'name="([^"]+)"', tag)
        if not name:
            continue
        if 'type="checkbox"' in tag:
            if " checked" in tag:
                data[name.group(1)] = "1"
            continue
        value = re.search(r'value="([^"]*)"', tag)
        data[name.group(1)] = value.group(1) if value else ""
    for name, options in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected>', options)
        data[name] = chosen.group(1) if chosen else "text"
    import html as htmllib
    return {k: htmllib.unescape(v) for k, v in data.items()}


def row_of(form: dict, field: str) -> str:
    return next(k.split("-", 1)[1] for k, v in form.items() if k.startswith("field-") and v == field)


def fetch_sample(client, source, object_name="invoice") -> str:
    page = client.get(f"/mappings/{source.id}/{object_name}/").get_data(as_text=True)
    resp = client.post(f"/mappings/{source.id}/{object_name}/fetch", data={"csrf_token": _csrf(page)})
    assert resp.status_code == 302
    job_id = re.search(r"job=([0-9a-f-]+)", resp.headers["Location"]).group(1)
    assert client.get(f"/mappings/job/{job_id}").get_json()["status"] == "queued"
    run_jobs()
    assert client.get(f"/mappings/job/{job_id}").get_json() == {"status": "finished", "done": True, "error": None}
    return client.get(f"/mappings/{source.id}/{object_name}/").get_data(as_text=True)


def test_a_sample_fetched_by_a_job_shows_the_mapped_invoice(app, xero_source, sandbox):
    """An admin fetches a sample invoice: an RQ job pulls it from the ERP, and the editor shows what the
    saved mapping makes of it (the invoice number and amount of that Xero invoice), with no error."""
    client = login(app, "ada@example.com")
    page = client.get(f"/mappings/{xero_source.id}/invoice/").get_data(as_text=True)
    assert "No sample fetched yet" in page
    page = fetch_sample(client, xero_source)
    number = re.search(r'data-testid="preview-number">([^<]*)<', page).group(1)
    assert number.startswith("INV-"), page
    truth = next(i for i in sandbox.book.invoices.values() if i.number == number)
    amount = re.search(r'data-testid="preview-amount">([^<]*)<', page).group(1)
    assert amount == format(truth.total, "f")
    assert 'data-testid="preview-verdict">valid' in page


def test_a_failed_sample_fetch_is_shown_and_keeps_the_old_sample(app, xero_source, sandbox):
    """When the ERP refuses the sample request (401), the job fails and the editor says why instead of
    waiting forever; the sample fetched before stays in use."""
    from connectors.sandbox.faults import Fault

    client = login(app, "ada@example.com")
    page = fetch_sample(client, xero_source)
    number = re.search(r'data-testid="preview-number">([^<]*)<', page).group(1)
    sandbox.faults.push(*[Fault(status=401, path="Invoices")] * 5)
    resp = client.post(f"/mappings/{xero_source.id}/invoice/fetch", data={"csrf_token": _csrf(page)})
    run_jobs()
    sandbox.faults.clear()
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert 'data-testid="job-failed"' in page and "Fetching the sample failed" in page
    assert "401" in page[page.index('data-testid="job-failed"'):][:400]
    assert re.search(r'data-testid="preview-number">([^<]*)<', page).group(1) == number


def test_the_preview_follows_the_draft_and_names_bad_paths_and_transforms(app, xero_source):
    """Changing a path in the draft changes the previewed value; a malformed path and a transform that
    cannot read the value are reported on their rows, and nothing is saved by previewing."""
    client = login(app, "ada@example.com")
    page = fetch_sample(client, xero_source)
    form = editor_form(page)
    number_row, amount_row, due_row = (row_of(form, f) for f in ("number", "amount", "due_date"))
    headers = {"X-Requested-With": "fetch"}
    url = f"/mappings/{xero_source.id}/invoice/preview"

    draft = dict(form, **{f"path-{number_row}": "InvoiceID"})
    data = client.post(url, data=draft, headers=headers).get_json()
    invoice_id = re.search(r'data-testid="preview-external_id">([^<]*)<', data["html"]).group(1)
    assert re.search(r'data-testid="preview-number">([^<]*)<', data["html"]).group(1) == invoice_id
    assert data["ok"] and data["row_errors"] == {}, data

    draft = dict(form, **{f"path-{due_row}": "DueDate[", f"transform-{amount_row}": "date"})
    data = client.post(url, data=draft, headers=headers).get_json()
    assert not data["ok"]
    assert "malformed" in " ".join(data["row_errors"][due_row]) or "unexpected" in " ".join(data["row_errors"][due_row])
    assert data["row_errors"][amount_row], data
    assert "preview-errors" in data["html"]

    draft = dict(form, **{f"args-{amount_row}": "{not json"})
    data = client.post(url, data=draft, headers=headers).get_json()
    assert "args are not JSON" in data["row_errors"][amount_row][0]

    # without JavaScript the Preview button posts the form and the page comes back with the preview
    page = client.post(url, data=dict(form, **{f"path-{number_row}": "InvoiceID"})).get_data(as_text=True)
    assert re.search(r'data-testid="preview-number">([^<]*)<', page).group(1) == invoice_id
    assert FieldMapping.get(FieldMapping.source == xero_source, FieldMapping.object_name == "invoice",
                            FieldMapping.canonical_field == "number").source_path == "InvoiceNumber"


def test_a_saved_change_is_used_and_audited_and_a_broken_one_is_refused(app, xero_source):
    """Saving a changed path updates the mapping row and writes an audit entry with the rows before and
    after; a row that cannot work (malformed path) is refused and changes nothing."""
    client = login(app, "ada@example.com")
    form = editor_form(client.get(f"/mappings/{xero_source.id}/invoice/").get_data(as_text=True))
    number_row = row_of(form, "number")
    resp = client.post(f"/mappings/{xero_source.id}/invoice/save",
                       data=dict(form, **{f"path-{number_row}": "Reference", f"field-{number_row}": "number"}))
    assert resp.status_code == 302
    row = FieldMapping.get(FieldMapping.source == xero_source, FieldMapping.object_name == "invoice",
                           FieldMapping.canonical_field == "number")
    assert row.source_path == "Reference"
    audit = AuditLog.get(AuditLog.object_type == "mapping")
    assert (audit.actor, audit.action, audit.object_id) == ("ada@example.com", "mapping.updated", "xero:invoice")
    assert {"field": "number", "path": "InvoiceNumber", "transform": "text", "args": {}, "default": None,
            "enabled": True} in audit.before
    assert {"field": "number", "path": "Reference", "transform": "text", "args": {}, "default": None,
            "enabled": True} in audit.after

    form = editor_form(client.get(f"/mappings/{xero_source.id}/invoice/").get_data(as_text=True))
    resp = client.post(f"/mappings/{xero_source.id}/invoice/save",
                       data=dict(form, **{f"path-{row_of(form, 'number')}": "Lines[x"}))
    assert resp.status_code == 400 and "Not saved" in resp.get_data(as_text=True)
    assert FieldMapping.get_by_id(FieldMapping.get(FieldMapping.canonical_field == "number",
                                                   FieldMapping.object_name == "invoice").id).source_path == "Reference"
    assert AuditLog.select().where(AuditLog.object_type == "mapping").count() == 1

    # a stale form (someone saved in between) is refused too
    resp = client.post(f"/mappings/{xero_source.id}/invoice/save", data=dict(form, **{"version": "stale"}))
    assert resp.status_code == 409


def test_collectors_and_viewers_read_but_may_not_change_mappings(app, xero_source):
    """A collector or a viewer sees the mapping, without save or fetch buttons, and gets 403 on every change."""
    admin_form = editor_form(login(app, "ada@example.com").get(f"/mappings/{xero_source.id}/invoice/")
                             .get_data(as_text=True))
    for email in ("cole@example.com", "vic@example.com"):
        client = login(app, email)
        page = client.get(f"/mappings/{xero_source.id}/invoice/").get_data(as_text=True)
        assert "InvoiceNumber" in page and "Save mapping" not in page and "Fetch a sample" not in page
        token = _csrf(page)
        assert client.post(f"/mappings/{xero_source.id}/invoice/save",
                           data=dict(admin_form, csrf_token=token)).status_code == 403
        assert client.post(f"/mappings/{xero_source.id}/invoice/fetch", data={"csrf_token": token}).status_code == 403
    assert not get_queue("sync").job_ids
    assert not AuditLog.select().where(AuditLog.object_type == "mapping").exists()


# -- the Salesforce push mapping ----------------------------------------------------------------


@pytest.fixture
def org_server(sandbox):
    with SalesforceServer(Org.from_book(sandbox.book, seed=5)) as server:
        yield server


@pytest.fixture
def sf_source(db, org_server):
    return configure_salesforce("salesforce", load_preset("salesforce"),
                                connection={"login_url": org_server.url, "ca_bundle": org_server.ca_file,
                                            "auth": "password"},
                                credentials=dict(SANDBOX_CREDENTIALS))


def sf_form(html: str) -> dict:
    form = html[html.index('id="sf-mapping-form"'):html.index("</form>", html.index('id="sf-mapping-form"'))]
    data = {name: value for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form)}
    for name, options in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected>', options)
        data[name] = chosen.group(1) if chosen else ""
    return {k: v for k, v in data.items() if not re.search(r"-delete-\d+$", k)}


def test_the_salesforce_mapping_is_checked_against_the_orgs_describe(app, sf_source, org_server):
    """The check, run by a job against the org, is ok for the preset; after an admin maps a field that the
    org does not have, and one the org deleted, the check names both fields and the change is audited."""
    client = login(app, "ada@example.com")
    page = client.get(f"/mappings/salesforce/{sf_source.id}/").get_data(as_text=True)
    assert "Not checked from the console yet" in page
    client.post(f"/mappings/salesforce/{sf_source.id}/check", data={"csrf_token": _csrf(page)})
    run_jobs()
    page = client.get(f"/mappings/salesforce/{sf_source.id}/").get_data(as_text=True)
    assert "ok: all" in page and "mapped fields exist and are writable" in page

    form = sf_form(page)
    blank = next(k for k, v in form.items() if re.fullmatch(r"summary-sf-\d+", k) and not v)
    n = blank.rsplit("-", 1)[1]
    form.update({blank: "Risk_Score__c", f"summary-canonical-{n}": "add_days"})
    assert client.post(f"/mappings/salesforce/{sf_source.id}/save", data=form).status_code == 302
    assert Source.get_by_id(sf_source.id).config["push"]["objects"]["summary"]["fields"]["Risk_Score__c"] == "add_days"
    audit = AuditLog.get(AuditLog.object_type == "mapping")
    assert audit.object_id == "salesforce:push" and "Risk_Score__c" in audit.after["summary"]["fields"]
    assert "Risk_Score__c" not in audit.before["summary"]["fields"]

    org_server.drop_field("AR_Summary__c", "Tags__c")
    client.post(f"/mappings/salesforce/{sf_source.id}/check", data={"csrf_token": _csrf(page)})
    run_jobs()
    page = client.get(f"/mappings/salesforce/{sf_source.id}/").get_data(as_text=True)
    result = page[page.index('data-testid="sf-check-result"'):]
    assert "Risk_Score__c" in result and "Tags__c" in result and "does not exist in the org" in result
    assert "ok: all" not in result


def test_a_bad_salesforce_mapping_is_refused_and_viewers_may_not_check(app, sf_source):
    """An unknown canonical value or an API name with spaces is refused without saving; a viewer gets 403
    on save and on check, and no job is queued."""
    client = login(app, "ada@example.com")
    page = client.get(f"/mappings/salesforce/{sf_source.id}/").get_data(as_text=True)
    form = sf_form(page)
    before = Source.get_by_id(sf_source.id).config["push"]
    resp = client.post(f"/mappings/salesforce/{sf_source.id}/save",
                       data=dict(form, **{"summary-sf-1": "Not A Name", "summary-canonical-2": "no_such_value"}))
    assert resp.status_code == 400
    body = resp.get_data(as_text=True)
    assert "is not a Salesforce field API name" in body and "unknown canonical field" in body
    assert Source.get_by_id(sf_source.id).config["push"] == before
    viewer = login(app, "vic@example.com")
    token = _csrf(viewer.get(f"/mappings/salesforce/{sf_source.id}/").get_data(as_text=True))
    assert viewer.post(f"/mappings/salesforce/{sf_source.id}/save", data=dict(form, csrf_token=token)).status_code == 403
    assert viewer.post(f"/mappings/salesforce/{sf_source.id}/check", data={"csrf_token": token}).status_code == 403
    assert not get_queue("sync").job_ids
