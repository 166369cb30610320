"""Email templates: the list, an editor per name and language with a live preview rendered for a
chosen customer in Jinja2's sandbox, and a test send of the saved version to the signed-in user.

The preview is ``middleware.dunning.editing.preview_template`` (the dunning template context
of ``template_context``, rendered by ``middleware.templating.render_string``): an unknown
variable or a forbidden attribute (``{{ ''.__class__ }}``) comes back as an error next to the
field, never a 500. ``console/static/template-preview.js`` posts the draft (header
``X-CSRFToken``) to ``/templates/preview`` as you type; without JavaScript the Preview button
does the same with a full page. Saving is ``save_template`` (validated, audited). Everything
here needs ``manage`` except the list (``view``) and the test send (``work``).
"""
from __future__ import annotations

from flask import abort, flash, jsonify, redirect, request, url_for
from flask_admin import expose
from flask_login import current_user

from console.auth import can
from console.views.base import SecureView

MENU_ORDER = 31
FIELDS = ("name", "language", "subject", "body_text", "body_html")


def _forbid(permission: str) -> None:
    if not can(permission):
        abort(403, description=f"Your role ({current_user.role}) may not do this: it needs the "
                               f"'{permission}' permission.")


def _draft(form) -> dict:
    return {key: form.get(key, "") for key in FIELDS}


def _render_preview(draft: dict, customer_ref: str) -> tuple[dict, object]:
    """``(preview dict, customer)``; the preview carries ``errors`` keyed by field."""
    from middleware.dunning.editing import find_customer, preview_template
    from middleware.settings import get_settings

    customer = find_customer(customer_ref)
    if customer is None:
        return {"subject": None, "text": None, "html": None, "locale": None,
                "errors": {"customer": f"no customer with the number, id or name {customer_ref!r}"
                           if customer_ref else "no customer yet to preview with"}}, None
    from middleware.statements import customer_token

    settings = get_settings()
    pay_url = f"{settings.public_url}/pay/{customer_token(customer.id, settings)}"
    preview = preview_template(draft.get("subject") or "", draft.get("body_text") or "",
                               draft.get("body_html") or None, customer,
                               language=(draft.get("language") or "en").strip() or "en", pay_url=pay_url)
    return preview, customer


class TemplatesView(SecureView):
    permission = "view"

    @expose("/")
    def index(self):
        """Every template, by name and language, with who changed it last."""
        from middleware.models import CampaignStep, Template

        templates = list(Template.select(Template.id, Template.name, Template.language, Template.subject,
                                         Template.updated_at, Template.updated_by)
                         .order_by(Template.name, Template.language))
        used: dict[str, int] = {}
        for (name,) in CampaignStep.select(CampaignStep.template).where(CampaignStep.template.is_null(False)).tuples():
            used[name] = used.get(name, 0) + 1
        return self.render("console/templates/list.html", templates=templates, used=used)

    def _editor(self, draft: dict, template_id: int | None, *, errors: dict | None = None, preview=None,
                customer=None, customer_ref: str = "", status: int = 200):
        if preview is None:
            preview, customer = _render_preview(draft, customer_ref)
        errors = {**(preview.get("errors") or {}), **(errors or {})}
        return self.render("console/templates/edit.html", draft=draft, template_id=template_id, errors=errors,
                           preview=preview, customer=customer, customer_ref=customer_ref or (
                               customer.number or str(customer.id) if customer else "")), status

    def _post(self, template_id: int | None):
        from middleware.dunning.editing import CampaignInvalid, save_template

        draft = _draft(request.form)
        ref = (request.form.get("customer") or "").strip()
        if request.form.get("action") == "preview":
            return self._editor(draft, template_id, customer_ref=ref)
        try:
            template = save_template(draft, template_id=template_id, actor=current_user.email)
        except CampaignInvalid as exc:
            flash("Not saved: " + "; ".join(f"{k}: {v}" for k, v in exc.errors.items()), "danger")
            return self._editor(draft, template_id, errors=exc.errors, customer_ref=ref, status=400)
        flash(f"Template {template.name} ({template.language}) saved.", "success")
        return redirect(url_for(".edit", template_id=template.id, customer=ref or None))

    @expose("/new", methods=("GET", "POST"))
    def new(self):
        _forbid("manage")
        if request.method == "POST":
            return self._post(None)
        draft = {"name": request.args.get("name", ""), "language": request.args.get("language", "en"),
                 "subject": "", "body_text": "Hello {{ contact.name or customer.name }},\n\n", "body_html": ""}
        return self._editor(draft, None, customer_ref=request.args.get("customer", ""))

    @expose("/<int:template_id>/edit", methods=("GET", "POST"))
    def edit(self, template_id: int):
        """The editor: subject, text and HTML bodies, and the preview for a customer beside them."""
        from middleware.dunning.editing import template_snapshot
        from middleware.models import Template

        _forbid("manage")
        template = Template.get_or_none(Template.id == template_id)
        if template is None:
            abort(404)
        if request.method == "POST":
            return self._post(template_id)
        draft = template_snapshot(template)
        draft["body_html"] = draft["body_html"] or ""
        return self._editor(draft, template_id, customer_ref=request.args.get("customer", ""))

    @expose("/preview", methods=("POST",))
    def preview(self):
        """The live preview: the draft in the form rendered for the chosen customer, as JSON."""
        _forbid("manage")
        preview, customer = _render_preview(_draft(request.form), (request.form.get("customer") or "").strip())
        return jsonify(subject=preview["subject"], text=preview["text"], html=preview["html"],
                       errors=preview["errors"], locale=preview["locale"],
                       customer={"id": customer.id, "name": customer.name, "number": customer.number}
                       if customer else None)

    @expose("/<int:template_id>/test-send", methods=("POST",))
    def test_send(self, template_id: int):
        """Queue the saved template, rendered for the chosen customer, as an email to the signed-in user."""
        from jobs.queues import get_queue
        from middleware.dunning.editing import find_customer
        from middleware.models import Template

        _forbid("work")
        template = Template.get_or_none(Template.id == template_id)
        if template is None:
            abort(404)
        ref = (request.form.get("customer") or "").strip()
        customer = find_customer(ref)
        back = url_for(".edit", template_id=template_id, customer=ref or None) if can("manage") else url_for(".index")
        if customer is None:
            flash(f"Test send: no customer {ref!r}.", "danger")
            return redirect(back)
        job = get_queue("dunning").enqueue("jobs.dunning.send_test_email", template.name, template.language,
                                           current_user.email, customer.id,
                                           description=f"test send of {template.name}/{template.language} to "
                                                       f"{current_user.email}")
        flash(f"Test email {template.name!r} ({template.language}) for {customer.name} queued to "
              f"{current_user.email} (job {job.id} on the dunning queue).", "success")
        return redirect(back)


def register(admin) -> None:
    admin.add_view(TemplatesView(name="Templates", endpoint="email_templates", url="/templates", category="Dunning"))
