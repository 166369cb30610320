"""The templates console: an admin edits a template's subject and bodies, previews the draft for a
chosen customer in the sandbox (with and without JavaScript), sees template errors next to the
field instead of a 500, and every save is audited; only admins may edit or preview."""
from __future__ import annotations

import re

import pytest

from console import create_app
from middleware.people import create_user
from tests.integration.test_console_campaigns import build_book
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf


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


def _template(name="overdue-1", language="en"):
    from middleware.models import Template

    return Template.get(Template.name == name, Template.language == language)


def _preview(client, token, **draft):
    return client.post("/templates/preview", headers={"X-CSRFToken": token}, data=draft)


def test_the_list_shows_every_template_and_where_it_is_used(app, book):
    """The six seeded templates are listed with their language and how many steps use them."""
    client = _client(app, "vic@example.com")
    page = client.get("/templates/").get_data(as_text=True)
    for name in ("proactive-check-in", "pre-due-reminder", "overdue-1", "overdue-7", "overdue-14", "final-notice"):
        assert name in page
    assert "<td>en</td>" in page


def test_the_editor_previews_the_saved_template_for_a_chosen_customer(app, book):
    """Opening a template with a customer shows its subject and body rendered with that customer's
    invoice, amount formatted in its currency and billing contact."""
    client = _client(app)
    page = client.get(f"/templates/{_template().id}/edit?customer=CUST-3").get_data(as_text=True)
    text = re.search(r'data-testid="preview-text">(.*?)</pre>', page, re.S).group(1)
    assert "Hello Gamma GmbH AP," in text
    assert "INV-300: €1,234.50" in text
    subject = re.search(r'data-testid="preview-subject">(.*?)</span>', page, re.S).group(1)
    assert subject == "Your invoice just became due"


def test_live_preview_renders_the_draft_as_json(app, book):
    """The preview endpoint renders the unsaved draft (with the X-CSRFToken header) for the
    customer asked for, in the customer's currency format; nothing is saved."""
    client = _client(app)
    token = _csrf(client.get(f"/templates/{_template().id}/edit").get_data(as_text=True))
    resp = _preview(client, token, customer="Alpha Corp", language="en", subject="Hi {{ customer.name }}",
                    body_text="{% for t in totals %}{{ t.amount|money(t.currency) }}{% endfor %}"
                              " by {{ invoices[0].due_date|date }}",
                    body_html="<b>{{ customer.name }}</b> & co")
    assert resp.status_code == 200
    data = resp.get_json()
    assert data["subject"] == "Hi Alpha Corp"
    assert data["text"] == "$1,234.50 by Apr 1, 2026"
    assert data["html"] == "<b>Alpha Corp</b> & co"
    assert data["errors"] == {} and data["customer"]["number"] == "CUST-1"
    assert _template().subject == "Your {{ 'invoices' if invoices|length > 1 else 'invoice' }} just became due"


def test_a_sandbox_escape_attempt_is_refused_in_the_preview(app, book):
    """``{{ ''.__class__.__mro__ }}`` and an undefined variable come back as errors on their field
    (200, JSON); the other parts still render."""
    client = _client(app)
    token = _csrf(client.get(f"/templates/{_template().id}/edit").get_data(as_text=True))
    resp = _preview(client, token, customer="CUST-2", language="en", subject="{{ nope }}",
                    body_text="{{ ''.__class__.__mro__[1].__subclasses__() }}", body_html="<p>{{ customer.name }}</p>")
    assert resp.status_code == 200
    data = resp.get_json()
    assert data["text"] is None and data["subject"] is None
    assert "__class__" in data["errors"]["body_text"] and "unsafe" in data["errors"]["body_text"]
    assert "'nope' is undefined" in data["errors"]["subject"]
    assert data["html"] == "<p>Bravo Ltd</p>"


