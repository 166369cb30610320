"""The SOQL subset of the Salesforce emulator (connectors/sandbox/soql.py), against a tiny schema."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pytest

from connectors.sandbox import soql
from connectors.sandbox.soql import SoqlError, compile_query, id_checksum, parse, parse_datetime, sf_datetime, to18


@dataclass
class F:
    name: str
    type: str
    reference_to: tuple = ()
    relationship_name: str | None = None


class Obj:
    def __init__(self, name, fields):
        self.name = name
        self._f = {f.name.lower(): f for f in fields}
        self._r = {f.relationship_name.lower(): f for f in fields if f.relationship_name}

    def field(self, name):
        return self._f.get(name.lower())

    def relationship(self, name):
        return self._r.get(name.lower())


USER = Obj("User", [F("Id", "id"), F("Name", "string")])
ACCOUNT = Obj("Account", [F("Id", "id"), F("Name", "string"), F("Amount", "currency"), F("Active", "boolean"),
                          F("Since", "date"), F("Seen", "datetime"), F("Notes", "textarea"),
                          F("OwnerId", "reference", ("User",), "Owner")])
OBJECTS = {"user": USER, "account": ACCOUNT}
U1 = "005000000000001AAA"
USERS = {U1: {"Id": U1, "Name": "Zed"}}
ROWS = [
    {"Id": "001000000000001AAA", "Name": "Acme Inc.", "Amount": 10.0, "Active": True, "Since": "2026-01-05",
     "Seen": "2026-01-05T10:00:00.000+0000", "OwnerId": U1},
    {"Id": "001000000000002AAA", "Name": "acme 100%", "Amount": None, "Active": False, "Since": None,
     "Seen": "2026-01-06T23:30:00.000+0000", "OwnerId": None},
    {"Id": "001000000000003AAA", "Name": "O'Brien_Co", "Amount": 250.5, "Active": True, "Since": "2025-12-31",
     "Seen": None, "OwnerId": U1},
]


def run(text, today=date(2026, 1, 6)):
    plan = compile_query(parse(text), text, lambda n: OBJECTS.get(n.lower()),
                         lambda obj, rid: USERS.get(rid) if obj == "User" else None, today=today)
    rows = plan.filter(ROWS)
    if plan.sorters:
        plan.sort(rows)
    return plan, plan.window(rows)


def names(text, **kw):
    return [r["Name"] for r in run(text, **kw)[1]]


def test_id_checksum_and_15_to_18():
    """The checksum is Salesforce's (upper-case bit per character, five per suffix letter)."""
    published = {"a01M00000062mPg": "IAI", "001M000000qfPyS": "IAU", "a0FE000000D6r3F": "MAR",
                 "0F9E000000092w2": "KAA", "a0RE000000IJmcN": "MAT", "a0D30000001n7Pi": "EAI",
                 "0019000000B98de": "AAB", "aaaaaaaaaaaaaaa": "AAA"}
    for id15, suffix in published.items():
        assert id_checksum(id15) == suffix
        assert to18(id15) == id15 + suffix
    assert to18("a0RE000000IJmcNmat") == "a0RE000000IJmcNMAT"  # the suffix is case-insensitive
    assert to18("a0RE000000IJmcNXXX") is None and to18("short") is None and to18(None) is None


def test_datetimes_in_salesforce_format():
    """Datetimes render as UTC with milliseconds and +0000; ISO inputs with offsets normalise to UTC."""
    assert sf_datetime(datetime(2026, 11, 23, 10, 15, tzinfo=timezone.utc)) == "2026-11-23T10:15:00.000+0000"
    assert sf_datetime(datetime(2026, 11, 23, 10, 15, 1, 987654)) == "2026-11-23T10:15:01.987+0000"
    stamp = parse_datetime("2026-11-23T11:15:00.5+01:00")
    assert stamp == datetime(2026, 11, 23, 10, 15, 0, 500000, tzinfo=timezone.utc)
    assert parse_datetime("2026-11-23T10:15:00+0530").hour == 4
    assert parse_datetime("2026-11-23 10:15Z") is not None and parse_datetime("nope") is None


def test_operators_and_null_semantics():
    """Text compares case-insensitively; != and NOT IN match nulls; < and > never do."""
    assert names("SELECT Name FROM Account WHERE Name = 'ACME INC.'") == ["Acme Inc."]
    assert names("SELECT Name FROM Account WHERE Amount != 10") == ["acme 100%", "O'Brien_Co"]
    assert names("SELECT Name FROM Account WHERE Amount < 100") == ["Acme Inc."]
    assert names("SELECT Name FROM Account WHERE Amount NOT IN (10, 250.5)") == ["acme 100%"]
    assert names("SELECT Name FROM Account WHERE Amount IN (10, null)") == ["Acme Inc.", "acme 100%"]
    assert names("SELECT Name FROM Account WHERE Active = false") == ["acme 100%"]
    assert names("SELECT Name FROM Account WHERE Since = null") == ["acme 100%"]
    assert names("SELECT Name FROM Account WHERE NOT (Active = true AND Amount > 100)") == ["Acme Inc.", "acme 100%"]
    assert names("SELECT Name FROM Account WHERE Owner.Name = 'zed' AND Amount >= 10") == ["Acme Inc.", "O'Brien_Co"]


