"""Seeding an org from the ERP sandbox's book (:meth:`Org.from_book`): sales reps, accounts,
contacts and opportunities with the mismatches real orgs have (accounts without the ERP number,
renamed ones (:func:`name_variant`), duplicates, prospects, an inactive owner), and the answer key
in ``org.seed_truth``.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

from connectors.sandbox.book import Book
from connectors.sandbox.salesforce.schema import _STAGE_STATE, COUNTRIES, INDUSTRIES, STAGES, UTC, _make_id
from connectors.sandbox.soql import sf_datetime

if TYPE_CHECKING:
    from connectors.sandbox.salesforce.org import Org

_FIRST_NAMES = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn",
                "Harper", "Rowan", "Emery", "Parker", "Reese", "Skyler", "Dakota", "Hayden", "Kendall", "Logan")
_LAST_NAMES = ("Nguyen", "Schmidt", "Garcia", "Okafor", "Tanaka", "Rossi", "Dubois", "Kowalski", "Silva",
               "Andersen", "Murphy", "Cohen", "Patel", "Müller", "O'Connor", "Fernández", "Larsen", "Ivanova",
               "Kim", "Walker")
_SUFFIX_VARIANTS = (("Inc.", "Inc"), ("Inc.", "Incorporated"), ("Corp.", "Corporation"), ("Corp.", "Corp"),
                    ("LLC", "L.L.C."), (" GmbH", ""), (" AG", ""), ("Ltd.", "Ltd"), ("Ltd", "Limited"),
                    ("PLC", "plc"), ("B.V.", "BV"), ("S.L.", "SL"), ("SAS", "S.A.S."), ("Pty Ltd", "Pty. Ltd."),
                    ("K.K.", "KK"), ("S.A. de C.V.", "SA de CV"), ("Limited", "Ltd"))


def name_variant(name: str, rng: random.Random) -> str:
    """The same company as a sales rep would type it: suffix, punctuation, '&'/'and', case, spaces.
    The trailing customer number is kept, so a fuzzy match remains possible."""
    stem, _, number = name.rpartition(" ")
    if not number.isdigit():
        stem, number = name, ""
    out = stem
    for _ in range(6):
        choice = rng.randrange(6)
        if choice == 0:
            options = [(a, b) for a, b in _SUFFIX_VARIANTS if a in out]
            if options:
                a, b = rng.choice(options)
                out = out.replace(a, b, 1)
        elif choice == 1 and ("&" in out or " and " in out):
            out = out.replace("&", "and") if "&" in out else out.replace(" and ", " & ")
        elif choice == 2:
            out = rng.choice((out.upper(), out.lower(), out.title()))
        elif choice == 3 and " " in out:
            words = out.split(" ")
            i = rng.randrange(len(words) - 1) if len(words) > 1 else 0
            words[i] += rng.choice((" ", ","))
            out = " ".join(words)
        elif choice == 4:
            out = out.replace(".", "") if "." in out else out + rng.choice((" Inc", " Co", ""))
        else:
            out = out.replace(" - ", " ") if " - " in out else out.replace("'", "")
        if out != stem and rng.random() < 0.6:
            break
    if out == stem:
        out = stem.upper()
    return f"{out} {number}".strip() if number else out


def _seed_inserter(org: Org, obj: str) -> Callable[[dict, str, str], str]:
    """A fast unchecked insert for seeding ``obj``: the values must be complete (owner, currency)."""
    sobject = org.types[obj]
    table, template, prefix, seq = org.tables[obj], sobject.template, sobject.key_prefix, org._seq
    indexes = [(org.indexes[obj][fname], fname, lower) for fname, lower in sobject.index_keys]

    def insert(values: dict, user_id: str, now: str) -> str:
        n = seq.get(prefix, 0) + 1
        seq[prefix] = n
        rid = _make_id(prefix, n)
        rec = template.copy()
        rec.update(values)
        rec["Id"] = rid
        rec["IsDeleted"] = False
        rec["CreatedDate"] = rec["LastModifiedDate"] = rec["SystemModstamp"] = now
        rec["CreatedById"] = rec["LastModifiedById"] = user_id
        table[rid] = rec
        for ix, fname, lower in indexes:
            value = rec[fname]
            if value is not None:
                key = value.lower() if lower else value
                cur = ix.get(key)
                if cur is None:
                    ix[key] = rid
                elif type(cur) is set:
                    cur.add(rid)
                else:
                    ix[key] = {cur, rid}
        return rid

    return insert


class _Seeder:
    """Builds the seeded org; written for speed (150,000 accounts and their children in seconds):
    records are stored unchecked through :meth:`Org._insert_raw`, random draws avoid ``choice``."""

    def __init__(self, org: Org, book: Book, rng: random.Random):
        self.org, self.book, self.rng = org, book, rng
        self.truth = org.seed_truth
        self.r = rng.random
        as_of = book.as_of
        self.past_days = [(as_of - timedelta(days=d)).isoformat() for d in range(0, 701)]
        self.next_days = [(as_of + timedelta(days=d)).isoformat() for d in range(0, 121)]
        self.insert_account = _seed_inserter(org, "Account")
        self.insert_contact = _seed_inserter(org, "Contact")
        self.insert_opportunity = _seed_inserter(org, "Opportunity")

    def pick(self, seq):
        return seq[int(self.r() * len(seq))]

    def run(self) -> None:
        book, r, pick, truth = self.book, self.r, self.pick, self.truth
        as_of_midnight = datetime.combine(book.as_of, datetime.min.time(), UTC)
        users = self.seed_users()
        active = [u for u, is_active in users if is_active]
        inactive = [u for u, is_active in users if not is_active]
        account_of: dict[int, str] = {}
        with book.lock:
            customers = [book.customers[cid] for cid in sorted(book.customers)]
        insert = self.insert_account
        accounts_truth, renamed = truth["accounts"], truth["renamed"]
        n_accounts = 0
        for cust in customers:
            if r() < 0.03:
                accounts_truth[cust.number] = None
                truth["without_account"].append(cust.number)
                continue
            has_ext = r() < 0.70
            name = cust.name
            if not has_ext or r() < 0.08:
                name = name_variant(cust.name, self.rng)
                renamed[cust.number] = name
            owner = pick(inactive) if inactive and r() < 0.01 else pick(active)
            domain = cust.email.partition("@")[2]
            roll = r()
            kind = "Strategic" if roll < 0.05 else "Partner" if roll < 0.07 else "Reseller" if roll < 0.08 \
                else "Customer"
            created = cust.created + timedelta(minutes=int(r() * 20 * 1440))
            stamp = sf_datetime(created if created < as_of_midnight else as_of_midnight)
            arr = float(cust.arr)
            values = {
                "Name": name, "Type": kind, "Industry": pick(INDUSTRIES),
                "ParentId": account_of.get(cust.parent_id) if cust.parent_id else None,
                "BillingCountry": COUNTRIES.get(cust.country), "BillingCountryCode": cust.country,
                "Website": f"https://www.{domain}", "Phone": cust.contacts[0].phone if cust.contacts else None,
                "AnnualRevenue": arr, "CurrencyIsoCode": cust.currency, "OwnerId": owner,
                "ERP_Customer_Number__c": cust.number if has_ext else None,
                "Customer_Tier__c": "Enterprise" if arr >= 50000 else "Mid-Market" if arr >= 10000 else "SMB",
            }
            aid = insert(values, owner, stamp)
            n_accounts += 1
            account_of[cust.id] = aid
            accounts_truth[cust.number] = aid
            if has_ext:
                truth["with_external_id"].append(cust.number)
            if owner in inactive:
                truth["inactive_owner_accounts"].append(aid)
            self.seed_children(aid, name, arr, cust, domain, owner, stamp)
            if r() < 0.02:  # the same customer entered twice, the second time without the ERP number
                dup_owner = pick(active)
                dup = dict(values, Name=name_variant(cust.name, self.rng), ERP_Customer_Number__c=None,
                           OwnerId=dup_owner, Website=values["Website"] if r() < 0.5 else None, ParentId=None)
                dup_id = insert(dup, dup_owner, stamp)
                n_accounts += 1
                truth["duplicates"].append((aid, dup_id))
                if r() < 0.5:
                    self.contact(dup_id, dup_owner, stamp, "Accounts", f"Payable {cust.id}", cust.email,
                                 "Billing", cust.currency)
        self.seed_prospects(customers, round(n_accounts * 0.05) if customers else 0, active)

    def seed_prospects(self, customers, count: int, active: list[str]) -> None:
        """Accounts with no ERP customer behind them (Type Prospect)."""
        r, pick, book = self.r, self.pick, self.book
        stems = [c.name.rsplit(" ", 1)[0] for c in customers[:500]] or ["Prospect Holdings Inc."]
        next_number = (max(book.customers) if book.customers else 0) + 1
        as_of_midnight = datetime.combine(book.as_of, datetime.min.time(), UTC)
        for i in range(count):
            owner = pick(active)
            number = next_number + i
            stem = pick(stems)
            slug = "".join(ch for ch in stem.lower() if ch.isascii() and ch.isalnum()) or "prospect"
            stamp = sf_datetime(as_of_midnight - timedelta(minutes=int(r() * 400 * 1440) + 1))
            values = {"Name": f"{stem} {number}", "Type": "Prospect", "Industry": pick(INDUSTRIES),
                      "BillingCountryCode": "US", "BillingCountry": "United States",
                      "Website": f"https://www.{slug}{number}.example.org", "OwnerId": owner,
                      "CurrencyIsoCode": "USD", "AnnualRevenue": float(int(r() * 500 + 1) * 1000)}
            aid = self.insert_account(values, owner, stamp)
            self.truth["prospects"].append(aid)
            if r() < 0.6:
                self.contact(aid, owner, stamp, pick(_FIRST_NAMES), pick(_LAST_NAMES),
                             f"info@{slug}{number}.example.org", None, "USD")
            if r() < 0.4:
                self.opportunity(aid, owner, stamp, f"{values['Name']} - New Business", "New Business",
                                 pick(STAGES[:8])[0], pick(self.next_days), values["AnnualRevenue"], "USD")

    def seed_users(self) -> list[tuple[str, bool]]:
        """Twenty sales reps, one of them inactive (it still owns a few accounts)."""
        org = self.org
        users = []
        now = sf_datetime(datetime.combine(self.book.start, datetime.min.time(), UTC))
        for i in range(20):
            first, last = _FIRST_NAMES[i], _LAST_NAMES[(i * 7) % len(_LAST_NAMES)]
            slug = "".join(ch for ch in f"{first}.{last}".lower() if ch.isascii() and (ch.isalnum() or ch == "."))
            active = i != 13
            uid = org._insert_raw("User", {
                "Username": f"{slug}@arhub-sandbox.example.com", "FirstName": first, "LastName": last,
                "Email": f"{slug}@example.com", "Alias": slug[:8], "Title": self.pick(
                    ("Account Executive", "Account Manager", "Sales Director", "Customer Success Manager")),
                "IsActive": active}, None, now)
            users.append((uid, active))
        return users

    def contact(self, aid, owner, stamp, first, last, email, role, currency) -> str:
        return self.insert_contact({
            "AccountId": aid, "FirstName": first, "LastName": last,
            "Name": f"{first} {last}" if first else last, "Email": email, "AR_Role__c": role,
            "OwnerId": owner, "CurrencyIsoCode": currency}, owner, stamp)

    def opportunity(self, aid, owner, stamp, name, kind, stage, close, amount, currency) -> str:
        closed, won = _STAGE_STATE[stage]
        return self.insert_opportunity({
            "AccountId": aid, "Name": name, "Type": kind, "StageName": stage, "IsClosed": closed, "IsWon": won,
            "CloseDate": close, "Amount": round(amount, 2), "CurrencyIsoCode": currency, "OwnerId": owner},
            owner, stamp)

    def seed_children(self, aid, name, arr, cust, domain, owner, stamp) -> None:
        """The ERP's billing (often) and escalation (sometimes) contacts, a Salesforce-only escalation
        contact now and then, other contacts without an AR role; closed and open opportunities."""
        r, pick = self.r, self.pick
        currency = cust.currency
        for contact in cust.contacts:
            billing = contact.role == "billing"
            if r() >= (0.85 if billing else 0.5):
                continue
            first, _, last = contact.name.rpartition(" ")
            email = contact.email if r() < 0.95 else contact.email.upper()
            self.contact(aid, owner, stamp, first or None, last, email, "Billing" if billing else "Escalation",
                         currency)
        if r() < 0.15:
            self.contact(aid, owner, stamp, pick(_FIRST_NAMES), pick(_LAST_NAMES), f"finance.director@{domain}",
                         "Escalation", currency)
        if r() < 0.2:
            first, last = pick(_FIRST_NAMES), pick(_LAST_NAMES)
            self.contact(aid, owner, stamp, first, last, f"{first.lower()}@{domain}", None, currency)
        arr = arr or 1000.0
        for n in range(pick((0, 1, 1, 1, 1, 2))):
            close = pick(self.past_days[1:])
            self.opportunity(aid, owner, stamp, f"{name} - {close[:4]} {'Renewal' if n else 'Deal'}",
                             "Renewal" if n else "New Business", "Closed Won" if r() < 0.8 else "Closed Lost",
                             close, arr * (0.3 + 0.8 * r()), currency)
        if r() < 0.15:
            kind = "Renewal" if r() < 0.5 else "Expansion"
            self.opportunity(aid, owner, stamp, f"{name} - {kind}", kind, pick(STAGES[1:8])[0],
                             self.next_days[int(r() * 91)], arr * (0.2 + r()), currency)
