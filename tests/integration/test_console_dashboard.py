"""The dashboard: AR totals, aging, trends, top overdue, cash against target, sync and queue health,
every figure a link; figures cached in Redis until a sync run finishes."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from console import create_app
from jobs.queues import InlineWorker, get_queue, get_redis
from middleware.models import Customer, Invoice, Payment, RejectedRecord, Source, SyncRun
from middleware.people import create_user
from middleware.settings import reset_settings
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf

D = Decimal


def _login(client, email):
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}).status_code == 302
    return client


class Book:
    """A few USD customers and invoices dated relative to today (rows as a sync leaves them)."""

    def __init__(self):
        self.source = Source.create(name="erp", kind="rest")
        self.today = date.today()
        self.n = 0

    def customer(self, name: str, collector: str | None = None) -> Customer:
        return Customer.create(source=self.source, external_id=name, number=f"C-{name}", name=name,
                               billing_currency="USD", collector=collector, content_hash="x")

    def invoice(self, customer: Customer, amount: str, due_in_days: int) -> Invoice:
        self.n += 1
        due = self.today + timedelta(days=due_in_days)
        return Invoice.create(source=self.source, external_id=f"INV-{self.n}", number=f"N-{self.n}",
                              customer=customer, customer_external_id=customer.external_id, currency="USD",
                              amount=D(amount), open_amount=D(amount), open_amount_reporting=D(amount),
                              amount_reporting=D(amount), issue_date=due - timedelta(days=30), due_date=due,
                              content_hash="x")

    def payment(self, customer: Customer, amount: str, day: date) -> Payment:
        self.n += 1
        return Payment.create(source=self.source, external_id=f"PAY-{self.n}", customer=customer,
                              customer_external_id=customer.external_id, currency="USD", amount=D(amount),
                              amount_reporting=D(amount), unapplied_amount=D(amount), date=day, content_hash="x")

    def sync_run(self, **counts) -> SyncRun:
        now = datetime.now(timezone.utc)
        return SyncRun.create(source=self.source, status=counts.pop("status", "succeeded"),
                              started_at=now - timedelta(seconds=5), finished_at=now, **counts)


@pytest.fixture
def app(db, redis_url, settings, monkeypatch):
    monkeypatch.setenv("ARHUB_CASH_TARGET", "2000")
    reset_settings()
    create_user("ada@example.com", "Ada Admin", "admin", PASSWORD, actor="test")
    create_user("vic@example.com", "Vic Viewer", "viewer", PASSWORD, actor="test")
    return create_app()


@pytest.fixture
def book(db):
    b = Book()
    acme, globex, initech = b.customer("Acme", "cara@example.com"), b.customer("Globex"), b.customer("Initech")
    b.invoice(acme, "1000.00", 10)  # current
    b.invoice(acme, "500.00", -45)  # 31-60
    b.invoice(globex, "250.00", -75)  # 61-90
    b.invoice(initech, "100.00", -100)  # 91+
    b.payment(globex, "300.00", b.today.replace(day=1))
    b.payment(globex, "999.00", b.today.replace(day=1) - timedelta(days=1))  # last month: not counted
    return b


def test_dashboard_shows_totals_aging_and_top_overdue_with_links(app, book):
    """Open, overdue and current AR in USD, DSO and ADD with their trend, one aging bar per bucket linking
    to its customers, and the overdue accounts largest first, each figure linking to the list behind it."""
    html = _login(app.test_client(), "vic@example.com").get("/").get_data(as_text=True)
    assert re.search(r'data-testid="total-open">.*?\$1,850\.00', html, re.S)
    assert re.search(r'data-testid="total-overdue">.*?\$850\.00', html, re.S)
    assert re.search(r'data-testid="total-current">.*?\$1,000\.00', html, re.S)
    assert 'href="/customers/?status=overdue&amp;sort=-overdue" data-testid="total-overdue"' in html
    # 90 days of sales: the 1,000 and 500 invoices (issued 20 and 75 days ago); DSO = 1,850 / 1,500 × 90
    assert re.search(r'data-testid="dso">.*?111\.0 d.*?best possible 60\.0 d', html, re.S)
    assert re.search(r'data-testid="add">.*?51\.0 d', html, re.S)
    assert html.count("<polyline") >= 2  # the DSO and ADD trend lines
    for label in ("current", "1-30", "31-60", "61-90", "91%2B"):
        assert f'href="/customers/?bucket={label}"' in html
    bar = re.search(r'data-testid="aging-bar-61-90".*?</a>', html, re.S).group(0)
    assert "$250.00" in bar
    top = re.search(r'data-testid="top-overdue">.*?</table>', html, re.S).group(0)
    assert top.index("Acme") < top.index("Globex") < top.index("Initech")
    assert "Vic" not in top and "$500.00" in top
    assert 'href="/customers/?collector=cara%40example.com&amp;status=overdue&amp;sort=-overdue"' in top


def test_cash_collected_this_month_against_the_target(app, book):
    """Payments dated this month count against ARHUB_CASH_TARGET (300 of 2,000: 15 %); last month's do not;
    the figure links to this month's payments."""
    client = _login(app.test_client(), "ada@example.com")
    html = client.get("/").get_data(as_text=True)
    cash = re.search(r'Cash collected this month.*?data-testid="cash-target">[^<]*', html, re.S).group(0)
    assert "$300.00" in cash and "15 %" in cash and "$2,000.00" in cash
    payments = client.get("/collected/").get_data(as_text=True)
    assert "$300.00" in payments and "$999.00" not in payments


