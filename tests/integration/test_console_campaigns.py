"""The campaigns console: an admin builds a campaign (steps inline, audience, variants) through
the form, sees field-named errors for bad input, previews who gets what on a date and why,
queues a test send to themself, reads outcomes per variant; every change is audited; collectors
and viewers cannot edit. Test client against SQLite and PostgreSQL, with a small hand-built book.
"""
from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal

import pytest

from console import create_app
from middleware.people import create_user
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf

DUE = date(2026, 4, 1)  # a Wednesday
DAY_AFTER = date(2026, 4, 2)  # Thursday: "due + 1"


def build_book() -> dict:
    """Acme Cloud (Mon-Fri, Berlin) with the seeded Default campaign and templates, and three
    customers with one invoice due 1 April 2026: Alpha Corp (USD, ARR 150,000), Bravo Ltd (USD,
    ARR 20,000) and Gamma GmbH (EUR, Germany)."""
    from middleware.dunning import seed_default_campaign
    from middleware.models import Company, Contact, Customer, Invoice, Source

    Company.create(name="Acme Cloud", timezone="Europe/Berlin", business_days="Mon,Tue,Wed,Thu,Fri",
                   holidays=["2026-04-03"])
    seed_default_campaign()
    source = Source.create(name="erp", kind="rest", config={})
    out = {}
    for n, (name, currency, arr, country) in enumerate(
            [("Alpha Corp", "USD", "150000", "US"), ("Bravo Ltd", "USD", "20000", "US"),
             ("Gamma GmbH", "EUR", "50000", "DE")], 1):
        slug = name.split()[0].lower()
        c = Customer.create(source=source, external_id=f"C{n}", number=f"CUST-{n}", name=name,
                            billing_currency=currency, content_hash="x" * 32, collector="cora@acme.test",
                            arr=Decimal(arr), country=country)
        Contact.create(source=source, external_id=f"C{n}:billing", customer=c, customer_external_id=c.external_id,
                       name=f"{name} AP", email=f"ap@{slug}.test", role="billing", content_hash="x" * 32)
        Invoice.create(source=source, external_id=f"I{n}", number=f"INV-{n}00", customer=c,
                       customer_external_id=c.external_id, currency=currency, amount=Decimal("1234.50"),
                       open_amount=Decimal("1234.50"), open_amount_reporting=Decimal("1234.50"),
                       content_hash="x" * 32, issue_date=DUE - timedelta(days=30),
                       sent_date=DUE - timedelta(days=30), due_date=DUE)
        out[slug] = c
    return out


def three_step_form(token: str, **overrides) -> dict:
    """The editor's fields for "US customers": three steps, an approval for ARR ≥ 100,000 on the second."""
    form = {
        "csrf_token": token, "step_rows": "3", "variant_rows": "1",
        "name": "US customers", "priority": "10", "enabled": "y", "holdout_percent": "0",
        "description": "USD accounts", "audience.currencies": "usd", "audience.arr_gte": "10000",
        "variants.0.name": "", "variants.0.weight": "1",
        "steps.0.name": "pre-due", "steps.0.anchor": "due", "steps.0.offset_days": "-6",
        "steps.0.template": "pre-due-reminder", "steps.0.channel": "email", "steps.0.recipient_role": "billing",
        "steps.0.window_start": "09:00", "steps.0.window_end": "17:00", "steps.0.approval_mode": "none",
        "steps.1.name": "day after due", "steps.1.anchor": "due", "steps.1.offset_days": "1",
        "steps.1.template": "overdue-1", "steps.1.channel": "email", "steps.1.recipient_role": "billing",
        "steps.1.window_start": "09:00", "steps.1.window_end": "17:00", "steps.1.approval_mode": "arr",
        "steps.1.approval_value": "100000", "steps.1.approval_expires": "2",
        "steps.2.name": "final", "steps.2.anchor": "due", "steps.2.offset_days": "30",
        "steps.2.business_days": "y", "steps.2.template": "final-notice", "steps.2.channel": "email",
        "steps.2.recipient_role": "escalation", "steps.2.cc_collector": "y", "steps.2.attach_statement": "y",
        "steps.2.window_start": "10:00", "steps.2.window_end": "16:00", "steps.2.approval_mode": "none",
    }
    form.update(overrides)
    return form


