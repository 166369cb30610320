"""ERP customer ↔ Salesforce account matching (middleware.matching) on SQLite and PostgreSQL."""
from __future__ import annotations

import itertools

import pytest

from middleware import matching
from middleware.matching import MatchConfig, domain_of, normalize_name, run_matching
from middleware.models import AuditLog, Customer, MatchCandidate, SfAccount, Source

_ids = itertools.count(1)


@pytest.fixture
def sources(db):
    """(salesforce source, ERP source)."""
    sf = Source.create(name="salesforce", kind="salesforce", config={})
    erp = Source.create(name="erp", kind="rest", config={})
    return sf, erp


@pytest.fixture
def sf(sources):
    return sources[0]


@pytest.fixture
def erp(sources):
    return sources[1]


def customer(erp, name, *, number=None, email=None, country=None, parent=None, **extra) -> Customer:
    n = next(_ids)
    return Customer.create(source=erp, external_id=f"ext-{n}", number=number or f"CUST-{n:06d}", name=name,
                           email=email, country=country, parent=parent, billing_currency="USD",
                           content_hash="x" * 32, **extra)


def account(sf, name, *, erp_key=None, website=None, country=None, parent_sf_id=None, sf_id=None) -> SfAccount:
    return SfAccount.create(source=sf, sf_id=sf_id or f"001{next(_ids):015d}", name=name,
                            name_key=normalize_name(name), erp_key=erp_key, domain=domain_of(website),
                            country=country, parent_sf_id=parent_sf_id)


def state(c: Customer) -> tuple[str | None, str | None]:
    c = Customer.get_by_id(c.id)
    return c.match_state, c.sf_account_id


def candidates(c: Customer, status: str | None = None) -> dict[str, MatchCandidate]:
    query = MatchCandidate.select().where(MatchCandidate.customer == c.id)
    if status:
        query = query.where(MatchCandidate.status == status)
    return {row.sf_account_id: row for row in query}


def snapshot():
    """Every customer's link and every candidate row, timestamps included."""
    return (sorted((c.id, c.match_state, c.sf_account_id) for c in Customer.select()),
            sorted((m.customer_id, m.sf_account_id, m.status, m.score, tuple(m.reasons), str(m.created_at),
                    str(m.decided_at), m.decided_by) for m in MatchCandidate.select()))


# -- external id -----------------------------------------------------------------------------------


def test_external_id_links_regardless_of_name(sf, erp):
    """An Account whose external-id field holds the customer's number is linked (state external_id),
    even when the names have nothing in common."""
    c = customer(erp, "Globex Corporation", number="C-100")
    a = account(sf, "Totally Different Name Ltd", erp_key="C-100")
    result = run_matching(sf)
    assert state(c) == ("external_id", a.sf_id)
    assert result.linked_external_id == 1
    explained = matching.explain_match(c.id)
    assert explained["account"] == {"sf_id": a.sf_id, "name": "Totally Different Name Ltd"}
    assert explained["reasons"] == ["external id number = C-100"] and explained["score"] == 100


def test_external_id_field_is_configurable(sf, erp):
    """With erp_key_field "external_id" the Account's key is compared with Customer.external_id, not the number."""
    c = customer(erp, "Initech", number="N-1")
    by_number = account(sf, "Initech number", erp_key="N-1")
    by_external_id = account(sf, "Initech external", erp_key=c.external_id)
    sf.config = {"matching": {"erp_key_field": "external_id"}}
    sf.save()
    run_matching(sf)
    assert state(c) == ("external_id", by_external_id.sf_id)
    assert by_number.sf_id != by_external_id.sf_id


def test_duplicate_external_id_goes_to_review(sf, erp):
    """Two Accounts with the same external id link nothing: both wait in review, saying why."""
    c = customer(erp, "Umbrella Corp", number="C-7")
    a1, a2 = account(sf, "Umbrella", erp_key="C-7"), account(sf, "Umbrella Corporation", erp_key="C-7")
    result = run_matching(sf)
    assert state(c) == ("review", None)
    assert result.review == 1 and result.linked_external_id == 0
    rows = candidates(c, "pending")
    assert set(rows) == {a1.sf_id, a2.sf_id}
    assert all("duplicate external id on 2 accounts" in r.reasons for r in rows.values())