def test_the_preview_button_works_without_javascript(app, book):
    """Posting the form with action=preview re-renders the page with the draft's preview and the
    sandbox error next to the field, and saves nothing."""
    from middleware.models import AuditLog

    client = _client(app)
    template = _template()
    token = _csrf(client.get(f"/templates/{template.id}/edit").get_data(as_text=True))
    resp = client.post(f"/templates/{template.id}/edit", data={
        "csrf_token": token, "action": "preview", "customer": "CUST-1", "name": "overdue-1", "language": "en",
        "subject": "Draft for {{ customer.number }}", "body_text": "{{ ''.__class__ }}", "body_html": ""})
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert 'data-testid="preview-subject">Draft for CUST-1</span>' in page
    error = re.search(r'data-testid="error-body_text">(.*?)</div>', page, re.S).group(1)
    assert "access to attribute &#39;__class__&#39; of &#39;str&#39; object is unsafe" in error
    assert AuditLog.select().where(AuditLog.object_type == "template").count() == 0


def test_saving_an_edit_is_audited_and_a_syntax_error_is_refused(app, book):
    """A body with an unclosed tag is refused with the line; a good edit is saved with who and when,
    and the audit log keeps the body before and after."""
    from middleware.models import AuditLog

    client = _client(app, "ada@example.com")
    template = _template()
    old_body = template.body_text
    token = _csrf(client.get(f"/templates/{template.id}/edit").get_data(as_text=True))
    form = {"csrf_token": token, "action": "save", "name": "overdue-1", "language": "en",
            "subject": "Now due", "body_text": "Hello\n{% if pay_url %}pay", "body_html": ""}
    resp = client.post(f"/templates/{template.id}/edit", data=form)
    assert resp.status_code == 400
    error = re.search(r'data-testid="error-body_text">(.*?)</div>', resp.get_data(as_text=True), re.S).group(1)
    assert error.startswith("line 2:")
    assert _template().body_text == old_body

    form["body_text"] = "Hello {{ customer.name }}, please pay."
    assert client.post(f"/templates/{template.id}/edit", data=form).status_code == 302
    saved = _template()
    assert saved.subject == "Now due" and saved.updated_by == "ada@example.com"
    entry = AuditLog.get(AuditLog.action == "template.update")
    assert entry.actor == "ada@example.com" and entry.object_id == str(template.id)
    assert entry.before["body_text"] == old_body
    assert entry.after["body_text"] == "Hello {{ customer.name }}, please pay."


def test_a_new_template_in_another_language(app, book):
    """Creating overdue-1 in German is audited as template.create; a second German one is refused on language."""
    from middleware.models import AuditLog, Template

    client = _client(app)
    token = _csrf(client.get("/templates/new").get_data(as_text=True))
    form = {"csrf_token": token, "action": "save", "name": "overdue-1", "language": "de",
            "subject": "Fällig", "body_text": "Hallo {{ customer.name }}", "body_html": ""}
    assert client.post("/templates/new", data=form).status_code == 302
    assert Template.get(Template.name == "overdue-1", Template.language == "de").subject == "Fällig"
    assert AuditLog.get(AuditLog.action == "template.create").after["language"] == "de"
    resp = client.post("/templates/new", data=form)
    assert resp.status_code == 400
    assert "already has a &#39;de&#39; version" in resp.get_data(as_text=True)


@pytest.mark.parametrize("email", ["cora@acme.test", "vic@example.com"])
def test_collectors_and_viewers_cannot_edit_or_preview_templates(app, book, email):
    """They see the list; the editor, a save and the preview endpoint answer 403 and nothing changes."""
    client = _client(app, email)
    template = _template()
    page = client.get("/templates/").get_data(as_text=True)
    token = _csrf(page)
    assert client.get(f"/templates/{template.id}/edit").status_code == 403
    assert client.post(f"/templates/{template.id}/edit", data={
        "csrf_token": token, "action": "save", "name": "overdue-1", "language": "en", "subject": "x",
        "body_text": "y"}).status_code == 403
    assert _preview(client, token, customer="CUST-1", subject="x", body_text="y").status_code == 403
    assert _template().subject != "x"


def test_a_preview_without_the_csrf_token_is_refused(app, book):
    """The live preview is a POST like any other: no token, 400."""
    client = _client(app)
    assert client.post("/templates/preview", data={"subject": "x", "body_text": "y"}).status_code == 400
