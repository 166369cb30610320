"""The customers pages of the console: the list (search, filters, sort, paging, CSV/XLSX export of the
filtered list), the customer page (both currencies, the timeline) and its actions, the invoice page."""
from __future__ import annotations

import csv
import io
import re
from html import unescape
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from openpyxl import load_workbook

from console import create_app
from middleware.models import (
    Activity, AuditLog, Campaign, Company, Customer, CustomerTag, DunningAction, FxRate, Invoice, Message, Source, Tag,
)
from middleware.people import create_user, today
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf



def _login(client, email):
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}).status_code == 302
    return client


class Book:
    def __init__(self):
        self.source = Source.create(name="netsuite", kind="soap", config={})
        self.n = 0
        self.today = today()

    def customer(self, name, *, currency="USD", collector=None, segment=None, email=None, **kw) -> Customer:
        self.n += 1
        return Customer.create(source=self.source, external_id=f"C{self.n}", number=f"CUST-{self.n:03d}", name=name,
                               billing_currency=currency, collector=collector, segment=segment, content_hash="x" * 32,
                               email=email, **kw)

    def invoice(self, customer, amount, *, days_past_due=0, rate="1", open_amount=None, status="open",
                number=None) -> Invoice:
        self.n += 1
        due = self.today - timedelta(days=days_past_due)
        amount = Decimal(amount)
        open_ = Decimal(open_amount) if open_amount is not None else (amount if status == "open" else Decimal(0))
        rate = Decimal(rate)
        return Invoice.create(
            source=self.source, external_id=f"I{self.n}", number=number or f"INV-{self.n}", customer=customer,
            customer_external_id=customer.external_id, currency=customer.billing_currency, amount=amount,
            fx_rate=rate, fx_rate_date=due - timedelta(days=30), fx_rate_source="test", amount_reporting=amount * rate,
            open_amount=open_, open_amount_reporting=(open_ * rate).quantize(Decimal("0.01")), revalued_at=self.today,
            content_hash="x" * 32, issue_date=due - timedelta(days=30), due_date=due, status=status)


@pytest.fixture
def book(db, redis_url, settings):
    Company.create(name="Acme Cloud", reporting_currency="USD")
    for email, name, role in (("ada@example.com", "Ada Admin", "admin"), ("cora@example.com", "Cora Collector",
                                                                         "collector"),
                              ("vic@example.com", "Vic Viewer", "viewer")):
        create_user(email, name, role, PASSWORD, actor="test")
    b = Book()
    FxRate.create(base_currency="USD", currency="EUR", rate_date=b.today - timedelta(days=400), rate=Decimal("1.10"),
                  source_name="test")
    b.globex = b.customer("Globex GmbH", currency="EUR", collector="cora@example.com", segment="enterprise",
                          email="ap@globex.de")
    b.initech = b.customer("Initech Inc.", collector="cora@example.com", segment="smb", email="billing@initech.com")
    b.umbrella = b.customer("Umbrella Corp", segment="smb")
    b.quiet = b.customer("Quiet Ltd")  # nothing open
    b.g1 = b.invoice(b.globex, "1000.00", days_past_due=75, rate="1.10", number="G-1")  # 61-90
    b.g2 = b.invoice(b.globex, "500.00", days_past_due=-10, rate="1.10", number="G-2")  # current
    b.g3 = b.invoice(b.globex, "300.00", status="paid", number="G-3")
    b.i1 = b.invoice(b.initech, "2500.00", days_past_due=10, number="I-1")  # 1-30
    b.u1 = b.invoice(b.umbrella, "40.00", days_past_due=120, number="U-1")  # 91+
    tag = Tag.create(name="strategic")
    CustomerTag.create(customer=b.globex, tag=tag)
    return b


@pytest.fixture
def client(book):
    return _login(create_app().test_client(), "cora@example.com")


def _names(html: str) -> list[str]:
    return re.findall(r'data-customer-id="\d+">\s*<td><a href="[^"]+">([^<]+)</a>', html)


