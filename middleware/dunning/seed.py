"""The default campaign and templates."""
from __future__ import annotations

from ..bulk import upsert
from ..models import Campaign, CampaignStep, Template, utcnow
from .planner import _write_lock


# ---------------------------------------------------------------------------------- seeds
_LIST_TEXT = ("{% for i in invoices %}\n- {{ i.number }}: {{ i.open_amount|money(i.currency) }}, "
              "due {{ i.due_date|date }}\n{% endfor %}\n"
              "Total: {% for t in totals %}{{ t.amount|money(t.currency) }}{% if not loop.last %} + {% endif %}"
              "{% endfor +%}\n")
_LIST_HTML = ("<ul>\n{% for i in invoices %}\n<li>{{ i.number }}: {{ i.open_amount|money(i.currency) }}, "
              "due {{ i.due_date|date }}</li>\n{% endfor %}\n</ul>\n"
              "<p>Total: {% for t in totals %}{{ t.amount|money(t.currency) }}{% if not loop.last %} + {% endif %}"
              "{% endfor %}</p>\n")
_PAY_TEXT = "{% if pay_url %}\nPay online: {{ pay_url }}\n{% endif %}\n"
_PAY_HTML = '{% if pay_url %}\n<p><a href="{{ pay_url }}">Pay online</a></p>\n{% endif %}\n'
_HELLO = "Hello {{ contact.name or customer.name }},\n\n"
_SIGN = "\nThank you,\n{{ collector.name or collector.email or company.name }}\n{{ company.name }}\n"
_SIGN_HTML = "<p>Thank you,<br>{{ collector.name or collector.email or company.name }}<br>{{ company.name }}</p>\n"
_PLURAL = "{{ 'invoices' if invoices|length > 1 else 'invoice' }}"

#: name → (subject, opening paragraph, closing paragraph)
DEFAULT_TEMPLATES = {
    "proactive-check-in": (
        "Everything you need to pay your " + _PLURAL + "?",
        "We sent you the " + _PLURAL + " below a few days ago. Do you have everything you need to pay it? "
        "If a purchase order number, a form or a correction is missing, just reply to this email.",
        "We are happy to help."),
    "pre-due-reminder": (
        "A friendly reminder: " + _PLURAL + " due soon",
        "A quick reminder that the " + _PLURAL + " below will be due soon.",
        "If you have already scheduled the payment, thank you, and please ignore this email."),
    "overdue-1": (
        "Your " + _PLURAL + " just became due",
        "The " + _PLURAL + " below became due yesterday and we have not received the payment yet.",
        "If the payment is on its way, thank you. If something is holding it up, reply and we will sort it out."),
    "overdue-7": (
        "Overdue: " + _PLURAL + " from {{ company.name }}",
        "The " + _PLURAL + " below are now a week overdue.",
        "Could you let us know when we can expect the payment? Reply to this email with any question."),
    "overdue-14": (
        "Second reminder: overdue " + _PLURAL,
        "The " + _PLURAL + " below are two weeks overdue.",
        "Please arrange the payment, or reply to tell us what is in the way, so we can help."),
    "final-notice": (
        "Final notice: overdue " + _PLURAL + " from {{ company.name }}",
        "Despite our reminders, the " + _PLURAL + " below are still unpaid a month after the due date."
        "{% if statement_attached %} Your account statement is attached.{% endif +%}",
        "Please arrange the payment within the next few days, or contact us so we can find a solution together."),
}


def default_template_rows() -> list[tuple[str, str, str, str, str]]:
    """``(name, language, subject, body_text, body_html)`` of the shipped templates."""
    rows = []
    for name, (subject, opening, closing) in DEFAULT_TEMPLATES.items():
        text = _HELLO + opening + "\n\n" + _LIST_TEXT + _PAY_TEXT + "\n" + closing + "\n" + _SIGN
        html = ("<p>Hello {{ contact.name or customer.name }},</p>\n<p>" + opening + "</p>\n" + _LIST_HTML + _PAY_HTML
                + "<p>" + closing + "</p>\n" + _SIGN_HTML)
        rows.append((name, "en", subject, text, html))
    return rows


DEFAULT_CAMPAIGN = "Default"
_APPROVAL = {"arr_gte": "100000", "expires_days": 3}
#: (position, name, anchor, offset, template, recipient role, cc collector, statement, approval)
DEFAULT_STEPS = (
    (1, "proactive check-in", "sent", 6, "proactive-check-in", "billing", False, False, None),
    (2, "pre-due reminder", "due", -6, "pre-due-reminder", "billing", False, False, None),
    (3, "overdue 1", "due", 1, "overdue-1", "billing", False, False, _APPROVAL),
    (4, "overdue 7", "due", 7, "overdue-7", "billing", False, False, _APPROVAL),
    (5, "overdue 14", "due", 14, "overdue-14", "billing", False, False, _APPROVAL),
    (6, "final notice", "due", 30, "final-notice", "escalation", True, True, _APPROVAL),
)


def seed_default_campaign() -> dict:
    """The default campaign (everyone, lowest priority) and its templates, once. Existing rows,
    possibly edited by an admin, are left alone. Returns what was created."""
    now = utcnow()
    with _write_lock():
        before = Template.select().count()
        upsert(Template, ("name", "language", "subject", "body_text", "body_html", "updated_at", "updated_by"),
               [(*row, now, "seed") for row in default_template_rows()], ("name", "language"), ())
        created_templates = Template.select().count() - before
        campaign = Campaign.get_or_none(Campaign.name == DEFAULT_CAMPAIGN)
        created_steps = 0
        if campaign is None:  # steps only with a new campaign: an admin's edits and deletions stay
            campaign = Campaign.create(
                name=DEFAULT_CAMPAIGN, priority=1000, audience={}, description=(
                    "Proactive check-in 6 days after sending, a reminder 6 days before the due date, then 1, 7, "
                    "14 and 30 days overdue (the overdue steps need approval for ARR ≥ 100,000)."))
            for pos, name, anchor, offset, template, role, cc, statement, approval in DEFAULT_STEPS:
                CampaignStep.create(campaign=campaign, position=pos, name=name, anchor=anchor, offset_days=offset,
                                    template=template, recipient_role=role, cc_collector=cc,
                                    attach_statement=statement, approval=approval)
                created_steps += 1
    return {"campaign": campaign.id, "templates_created": created_templates, "steps_created": created_steps}
