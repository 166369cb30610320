"""Assignment rules (middleware.rules) and cover while away (middleware.people) on SQLite and PostgreSQL:
rule tags come and go, manual and Salesforce tags stay, segments and collectors by priority, the team
queue, a person's assignment outlives rule runs, bulk reassignment is audited, absences end by themselves."""
from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from middleware import people, rules
from middleware.models import (
    Activity, AssignmentRule, AuditLog, Customer, CustomerTag, Invoice, SfAccount, SfUser, Source, Tag,
)
from middleware.rules import RuleError

_ids = itertools.count(1)
DAY = date(2026, 11, 23)


@pytest.fixture
def erp(db):
    return Source.create(name="erp", kind="rest", config={})


@pytest.fixture
def sf(db):
    return Source.create(name="salesforce", kind="salesforce", config={})


def customer(erp, name, *, arr=None, country=None, currency="USD", **extra) -> Customer:
    n = next(_ids)
    return Customer.create(source=erp, external_id=f"ext-{n}", number=f"C{n:05d}", name=name, country=country,
                           billing_currency=currency, arr=None if arr is None else Decimal(arr),
                           content_hash="x" * 32, **extra)


def linked(sf, cust: Customer, *, owner: SfUser | None = None, account_type=None, **fields) -> SfAccount:
    sf_id = f"001{next(_ids):015d}"
    account = SfAccount.create(source=sf, sf_id=sf_id, name=cust.name, name_key=cust.name.lower(),
                               account_type=account_type, owner_sf_id=owner.sf_id if owner else None,
                               fields={"Name": cust.name, "Type": account_type, **fields})
    Customer.update(sf_account_id=sf_id).where(Customer.id == cust.id).execute()
    return account


def rep(sf, email) -> SfUser:
    return SfUser.create(source=sf, sf_id=f"005{next(_ids):015d}", name=email.split("@")[0], email=email)


def tag(cust: Customer, name: str, origin: str = "manual") -> None:
    CustomerTag.create(customer=cust, tag=Tag.get_or_create(name=name)[0], origin=origin)


def tags_of(cust: Customer) -> dict[str, str]:
    """The customer's tags as a person sees them: name -> origin."""
    return {t.tag.name: t.origin for t in CustomerTag.select().join(Tag).where(CustomerTag.customer == cust.id)}


def fresh(cust: Customer) -> Customer:
    return Customer.get_by_id(cust.id)


def cond(field, op, value=None) -> dict:
    return {"field": field, "op": op, "value": value} if value is not None else {"field": field, "op": op}


def test_rule_tags_follow_the_facts_on_every_run(erp):
    """A tag rule tags the customers that match (origin ``rule:<name>``), and when a customer's ARR
    drops below the threshold the next run takes the tag off while tagging the one that grew."""
    rules.save_rule("tag", "big", "arr-100k-plus", [cond("arr", ">=", "100000")])
    big, small = customer(erp, "Big", arr="150000"), customer(erp, "Small", arr="99999.99")

    first = rules.apply_rules()
    assert tags_of(big) == {"arr-100k-plus": "rule:big"} and tags_of(small) == {}
    assert (first.tags_added, first.tags_removed) == (1, 0)

    Customer.update(arr=Decimal("10")).where(Customer.id == big.id).execute()
    Customer.update(arr=Decimal("100000")).where(Customer.id == small.id).execute()
    second = rules.apply_rules()
    assert tags_of(big) == {} and tags_of(small) == {"arr-100k-plus": "rule:big"}
    assert (second.tags_added, second.tags_removed) == (1, 1)
    assert rules.apply_rules().tags_added == rules.apply_rules().tags_removed == 0


def test_manual_and_salesforce_tags_are_never_touched(erp):
    """People's tags and Salesforce tag rules' tags survive rule runs even when no rule wants them,
    and a rule that wants a tag a person already gave leaves the person's row as it is."""
    rules.save_rule("tag", "vip-by-arr", "vip", [cond("arr", ">=", "100000")])
    rules.save_rule("tag", "emea", "emea", [cond("region", "=", "EMEA")])
    acme = customer(erp, "Acme", arr="500000", country="US")
    tag(acme, "vip", "manual")
    tag(acme, "emea", "manual")  # a person's tag no rule gives to this US customer
    tag(acme, "strategic", "rule:sf:strategic")

    rules.apply_rules()
    rules.apply_rules()

    assert tags_of(acme) == {"vip": "manual", "emea": "manual", "strategic": "rule:sf:strategic"}