@pytest.fixture
def app(db, redis_url):
    create_user("ada@example.com", "Ada Admin", "admin", PASSWORD, actor="test")
    create_user("cora@acme.test", "Cora Collector", "collector", PASSWORD, actor="test")
    create_user("vic@example.com", "Vic Viewer", "viewer", PASSWORD, actor="test")
    return create_app()


@pytest.fixture
def book(app):
    return build_book()


def _client(app, email="ada@example.com"):
    client = app.test_client()
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}).status_code == 302
    return client


def _create(client, **overrides):
    token = _csrf(client.get("/campaigns/new").get_data(as_text=True))
    return client.post("/campaigns/new", data=three_step_form(token, **overrides))


def test_an_admin_creates_a_three_step_campaign_through_the_form(app, book):
    """The form saves the campaign, its audience (currencies upper-cased, the ARR floor), its three
    steps in order with anchors, offsets, windows, recipients, statement and approval; the list shows it."""
    from middleware.models import Campaign, CampaignStep

    client = _client(app)
    resp = _create(client)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    campaign = Campaign.get(Campaign.name == "US customers")
    assert campaign.priority == 10 and campaign.enabled
    assert campaign.audience == {"currencies": ["USD"], "arr_gte": "10000"}
    steps = list(CampaignStep.select().where(CampaignStep.campaign == campaign).order_by(CampaignStep.position))
    assert [(s.position, s.name, s.anchor, s.offset_days, s.template) for s in steps] == [
        (1, "pre-due", "due", -6, "pre-due-reminder"), (2, "day after due", "due", 1, "overdue-1"),
        (3, "final", "due", 30, "final-notice")]
    assert steps[1].approval == {"arr_gte": "100000", "expires_days": 2}
    assert steps[0].approval is None
    final = steps[2]
    assert (final.business_days, final.recipient_role, final.cc_collector, final.attach_statement,
            final.window_start, final.window_end) == (True, "escalation", True, True, "10:00", "16:00")
    listing = client.get("/campaigns/").get_data(as_text=True)
    assert "US customers" in listing and "ARR ≥ 10000 · currency USD" in listing


def test_an_audience_limited_to_an_erp_source_is_saved_and_listed(app, book):
    """The editor takes an ERP-source condition (two ERPs serving the same customers); the list
    shows it in words instead of failing."""
    from middleware.models import Campaign

    client = _client(app)
    assert _create(client, **{"audience.sources": "erp"}).status_code == 302
    assert Campaign.get(Campaign.name == "US customers").audience["sources"] == ["erp"]
    listing = client.get("/campaigns/")
    assert listing.status_code == 200 and "ERP source erp" in listing.get_data(as_text=True)


def test_invalid_input_is_refused_with_errors_that_name_the_field(app, book):
    """A bad offset, an unknown template, a window ending before it starts, an unknown variant
    and malformed approval JSON each come back next to their field; nothing is saved."""
    from middleware.models import AuditLog, Campaign

    client = _client(app)
    resp = _create(client, **{"steps.0.offset_days": "six", "steps.1.template": "no-such-template",
                              "steps.2.window_end": "08:00", "steps.2.variant": "B",
                              "steps.1.approval_mode": "json", "steps.1.approval_value": "{arr_gte: 1",
                              "priority": ""})
    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    errors = dict(re.findall(r'data-error-for="([^"]+)">([^<]+)<', page))
    assert errors["steps.0.offset_days"] == "must be a whole number, got &#39;six&#39;"
    assert "no template is called" in errors["steps.1.template"]
    assert errors["steps.2.window_end"] == "must be after the window&#39;s start"
    assert "no variant" in errors["steps.2.variant"]
    assert "not valid JSON" in errors["steps.1.approval"]
    assert errors["priority"] == "required"
    # the rows come back as typed
    assert 'value="six"' in page and "no-such-template" in page
    assert Campaign.get_or_none(Campaign.name == "US customers") is None
    assert AuditLog.select().where(AuditLog.object_type == "campaign").count() == 0


