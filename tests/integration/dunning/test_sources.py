"""Audience rule ``sources``: a campaign for the customers of some ERP sources only (two ERPs that
hold the same customers, as the demo's NetSuite and Xero sandboxes do, dun each customer once)."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from middleware.dunning import DunningError, explain, plan, seed_default_campaign, validate_audience
from middleware.models import Campaign, Company, Contact, Customer, DunningAction, Invoice, Source

DUE = date(2026, 4, 1)  # a Wednesday
DAY_AFTER = date(2026, 4, 2)  # "due + 1"


@pytest.fixture
def twins(db):
    """The same customer (external id C1, same name and email) in two ERP sources, one invoice
    due on DUE in each."""
    Company.create(name="Acme Cloud", timezone="UTC")
    ids = {}
    for name in ("netsuite", "xero"):
        src = Source.create(name=name, kind="soap" if name == "netsuite" else "rest", config={})
        c = Customer.create(source=src, external_id="C1", number="CUST-1", name="Globex Ltd", billing_currency="USD",
                            content_hash="x")
        Contact.create(source=src, external_id="C1:billing", customer=c, customer_external_id="C1", name="AP",
                       email="ap@globex.test", role="billing", content_hash="x")
        Invoice.create(source=src, external_id="I1", number="INV-1", customer=c, customer_external_id="C1",
                       currency="USD", amount=Decimal("100"), open_amount=Decimal("100"),
                       open_amount_reporting=Decimal("100"), issue_date=DUE - timedelta(days=30),
                       sent_date=DUE - timedelta(days=30), due_date=DUE, content_hash="x")
        ids[name] = c.id
    return ids


def test_a_campaign_limited_to_one_source_duns_the_shared_customer_once(twins):
    """Without a source condition both copies of the customer get the "overdue 1" email; with the
    default campaign's audience set to ``{"sources": ["netsuite"]}`` only the NetSuite copy does,
    the Xero copy is in no campaign (listed as unassigned), and explain says why."""
    seed_default_campaign()
    everyone = plan(DAY_AFTER, dry_run=True)
    assert sorted(r.customer_id for r in everyone.rows if r.channel == "email") == sorted(twins.values())

    Campaign.update(audience={"sources": ["netsuite"]}).where(Campaign.name == "Default").execute()
    result = plan(DAY_AFTER)
    assert [(r.customer_id, r.step_name) for r in result.rows] == [(twins["netsuite"], "overdue 1")]
    assert [cid for cid, _ in result.unassigned] == [twins["xero"]]
    assert DunningAction.select().where(DunningAction.customer == twins["xero"]).count() == 0

    why = explain(twins["xero"], DAY_AFTER)
    assert "sources: xero (wanted one of [netsuite]) → no" in "\n".join(why.lines())


def test_the_sources_condition_must_be_a_list_of_names():
    """A typo'd value (a bare string) is refused, not read as 'every source'."""
    assert validate_audience({"sources": ["netsuite"]}) == {"sources": ["netsuite"]}
    with pytest.raises(DunningError, match="sources must be a list"):
        validate_audience({"sources": "netsuite"})