def test_filters_return_the_right_customers(client, book):
    """Each filter in the URL narrows the list to the customers it describes, and the count says how many."""
    page = lambda qs: client.get("/customers/" + qs).get_data(as_text=True)  # noqa: E731
    assert _names(page("")) == ["Globex GmbH", "Initech Inc.", "Quiet Ltd", "Umbrella Corp"]
    assert _names(page("?collector=cora@example.com")) == ["Globex GmbH", "Initech Inc."]
    assert _names(page("?collector=none")) == ["Quiet Ltd", "Umbrella Corp"]
    assert _names(page("?segment=smb")) == ["Initech Inc.", "Umbrella Corp"]
    assert _names(page("?currency=EUR")) == ["Globex GmbH"]
    assert _names(page("?tag=strategic")) == ["Globex GmbH"]
    assert _names(page("?q=initech")) == ["Initech Inc."]
    assert _names(page("?q=CUST-003")) == ["Umbrella Corp"]
    assert _names(page("?q=globex.de")) == ["Globex GmbH"]
    # Globex overdue 1,100 USD (1,000 EUR at 1.10), Initech 2,500, Umbrella 40
    assert _names(page("?overdue_min=1000")) == ["Globex GmbH", "Initech Inc."]
    assert _names(page("?overdue_min=1000&overdue_max=2000")) == ["Globex GmbH"]
    assert _names(page("?bucket=61-90")) == ["Globex GmbH"]
    assert _names(page("?bucket=91%2B")) == ["Umbrella Corp"]
    html = page("?collector=cora@example.com&overdue_min=1000&bucket=61-90&currency=EUR")
    assert _names(html) == ["Globex GmbH"] and "1 match" in html
    assert _names(page("?sort=overdue")) == ["Initech Inc.", "Globex GmbH", "Umbrella Corp", "Quiet Ltd"]
    assert _names(page("?sort=oldest")) == ["Umbrella Corp", "Globex GmbH", "Initech Inc.", "Quiet Ltd"]
    assert _names(page("?sort=open&dir=asc"))[:3] == ["Umbrella Corp", "Globex GmbH", "Initech Inc."]


def test_a_search_pages_and_counts_its_matches(client, book, monkeypatch):
    """A search over many customers shows the right count and the right names on each page, both
    through the one-pass id search and, above its cap, through the general count-and-page path."""
    from console.views.customers import queries

    for n in range(30):
        book.customer(f"Hooli {n:02d}")
    expected = [f"Hooli {n:02d}" for n in range(30)]
    for cap in (queries.SEARCH_IDS_MAX, 10):  # the one-pass path, then the general path
        monkeypatch.setattr(queries, "SEARCH_IDS_MAX", cap)
        first = client.get("/customers/?q=hooli&per_page=25").get_data(as_text=True)
        second = client.get("/customers/?q=hooli&per_page=25&page=2").get_data(as_text=True)
        assert "30 match" in first and "30 match" in second
        assert _names(first) == expected[:25] and _names(second) == expected[25:]
        assert _names(client.get("/customers/?q=hooli&dir=desc&per_page=25").get_data(as_text=True)) == \
            expected[::-1][:25]


def test_status_and_campaign_filters(client, book):
    """Paused, disputed and campaign filters list the customers in that state today."""
    Customer.update(paused_until=book.today + timedelta(days=3)).where(Customer.id == book.initech.id).execute()
    Activity.create(customer=book.umbrella, invoice=book.u1, kind="dispute", body="wrong price")
    camp = Campaign.create(name="Strict")
    DunningAction.create(key="k1", customer=book.globex, campaign=camp, planned_for=book.today, status="sent")
    page = lambda qs: _names(client.get("/customers/" + qs).get_data(as_text=True))  # noqa: E731
    assert page("?status=paused") == ["Initech Inc."]
    assert page("?status=active") == ["Globex GmbH", "Quiet Ltd", "Umbrella Corp"]
    assert page("?status=disputed") == ["Umbrella Corp"]
    assert page(f"?campaign={camp.id}") == ["Globex GmbH"]
    assert "Strict" in client.get("/customers/?q=globex").get_data(as_text=True)