def test_an_unknown_audience_value_is_refused_by_the_middleware_validator(app, book):
    """An ARR bound that is not a number and a maximum under the minimum are named by condition."""
    client = _client(app)
    resp = _create(client, **{"audience.arr_gte": "lots", "audience.balance_gte": "500",
                              "audience.balance_lte": "100"})
    assert resp.status_code == 400
    errors = dict(re.findall(r'data-error-for="([^"]+)">([^<]+)<', resp.get_data(as_text=True)))
    assert "arr_gte must be a number" in errors["audience.arr_gte"]
    assert "below the minimum" in errors["audience.balance_lte"]


def test_preview_lists_who_gets_which_step_on_a_date_and_why(app, book):
    """On Thursday 2 April (due + 1) the new campaign's preview lists Alpha (ARR 150,000: waits for
    approval, with the reason) and Bravo (planned, to its billing contact), not Gamma (EUR: in the
    Default campaign); on Saturday it says nothing is planned; explaining Gamma says why."""
    client = _client(app)
    assert _create(client).status_code == 302
    from middleware.models import Campaign

    cid = Campaign.get(Campaign.name == "US customers").id
    page = client.get(f"/campaigns/{cid}/preview?date={DAY_AFTER.isoformat()}").get_data(as_text=True)
    rows = re.findall(r'<tr data-testid="preview-row">(.*?)</tr>', page, re.S)
    text = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", r)).strip() for r in rows]
    assert len(text) == 2, text
    alpha, bravo = text
    assert alpha.startswith("Alpha Corp day after due") and "pending_approval" in alpha
    assert "needs approval: ARR 150000 ≥ 100000" in alpha and "INV-100" in alpha
    assert bravo.startswith("Bravo Ltd day after due") and " planned " in bravo and "ap@bravo.test" in bravo
    assert "Gamma GmbH" not in page.split('id="explain"')[0]
    weekend = client.get(f"/campaigns/{cid}/preview?date=2026-04-04").get_data(as_text=True)
    assert 'data-testid="not-sending-day"' in weekend
    why = client.get(f"/campaigns/{cid}/preview?date={DAY_AFTER.isoformat()}&customer=CUST-3").get_data(as_text=True)
    explanation = re.search(r'data-testid="explanation">(.*?)</pre>', why, re.S).group(1)
    assert "campaign &#39;US customers&#39; (priority 10): does not match" in explanation
    assert "currencies: EUR (wanted one of [USD]) → no" in explanation
    assert "→ campaign &#39;Default&#39;" in explanation


def test_preview_pages_and_filters_by_status(app, book):
    """Only pending approvals when filtered so; the page count follows the rows."""
    client = _client(app)
    assert _create(client).status_code == 302
    from middleware.models import Campaign

    cid = Campaign.get(Campaign.name == "US customers").id
    page = client.get(f"/campaigns/{cid}/preview?date={DAY_AFTER}&status=pending_approval").get_data(as_text=True)
    assert page.count('data-testid="preview-row"') == 1 and "Alpha Corp" in page and "Bravo Ltd" not in page