def test_like_escapes_and_string_escapes():
    """LIKE: % and _ are wildcards unless escaped; quotes and backslashes escape in literals."""
    assert names("SELECT Name FROM Account WHERE Name LIKE 'acme%'") == ["Acme Inc.", "acme 100%"]
    assert names("SELECT Name FROM Account WHERE Name LIKE '%100\\%'") == ["acme 100%"]
    assert names("SELECT Name FROM Account WHERE Name LIKE 'O\\'Brien\\_Co'") == ["O'Brien_Co"]
    assert names("SELECT Name FROM Account WHERE Name LIKE 'O_Brien_Co'") == ["O'Brien_Co"]
    assert names("SELECT Name FROM Account WHERE Name LIKE 'Acme_'") == []


def test_date_datetime_and_relative_literals():
    """Date and datetime literals compare chronologically (offsets applied); TODAY, LAST_N_DAYS:n
    and NEXT_N_DAYS:n are day ranges relative to today."""
    assert names("SELECT Name FROM Account WHERE Since > 2026-01-01") == ["Acme Inc."]
    assert names("SELECT Name FROM Account WHERE Seen >= 2026-01-06T01:00:00+02:00") == ["acme 100%"]
    assert names("SELECT Name FROM Account WHERE Seen < 2026-01-05T10:00:00.001Z") == ["Acme Inc."]
    assert names("SELECT Name FROM Account WHERE Seen = TODAY") == ["acme 100%"]
    assert names("SELECT Name FROM Account WHERE Seen = YESTERDAY") == ["Acme Inc."]
    assert names("SELECT Name FROM Account WHERE Since = LAST_N_DAYS:3") == ["Acme Inc."]
    assert names("SELECT Name FROM Account WHERE Since < LAST_N_DAYS:3") == ["O'Brien_Co"]
    assert names("SELECT Name FROM Account WHERE Since = NEXT_N_DAYS:5", today=date(2025, 12, 30)) == \
        ["O'Brien_Co"]  # Dec 31 .. Jan 4
    assert names("SELECT Name FROM Account WHERE Since = NEXT_N_DAYS:6", today=date(2025, 12, 30)) == \
        ["Acme Inc.", "O'Brien_Co"]
    assert names("SELECT Name FROM Account WHERE Seen > TOMORROW", today=date(2026, 1, 4)) == ["acme 100%"]


def test_order_by_nulls_and_directions_limit_offset():
    """ASC puts nulls first and DESC last by default; NULLS FIRST/LAST overrides; several keys."""
    assert names("SELECT Name FROM Account ORDER BY Amount") == ["acme 100%", "Acme Inc.", "O'Brien_Co"]
    assert names("SELECT Name FROM Account ORDER BY Amount DESC") == ["O'Brien_Co", "Acme Inc.", "acme 100%"]
    assert names("SELECT Name FROM Account ORDER BY Amount ASC NULLS LAST") == ["Acme Inc.", "O'Brien_Co",
                                                                                 "acme 100%"]
    assert names("SELECT Name FROM Account ORDER BY Amount DESC NULLS FIRST") == ["acme 100%", "O'Brien_Co",
                                                                                   "Acme Inc."]
    assert names("SELECT Name FROM Account ORDER BY Active DESC, Name DESC") == ["O'Brien_Co", "Acme Inc.",
                                                                                  "acme 100%"]
    assert names("SELECT Name FROM Account ORDER BY Owner.Name NULLS LAST, Name LIMIT 2 OFFSET 1") == [
        "O'Brien_Co", "acme 100%"]


def test_render_nests_parent_relationships():
    """Selected parent fields render as nested records (or null), with attributes from the caller."""
    plan, rows = run("SELECT Id, Owner.Name, Name FROM Account ORDER BY Name")
    attrs = lambda obj, rec: {"type": obj}  # noqa: E731
    out = [soql.render(r, plan.tree, attrs, "Account", lambda o, i: USERS.get(i)) for r in rows]
    assert [o["Name"] for o in out] == ["acme 100%", "Acme Inc.", "O'Brien_Co"]  # case-insensitive order
    assert out[1] == {"attributes": {"type": "Account"}, "Id": ROWS[0]["Id"],
                      "Owner": {"attributes": {"type": "User"}, "Name": "Zed"}, "Name": "Acme Inc."}
    assert out[0]["Owner"] is None
    assert soql.column_names(plan) == ["Id", "Owner.Name", "Name"]