def test_paging_walks_every_customer_once(client, book):
    """With 25 per page, 30 customers take two pages, the second holding the last five, in name order."""
    for n in range(26):
        book.customer(f"Zeta {n:02d}")
    first = client.get("/customers/?per_page=25").get_data(as_text=True)
    second = client.get("/customers/?per_page=25&page=2").get_data(as_text=True)
    assert "Page 1 of 2" in first and "Page 2 of 2" in second
    names = _names(first) + _names(second)
    assert len(names) == 30 and len(set(names)) == 30 and names == sorted(names)
    # by amount, customers with nothing open follow on the later page
    by_amount = _names(client.get("/customers/?per_page=25&sort=overdue&page=2").get_data(as_text=True))
    assert len(by_amount) == 5 and all(n.startswith("Zeta") for n in by_amount)


def test_csv_and_xlsx_export_the_filtered_list(client, book):
    """The exports hold the filtered customers only, with the figures of the list."""
    resp = client.get("/customers/export.csv?collector=cora@example.com&sort=overdue")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert [r["name"] for r in rows] == ["Initech Inc.", "Globex GmbH"]
    assert rows[1]["overdue_reporting"] == "1100.00" and rows[1]["billing_currency"] == "EUR"
    assert rows[1]["oldest_overdue_days"] == "75" and rows[1]["tags"] == "strategic"
    assert rows[0]["collector"] == "cora@example.com" and rows[0]["erp_number"] == "CUST-002"
    resp = client.get("/customers/export.xlsx?segment=smb")
    assert resp.status_code == 200
    ws = load_workbook(io.BytesIO(resp.data)).active
    values = list(ws.values)
    header = values[0]
    got = [dict(zip(header, v)) for v in values[1:]]
    assert [r["name"] for r in got] == ["Initech Inc.", "Umbrella Corp"]
    assert got[1]["overdue_reporting"] == 40 and got[1]["collector"] == "team queue"


def test_customer_page_shows_both_currencies_and_the_timeline(client, book):
    """Billing and reporting amounts side by side, the rate, the aging, and one timeline of actions,
    messages and activities with the skip reason."""
    camp = Campaign.create(name="Default")
    DunningAction.create(key="k2", customer=book.globex, campaign=camp, planned_for=book.today, status="skipped",
                         reason="promise to pay by 2030-01-01", invoice_ids=[book.g1.id])
    Message.create(direction="in", customer=book.globex, message_id="m1@x", subject="Re: your invoice G-1",
                   from_address="ap@globex.de", body_text="We will pay next week",
                   at=datetime.now(timezone.utc) - timedelta(days=2))
    Activity.create(customer=book.globex, kind="note", body="Called the AP team", actor="cora@example.com")
    html = client.get(f"/customers/{book.globex.id}").get_data(as_text=True)
    assert "€1,500.00" in html and "$1,650.00" in html  # open: billing EUR and reporting USD
    assert "$1,100.00" in html and "1.1 on" in html  # overdue in USD, the rate
    assert "promise to pay by 2030-01-01" in html and "Re: your invoice G-1" in html and "Called the AP team" in html
    assert html.index("Called the AP team") < html.index("Re: your invoice G-1")  # newest first
    assert "strategic" in html and "cora@example.com" in html and "G-3" in html