def test_tag_rules_see_salesforce_tags_and_account_fields(erp, sf):
    """A tag rule can combine a Salesforce tag, an account field and the account's type."""
    rules.save_rule("tag", "key-banking", "key-banking",
                    [cond("tags", "=", "strategic"), cond("sf.Industry", "in", ["Banking", "Insurance"]),
                     cond("account_type", "!=", "Partner")])
    yes, partner, no_tag = customer(erp, "Bank A"), customer(erp, "Bank B"), customer(erp, "Bank C")
    linked(sf, yes, account_type="Customer", Industry="banking")
    linked(sf, partner, account_type="Partner", Industry="Banking")
    linked(sf, no_tag, account_type="Customer", Industry="Banking")
    for c in (yes, partner):
        tag(c, "strategic", "rule:sf:strategic")

    rules.apply_rules()

    assert "key-banking" in tags_of(yes)
    assert "key-banking" not in tags_of(partner) and "key-banking" not in tags_of(no_tag)


def test_default_segments_by_arr_first_match_by_priority(erp):
    """The seeded rules put ARR >= 100k in enterprise, >= 20k in mid-market and everyone else
    (no ARR too) in smb; a rule with a lower priority number wins; seeding again changes nothing."""
    assert rules.seed_default_rules() == ["tag:arr-100k-plus", "segment:enterprise", "segment:mid-market",
                                          "segment:smb"]
    ent, mid, smb, unknown = (customer(erp, "E", arr="100000"), customer(erp, "M", arr="20000"),
                              customer(erp, "S", arr="19999.9999"), customer(erp, "U"))
    strategic = customer(erp, "Strategic", arr="250000")
    tag(strategic, "strategic", "rule:sf:strategic")

    rules.apply_rules()
    assert [fresh(c).segment for c in (ent, mid, smb, unknown, strategic)] == \
        ["enterprise", "mid-market", "smb", "smb", "enterprise"]
    assert tags_of(ent) == {"arr-100k-plus": "rule:arr-100k-plus"}

    rules.save_rule("segment", "strategic", "strategic", [cond("tags", "=", "strategic")], priority=5)
    rules.save_rule("segment", "enterprise", "enterprise", [cond("arr", ">=", "200000")], priority=10)  # edited
    result = rules.apply_rules()
    assert [fresh(c).segment for c in (ent, strategic)] == ["mid-market", "strategic"]
    assert result.segments_changed == 2

    assert rules.seed_default_rules() == []
    assert AssignmentRule.get(AssignmentRule.name == "enterprise").conditions == [cond("arr", ">=", "200000")]


def test_collectors_by_owner_region_currency_and_arr_the_rest_in_the_team_queue(erp, sf):
    """Collector rules by priority: the Salesforce owner first, then big EMEA accounts, then JPY/AUD
    billing, then a large open balance; a customer no rule matches has no collector and is listed
    in the team queue."""
    rules.save_rule("collector", "owner-rep1", "carl@corp.com", [cond("sf_owner_email", "=", "Rep1@Corp.com")],
                    priority=10)
    rules.save_rule("collector", "emea-big", "anna@corp.com",
                    [cond("region", "=", "EMEA"), cond("arr", ">=", "50000")], priority=20)
    rules.save_rule("collector", "apac-currency", "kenji@corp.com", [cond("billing_currency", "in", ["JPY", "AUD"])],
                    priority=30)
    rules.save_rule("collector", "big-balance", "bea@corp.com", [cond("open_balance", ">", "10000")], priority=40)
    owned = customer(erp, "Owned GmbH", arr="900000", country="DE")  # EMEA too: the owner rule comes first
    linked(sf, owned, owner=rep(sf, "rep1@corp.com"))
    emea = customer(erp, "Emea SA", arr="50000", country="fr")
    emea_small = customer(erp, "Small SARL", arr="49999", country="FR")
    yen = customer(erp, "Yen KK", currency="JPY", country="JP")
    owing = customer(erp, "Owing Inc", country="US")
    Invoice.create(source=erp, external_id=f"inv-{owing.id}", customer=owing, customer_external_id=owing.external_id,
                   currency="USD", amount=Decimal("12000"), open_amount=Decimal("12000"),
                   open_amount_reporting=Decimal("12000"), issue_date=DAY, due_date=DAY, content_hash="x" * 32)
    nobody = customer(erp, "Nobody LLC", arr="10", country="US")

    result = rules.apply_rules()

    assert {c.name: fresh(c).collector for c in (owned, emea, emea_small, yen, owing, nobody)} == {
        "Owned GmbH": "carl@corp.com", "Emea SA": "anna@corp.com", "Small SARL": None,
        "Yen KK": "kenji@corp.com", "Owing Inc": "bea@corp.com", "Nobody LLC": None}
    assert [c.name for c in rules.team_queue()] == ["Nobody LLC", "Small SARL"]
    assert result.team_queue == 2 and result.collectors_changed == 4
    assert result.matched == {"collector:apac-currency": 1, "collector:big-balance": 1, "collector:emea-big": 1,
                              "collector:owner-rep1": 1}


