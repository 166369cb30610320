"""The console's matching review: candidates with scores and reasons, link / unlink / reset by an
admin (audited, kept by later matching runs), filtered and paged lists, and refusals for other roles."""
from __future__ import annotations

import html
import itertools
import re

import pytest

from console import create_app
from middleware.matching import domain_of, normalize_name, run_matching
from middleware.models import AuditLog, Customer, MatchCandidate, SfAccount, Source
from middleware.people import create_user
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf

_ids = itertools.count(1)


@pytest.fixture
def app(db, redis_url):
    create_user("ada@example.com", "Ada Admin", "admin", PASSWORD, actor="test")
    create_user("cole@example.com", "Cole Collector", "collector", PASSWORD, actor="test")
    create_user("vic@example.com", "Vic Viewer", "viewer", PASSWORD, actor="test")
    return create_app()


@pytest.fixture
def sources(db):
    return Source.create(name="salesforce", kind="salesforce", config={}), Source.create(name="erp", kind="rest", config={})


def customer(erp, name, *, country=None, email=None, number=None) -> Customer:
    n = next(_ids)
    return Customer.create(source=erp, external_id=f"ext-{n}", number=number or f"CUST-{n:06d}", name=name,
                           email=email, country=country, billing_currency="USD", content_hash="x" * 32)


def account(sf, name, *, country=None, website=None, erp_key=None) -> SfAccount:
    return SfAccount.create(source=sf, sf_id=f"001{next(_ids):015d}", name=name, name_key=normalize_name(name),
                            domain=domain_of(website), country=country, erp_key=erp_key)


def state(c: Customer):
    c = Customer.get_by_id(c.id)
    return c.match_state, c.sf_account_id


def login(app, email):
    client = app.test_client()
    token = _csrf(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token}).status_code == 302
    return client


def page_text(client, url) -> str:
    resp = client.get(url)
    assert resp.status_code == 200, resp.status_code
    return html.unescape(resp.get_data(as_text=True))


@pytest.fixture
def book(sources):
    """A review case (same name, other country: 75), a tie (two Accounts within the margin), an exact link,
    an external-id link and a customer no Account resembles; then one matching run."""
    sf, erp = sources
    cases = {
        "review": customer(erp, "Kalorami Systems GmbH", country="DE"),
        "tie": customer(erp, "Vandelay Industries"),
        "auto": customer(erp, "Initech Holdings", country="US"),
        "ext": customer(erp, "Globex Corporation", number="C-100"),
        "none": customer(erp, "Zyxwvut Qponml"),
    }
    accounts = {
        "review": account(sf, "Kalorami Systems AG", country="AT"),
        "tie1": account(sf, "Vandelay Industries Inc"),
        "tie2": account(sf, "Vandelay Industries LLC"),
        "auto": account(sf, "Initech Holdings Inc.", country="US"),
        "ext": account(sf, "Something Else Entirely", erp_key="C-100"),
        "other": account(sf, "Hooli Media"),
    }
    run_matching(sf)
    assert state(cases["review"])[0] == "review" and state(cases["tie"])[0] == "review"
    assert state(cases["auto"]) == ("auto", accounts["auto"].sf_id)
    assert state(cases["ext"])[0] == "external_id" and state(cases["none"])[0] == "unmatched"
    return sf, cases, accounts


def test_the_review_queue_shows_candidates_with_scores_and_reasons(app, book):
    """The review tab lists each waiting customer with its candidate Accounts, their scores and why."""
    sf, cases, accounts = book
    client = login(app, "vic@example.com")  # reading is for every role
    text = page_text(client, "/matching/")
    card = text[text.index(f'data-testid="review-{cases["review"].id}"'):]
    card = card[:card.index("</table>")]
    assert "Kalorami Systems AG" in card and accounts["review"].sf_id in card
    assert re.search(r">\s*75\s*<", card), card
    assert "country differs: DE vs AT" in card
    tie = text[text.index(f'data-testid="review-{cases["tie"].id}"'):]
    assert "ambiguous: 2 accounts within 5 points" in tie
    assert "Vandelay Industries Inc" in tie and "Vandelay Industries LLC" in tie
    assert f'review-{cases["auto"].id}"' not in text