def test_account_with_another_customers_external_id_is_not_a_candidate(sf, erp):
    """An Account that carries the external id of a different existing customer is not offered to
    a look-alike customer; an id no customer has does not hide the Account."""
    owner = customer(erp, "Hooli", number="C-1")
    look_alike = customer(erp, "Hooli", number="C-2", country="US")
    taken = account(sf, "Hooli", erp_key="C-1", country="US")
    run_matching(sf)
    assert state(owner) == ("external_id", taken.sf_id)
    assert state(look_alike) == ("unmatched", None)
    orphan_key = account(sf, "Hooli Inc.", erp_key="C-404", country="US")
    run_matching(sf)
    assert state(look_alike) == ("auto", orphan_key.sf_id)


# -- scoring ---------------------------------------------------------------------------------------


def test_name_variants_link(sf, erp):
    """Legal forms, punctuation, case, accents, "&" and a trailing ERP number do not stop a link."""
    acme = customer(erp, "ACME LABS INC 12", country="US")
    muller = customer(erp, "Müller & Söhne GmbH", country="DE")
    acme_acc = account(sf, "Acme Labs, Inc.", country="US")
    muller_acc = account(sf, "Muller and Sohne", country="DE")
    account(sf, "Globex Media", country="US")
    result = run_matching(sf)
    assert state(acme) == ("auto", acme_acc.sf_id)
    assert state(muller) == ("auto", muller_acc.sf_id)
    assert result.linked_auto == 2
    assert matching.explain_match(acme.id)["reasons"] == ["name 96 (token sort, ignoring numbers)", "country US"]
    assert matching.explain_match(muller.id)["reasons"] == ["name 100 (exact)", "country DE"]


def test_domain_and_country_break_a_tie(sf, erp):
    """Two Accounts with the customer's name: the one on the customer's e-mail domain and in its
    country is linked; the same customer without that evidence cannot choose and waits in review."""
    with_evidence = customer(erp, "Nordwind GmbH", email="ap@billing.nordwind.de", country="DE")
    without = customer(erp, "Nordwind GmbH")
    right = account(sf, "Nordwind GmbH", website="https://www.nordwind.de/", country="DE")
    other = account(sf, "Nordwind AG", website="nordwind.at", country="AT")
    run_matching(sf)
    assert state(with_evidence) == ("auto", right.sf_id)
    explained = matching.explain_match(with_evidence.id)
    assert explained["reasons"] == ["name 100 (exact)", "domain nordwind.de", "country DE"]
    assert explained["score"] == 100
    assert state(without) == ("review", None)
    assert set(candidates(without, "pending")) == {right.sf_id, other.sf_id}


def test_ambiguous_candidates_go_to_review_with_reasons(sf, erp):
    """When the best two Accounts score within the ambiguity margin nothing is linked: both are
    review candidates with their scores and reasons, and the review queue lists them best first."""
    c = customer(erp, "Initech Systems", country="US")
    a1 = account(sf, "Initech Systems Inc", country="US")
    a2 = account(sf, "Initech Systems, LLC", country="US")
    weaker = customer(erp, "Vandelay Import Export", country="US")
    vandelay = account(sf, "Vandelay Imports", country="US")
    result = run_matching(sf)
    assert state(c) == ("review", None) and state(weaker) == ("review", None)
    assert result.review == 2
    rows = candidates(c, "pending")
    assert set(rows) == {a1.sf_id, a2.sf_id}
    for row in rows.values():
        assert row.score == 95
        assert row.reasons == ["name 100 (exact)", "country US", "ambiguous: 2 accounts within 5 points"]
    queue = matching.review_queue(limit=10)
    assert [entry["customer_id"] for entry in queue] == [c.id, weaker.id]  # best candidate score first
    assert [cand["account"] for cand in queue[0]["candidates"]] == ["Initech Systems Inc", "Initech Systems, LLC"]
    assert queue[1]["candidates"][0]["sf_account_id"] == vandelay.sf_id
    assert 70 <= queue[1]["candidates"][0]["score"] < 90
    assert queue[1]["candidates"][0]["reasons"] == ["name 79 (token sort)", "country US"]
    assert [e["customer_id"] for e in matching.review_queue(limit=1, offset=1)] == [weaker.id]