def test_a_persons_assignment_survives_rule_runs_until_released(erp):
    """A manager assigns a customer the rules give to Anna to Zoe: rule runs keep Zoe (and keep a
    customer put in the team queue on purpose) until the choice is released, when the rules apply again."""
    rules.save_rule("collector", "emea", "anna@corp.com", [cond("region", "=", "EMEA")])
    de, fr = customer(erp, "Kunde", country="DE"), customer(erp, "Client", country="FR")
    rules.apply_rules()
    assert fresh(de).collector == "anna@corp.com"

    assert rules.assign_collector([de.id], "Zoe@Corp.com", actor="mgr@corp.com") == 1
    rules.assign_collector([fr.id], None, actor="mgr@corp.com")
    result = rules.apply_rules()
    assert (fresh(de).collector, fresh(fr).collector) == ("zoe@corp.com", None)
    assert result.collector_held == 2 and result.collectors_changed == 0
    hold = Activity.get(Activity.customer == de.id, Activity.kind == rules.HOLD_COLLECTOR)
    assert (hold.body, hold.actor, hold.resolved_at) == ("zoe@corp.com", "mgr@corp.com", None)
    assert CustomerTag.select().count() == 0  # the hold is not a tag: nothing leaks into the Salesforce push

    rules.release_collector([de.id, fr.id], actor="mgr@corp.com")
    assert (fresh(de).collector, fresh(fr).collector) == ("anna@corp.com", "anna@corp.com")
    assert rules.apply_rules().collector_held == 0


def test_a_persons_segment_survives_rule_runs(erp):
    """A segment a person set stays whatever the segment rules say, until released."""
    rules.seed_default_rules()
    acme = customer(erp, "Acme", arr="5")
    rules.set_segment([acme.id], "enterprise", actor="mgr@corp.com")
    assert rules.apply_rules().segment_held == 1
    assert fresh(acme).segment == "enterprise"
    rules.release_segment([acme.id], actor="mgr@corp.com")
    assert fresh(acme).segment == "smb"


def test_rule_changes_are_audited_per_customer(erp):
    """Every collector a rule run changes leaves an audit row naming the rule, before and after;
    a run that changes nothing writes only its summary."""
    rules.save_rule("collector", "emea", "anna@corp.com", [cond("region", "=", "EMEA")])
    de = customer(erp, "Kunde", country="DE")
    rules.apply_rules(actor="cron")
    row = AuditLog.get(AuditLog.action == "collector.rule", AuditLog.object_id == str(de.id))
    assert (row.actor, row.before, row.after) == ("cron", {"collector": None},
                                                 {"collector": "anna@corp.com", "rule": "emea"})
    rules.apply_rules(actor="cron")
    assert AuditLog.select().where(AuditLog.action == "collector.rule").count() == 1
    assert AuditLog.select().where(AuditLog.action == "rules.apply").count() == 2


def test_bulk_reassignment_moves_the_book_and_its_rules_and_is_audited(erp):
    """Moving Anna's whole book to Bob moves every customer, the rule that gave them to Anna and
    the ones a person held; later runs keep them with Bob. Each move is audited with the manager's name."""
    rules.save_rule("collector", "emea", "anna@corp.com", [cond("region", "=", "EMEA")])
    book = [customer(erp, f"Kunde {i}", country="DE") for i in range(3)]
    held = customer(erp, "Held", country="US")
    other = customer(erp, "Other", country="US")
    rules.apply_rules()
    rules.assign_collector([held.id], "anna@corp.com", actor="mgr@corp.com")
    rules.assign_collector([other.id], "carl@corp.com", actor="mgr@corp.com")

    result = rules.reassign("anna@corp.com", "bob@corp.com", actor="boss@corp.com")
    assert (result.moved, result.held, result.rules_repointed) == (4, 1, ["emea"])
    rules.apply_rules()
    assert {fresh(c).collector for c in (*book, held)} == {"bob@corp.com"}
    assert fresh(other).collector == "carl@corp.com"
    moves = AuditLog.select().where(AuditLog.action == "collector.reassign")
    assert sorted(int(m.object_id) for m in moves) == sorted(c.id for c in (*book, held))
    assert {(m.actor, m.before["collector"], m.after["collector"]) for m in moves} == \
        {("boss@corp.com", "anna@corp.com", "bob@corp.com")}
    assert AssignmentRule.get(AssignmentRule.name == "emea").value == "bob@corp.com"