def test_each_action_changes_what_the_page_shows(client, book, redis_url):
    """Note, pause, resume, promise, dispute, resolve, collector change and statement: after each, the page
    (or the queue) shows it, and the change is recorded."""
    url = f"/customers/{book.initech.id}"
    post = lambda action, **data: client.post(f"{url}/act/{action}", data={  # noqa: E731
        "csrf_token": _csrf(client.get(url).get_data(as_text=True)), **data})
    assert post("note", body="Left a voicemail").status_code == 302
    assert "Left a voicemail" in client.get(url).get_data(as_text=True)
    until = (book.today + timedelta(days=7)).isoformat()
    post("pause", until=until, reason="CFO on holiday")
    html = client.get(url).get_data(as_text=True)
    assert "dunning paused until" in html and "CFO on holiday" in html
    assert Customer.get_by_id(book.initech.id).paused_until.isoformat() == until
    post("resume")
    assert Customer.get_by_id(book.initech.id).paused_until is None
    assert "Resume dunning" not in client.get(url).get_data(as_text=True)
    post("promise", until=until, amount="1200", invoice_id=str(book.i1.id))
    html = client.get(url).get_data(as_text=True)
    assert f"Promise to pay until {until}" in html and "amount 1200" in html
    post("dispute", invoice_id=str(book.i1.id), reason="wrong quantity")
    dispute = Activity.get(Activity.kind == "dispute", Activity.customer == book.initech.id)
    assert "wrong quantity" in client.get(url).get_data(as_text=True)
    assert _names(client.get("/customers/?status=disputed").get_data(as_text=True)) == ["Initech Inc."]
    post("resolve", activity_id=str(dispute.id))
    assert Activity.get_by_id(dispute.id).resolved_at is not None
    post("collector", collector="ada@example.com")
    assert Customer.get_by_id(book.initech.id).collector == "ada@example.com"
    assert AuditLog.select().where(AuditLog.action == "collector.assign").count() == 1
    post("statement")
    from jobs.queues import get_queue

    queue = get_queue("statements")
    assert any(j.func_name == "jobs.statements.render_statement" and j.args[0] == book.initech.id for j in queue.jobs)
    assert "statement as of" in client.get(url).get_data(as_text=True)


def test_a_viewer_gets_403_on_actions_and_sees_no_forms(book):
    """A viewer can read the customer page but every action answers 403 and changes nothing."""
    viewer = _login(create_app().test_client(), "vic@example.com")
    url = f"/customers/{book.globex.id}"
    html = viewer.get(url).get_data(as_text=True)
    assert "Globex GmbH" in html and "Add note" not in html
    token = _csrf(html)
    for action in ("note", "pause", "promise", "dispute", "collector", "statement", "resume"):
        resp = viewer.post(f"{url}/act/{action}", data={"csrf_token": token, "body": "x", "until": "2030-01-01",
                                                        "invoice_id": str(book.g1.id)})
        assert resp.status_code == 403
    assert Activity.select().count() == 0 and Customer.get_by_id(book.globex.id).paused_until is None


def test_invoice_page_shows_amounts_rate_applications_and_links_back(client, book):
    """The invoice page shows billing and reporting amounts, the invoice's rate and date, and links to its customer."""
    html = client.get(f"/customers/invoice/{book.g1.id}").get_data(as_text=True)
    assert "€1,000.00" in html and "$1,100.00" in html and "1.1 on" in html
    assert f'href="/customers/{book.globex.id}"' in html
    assert client.get("/customers/invoice/999999").status_code == 404


# -- the amount sorts read customer_balance: its figures are middleware.ar's ---------------------------

def _balance_rows() -> dict:
    from middleware.bulk import to_decimal

    rows = Invoice._meta.database.execute_sql(
        'SELECT "customer_id", "open_reporting", "overdue_reporting", "oldest_due", "open_invoices", "fx_missing", '
        '"as_of" FROM "customer_balance"').fetchall()
    cent = Decimal("0.01")
    return {cid: (to_decimal(o).quantize(cent), to_decimal(od).quantize(cent), str(old)[:10] if old else None,
                  n, miss, str(as_of)[:10]) for cid, o, od, old, n, miss, as_of in rows}