def test_below_the_review_threshold_is_unmatched(sf, erp):
    """A customer whose best Account scores under the review threshold is unmatched, with no candidates."""
    c = customer(erp, "Wonka Confectionery", country="GB")
    account(sf, "Wonka Candy", country="GB")  # name 60 + country 5 = 59
    account(sf, "Pied Piper", country="GB")
    result = run_matching(sf)
    assert state(c) == ("unmatched", None)
    assert result.unmatched == 1
    assert candidates(c) == {}
    assert matching.explain_match(c.id)["account"] is None


def test_free_mail_domain_is_no_evidence(sf, erp):
    """A gmail.com address never counts as a domain match, even against an Account stored with that domain."""
    c = customer(erp, "Blue Sun", email="bluesun.billing@gmail.com")
    plain = account(sf, "Blue Sun Ltd")
    gmail = SfAccount.create(source=sf, sf_id="001GMAIL0000000001", name="Blue Sun", name_key="blue sun",
                             domain="gmail.com")
    assert domain_of("bluesun.billing@gmail.com") is None
    run_matching(sf)
    assert state(c) == ("review", None)  # two exact names, nothing to tell them apart
    rows = candidates(c, "pending")
    assert set(rows) == {plain.sf_id, gmail.sf_id}
    assert not any(reason.startswith("domain") for row in rows.values() for reason in row.reasons)


def test_deleted_customers_are_skipped(sf, erp):
    """A customer deleted in the ERP is not matched."""
    c = customer(erp, "Soylent", country="US", deleted_at=matching.utcnow())
    account(sf, "Soylent Inc.", country="US")
    result = run_matching(sf)
    assert state(c) == (None, None)
    assert result.changed == 0 and result.unchanged == 0


# -- stability, manual decisions --------------------------------------------------------------------


def test_second_run_changes_nothing(sf, erp):
    """Run twice over the same data: the second run writes nothing and reports every customer unchanged."""
    customer(erp, "Globex", number="C-1")
    account(sf, "Globex", erp_key="C-1")
    customer(erp, "Acme Labs", country="US")
    account(sf, "Acme Labs Inc", country="US")
    customer(erp, "Initech", country="US")
    account(sf, "Initech Inc", country="US")
    account(sf, "Initech LLC", country="US")
    customer(erp, "Nobody Matches Me")
    first = run_matching(sf)
    assert (first.linked_external_id, first.linked_auto, first.review, first.unmatched) == (1, 1, 1, 1)
    before = snapshot()
    second = run_matching(sf, now=matching.utcnow())
    assert second.changed == 0 and second.unchanged == 4
    assert snapshot() == before


def test_auto_link_holds_until_its_account_goes(sf, erp):
    """A new look-alike Account does not unlink an auto-linked customer; when the linked Account is
    deleted the customer is re-evaluated and moves to the remaining Account."""
    c = customer(erp, "Cyberdyne Systems", country="US")
    first = account(sf, "Cyberdyne Systems Inc", country="US")
    run_matching(sf)
    assert state(c) == ("auto", first.sf_id)
    second = account(sf, "Cyberdyne Systems LLC", country="US")
    result = run_matching(sf)
    assert state(c) == ("auto", first.sf_id) and result.unchanged == 1
    SfAccount.update(is_deleted=True).where(SfAccount.id == first.id).execute()
    result = run_matching(sf)
    assert state(c) == ("auto", second.sf_id) and result.linked_auto == 1
    assert set(candidates(c)) == {second.sf_id}