def test_edits_and_deletes_are_audited_with_before_and_after(app, book):
    """Creating writes campaign.create with the whole campaign after; an edit that removes a step
    and adds a variant writes campaign.update with both versions; deleting writes campaign.delete."""
    from middleware.dunning.editing import campaign_snapshot
    from middleware.models import AuditLog, Campaign, CampaignStep

    client = _client(app)
    assert _create(client).status_code == 302
    campaign = Campaign.get(Campaign.name == "US customers")
    created = AuditLog.get(AuditLog.action == "campaign.create")
    assert created.actor == "ada@example.com" and created.before is None
    assert [s["name"] for s in created.after["steps"]] == ["pre-due", "day after due", "final"]

    edit = client.get(f"/campaigns/{campaign.id}/edit").get_data(as_text=True)
    snapshot = campaign_snapshot(campaign.id)
    steps = snapshot["steps"]
    form = three_step_form(_csrf(edit), **{"step_rows": "4", "variant_rows": "1", "priority": "20",
                                           "variants.0.name": "gentle", "variants.0.weight": "3",
                                           "steps.0.delete": "y", "steps.3.name": ""})
    for i, s in enumerate(steps):
        form[f"steps.{i}.id"] = str(s["id"])
    form["steps.2.variant"] = "gentle"
    resp = client.post(f"/campaigns/{campaign.id}/edit", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:3000]
    remaining = list(CampaignStep.select().where(CampaignStep.campaign == campaign).order_by(CampaignStep.position))
    assert [(s.id, s.position, s.name) for s in remaining] == [(steps[1]["id"], 1, "day after due"),
                                                               (steps[2]["id"], 2, "final")]
    assert remaining[1].variant.name == "gentle"
    updated = AuditLog.get(AuditLog.action == "campaign.update")
    assert updated.before["priority"] == 10 and updated.after["priority"] == 20
    assert len(updated.before["steps"]) == 3 and len(updated.after["steps"]) == 2
    assert updated.after["variants"][0]["name"] == "gentle"

    token = _csrf(client.get(f"/campaigns/{campaign.id}/edit").get_data(as_text=True))
    assert client.post(f"/campaigns/{campaign.id}/delete", data={"csrf_token": token}).status_code == 302
    deleted = AuditLog.get(AuditLog.action == "campaign.delete")
    assert deleted.after is None and deleted.before["name"] == "US customers"
    assert Campaign.get_or_none(Campaign.id == campaign.id) is None


@pytest.mark.parametrize("email", ["cora@acme.test", "vic@example.com"])
def test_collectors_and_viewers_see_campaigns_but_cannot_edit_them(app, book, email):
    """The list and the preview open for them; the editor, a forged save and a delete answer 403."""
    from middleware.models import Campaign

    default = Campaign.get(Campaign.name == "Default")
    client = _client(app, email)
    assert client.get("/campaigns/").status_code == 200
    assert client.get(f"/campaigns/{default.id}/preview?date={DAY_AFTER}").status_code == 200
    assert client.get("/campaigns/new").status_code == 403
    assert client.get(f"/campaigns/{default.id}/edit").status_code == 403
    token = _csrf(client.get("/campaigns/").get_data(as_text=True))
    assert client.post("/campaigns/new", data=three_step_form(token)).status_code == 403
    assert client.post(f"/campaigns/{default.id}/delete", data={"csrf_token": token}).status_code == 403
    assert Campaign.select().count() == 1


def test_test_send_queues_a_job_for_the_signed_in_user(app, book, redis_url):
    """"Test send to me" on a preview row enqueues send_test_email on the dunning queue with the
    step's template, the customer and the signed-in user's address, and says it was queued; a
    viewer may not."""
    from jobs.queues import get_queue
    from middleware.models import Campaign

    default = Campaign.get(Campaign.name == "Default")
    client = _client(app, "cora@acme.test")
    page = client.get(f"/campaigns/{default.id}/preview?date={DAY_AFTER}").get_data(as_text=True)
    assert "Test send to me" in page
    resp = client.post(f"/campaigns/{default.id}/test-send", follow_redirects=True, data={
        "csrf_token": _csrf(page), "customer": "CUST-3", "template": "overdue-1"})
    assert resp.status_code == 200
    queue = get_queue("dunning")
    jobs = queue.get_jobs()
    assert len(jobs) == 1
    job = jobs[0]
    assert job.func_name == "jobs.dunning.send_test_email"
    assert job.args == ("overdue-1", "en", "cora@acme.test", book["gamma"].id)
    assert f"queued to cora@acme.test (job {job.id} on the dunning queue)" in resp.get_data(as_text=True)

    viewer = _client(app, "vic@example.com")
    token = _csrf(viewer.get("/campaigns/").get_data(as_text=True))
    assert viewer.post(f"/campaigns/{default.id}/test-send", data={
        "csrf_token": token, "customer": "CUST-3", "template": "overdue-1"}).status_code == 403
    assert len(queue.get_jobs()) == 1


