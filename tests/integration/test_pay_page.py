"""The public pay page behind the pay link of statements and emails (``GET /pay/<token>``)."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from middleware.settings import SettingsError, load_settings, reset_settings

TODAY = date.today()


@pytest.fixture
def book(db):
    """Nordwind (de_DE, EUR): two open invoices (one 10 days overdue, one due in 20 days), one paid,
    one deleted, an unapplied credit memo of 100 EUR. Quiet Corp (USD): nothing open."""
    from middleware.models import Company, CreditMemo, Customer, Invoice, Source

    Company.create(name="Nordwind Receivables AG", reporting_currency="USD")
    src = Source.create(name="erp", kind="rest")
    de = Customer.create(source=src, external_id="c1", number="K-1001", name="Nordwind Handels GmbH",
                         billing_currency="EUR", locale="de_DE", country="DE", content_hash="x")
    quiet = Customer.create(source=src, external_id="c2", number="Z-4004", name="Quiet Corp", billing_currency="USD",
                            locale="en_US", country="US", content_hash="x")

    def invoice(number, amount, open_amount, due, status="open", deleted=False):
        Invoice.create(source=src, external_id=number, number=number, customer=de, customer_external_id="c1",
                       currency="EUR", amount=Decimal(amount), open_amount=Decimal(open_amount), due_date=due,
                       issue_date=due - timedelta(days=30), status=status, content_hash="x",
                       deleted_at=TODAY if deleted else None)

    invoice("RE-001", "1234.50", "1234.50", TODAY - timedelta(days=10))
    invoice("RE-002", "2000.00", "500.25", TODAY + timedelta(days=20))
    invoice("RE-PAID", "777.00", "0", TODAY - timedelta(days=40), status="paid")
    invoice("RE-GONE", "888.00", "888.00", TODAY - timedelta(days=5), deleted=True)
    CreditMemo.create(source=src, external_id="cm1", number="GS-01", customer=de, customer_external_id="c1",
                      currency="EUR", amount=Decimal("100"), unapplied_amount=Decimal("100"),
                      date=TODAY - timedelta(days=3), content_hash="x")
    return {"de": de.id, "quiet": quiet.id}


def _client(monkeypatch=None, **env):
    from console import create_app

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    return create_app().test_client()


def _url(customer_id: int) -> str:
    from middleware.statements import customer_token

    return f"/pay/{customer_token(customer_id)}"


def test_the_pay_link_shows_open_invoices_totals_and_remittance_without_a_login(book, redis_url):
    """A customer opening the link from its statement, not logged in, sees its name, its open
    invoices in EUR formatted for de_DE with due dates (not the paid or deleted ones), the total
    after its unapplied credit, and the remittance instructions; no "Pay now" button when no
    payment URL is configured, and the page is neither cached nor leaks the link as a Referer."""
    client = _client()
    resp = client.get(_url(book["de"]))
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert "Nordwind Handels GmbH" in page and "K-1001" in page
    assert "RE-001" in page and "RE-002" in page
    assert "RE-PAID" not in page and "RE-GONE" not in page
    assert "1.234,50\xa0€" in page and "500,25\xa0€" in page
    assert "1.634,75\xa0€" in page  # 1,234.50 + 500.25 open, then -100 credit ...
    assert "1.734,75\xa0€" in page  # ... the open total before the credit
    assert (TODAY - timedelta(days=10)).strftime("%d.%m.%Y") in page
    assert "10 days overdue" in page
    assert "Please pay by bank transfer" in page  # templates/statements/remittance.txt, as on the statement
    assert "Pay now" not in page
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Referrer-Policy"] == "no-referrer"
    assert "/login" not in resp.headers.get("Location", "")


def test_the_pay_page_shows_the_billing_address_under_the_name(book, redis_url):
    """The billing address the statement prints (street lines, "80331 München", the country in the
    customer's language) is on the pay page too, under the customer's name; without an address,
    the country alone."""
    from middleware.models import Customer

    Customer.update(billing_address={"lines": ["Leopoldstraße 12", "3. OG"], "city": "München",
                                     "postal_code": "80331", "country": "DE"}).where(Customer.id == book["de"]).execute()
    client = _client()
    page = client.get(_url(book["de"])).get_data(as_text=True)
    assert ('<address class="mb-1" data-testid="pay-address">Leopoldstraße 12<br>3. OG<br>80331 München<br>'
            'Deutschland</address>') in page
    assert page.index("pay-customer") < page.index("pay-address")
    page = client.get(_url(book["quiet"])).get_data(as_text=True)
    assert 'data-testid="pay-address">United States</address>' in page


def test_pay_now_links_to_the_configured_payment_url_with_the_amount_to_pay(book, redis_url, monkeypatch):
    """With ARHUB_PAYMENT_URL set, the page offers "Pay now" with the balance (open invoices minus
    credits), currency and reference filled into the URL template, URL-encoded."""
    client = _client(monkeypatch, ARHUB_PAYMENT_URL="https://pay.example.com/checkout?c={customer}&a={amount}"
                                                     "&cur={currency}&ref={reference}")
    page = client.get(_url(book["de"])).get_data(as_text=True)
    assert "Pay now 1.634,75\xa0€" in page
    assert 'href="https://pay.example.com/checkout?c=K-1001&amp;a=1634.75&amp;cur=EUR&amp;ref=K-1001"' in page


def test_a_customer_with_nothing_open_gets_no_pay_button(book, redis_url, monkeypatch):
    """Nothing open: the page thanks the customer and offers no payment."""
    client = _client(monkeypatch, ARHUB_PAYMENT_URL="https://pay.example.com/?a={amount}")
    page = client.get(_url(book["quiet"])).get_data(as_text=True)
    assert "Quiet Corp" in page and "Nothing is open on your account" in page
    assert "Pay now" not in page


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # an altered signature
    lambda t: "1" + t,  # another customer id with this signature
    lambda t: t.split(".")[0],  # no signature at all
    lambda t: "not-a-token",
    lambda t: "999999." + t.split(".")[1],
])
def test_an_invalid_pay_link_answers_a_clear_404(book, redis_url, mangle):
    """A link altered or cut when copied answers 404 with a page saying the link is not valid,
    never a traceback and nothing about the customer."""
    from middleware.statements import customer_token

    client = _client()
    resp = client.get(f"/pay/{mangle(customer_token(book['de']))}")
    assert resp.status_code == 404
    page = resp.get_data(as_text=True)
    assert "This payment link is not valid" in page
    assert "Nordwind" not in page and "Traceback" not in page


def test_links_signed_with_the_previous_key_keep_working_after_a_key_rotation(book, redis_url, monkeypatch):
    """Links already sent stay valid while the old key is listed in ARHUB_SECRET_KEY_PREVIOUS, and
    stop working once it is dropped (how a leaked link is revoked)."""
    from middleware.settings import get_settings
    from middleware.statements import customer_token

    old_key = get_settings().secret_key
    old_link = f"/pay/{customer_token(book['de'])}"
    client = _client(monkeypatch, ARHUB_SECRET_KEY="a-brand-new-secret-key-for-the-rotation-test",
                     ARHUB_SECRET_KEY_PREVIOUS=old_key)
    assert client.get(old_link).status_code == 200
    monkeypatch.delenv("ARHUB_SECRET_KEY_PREVIOUS")
    client = _client()
    assert client.get(old_link).status_code == 404


def test_a_deleted_customer_link_answers_404(book, redis_url):
    """A customer deleted in the ERP: its old link no longer shows anything."""
    from middleware.models import Customer

    Customer.update(deleted_at=TODAY).where(Customer.id == book["de"]).execute()
    resp = _client().get(_url(book["de"]))
    assert resp.status_code == 404 and "Nordwind" not in resp.get_data(as_text=True)


def test_the_payment_url_setting_accepts_only_its_four_placeholders(tmp_path):
    """A typo in ARHUB_PAYMENT_URL's placeholders is refused at start-up with the allowed names."""
    env = {"ARHUB_VAR_DIR": str(tmp_path), "ARHUB_SECRET_KEY": "x" * 40}
    ok = load_settings({**env, "ARHUB_PAYMENT_URL": "https://p.example.com/{customer}/{amount}{currency}?r={reference}"},
                       env_file="")
    assert ok.payment_url.startswith("https://p.example.com/")
    with pytest.raises(SettingsError, match=r"\{amont\}"):
        load_settings({**env, "ARHUB_PAYMENT_URL": "https://p.example.com/?a={amont}"}, env_file="")
    with pytest.raises(SettingsError, match="http"):
        load_settings({**env, "ARHUB_PAYMENT_URL": "ftp://p.example.com/{amount}"}, env_file="")