def test_a_manual_link_is_audited_and_survives_a_later_matching_run(app, book):
    """An admin links the customer to the second of two tied Accounts; the audit log names them, the
    customer page says who decided, and the next matching run keeps the link."""
    sf, cases, accounts = book
    client = login(app, "ada@example.com")
    text = page_text(client, "/matching/")
    chosen = accounts["tie2"].sf_id
    resp = client.post(f"/matching/customer/{cases['tie'].id}/link",
                       data={"csrf_token": _csrf(text), "sf_account_id": chosen, "next": "/matching/"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/matching/")
    assert state(cases["tie"]) == ("manual", chosen)
    audit = AuditLog.get(AuditLog.object_type == "customer", AuditLog.action == "match.link")
    assert audit.actor == "ada@example.com" and audit.after == {"match_state": "manual", "sf_account_id": chosen}
    text = page_text(client, "/matching/")
    assert f'review-{cases["tie"].id}"' not in text and "later matching runs keep this link" in text

    result = run_matching(sf)
    assert result.manual_kept == 1
    assert state(cases["tie"]) == ("manual", chosen)
    text = page_text(client, f"/matching/customer/{cases['tie'].id}")
    assert "linked by a person" in text and "Vandelay Industries LLC" in text and "ada@example.com" in text


def test_link_to_a_typed_account_id_and_an_unknown_id_is_refused(app, book):
    """An admin may link to any Account by its Id (found by name on the customer page); an Id that no
    Account has changes nothing and says so."""
    sf, cases, accounts = book
    client = login(app, "ada@example.com")
    text = page_text(client, f"/matching/customer/{cases['none'].id}?account=hooli")
    assert accounts["other"].sf_id in text[text.index('data-testid="account-search"'):]
    resp = client.post(f"/matching/customer/{cases['none'].id}/link",
                       data={"csrf_token": _csrf(text), "sf_account_id": "001NOSUCHACCOUNT00"}, follow_redirects=True)
    assert "Nothing changed: no Salesforce account" in html.unescape(resp.get_data(as_text=True))
    assert state(cases["none"]) == ("unmatched", None)
    client.post(f"/matching/customer/{cases['none'].id}/link",
                data={"csrf_token": _csrf(text), "sf_account_id": accounts["other"].sf_id})
    assert state(cases["none"]) == ("manual", accounts["other"].sf_id)
    accepted = MatchCandidate.get(MatchCandidate.customer == cases["none"].id)
    assert accepted.status == "accepted" and accepted.decided_by == "ada@example.com"


def test_unlink_stays_unlinked_until_reset(app, book):
    """"No Account" removes an automatic link and later runs leave it unlinked; "reset" hands the
    customer back to the next run, which links it again."""
    sf, cases, accounts = book
    client = login(app, "ada@example.com")
    token = _csrf(page_text(client, f"/matching/customer/{cases['auto'].id}"))
    client.post(f"/matching/customer/{cases['auto'].id}/unlink", data={"csrf_token": token})
    assert state(cases["auto"]) == ("manual_unlinked", None)
    run_matching(sf)
    assert state(cases["auto"]) == ("manual_unlinked", None)
    client.post(f"/matching/customer/{cases['auto'].id}/reset", data={"csrf_token": token})
    assert state(cases["auto"]) == (None, None)
    run_matching(sf)
    assert state(cases["auto"]) == ("auto", accounts["auto"].sf_id)
    assert [a.action for a in AuditLog.select().where(AuditLog.object_type == "customer").order_by(AuditLog.id)] == \
        ["match.unlink", "match.reset"]


def test_linked_and_unlinked_lists_filter_by_state_and_name(app, book):
    """The linked list filters manual / auto / external id, the unlinked list unmatched / no Account."""
    sf, cases, accounts = book
    client = login(app, "ada@example.com")
    token = _csrf(page_text(client, "/matching/"))
    client.post(f"/matching/customer/{cases['review'].id}/link",
                data={"csrf_token": token, "sf_account_id": accounts["review"].sf_id})

    def listed(url):
        text = page_text(client, url)
        return {int(i) for i in re.findall(r'data-testid="customer-(\d+)"', text)}

    assert listed("/matching/?tab=linked") == {cases["review"].id, cases["auto"].id, cases["ext"].id}
    assert listed("/matching/?tab=linked&state=manual") == {cases["review"].id}
    assert listed("/matching/?tab=linked&state=auto") == {cases["auto"].id}
    assert listed("/matching/?tab=linked&state=external_id") == {cases["ext"].id}
    assert listed("/matching/?tab=linked&q=Initech") == {cases["auto"].id}
    assert listed("/matching/?tab=unlinked&state=unmatched") == {cases["none"].id}
    text = page_text(client, "/matching/?tab=linked&state=auto")
    assert "Initech Holdings Inc." in text and accounts["auto"].sf_id in text


def test_the_review_queue_is_paged(app, sources):
    """Thirty customers in review: 25 on the first page, the other 5 on the second, none twice."""
    sf, erp = sources
    for n in range(30):
        customer(erp, f"Pagination Works {n} GmbH", country="DE")
        account(sf, f"Pagination Works {n} AG", country="AT")
    run_matching(sf)
    client = login(app, "ada@example.com")
    first = set(re.findall(r'data-testid="review-(\d+)"', page_text(client, "/matching/")))
    second_page = page_text(client, "/matching/?tab=review&page=2")
    second = set(re.findall(r'data-testid="review-(\d+)"', second_page))
    assert len(first) == 25 and len(second) == 5 and not first & second
    assert "next ›" not in second_page and "‹ previous" in second_page


@pytest.mark.parametrize("email", ["cole@example.com", "vic@example.com"])
def test_collectors_and_viewers_may_not_decide(app, book, email):
    """A collector or a viewer sees the review, without buttons, and gets 403 on link, unlink and reset."""
    sf, cases, accounts = book
    client = login(app, email)
    text = page_text(client, "/matching/")
    assert "Kalorami Systems AG" in text and "No Account</button>" not in text
    token = _csrf(text)
    cid = cases["review"].id
    assert client.post(f"/matching/customer/{cid}/link",
                       data={"csrf_token": token, "sf_account_id": accounts["review"].sf_id}).status_code == 403
    assert client.post(f"/matching/customer/{cid}/unlink", data={"csrf_token": token}).status_code == 403
    assert client.post(f"/matching/customer/{cases['auto'].id}/reset", data={"csrf_token": token}).status_code == 403
    assert state(cases["review"])[0] == "review" and state(cases["auto"])[0] == "auto"
    assert not AuditLog.select().where(AuditLog.object_type == "customer").exists()