def test_count_and_index_terms():
    """COUNT() plans count; equality and IN on direct fields are offered as index terms."""
    plan, rows = run("SELECT COUNT() FROM Account WHERE Active = true")
    assert plan.count and len(rows) == 2
    plan, _ = run("SELECT Id FROM Account WHERE Id IN ('001000000000001', '001000000000003AAA') AND Amount > 1")
    assert plan.index_terms == [("Id", ["001000000000001AAA", "001000000000003AAA"])]
    plan, _ = run("SELECT Id FROM Account WHERE Name = 'X' OR Amount = 1")
    assert plan.index_terms == []


@pytest.mark.parametrize("text,code,fragment", [
    ("", "MALFORMED_QUERY", "<EOF>"),
    ("SELECT FROM Account", "MALFORMED_QUERY", "unexpected token: 'FROM'"),
    ("SELECT Name FROM Account WHERE Name = 'a' AND Amount = 1 OR Active = true", "MALFORMED_QUERY",
     "unexpected token: 'OR'"),
    ("SELECT Name FROM Account WHERE Name = 'a' OR Amount = 1 AND Active = true", "MALFORMED_QUERY",
     "unexpected token: 'AND'"),
    ("SELECT Name FROM Account WHERE Amount = '10'", "MALFORMED_QUERY", "must be of type double"),
    ("SELECT Name FROM Account WHERE Since = '2026-01-01'", "MALFORMED_QUERY", "must be of type date"),
    ("SELECT Name FROM Account WHERE Seen = 2026-01-01", "MALFORMED_QUERY", "must be of type dateTime"),
    ("SELECT Name FROM Account WHERE Active = 'true'", "MALFORMED_QUERY", "must be of type boolean"),
    ("SELECT Name FROM Account WHERE Active > true", "MALFORMED_QUERY", "invalid operator on boolean"),
    ("SELECT Name FROM Account WHERE Name = 'bad \\q escape'", "MALFORMED_QUERY", "Illegal character sequence"),
    ("SELECT Name FROM Account WHERE Since = 2026-02-30", "MALFORMED_QUERY", "2026-02-30"),
    ("SELECT Name FROM Account ORDER BY Notes", "INVALID_FIELD", "can not be sorted"),
    ("SELECT Name, Name FROM Account", "MALFORMED_QUERY", "duplicate field selected: Name"),
    ("SELECT Name FROM Account LIMIT -1", "MALFORMED_QUERY", "unexpected token"),
    ("SELECT Name FROM Account OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE", "2000"),
    ("SELECT Nme FROM Account", "INVALID_FIELD", "No such column 'Nme' on entity 'Account'"),
    ("SELECT Boss.Name FROM Account", "INVALID_FIELD", "Didn't understand relationship 'Boss'"),
    ("SELECT Name FROM Acount", "INVALID_TYPE", "sObject type 'Acount' is not supported"),
    ("SELECT COUNT(Id) FROM Account", "MALFORMED_QUERY", "COUNT()"),
    ("SELECT Name FROM Account WHERE Name INCLUDES ('a')", "MALFORMED_QUERY", "unexpected token: 'INCLUDES'"),
])
def test_errors(text, code, fragment):
    """What is not in the subset, or does not fit the schema, raises SoqlError with Salesforce's code;
    syntax errors point at the row and column."""
    with pytest.raises(SoqlError) as exc:
        run(text)
    assert exc.value.code == code
    assert fragment in exc.value.message


def test_error_message_points_at_the_column():
    """A MALFORMED_QUERY message repeats the query line with a caret under the bad token."""
    with pytest.raises(SoqlError) as exc:
        parse("SELECT Id FROM Account WHERE Name == 'x'")
    assert exc.value.message.split("\n")[1:4] == ["SELECT Id FROM Account WHERE Name == 'x'",
                                                  " " * 35 + "^", "ERROR at Row:1:Column:36"]


def test_soql_error_is_pickle_safe():
    """SoqlError survives pickling (it may cross a worker boundary in tests)."""
    import pickle

    err = pickle.loads(pickle.dumps(SoqlError("MALFORMED_QUERY", "x")))
    assert (err.code, err.message) == ("MALFORMED_QUERY", "x")


def test_relative_ranges_are_half_open():
    """LAST_N_DAYS:n covers today and the n days before it; NEXT_N_DAYS:n starts tomorrow."""
    today = date(2026, 1, 6)
    assert soql._relative_range("LAST_N_DAYS", 2, today) == (today - timedelta(days=2), today + timedelta(days=1))
    assert soql._relative_range("NEXT_N_DAYS", 2, today) == (today + timedelta(days=1), today + timedelta(days=3))
