"""In a real browser: an admin creates a three-step campaign and previews it for a date; an admin
edits a template body and watches the live preview change (and refuse a sandbox escape)."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import login
from tests.integration.test_console_campaigns import build_book

pytestmark = pytest.mark.e2e


def test_create_a_three_step_campaign_and_preview_it(page, console_url, make_user):
    """Through the editor: name, priority, audience "USD", three steps (pre-due −6, +1 with approval
    over ARR 100,000, +30 to the escalation contact); saved; the preview for Thursday 2 April lists
    Bravo Ltd with the "day after due" step going to its billing contact, and Alpha Corp waiting for
    approval; Gamma GmbH (EUR) is not in it."""
    make_user("ada@example.com", "admin", "Ada Admin")
    build_book()
    login(page, console_url, "ada@example.com")
    page.goto(console_url + "/campaigns/")
    page.get_by_role("link", name="New campaign").click()
    page.get_by_label("Name", exact=True).fill("US customers")
    page.get_by_label("Priority").fill("10")
    page.get_by_label("Currencies").fill("USD")
    steps = [("pre-due", "due", "-6", "pre-due-reminder"), ("day after due", "due", "1", "overdue-1"),
             ("final", "due", "30", "final-notice")]
    for n, (name, anchor, offset, template) in enumerate(steps, 1):
        page.get_by_label(f"Step {n} name").fill(name)
        page.get_by_label(f"Step {n} anchor").select_option(anchor)
        page.get_by_label(f"Step {n} offset days").fill(offset)
        page.get_by_label(f"Step {n} template").select_option(template)
    page.get_by_label("Step 2 approval", exact=True).select_option("arr")
    page.get_by_label("Step 2 approval value").fill("100000")
    page.get_by_label("Step 3 recipient").select_option("escalation")
    page.get_by_role("button", name="Save campaign").click()
    page.get_by_text("Campaign 'US customers' saved.").wait_for()
    assert page.get_by_label("Step 3 name").input_value() == "final"

    page.get_by_role("link", name="Preview who gets what").click()
    page.get_by_label("Date").fill("2026-04-02")
    page.get_by_role("button", name="Preview", exact=True).click()
    rows = page.get_by_test_id("preview-row")
    rows.first.wait_for()
    bravo = rows.filter(has_text="Bravo Ltd")
    assert "day after due" in bravo.inner_text() and "ap@bravo.test" in bravo.inner_text()
    assert "planned" in bravo.inner_text()
    assert "needs approval: ARR 150000 ≥ 100000" in rows.filter(has_text="Alpha Corp").inner_text()
    assert rows.filter(has_text="Gamma GmbH").count() == 0
    assert rows.count() == 2


def test_edit_a_template_body_and_watch_the_preview_change(page, console_url, make_user):
    """Typing in the body re-renders the preview for the chosen customer without a page load; an
    attempt to reach ``''.__class__`` shows the sandbox's refusal next to the body; saving keeps the edit."""
    make_user("ada@example.com", "admin", "Ada Admin")
    build_book()
    login(page, console_url, "ada@example.com")
    page.goto(console_url + "/templates/")
    page.get_by_role("link", name="overdue-1", exact=True).click()
    page.wait_for_load_state()
    page.get_by_label("Preview for customer").fill("CUST-2")
    text = page.get_by_test_id("preview-text")
    page.wait_for_function("() => document.querySelector('[data-testid=preview-customer]').textContent"
                           ".includes('Bravo Ltd')")
    url_before = page.url
    body = page.get_by_label("Text body")
    body.fill("Dear {{ customer.name }}, please pay {{ totals[0].amount|money(totals[0].currency) }}.")
    page.wait_for_function("() => document.querySelector('[data-testid=preview-text]').textContent"
                           ".includes('Dear Bravo Ltd, please pay $1,234.50.')")
    assert page.url == url_before  # live: no navigation

    body.fill("{{ ''.__class__ }}")
    error = page.get_by_test_id("error-body_text")
    page.wait_for_function("() => document.querySelector('[data-testid=error-body_text]').textContent"
                           ".includes('unsafe')")
    assert "access to attribute '__class__' of 'str' object is unsafe" in error.inner_text()
    assert text.inner_text() == ""

    body.fill("Dear {{ customer.name }}, thank you.")
    page.wait_for_function("() => document.querySelector('[data-testid=preview-text]').textContent"
                           ".includes('Dear Bravo Ltd, thank you.')")
    assert error.inner_text() == ""
    page.get_by_role("button", name="Save template").click()
    page.get_by_text("Template overdue-1 (en) saved.").wait_for()
    assert page.get_by_label("Text body").input_value() == "Dear {{ customer.name }}, thank you."