def test_manual_link_and_unlink_survive_reruns(sf, erp):
    """A person's link (state manual) and unlink (state manual_unlinked) are kept by every later run,
    each decision is in the audit log, and the chosen candidate is accepted, the others rejected."""
    linked = customer(erp, "Tyrell Corp", country="US")
    tyrell, tyrell_labs = account(sf, "Tyrell", country="US"), account(sf, "Tyrell Labs", country="US")
    unlinked = customer(erp, "Oscorp", country="US")
    oscorp = account(sf, "Oscorp", country="US")
    run_matching(sf)
    assert state(linked) == ("auto", tyrell.sf_id)
    assert state(unlinked) == ("auto", oscorp.sf_id)

    matching.link(linked.id, tyrell_labs.sf_id, actor="alice")
    matching.unlink(unlinked.id, actor="bob")
    for _ in range(2):
        result = run_matching(sf)
        assert state(linked) == ("manual", tyrell_labs.sf_id)
        assert state(unlinked) == ("manual_unlinked", None)
        assert result.manual_kept == 2 and result.changed == 0

    rows = candidates(linked)
    assert rows[tyrell_labs.sf_id].status == "accepted" and rows[tyrell_labs.sf_id].decided_by == "alice"
    assert rows[tyrell.sf_id].status == "rejected"
    assert rows[tyrell_labs.sf_id].reasons[0] == "linked by alice"
    assert {r.status for r in candidates(unlinked).values()} == {"rejected"}
    assert oscorp.sf_id in candidates(unlinked)
    audit = {a.action: a for a in AuditLog.select().where(AuditLog.object_type == "customer")}
    assert audit["match.link"].actor == "alice" and audit["match.link"].object_id == str(linked.id)
    assert audit["match.link"].before == {"match_state": "auto", "sf_account_id": tyrell.sf_id}
    assert audit["match.link"].after == {"match_state": "manual", "sf_account_id": tyrell_labs.sf_id}
    assert audit["match.unlink"].after == {"match_state": "manual_unlinked", "sf_account_id": None}
    explained = matching.explain_match(unlinked.id)
    assert explained["reasons"] == ["unlinked by bob"] and explained["decided_by"] == "bob"
    assert matching.explain_match(linked.id)["decided_by"] == "alice"


def test_manual_link_rejects_unknown_accounts(sf, erp):
    """Linking to an Account that is not in the store is refused and changes nothing."""
    c = customer(erp, "Wayne Enterprises")
    with pytest.raises(matching.MatchError):
        matching.link(c.id, "001NOPE00000000000", actor="alice")
    assert state(c) == (None, None) and AuditLog.select().count() == 0


def test_reset_hands_the_customer_back_to_the_next_run(sf, erp):
    """After reset the customer has no state and no link; the next run decides it again."""
    c = customer(erp, "Aperture Science", country="US")
    auto = account(sf, "Aperture Science Inc", country="US")
    chosen = account(sf, "Black Mesa", country="US")
    matching.link(c.id, chosen.sf_id, actor="alice")
    matching.reset(c.id, actor="carol")
    assert state(c) == (None, None) and candidates(c) == {}
    reset_row = AuditLog.get(AuditLog.action == "match.reset")
    assert reset_row.actor == "carol" and reset_row.before == {"match_state": "manual", "sf_account_id": chosen.sf_id}
    assert matching.explain_match(c.id)["reasons"] == ["not matched yet"]
    result = run_matching(sf)
    assert state(c) == ("auto", auto.sf_id) and result.linked_auto == 1


# -- parents ---------------------------------------------------------------------------------------------


def test_parent_rule_inherit(sf, erp):
    """With parent_rule "own" a child with no match of its own stays unmatched; with "inherit" it
    takes its parent's Account (state auto, reason inherited from parent), and keeps it on rerun."""
    parent = customer(erp, "Stark Industries", number="C-1")
    child = customer(erp, "Tony Workshop", parent=parent)
    grandchild = customer(erp, "Jarvis Helpdesk", parent=child)
    stark = account(sf, "Stark Industries", erp_key="C-1")
    run_matching(sf)
    assert state(child) == ("unmatched", None) and state(grandchild) == ("unmatched", None)
    result = run_matching(sf, config={"parent_rule": "inherit"})
    assert state(child) == ("auto", stark.sf_id) and state(grandchild) == ("auto", stark.sf_id)
    assert result.inherited == 2
    assert matching.explain_match(child.id)["reasons"][0] == "inherited from parent Stark Industries"
    assert matching.explain_match(grandchild.id)["reasons"][0] == "inherited from parent Tony Workshop"
    again = run_matching(sf, config={"parent_rule": "inherit"})
    assert again.changed == 0 and again.unchanged == 3


