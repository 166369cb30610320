"""middleware/templating.py: admin-edited templates render in the sandbox, amounts by locale."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from middleware.templating import TemplateRenderError, format_money, render_string


def test_money_follows_the_locale_and_the_currency_minor_units():
    """Germans read 1.234,50 €; Japanese yen have no decimals; amounts stay exact Decimals."""
    assert format_money(Decimal("1234.5"), "EUR", "de_DE") == "1.234,50\xa0€"
    assert format_money(Decimal("1234"), "JPY", "ja_JP") == "￥1,234"
    assert format_money(Decimal("0.105"), "USD", "en_US") == "$0.11"  # half up, as the glossary says
    assert format_money(Decimal("1234.5"), "JPY", "en_US") == "¥1,235"


def test_a_template_renders_with_filters_in_the_recipients_locale():
    """A reminder shows the amount and due date the way the customer writes them."""
    text = render_string("Bonjour {{ name }}, {{ amount|money('EUR') }} le {{ due|date('long') }}.",
                         {"name": "Zoé", "amount": Decimal("1500"), "due": date(2026, 12, 1)}, locale="fr_FR")
    assert text == "Bonjour Zoé, 1\u202f500,00\xa0€ le 1 décembre 2026."


def test_the_sandbox_refuses_internals_and_html_is_escaped():
    """A template cannot reach Python internals; customer names cannot inject HTML."""
    with pytest.raises(TemplateRenderError, match="unsafe"):
        render_string("{{ ''.__class__.__mro__ }}", {}, name="reminder")
    assert render_string("<p>{{ name }}</p>", {"name": "<script>x</script>"}, html=True) == \
        "<p>&lt;script&gt;x&lt;/script&gt;</p>"


def test_an_unknown_variable_is_an_error_naming_the_template_and_the_variable():
    """A typo in a template fails loudly instead of sending an email with a blank."""
    with pytest.raises(TemplateRenderError, match=r"step-1: 'amout' is undefined"):
        render_string("{{ amout }}", {"amount": 1}, name="step-1")