def test_outcomes_per_variant_with_confidence_intervals(app, book):
    """After planning with two variants, the outcomes page has one row per variant with customers,
    invoices and the share paid (an interval when there is data)."""
    from middleware.dunning import plan
    from middleware.models import Application, Campaign, CampaignStep, CampaignVariant, Invoice

    campaign = Campaign.create(name="AB", priority=5, audience={"currencies": ["USD"]})
    a = CampaignVariant.create(campaign=campaign, name="A", weight=1)
    CampaignVariant.create(campaign=campaign, name="B", weight=1)
    CampaignStep.create(campaign=campaign, position=1, name="d+1", anchor="due", offset_days=1, template="overdue-1")
    plan(DAY_AFTER)
    invoice = Invoice.get(Invoice.number == "INV-100")
    Application.create(source=invoice.source_id, doc_kind="payment", doc_external_id="P1",
                       invoice_external_id=invoice.external_id, invoice=invoice, amount=invoice.amount,
                       date=DUE + timedelta(days=3))
    client = _client(app, "vic@example.com")
    page = client.get(f"/campaigns/{campaign.id}/outcomes?as_of=2026-05-01&within=5").get_data(as_text=True)
    table = re.search(r'data-testid="outcomes">(.*?)</table>', page, re.S).group(1)
    groups = re.findall(r"<tr><td>([^<]+)</td>", table)
    assert set(groups) <= {"A", "B"} and groups, groups
    assert "Paid within 5 days of due" in page
    assert " %" in table  # a share with its interval
    assert a.id


def test_renaming_variants_keeps_their_ids_and_a_removed_variant_in_use_is_refused(app, book):
    """Swapping two variants' names in one save keeps each variant (and the steps on it); removing
    a variant that a step still names is refused on that step's variant field."""
    from middleware.dunning.editing import CampaignInvalid, campaign_snapshot, save_campaign
    from middleware.models import CampaignStep

    data = {"name": "AB", "priority": 5, "audience": {}, "variants": [{"name": "A", "weight": 1},
                                                                       {"name": "B", "weight": 2}],
            "steps": [{"name": "s1", "anchor": "due", "offset_days": 1, "template": "overdue-1", "variant": "A"}]}
    campaign = save_campaign(data, actor="test")
    snap = campaign_snapshot(campaign.id)
    a, b = snap["variants"]
    step = snap["steps"][0]
    swapped = {**data, "variants": [{"id": a["id"], "name": "B", "weight": 1},
                                    {"id": b["id"], "name": "A", "weight": 2}],
               "steps": [{**data["steps"][0], "id": step["id"], "variant": "B"}]}
    save_campaign(swapped, campaign_id=campaign.id, actor="test")
    after = campaign_snapshot(campaign.id)
    assert [(v["id"], v["name"]) for v in after["variants"]] == [(a["id"], "B"), (b["id"], "A")]
    assert CampaignStep.get_by_id(step["id"]).variant_id == a["id"]
    with pytest.raises(CampaignInvalid) as refused:
        save_campaign({**swapped, "variants": [swapped["variants"][1]]}, campaign_id=campaign.id, actor="test")
    assert refused.value.errors == {"steps.0.variant": "no variant 'B' in this campaign"}