def test_child_with_its_own_match_does_not_inherit(sf, erp):
    """Inheritance only fills in for children with no match of their own."""
    parent = customer(erp, "Massive Dynamic", number="C-1")
    child = customer(erp, "Massive Dynamic Europe", number="C-2", country="DE")
    account(sf, "Massive Dynamic", erp_key="C-1")
    own = account(sf, "Massive Dynamic Europe GmbH", country="DE")
    run_matching(sf, config={"parent_rule": "inherit"})
    assert state(child) == ("auto", own.sf_id)
    assert state(parent)[0] == "external_id"


def test_hierarchy_mismatch_is_reported(sf, erp):
    """When a customer and its parent are both linked, an Account whose Salesforce parent is not the
    parent customer's Account is reported (and still linked); an agreeing hierarchy is not reported."""
    parent = customer(erp, "Monarch Holdings", number="P-1")
    agrees = customer(erp, "Monarch Shipping", number="K-1", parent=parent)
    disagrees = customer(erp, "Monarch Mining", number="K-2", parent=parent)
    p = account(sf, "Monarch Holdings", erp_key="P-1")
    elsewhere = account(sf, "Some Other Group", erp_key="X-9")
    account(sf, "Monarch Shipping", erp_key="K-1", parent_sf_id=p.sf_id)
    mining = account(sf, "Monarch Mining", erp_key="K-2", parent_sf_id=elsewhere.sf_id)
    result = run_matching(sf)
    assert state(disagrees) == ("external_id", mining.sf_id)
    assert state(agrees)[0] == "external_id"
    assert result.hierarchy_mismatches == [{
        "customer_id": disagrees.id, "customer": "Monarch Mining", "account": mining.sf_id,
        "account_parent": elsewhere.sf_id, "parent_customer_id": parent.id, "parent_customer": "Monarch Holdings",
        "parent_account": p.sf_id,
    }]


def test_config_comes_from_the_salesforce_source(sf, erp):
    """Thresholds are read from source.config["matching"]: a stricter link threshold sends a
    95-point match to review."""
    c = customer(erp, "Dunder Paper", country="US")
    account(sf, "Dunder Paper Co", country="US")
    sf.config = {"matching": {"link_threshold": 98}}
    sf.save()
    assert MatchConfig.from_dict(sf.config["matching"]).link_threshold == 98
    run_matching(sf)
    assert state(c) == ("review", None)


def test_a_decision_made_during_a_run_wins(sf, erp, monkeypatch):
    """A person who links a customer while a run is computing keeps that link: the run re-reads
    the customers it is about to write and leaves the ones a person decided in the meantime."""
    c = customer(erp, "Bluth Company", country="US")
    auto = account(sf, "Bluth Company Inc", country="US")
    chosen = account(sf, "Bluth Frozen Bananas", country="US")
    real = matching._decide_by_score
    calls = []

    def decide_then_someone_links(cust, scored, cfg):
        if not calls:
            matching.link(c.id, chosen.sf_id, actor="dana")  # committed while the run is between load and write
        calls.append(cust.id)
        return real(cust, scored, cfg)

    monkeypatch.setattr(matching, "_decide_by_score", decide_then_someone_links)
    result = run_matching(sf)
    assert calls == [c.id]
    assert state(c) == ("manual", chosen.sf_id)
    assert result.manual_kept == 1 and result.changed == 0
    assert candidates(c)[chosen.sf_id].status == "accepted"
    assert auto.sf_id not in candidates(c)


def test_country_names_are_no_evidence(sf, erp):
    """Only two-letter country codes count: an Account whose country field holds "Germany" is
    neither a match nor a mismatch for a customer in DE."""
    c = customer(erp, "Sterling Cooper", country="DE")
    a = account(sf, "Sterling Cooper GmbH", country="Germany")
    run_matching(sf)
    assert state(c) == ("auto", a.sf_id)
    assert matching.explain_match(c.id)["reasons"] == ["name 100 (exact)"]