def _assert_list_matches_ar(day):
    """Every customer's stored balance, the list's figures, its order by overdue and its amount filters
    agree with middleware.ar.customer_snapshots on ``day``."""
    from console.views.customers.queries import Filters, export_rows
    from middleware import ar

    snaps = ar.customer_snapshots(None, as_of=day, reporting_currency="USD")
    cent = Decimal("0.01")
    expected = {cid: (s.open_reporting.quantize(cent), s.overdue_reporting.quantize(cent),
                      s.oldest_due.isoformat() if s.oldest_due and s.overdue_reporting else None, s.open_count,
                      s.fx_missing, day.isoformat())
                for cid, s in snaps.items() if s.open_count}
    listed = list(export_rows(Filters.from_args({"sort": "overdue"}), day))
    assert len(listed) == Customer.select().where(Customer.deleted_at.is_null()).count()
    assert _balance_rows() == expected
    shown = {r.id: (r.open_reporting, r.overdue_reporting, r.oldest_due.isoformat() if r.oldest_due else None,
                    r.open_invoices, r.fx_missing, day.isoformat()) for r in listed if r.open_invoices}
    assert shown == expected
    with_open = [r.id for r in listed if r.id in expected]
    assert with_open == sorted(expected, key=lambda cid: (-expected[cid][1], cid))  # overdue desc, then id
    assert [r.id for r in listed[:len(with_open)]] == with_open  # nothing-open customers follow
    big = sorted(expected, key=lambda cid: (-expected[cid][1], cid))[len(expected) // 3]
    floor = expected[big][1]
    found = [r.id for r in export_rows(Filters.from_args({"overdue_min": str(floor), "sort": "overdue"}), day)]
    assert found == [cid for cid in with_open if expected[cid][1] >= floor] and big in found
    for label, index in (("current", 0), ("61-90", 3), ("91+", 4)):
        found = {r.id for r in export_rows(Filters.from_args({"bucket": label}), day)}
        assert found == {cid for cid, s in snaps.items() if s.buckets and s.buckets[index]}, label
    return expected


def _netsuite_sync(sandbox):
    """A NetSuite source on the sandbox, and a function that syncs it once more."""
    from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS
    from jobs.sync import load_preset, make_connector, run_sync
    from middleware.sources import configure_source

    src = configure_source("netsuite", load_preset("netsuite-2023_2"),
                           endpoint=sandbox.netsuite_url + "/services/NetSuitePort_2023_2",
                           credentials=SANDBOX_CREDENTIALS)

    def sync():
        connector = make_connector(Source.get_by_id(src.id), sleep=lambda s: None)
        try:
            return run_sync(src.name, connector=connector)
        finally:
            connector.close()
    return sync


def test_amount_sorts_and_filters_equal_middleware_ar_across_a_sync_and_a_new_day(db, sandbox):
    """Sorted by overdue or filtered by an overdue floor or an aging bucket, the list shows every customer's
    open and overdue amounts, oldest overdue date and open count exactly as middleware.ar computes them: after
    a full sync, after an incremental one in which invoices were paid, voided, deleted and created, and on a
    later day when more of them are overdue."""
    sync = _netsuite_sync(sandbox)
    sync()
    day = today()
    before = _assert_list_matches_ar(day)
    assert len(before) > 10

    book = sandbox.book
    open_ids = [i for i, inv in book.invoices.items() if inv.status == "open" and inv.amount_paid == 0]
    book.add_payment(open_ids[0], book.invoices[open_ids[0]].amount_due, day)  # paid in full
    book.add_payment(open_ids[1], (book.invoices[open_ids[1]].amount_due / 2).quantize(Decimal("0.01")), day)
    book.void_invoice(open_ids[2])
    book.delete("invoice", open_ids[3])
    book.modify_invoices(20, now=datetime.now(timezone.utc))
    sync()
    after = _assert_list_matches_ar(day)
    assert after != before

    later = day + timedelta(days=45)
    moved = _assert_list_matches_ar(later)  # the first list of the new day refreshes every customer
    assert sum(v[1] for v in moved.values()) > sum(v[1] for v in after.values())


def test_a_list_by_amount_follows_a_revaluation_at_new_rates(book, client):
    """When new closing rates revalue the open amounts (arhub fx), the list sorted by open amount shows the
    new figures and order at once."""
    from middleware import fx

    assert _names(client.get("/customers/?sort=open").get_data(as_text=True))[:2] == ["Initech Inc.", "Globex GmbH"]
    FxRate.create(base_currency="USD", currency="EUR", rate_date=book.today, rate=Decimal("3.00"), source_name="test")
    fx.revalue_open_amounts("USD")
    html = client.get("/customers/?sort=open").get_data(as_text=True)
    assert _names(html)[:2] == ["Globex GmbH", "Initech Inc."]  # 1,500 EUR x 3.00 = 4,500 USD > 2,500 USD
    assert "4,500.00" in html


def test_the_dashboards_overdue_link_lists_the_overdue_customers_most_first(client, book):
    """The dashboard links its overdue figures to /customers/?status=overdue&sort=-overdue: the list shows
    only the customers with an invoice past due, the largest overdue amount first."""
    html = client.get("/customers/?status=overdue&sort=-overdue").get_data(as_text=True)
    assert _names(html) == ["Initech Inc.", "Globex GmbH", "Umbrella Corp"]
    assert _names(client.get("/customers/?sort=-open").get_data(as_text=True))[:3] == \
        ["Initech Inc.", "Globex GmbH", "Umbrella Corp"]
    assert _names(client.get("/customers/?status=overdue&collector=cora@example.com").get_data(as_text=True)) == \
        ["Globex GmbH", "Initech Inc."]


# -- at scale the list reads indexes: what it shows must not change ----------------------------------------

SEARCH_NAMES = ["Zoë's Café", "Müller & Söhne KG", 'O\'Brien "Quotes" Ltd', "100% Pure_Ltd", "1000 PureXLtd",
                "Ærøskøbing Ferries", "東京商事 株式会社", "Straße Bau", "globex.de Holdings", "ÉCOLE DU LOUVRE",
                "ΑΘΗΝΑ Shipping"]
SEARCHES = ["zoë's", "ZOË'S CAFÉ", "'s ca", "müller", "MÜLLER", "söhne", '"quotes"', "o'brien", "100%", "e_l",
            "_ltd", "ærø", "ÆRØ", "東京商", "straße", "globex.de", "@globex.de", "ap@globex.de", "CUST-003", "C2",
            "zo", "%", "nothing like this", "école", "École du", "αθηνα", "ΑΘΉΝΑ"]


def test_a_search_through_the_index_finds_what_the_plain_search_finds(client, book, monkeypatch):
    """Names with apostrophes, quotes, LIKE wildcards and non-ASCII letters, email domains, ERP numbers and
    ids: the search through its index (SQLite FTS5 trigram, PostgreSQL pg_trgm) lists exactly the customers
    the search read from every row lists (the text shorter than a trigram always reads every row)."""
    from console.views.customers import queries

    for name in SEARCH_NAMES:
        book.customer(name)
    gone = book.customer("Zoë's Café (closed)")
    Customer.update(deleted_at=datetime.now(timezone.utc)).where(Customer.id == gone.id).execute()
    def search(q):
        return [unescape(n) for n in _names(client.get("/customers/", query_string={"q": q}).get_data(as_text=True))]

    indexed = {q: search(q) for q in SEARCHES}
    monkeypatch.setattr(queries, "SEARCH_MIN_CHARS", 10_000)  # every search reads every customer
    plain = {q: search(q) for q in SEARCHES}
    assert indexed == plain
    assert indexed["zoë's"] == ["Zoë's Café"] and indexed["'s ca"] == ["Zoë's Café"]
    assert indexed["MÜLLER"] == ["Müller & Söhne KG"] and indexed["söhne"] == ["Müller & Söhne KG"]
    assert indexed['"quotes"'] == ['O\'Brien "Quotes" Ltd'] and indexed["100%"] == ["100% Pure_Ltd"]
    assert indexed["e_l"] == ["100% Pure_Ltd"] and indexed["東京商"] == ["東京商事 株式会社"]
    assert indexed["@globex.de"] == ["Globex GmbH"] and indexed["globex.de"] == ["Globex GmbH", "globex.de Holdings"]
    assert indexed["CUST-003"] == ["Umbrella Corp"] and indexed["C2"] == ["Initech Inc."]  # ERP number, ERP id
    assert indexed["nothing like this"] == [] and "Zoë's Café (closed)" not in indexed["zoë's"]
    # upper-case letters beyond ASCII are found by a lower-case search, and the other way round
    assert indexed["ærø"] == indexed["ÆRØ"] == ["Ærøskøbing Ferries"]
    assert indexed["école"] == indexed["École du"] == ["ÉCOLE DU LOUVRE"]
    assert indexed["αθηνα"] == ["ΑΘΗΝΑ Shipping"] and indexed["ΑΘΉΝΑ"] == []  # accents are letters: Ή is not Η


def test_the_search_index_follows_a_sync_that_renames_and_deletes_customers(db, sandbox):
    """After a sync renames a customer in the ERP, searching the new name finds it and the old name no longer
    does; a customer deleted in the ERP is no longer found; a customer row deleted from the store leaves the
    index too (SQLite's FTS5 table is kept by triggers, PostgreSQL's indexes by the database)."""
    from console.views.customers.queries import Filters, list_page

    sync = _netsuite_sync(sandbox)

    def found(q):
        return [r.name for r in list_page(Filters.from_args({"q": q, "per_page": "200"}), today()).rows]

    sync()
    renamed, deleted = sorted(sandbox.book.customers)[:2]
    old_name = sandbox.book.customers[renamed].name
    assert old_name in found(old_name)
    sandbox.book.rename_customer(renamed, "Quixotic Zebra Trading")
    sandbox.book.delete("customer", deleted)
    gone = Customer.get(Customer.external_id == str(deleted)).name
    assert gone in found(gone)
    sync()
    assert Customer.get(Customer.external_id == str(renamed)).name == "Quixotic Zebra Trading"
    assert found("zebra trad") == ["Quixotic Zebra Trading"] and found("QUIXOTIC") == ["Quixotic Zebra Trading"]
    assert old_name not in found(old_name)
    assert gone not in found(gone)
    Customer.delete().where(Customer.external_id == str(renamed)).execute()
    assert found("zebra trad") == []
    if db.__class__.__name__.startswith("Sqlite"):  # the FTS5 table agrees with its content table
        db.execute_sql("INSERT INTO \"customer_search\" (\"customer_search\") VALUES ('integrity-check')")


def _amount_book(book, n_open=23, n_zero=40):
    """``n_open`` customers with open invoices (distinct amounts, all in the 1-30 bucket), ``n_zero`` with
    nothing open, and one of each deleted (never listed nor counted)."""
    for n in range(n_open):
        c = book.customer(f"Open {n:02d}")
        book.invoice(c, f"{100 + 37 * ((n * 7) % n_open)}.00", days_past_due=5 + n)
        book.invoice(c, f"{10 + n}.00", days_past_due=-5)  # current
    for n in range(n_zero):
        book.customer(f"Zero {n:02d}")
    gone_open, gone_zero = book.customer("Gone open"), book.customer("Gone zero")
    book.invoice(gone_open, "99999.00", days_past_due=30)
    Customer.update(deleted_at=datetime.now(timezone.utc)).where(
        Customer.id.in_([gone_open.id, gone_zero.id])).execute()


def _all_pages(client, qs: str) -> tuple[list[list[str]], set[str]]:
    """Every page of the list (25 per page) until an empty one, and the totals the pages showed."""
    pages, totals, page = [], set(), 1
    while True:
        html = client.get(f"/customers/?{qs}&per_page=25&page={page}").get_data(as_text=True)
        totals.add(re.search(r"([\d,]+) match", html).group(1))
        if not _names(html):
            return pages, totals
        pages.append(_names(html))
        page += 1


def test_every_page_of_an_amount_sort_shows_the_right_customers(client, book):
    """Sorted by open (ascending and descending) or overdue, page after page, the list shows every live
    customer once: those with something open in the sort's order (ties by id), then those with nothing open
    by name, on a page shared with the last open ones and on pages wholly past them; deleted customers are
    neither shown nor counted, and every page shows the same total. Filtered (a bucket, a collector), the same
    holds for the customers the filter keeps."""
    from console.views.customers.queries import Filters, list_page

    _amount_book(book)
    live = list(Customer.select().where(Customer.deleted_at.is_null()))
    rows = {r.id: r for r in list_page(Filters.from_args({"per_page": "200"}), book.today).rows}
    assert len(rows) == len(live) == 4 + 23 + 40
    with_open = [c for c in live if rows[c.id].open_invoices]
    zero = [c.name for c in sorted((c for c in live if not rows[c.id].open_invoices), key=lambda c: (c.name, c.id))]
    assert len(with_open) == 26 and len(zero) == 41
    for qs, key in (("sort=open&dir=asc", lambda c: (rows[c.id].open_reporting, c.id)),
                    ("sort=open", lambda c: (-rows[c.id].open_reporting, c.id)),
                    ("sort=overdue", lambda c: (-rows[c.id].overdue_reporting, c.id))):
        expected = [c.name for c in sorted(with_open, key=key)] + zero
        pages, totals = _all_pages(client, qs)
        assert [len(p) for p in pages] == [25, 25, 17] and sum(pages, []) == expected, qs
        assert pages[2] == zero[24:]  # wholly past the open ones
        assert totals == {"67"}
    pages, totals = _all_pages(client, "bucket=1-30")  # an amount filter, by name: no nothing-open customer
    assert sum(pages, []) == sorted(["Initech Inc."] + [f"Open {n:02d}" for n in range(23)]) and totals == {"24"}
    Customer.update(collector="cora@example.com").where(Customer.name.startswith("Zero")).execute()
    mine = [c for c in live if c.name.startswith("Zero") or c.collector == "cora@example.com"]
    pages, totals = _all_pages(client, "collector=cora@example.com&sort=open&dir=asc")
    assert sum(pages, []) == [c.name for c in sorted((c for c in mine if rows[c.id].open_invoices),
                                                     key=lambda c: (rows[c.id].open_reporting, c.id))] + \
        [c.name for c in sorted((c for c in mine if not rows[c.id].open_invoices), key=lambda c: (c.name, c.id))]
    assert [len(p) for p in pages] == [25, 17] and totals == {"42"}


def test_the_filter_drop_downs_list_the_values_of_live_customers(client, book):
    """The segment and currency drop-downs list each value live customers have, once, in order: none for
    a value only deleted customers have, no empty value."""
    book.customer("Yen Co", currency="JPY", segment="public-sector")
    gone = book.customer("Gone Ltd", currency="CHF", segment="zz-closed")
    Customer.update(deleted_at=datetime.now(timezone.utc)).where(Customer.id == gone.id).execute()
    html = client.get("/customers/").get_data(as_text=True)
    select = lambda name: re.search(rf'<select[^>]*name="{name}"[^>]*>(.*?)</select>', html, re.S).group(1)  # noqa
    options = lambda name: re.findall(r'<option\s*(?:selected)?\s*>([^<]*)</option>', select(name))  # noqa
    assert options("segment") == ["enterprise", "public-sector", "smb"]
    assert options("currency") == ["EUR", "JPY", "USD"]