def test_figures_are_cached_until_a_sync_run_finishes(app, book):
    """A document written without a sync does not change the cached figures; the next finished ERP sync
    run does, and the page says when the figures were computed."""
    client = _login(app.test_client(), "ada@example.com")
    assert "$1,850.00" in client.get("/").get_data(as_text=True)
    book.invoice(Customer.get(Customer.name == "Acme"), "50.00", 5)
    html = client.get("/").get_data(as_text=True)
    assert "$1,850.00" in html and "$1,900.00" not in html
    assert re.search(r'data-testid="as-of">\s*as of \d\d:\d\d', html)
    book.sync_run(fetched=1, created=1)
    assert "$1,900.00" in client.get("/").get_data(as_text=True)


def test_a_large_store_is_computed_by_a_job_not_in_the_request(app, book, monkeypatch):
    """Above the inline limit the page answers at once, queues one refresh job, and shows the figures
    once a worker has run it."""
    import jobs.dashboard

    monkeypatch.setattr(jobs.dashboard, "INLINE_MAX_INVOICES", 2)
    client = _login(app.test_client(), "ada@example.com")
    html = client.get("/").get_data(as_text=True)
    assert 'data-testid="figures-pending"' in html and "$1,850.00" not in html
    client.get("/")  # a second visit does not queue a second job
    queue = get_queue("default")
    assert [j.func_name for j in queue.jobs] == ["jobs.dashboard.refresh_dashboard"]
    InlineWorker([queue], connection=get_redis()).work(burst=True)
    assert "$1,850.00" in client.get("/").get_data(as_text=True)


def test_sync_and_queue_health_link_to_ops(app, book):
    """The last run of each source with its counts and rejects, and each queue's failed jobs, link to ops."""
    run = book.sync_run(status="partial", fetched=40, created=3, updated=2, rejected=1)
    RejectedRecord.create(run=run, source=book.source, object_name="invoice", external_id="X1",
                          raw={"id": "X1"}, reasons=[{"field": "due_date", "message": "missing"}])
    get_queue("dunning").enqueue("operator.truediv", 1, 0)
    InlineWorker([get_queue("dunning")], connection=get_redis()).work(burst=True)
    html = _login(app.test_client(), "ada@example.com").get("/").get_data(as_text=True)
    health = re.search(r'data-testid="sync-health">.*?</table>', html, re.S).group(0)
    assert "partial" in health and ">40<" in health and f'href="/ops/sync/{run.id}/#rejects"' in health
    queues = re.search(r'data-testid="queue-health">.*?</table>', html, re.S).group(0)
    assert re.search(r'href="/ops/queues/dunning/failed/"[^>]*data-testid="failed-dunning">1<', queues)