def test_reassigning_part_of_a_book_holds_those_customers(erp):
    """Moving two of Bob's customers to Carl (a third id is not Bob's) leaves the rules alone and
    keeps those two with Carl through rule runs; the rest of the book stays Bob's."""
    rules.save_rule("collector", "emea", "bob@corp.com", [cond("region", "=", "EMEA")])
    a, b, c = (customer(erp, n, country="DE") for n in "abc")
    stranger = customer(erp, "Stranger", country="US")
    rules.apply_rules()

    result = rules.reassign("bob@corp.com", "carl@corp.com", actor="boss@corp.com",
                            customer_ids=[a.id, b.id, stranger.id])
    assert (result.moved, result.held, result.skipped, result.rules_repointed) == (2, 2, 1, [])
    rules.apply_rules()
    assert [fresh(x).collector for x in (a, b, c, stranger)] == ["carl@corp.com", "carl@corp.com",
                                                                 "bob@corp.com", None]


def test_cover_while_away_ends_by_itself(erp):
    """Anna away through the 30th covered by Bob: her work goes to Bob through that day and back
    to her the next; when Bob is away too it goes on to Carl; a loop of covers, or someone away with
    no cover, ends in the team queue; her customers stay assigned to her all along."""
    for email in ("anna", "bob", "carl", "dora"):
        people.create_user(f"{email}@corp.com", email.title(), "collector")
    mine = customer(erp, "Anna's", collector="anna@corp.com")
    last_day = DAY + timedelta(days=7)
    people.set_away("anna@corp.com", last_day, "bob@corp.com", actor="anna@corp.com")

    assert people.effective_collector("anna@corp.com", on=DAY - timedelta(days=1)) == "bob@corp.com"  # from now
    assert people.effective_collector("anna@corp.com", on=last_day) == "bob@corp.com"
    assert people.effective_collector("anna@corp.com", on=last_day + timedelta(days=1)) == "anna@corp.com"
    assert fresh(mine).collector == "anna@corp.com"

    people.set_away("bob@corp.com", DAY, "carl@corp.com")
    assert people.effective_collector("anna@corp.com", on=DAY) == "carl@corp.com"
    assert people.effective_collector("anna@corp.com", on=DAY + timedelta(days=1)) == "bob@corp.com"

    people.set_away("carl@corp.com", DAY, "anna@corp.com")  # anna -> bob -> carl -> anna
    assert people.effective_collector("anna@corp.com", on=DAY) is None
    assert people.cover_map(DAY) == {"anna@corp.com": None, "bob@corp.com": None, "carl@corp.com": None}
    assert [c.name for c in rules.team_queue(on=DAY)] == ["Anna's"]
    assert [c.name for c in rules.team_queue()] == []

    people.set_away("dora@corp.com", DAY, None)
    assert people.effective_collector("dora@corp.com", on=DAY) is None
    people.set_away("anna@corp.com", None, None)
    assert people.effective_collector("anna@corp.com", on=DAY) == "anna@corp.com"
    assert people.effective_collector("someone@partner.com", on=DAY) == "someone@partner.com"  # not a user
    with pytest.raises(people.PeopleError):
        people.set_away("anna@corp.com", DAY, "anna@corp.com")


def test_workload_per_collector_and_for_the_team_queue(erp):
    """Workload counts live customers, open invoices and open amounts per collector and for the
    team queue, lists a collector with nothing, and in the effective view puts an absent
    collector's book under whoever covers."""
    people.create_user("anna@corp.com", "Anna", "collector")
    people.create_user("bob@corp.com", "Bob", "collector")
    people.create_user("idle@corp.com", "Idle", "collector")
    people.create_user("boss@corp.com", "Boss", "admin")
    a1, a2 = customer(erp, "A1", collector="anna@corp.com"), customer(erp, "A2", collector="anna@corp.com")
    b1, queued = customer(erp, "B1", collector="bob@corp.com"), customer(erp, "Q")
    customer(erp, "Gone", collector="anna@corp.com", deleted_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    for cust, amount, status in ((a1, "100.10", "open"), (a2, "50.05", "open"), (a2, "999", "paid"),
                                 (b1, "7", "open"), (queued, "3", "open")):
        Invoice.create(source=erp, external_id=f"inv-{next(_ids)}", customer=cust,
                       customer_external_id=cust.external_id, currency="USD", amount=Decimal(amount),
                       open_amount=Decimal(amount) if status == "open" else Decimal(0), status=status,
                       open_amount_reporting=Decimal(amount), issue_date=DAY, due_date=DAY, content_hash="x" * 32)

    rows = {w.collector: (w.customers, w.open_invoices, w.open_amount) for w in people.workload(on=DAY)}
    assert rows == {"anna@corp.com": (2, 2, Decimal("150.15")), "bob@corp.com": (1, 1, Decimal("7")),
                    "idle@corp.com": (0, 0, Decimal(0)), None: (1, 1, Decimal("3"))}

    people.set_away("anna@corp.com", DAY, "bob@corp.com")
    effective = {w.collector: w for w in people.workload(on=DAY, effective=True)}
    assert (effective["bob@corp.com"].customers, effective["bob@corp.com"].open_amount,
            effective["bob@corp.com"].covering_for) == (3, Decimal("157.15"), ["anna@corp.com"])
    assert (effective["anna@corp.com"].customers, effective["anna@corp.com"].covered_by) == (0, "bob@corp.com")


def test_deleted_customers_are_left_alone(erp):
    """Rules never touch a customer deleted in the ERP."""
    rules.save_rule("collector", "all", "anna@corp.com", [])
    gone = customer(erp, "Gone", collector="old@corp.com", deleted_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert rules.apply_rules().customers == 0
    assert fresh(gone).collector == "old@corp.com"


@pytest.mark.parametrize("kind, value, conditions, message", [
    ("collector", "anna@corp.com", [cond("colour", "=", "red")], "unknown field 'colour'"),
    ("collector", "anna@corp.com", [cond("arr", "~", "1")], "unknown op '~'"),
    ("collector", "anna@corp.com", [cond("country", "in", "DE")], "needs a non-empty list"),
    ("collector", "anna@corp.com", [cond("arr", ">=", "lots")], "needs a number"),
    ("collector", "anna@corp.com", [cond("arr", "=", "lots")], "arr is a number"),
    ("tag", "vip", [cond("segment", "=", "smb")], "cannot test the segment"),
    ("collector", "anna", [], "the collector's email"),
    ("tag", "Not A Slug", [], "lower-case slug"),
    ("region", "x", [], "unknown rule kind"),
])
def test_invalid_rules_are_refused_with_the_reason(db, kind, value, conditions, message):
    """A rule that could not be evaluated is refused when saved, saying what is wrong."""
    with pytest.raises(RuleError, match=message):
        rules.save_rule(kind, "r", value, conditions)
    assert AssignmentRule.select().count() == 0


def test_ops_on_text_numbers_dates_and_missing_values(erp, sf):
    """contains, not in, exists, dates and numbers held as text in Salesforce fields all work as
    documented, and a missing value matches only the negative tests."""
    rules.save_rule("tag", "t-contains", "t-contains", [cond("name", "contains", "GMBH")])
    rules.save_rule("tag", "t-not-in", "t-not-in", [cond("country", "not in", ["US", "CA"])])
    rules.save_rule("tag", "t-no-country", "t-no-country", [cond("country", "exists", False)])
    rules.save_rule("tag", "t-renewal", "t-renewal", [cond("sf.Renewal_Date__c", "<", "2027-01-01")])
    rules.save_rule("tag", "t-employees", "t-employees", [cond("sf.NumberOfEmployees", ">=", 1000)])
    rules.save_rule("tag", "t-flag", "t-flag", [cond("sf.Is_Key__c", "=", True)])
    gmbh = customer(erp, "Muster GmbH", country="DE")
    linked(sf, gmbh, Renewal_Date__c="2026-12-31", NumberOfEmployees="1200", Is_Key__c=True)
    nowhere = customer(erp, "Nowhere Inc")
    linked(sf, nowhere, Renewal_Date__c=None, NumberOfEmployees=999, Is_Key__c=False)

    rules.apply_rules()

    assert set(tags_of(gmbh)) == {"t-contains", "t-not-in", "t-renewal", "t-employees", "t-flag"}
    assert set(tags_of(nowhere)) == {"t-not-in", "t-no-country"}
