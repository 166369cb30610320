"""One deterministic, generated accounts-receivable book that every ERP emulator serves.

The book is plain data (dataclasses, ``Decimal`` money, UTC datetimes, business
``date``s).  It is shaped to break naive sync code: five currencies including JPY
(no minor unit), partial payments, overpayments, payments spread over several
invoices, credit memos (applied and unapplied), voided and deleted invoices,
parent/child customers, unicode and apostrophes in names, late payers, and
mutations that can happen while a client is paging through it.

The emulators import this module and nothing else of the project: an emulator
built on our own client code could not catch our own bugs.
"""
from __future__ import annotations

import bisect
import random
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

UTC = timezone.utc
BASE_CURRENCY = "USD"
#: currency -> (weight, start rate in USD per unit, minor-unit digits, countries)
CURRENCIES = {
    "USD": (50, Decimal("1"), 2, ("US", "US", "US", "CA", "MX")),
    "EUR": (20, Decimal("1.08"), 2, ("DE", "FR", "NL", "IE", "ES")),
    "GBP": (12, Decimal("1.27"), 2, ("GB",)),
    "JPY": (8, Decimal("0.0067"), 0, ("JP",)),
    "AUD": (10, Decimal("0.66"), 2, ("AU", "NZ")),
}
PAYER_PROFILES = (("prompt", 40), ("normal", 33), ("late", 20), ("batch", 5), ("never", 2))
TERMS = ((30, 70), (15, 10), (45, 10), (60, 10))

_FIRST = ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay", "Soylent",
          "Cyberdyne", "Tyrell", "Aperture", "Wonka", "Gringotts", "Oscorp", "Blue Sun", "Monarch",
          "Nakatomi", "Pied Piper", "Dunder", "Sterling", "Bluth", "Prestige", "Massive", "Virtucon")
_UNICODE = ("Müller & Söhne", "Société Générale d'Études", "Zoë's Café", "O'Brien & O'Neill",
            "東京システム", "Ærø Fiskeri", "Łódź Logistyka", "Crème Brûlée", "São Paulo Têxtil",
            "Straße der Ideen", "D'Angelo's Pizzería", "Ñandú Analytics", "İstanbul Yazılım",
            "Þór Holdings", "Čapek Robotics")
_SUFFIX = {"US": ("Inc.", "LLC", "Corp."), "CA": ("Ltd.",), "MX": ("S.A. de C.V.",), "DE": ("GmbH", "AG"),
           "FR": ("SAS", "SARL"), "NL": ("B.V.",), "IE": ("Ltd",), "ES": ("S.L.",), "GB": ("Ltd", "PLC"),
           "JP": ("株式会社", "K.K."), "AU": ("Pty Ltd",), "NZ": ("Limited",)}
#: country -> (city, region, postal code pattern: "#" a digit, "@" a letter), street names; the
#: street line reads "{number} {street}" or, where the number follows, "{street} {number}"
_CITIES = {
    "US": ((("San Francisco", "CA", "941##"), ("Austin", "TX", "787##"), ("New York", "NY", "100##"),
            ("Chicago", "IL", "606##")), ("Market Street", "Congress Avenue", "Broadway", "Wacker Drive")),
    "CA": ((("Toronto", "ON", "M5V #@#"), ("Vancouver", "BC", "V6B #@#"), ("Montréal", "QC", "H3B #@#")),
           ("King Street West", "Granville Street", "Rue Sainte-Catherine")),
    "MX": ((("Ciudad de México", "CDMX", "06600"), ("Monterrey", "N.L.", "64000")),
           ("Paseo de la Reforma", "Avenida Constitución")),
    "DE": ((("München", "Bayern", "80331"), ("Berlin", "Berlin", "10117"), ("Köln", "Nordrhein-Westfalen", "50667")),
           ("Leopoldstraße", "Friedrichstraße", "Hohe Straße")),
    "FR": ((("Paris", "Île-de-France", "75008"), ("Lyon", "Auvergne-Rhône-Alpes", "69002")),
           ("Rue du Faubourg Saint-Honoré", "Rue de la République")),
    "NL": ((("Amsterdam", "Noord-Holland", "1017 @@"), ("Rotterdam", "Zuid-Holland", "3011 @@")),
           ("Keizersgracht", "Coolsingel")),
    "IE": ((("Dublin", "Co. Dublin", "D02 @###"), ("Cork", "Co. Cork", "T12 @###")),
           ("Grafton Street", "St Patrick's Street")),
    "ES": ((("Madrid", "Madrid", "28013"), ("Barcelona", "Barcelona", "08002")), ("Gran Vía", "Passeig de Gràcia")),
    "GB": ((("London", "", "EC1A #@@"), ("Manchester", "", "M1 #@@"), ("Edinburgh", "", "EH1 #@@")),
           ("Old Street", "Deansgate", "Princes Street")),
    "JP": ((("千代田区", "東京都", "100-0005"), ("大阪市北区", "大阪府", "530-0001")), ("丸の内", "梅田")),
    "AU": ((("Sydney", "NSW", "2000"), ("Melbourne", "VIC", "3000")), ("George Street", "Collins Street")),
    "NZ": ((("Auckland", "Auckland", "1010"), ("Wellington", "Wellington", "6011")), ("Queen Street", "Lambton Quay")),
}
_NUMBER_AFTER = {"DE", "NL", "ES", "MX"}
_PRODUCTS = (("Enterprise plan, annual subscription", 12000), ("Business plan, seats", 480),
             ("Premium support", 2400), ("Onboarding services", 3500), ("Additional storage 1 TB", 120),
             ("Renewal uplift", 900), ("Professional services, day", 1400))


@dataclass(slots=True)
class Contact:
    name: str
    email: str
    role: str  # "billing" | "escalation"
    phone: str = ""


@dataclass(slots=True)
class Address:
    """A street address; the country is the customer's."""
    lines: tuple[str, ...]
    city: str
    region: str
    postal_code: str


@dataclass(slots=True)
class Customer:
    id: int
    number: str
    name: str
    email: str
    currency: str
    country: str
    terms_days: int
    arr: Decimal
    payer: str
    created: datetime
    modified: datetime
    parent_id: int | None = None
    contacts: list[Contact] = field(default_factory=list)
    inactive: bool = False
    address: Address | None = None  # the billing address (None for a few: the ERP has none)


@dataclass(slots=True)
class Line:
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


@dataclass(slots=True)
class Invoice:
    id: int
    number: str
    customer_id: int
    currency: str
    issue_date: date
    sent_date: date | None
    due_date: date
    lines: list[Line]
    total: Decimal
    amount_paid: Decimal
    amount_credited: Decimal
    status: str  # "open" | "paid" | "voided"
    po_number: str
    exchange_rate: Decimal  # base currency per unit of the invoice currency, at issue date
    created: datetime
    modified: datetime
    memo: str = ""

    @property
    def amount_due(self) -> Decimal:
        if self.status == "voided":
            return Decimal(0)
        return max(self.total - self.amount_paid - self.amount_credited, Decimal(0))


@dataclass(slots=True)
class Application:
    invoice_id: int
    amount: Decimal
    date: date


@dataclass(slots=True)
class CreditMemo:
    id: int
    number: str
    customer_id: int
    currency: str
    date: date
    total: Decimal
    applications: list[Application]
    reason: str
    exchange_rate: Decimal
    created: datetime
    modified: datetime

    @property
    def unapplied(self) -> Decimal:
        return self.total - sum((a.amount for a in self.applications), Decimal(0))


@dataclass(slots=True)
class Payment:
    id: int
    number: str
    customer_id: int
    currency: str
    date: date
    amount: Decimal
    applications: list[Application]
    reference: str
    exchange_rate: Decimal
    created: datetime
    modified: datetime

    @property
    def unapplied(self) -> Decimal:
        return self.amount - sum((a.amount for a in self.applications), Decimal(0))


@dataclass(slots=True)
class FxRate:
    currency: str  # the foreign currency
    date: date
    rate: Decimal  # BASE_CURRENCY per unit of ``currency``
    modified: datetime


@dataclass(slots=True)
class Deleted:
    kind: str  # "customer" | "invoice" | "credit_memo" | "payment"
    id: int
    number: str
    deleted_at: datetime


KINDS = ("customer", "invoice", "credit_memo", "payment", "fx_rate")


def quantize(amount: Decimal, currency: str) -> Decimal:
    digits = CURRENCIES[currency][2]
    return amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def _at(day: date, rng: random.Random) -> datetime:
    return datetime.combine(day, time(rng.randrange(7, 19), rng.randrange(60), rng.randrange(60)), UTC)


class Book:
    """A generated book. Thread-safe for the emulators' concurrent requests."""

    def __init__(self, customers: int = 200, invoices: int = 2000, seed: int = 7,
                 as_of: date | None = None, history_days: int = 365):
        self.seed = seed
        self.as_of = as_of or datetime.now(UTC).date()
        self.start = self.as_of - timedelta(days=history_days)
        self.base_currency = BASE_CURRENCY
        self.lock = threading.RLock()
        self.customers: dict[int, Customer] = {}
        self.invoices: dict[int, Invoice] = {}
        self.credit_memos: dict[int, CreditMemo] = {}
        self.payments: dict[int, Payment] = {}
        self.fx_rates: dict[int, FxRate] = {}
        self.deleted: list[Deleted] = []
        self._rates: dict[str, list[tuple[date, Decimal]]] = {}
        self._rng = random.Random(seed)
        self._seq = {k: 0 for k in KINDS}
        self._modified_index: dict[str, tuple[list[datetime], list[int]] | None] = {k: None for k in KINDS}
        self._generate(customers, invoices)

    # ------------------------------------------------------------------ access
    def records(self, kind: str) -> dict[int, object]:
        return {"customer": self.customers, "invoice": self.invoices, "credit_memo": self.credit_memos,
                "payment": self.payments, "fx_rate": self.fx_rates}[kind]

    def changed_since(self, kind: str, since: datetime | None = None) -> list[int]:
        """Ids of ``kind`` modified at or after ``since``, oldest change first (ties by id)."""
        with self.lock:
            index = self._modified_index[kind]
            if index is None:
                items = sorted(self.records(kind).items(), key=lambda kv: (kv[1].modified, kv[0]))
                index = ([rec.modified for _, rec in items], [i for i, _ in items])
                self._modified_index[kind] = index
            stamps, ids = index
            start = 0 if since is None else bisect.bisect_left(stamps, since)
            return ids[start:]

    def deleted_since(self, kind: str | None = None, since: datetime | None = None) -> list[Deleted]:
        with self.lock:
            return [d for d in self.deleted if (kind is None or d.kind == kind)
                    and (since is None or d.deleted_at >= since)]

    def rate(self, currency: str, day: date) -> Decimal:
        """Base currency per unit of ``currency`` on ``day`` (latest rate on or before it)."""
        if currency == BASE_CURRENCY:
            return Decimal(1)
        series = self._rates[currency]
        pos = bisect.bisect_right(series, (day, Decimal("Infinity"))) - 1
        return series[max(pos, 0)][1]

    def customer_invoices(self, customer_id: int) -> list[Invoice]:
        return [inv for inv in self.invoices.values() if inv.customer_id == customer_id]

    # --------------------------------------------------------------- mutations
    def _touch(self, kind: str) -> None:
        self._modified_index[kind] = None

    def _next(self, kind: str) -> int:
        self._seq[kind] += 1
        return self._seq[kind]

    def modify_invoices(self, count: int, now: datetime | None = None, seed: int | None = None,
                        ids: list[int] | None = None) -> list[int]:
        """Change ``count`` invoices, or those of ``ids`` (memo and PO number; every fifth gets a partial payment)."""
        now = now or datetime.now(UTC)
        rng = random.Random(self.seed * 7919 + (seed or 0))
        with self.lock:
            if ids is not None:
                chosen = sorted(i for i in ids if i in self.invoices)
            else:
                candidates = sorted(i for i, inv in self.invoices.items() if inv.status != "voided")
                chosen = sorted(rng.sample(candidates, min(count, len(candidates))))
            for n, inv_id in enumerate(chosen):
                inv = self.invoices[inv_id]
                inv.memo = f"Updated {now:%Y-%m-%d %H:%M:%S} #{n}"
                inv.po_number = f"PO-{rng.randrange(10**5, 10**6)}"
                if n % 5 == 0 and inv.amount_due > 0:
                    self.add_payment(inv.id, quantize(inv.amount_due / 2, inv.currency), now.date(), now)
                inv.modified = now
            self._touch("invoice")
            return chosen

    def add_payment(self, invoice_id: int, amount: Decimal, day: date, now: datetime | None = None,
                    extra: Decimal = Decimal(0)) -> Payment:
        """Record a payment of ``amount`` applied to one invoice (``extra`` left unapplied)."""
        now = now or datetime.now(UTC)
        with self.lock:
            inv = self.invoices[invoice_id]
            pid = self._next("payment")
            pay = Payment(pid, f"PYMT-{pid:07d}", inv.customer_id, inv.currency, day, amount + extra,
                          [Application(inv.id, amount, day)], f"REF{pid:08d}", self.rate(inv.currency, day),
                          now, now)
            self.payments[pid] = pay
            inv.amount_paid += amount
            if inv.amount_due == 0:
                inv.status = "paid"
            inv.modified = now
            self._touch("payment")
            self._touch("invoice")
            return pay

    def void_invoice(self, invoice_id: int, now: datetime | None = None) -> None:
        with self.lock:
            inv = self.invoices[invoice_id]
            inv.status = "voided"
            inv.modified = now or datetime.now(UTC)
            self._touch("invoice")

    def delete(self, kind: str, record_id: int, now: datetime | None = None) -> None:
        with self.lock:
            rec = self.records(kind).pop(record_id)
            self.deleted.append(Deleted(kind, record_id, getattr(rec, "number", str(record_id)),
                                        now or datetime.now(UTC)))
            self._touch(kind)

    def rename_customer(self, customer_id: int, name: str, now: datetime | None = None) -> None:
        with self.lock:
            cust = self.customers[customer_id]
            cust.name = name
            cust.modified = now or datetime.now(UTC)
            self._touch("customer")

    def move_customer(self, customer_id: int, address: Address | None, now: datetime | None = None) -> None:
        """Give a customer a new billing address (None: the ERP has none any more)."""
        with self.lock:
            cust = self.customers[customer_id]
            cust.address = address
            cust.modified = now or datetime.now(UTC)
            self._touch("customer")

    # -------------------------------------------------------------- generation
    def _generate(self, n_customers: int, n_invoices: int) -> None:
        rng = self._rng
        self._generate_rates(rng)
        self._generate_customers(n_customers, rng)
        if self.customers:
            self._generate_invoices(n_invoices, rng)
        # a few invoices deleted in the ERP after they had been created
        untouched = sorted(i for i, inv in self.invoices.items() if inv.amount_paid == 0 == inv.amount_credited)
        for inv_id in sorted(rng.sample(untouched, min(len(self.invoices) // 500 + 1, 50, len(untouched)))):
            inv = self.invoices[inv_id]
            self.delete("invoice", inv_id, _at(min(inv.issue_date + timedelta(days=2), self.as_of), rng))
        for kind in KINDS:
            self._touch(kind)

    def _generate_rates(self, rng: random.Random) -> None:
        day = self.start - timedelta(days=7)
        levels = {cur: spec[1] for cur, spec in CURRENCIES.items() if cur != BASE_CURRENCY}
        for cur in levels:
            self._rates[cur] = []
        while day <= self.as_of:
            if day.weekday() < 5:  # published on business days only, like the ECB
                for cur in levels:
                    drift = Decimal(rng.randrange(-60, 61)) / Decimal(10000)
                    levels[cur] = (levels[cur] * (1 + drift)).quantize(Decimal("0.0000001"))
                    rid = self._next("fx_rate")
                    self.fx_rates[rid] = FxRate(cur, day, levels[cur],
                                                datetime.combine(day, time(16, 0), UTC))
                    self._rates[cur].append((day, levels[cur]))
            day += timedelta(days=1)

    def _generate_customers(self, n: int, rng: random.Random) -> None:
        cur_codes = list(CURRENCIES)
        cur_weights = [CURRENCIES[c][0] for c in cur_codes]
        profiles, profile_weights = zip(*PAYER_PROFILES)
        terms, term_weights = zip(*TERMS)
        for cid in range(1, n + 1):
            self._seq["customer"] = cid
            currency = rng.choices(cur_codes, cur_weights)[0]
            country = rng.choice(CURRENCIES[currency][3])
            if cid % 11 == 0:
                stem = _UNICODE[(cid // 11) % len(_UNICODE)]
            else:
                stem = f"{rng.choice(_FIRST)} {rng.choice(('Labs', 'Systems', 'Holdings', 'Media', 'Group', 'Partners', 'Works'))}"
            name = f"{stem} {rng.choice(_SUFFIX[country])} {cid}"
            slug = "".join(ch for ch in stem.lower() if ch.isascii() and ch.isalnum()) or "kunde"
            created = _at(self.start - timedelta(days=rng.randrange(30, 900)), rng)
            arr = Decimal(int(rng.paretovariate(1.3) * 6000)) if currency != "JPY" else Decimal(int(rng.paretovariate(1.3) * 900000))
            cust = Customer(
                id=cid, number=f"CUST-{cid:06d}", name=name, email=f"ap@{slug}{cid}.example.com",
                currency=currency, country=country, terms_days=rng.choices(terms, term_weights)[0],
                arr=arr, payer=rng.choices(profiles, profile_weights)[0], created=created, modified=created,
                contacts=[Contact(f"Accounts Payable {cid}", f"ap@{slug}{cid}.example.com", "billing",
                                  f"+1-555-{cid % 10000:04d}")])
            if rng.random() < 0.35:
                cust.contacts.append(Contact(f"Chief Financial Officer {cid}", f"cfo@{slug}{cid}.example.com",
                                             "escalation"))
            if cid > 20 and rng.random() < 0.08:  # a subsidiary billed in its parent's currency
                parent = self.customers[rng.randrange(1, cid)]
                if parent.parent_id is None:
                    cust.parent_id = parent.id
                    cust.currency = parent.currency
                    cust.country = parent.country if parent.country in CURRENCIES[parent.currency][3] else CURRENCIES[parent.currency][3][0]
                    cust.name = f"{parent.name.rsplit(' ', 1)[0]} - {rng.choice(('EMEA', 'APAC', 'Americas', 'R&D'))} {cid}"
            if rng.random() < 0.02:
                cust.inactive = True
            cust.address = self._address(cid, cust.country)
            self.customers[cid] = cust

    def _address(self, cid: int, country: str) -> Address | None:
        """A deterministic address for customer ``cid`` from the book's seed, on its own random
        stream (adding addresses changed nothing else the seed generates)."""
        rng = random.Random(f"{self.seed}:address:{cid}")
        if rng.random() < 0.05:
            return None
        cities, streets = _CITIES[country]
        city, region, pattern = rng.choice(cities)
        postal = "".join(str(rng.randrange(10)) if ch == "#" else chr(65 + rng.randrange(26)) if ch == "@" else ch
                         for ch in pattern)
        street, number = rng.choice(streets), rng.randrange(1, 400)
        lines = [f"{street} {number}" if country in _NUMBER_AFTER else f"{number} {street}"]
        if rng.random() < 0.3:
            lines.insert(0, rng.choice(("Attn. Accounts Payable", "c/o Finance Department", "Building B")))
        if rng.random() < 0.2:
            lines.append(f"Suite {rng.randrange(100, 2000)}")
        return Address(tuple(lines), city, region, postal)

    def _generate_invoices(self, n: int, rng: random.Random) -> None:
        ids = sorted(self.customers)
        # a skewed draw: some customers have many invoices
        weights = [1.0 / (1 + (i % 97)) ** 0.5 for i in range(len(ids))]
        owners = rng.choices(ids, weights, k=n)
        span = (self.as_of - self.start).days
        days = sorted(rng.randrange(span + 1) for _ in range(n))
        pending: dict[tuple[int, date], list[tuple[Invoice, Decimal]]] = {}
        for iid in range(1, n + 1):
            self._seq["invoice"] = iid
            cust = self.customers[owners[iid - 1]]
            issue = self.start + timedelta(days=days[iid - 1])
            lines = []
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                desc, base_price = rng.choice(_PRODUCTS)
                qty = Decimal(rng.choice((1, 1, 1, 2, 5, 10, 25)))
                price = quantize(Decimal(base_price) * Decimal(rng.randrange(80, 121)) / 100
                                 / CURRENCIES[cust.currency][1], cust.currency)
                lines.append(Line(desc, qty, price, quantize(qty * price, cust.currency)))
            total = sum((ln.amount for ln in lines), Decimal(0))
            created = _at(issue, rng)
            inv = Invoice(
                id=iid, number=f"INV-{iid:07d}", customer_id=cust.id, currency=cust.currency,
                issue_date=issue, sent_date=issue + timedelta(days=rng.choice((0, 0, 1, 2))) if rng.random() < 0.97 else None,
                due_date=issue + timedelta(days=cust.terms_days), lines=lines, total=total,
                amount_paid=Decimal(0), amount_credited=Decimal(0), status="open",
                po_number=f"PO-{rng.randrange(10**5, 10**6)}" if rng.random() < 0.5 else "",
                exchange_rate=self.rate(cust.currency, issue), created=created, modified=created)
            self.invoices[iid] = inv
            roll = rng.random()
            if roll < 0.02:
                inv.status = "voided"
                inv.modified = _at(min(issue + timedelta(days=rng.randrange(1, 10)), self.as_of), rng)
                continue
            if roll < 0.05:  # a credit memo, usually applied to this invoice
                cm_day = min(issue + timedelta(days=rng.randrange(1, 20)), self.as_of)
                cm_total = quantize(total * Decimal(rng.choice((10, 25, 50, 100))) / 100, cust.currency)
                applied = cm_total if rng.random() < 0.8 else Decimal(0)
                self._credit_memo(cust, inv, cm_day, cm_total, applied, rng)
            self._plan_payment(cust, inv, rng, pending)
        for (cust_id, day), items in sorted(pending.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            self._pay(self.customers[cust_id], day, items, rng)

    def _credit_memo(self, cust: Customer, inv: Invoice, day: date, total: Decimal, applied: Decimal,
                     rng: random.Random) -> None:
        mid = self._next("credit_memo")
        stamp = _at(day, rng)
        apps = [Application(inv.id, applied, day)] if applied else []
        self.credit_memos[mid] = CreditMemo(mid, f"CM-{mid:06d}", cust.id, cust.currency, day, total, apps,
                                            rng.choice(("Service credit", "Pricing correction", "Seat reduction")),
                                            self.rate(cust.currency, day), stamp, stamp)
        inv.amount_credited += applied
        inv.modified = max(inv.modified, stamp)
        if inv.amount_due == 0:
            inv.status = "paid"

    def _plan_payment(self, cust: Customer, inv: Invoice, rng: random.Random,
                      pending: dict[tuple[int, date], list[tuple[Invoice, Decimal]]]) -> None:
        due_amount = inv.amount_due
        if due_amount == 0 or cust.payer == "never":
            return
        delay = {"prompt": rng.randrange(-20, 1), "normal": rng.randrange(-5, 12),
                 "late": rng.randrange(15, 130), "batch": rng.randrange(0, 25)}[cust.payer]
        day = inv.due_date + timedelta(days=delay)
        day = max(day, inv.issue_date)
        if cust.payer == "batch":  # pays everything on the next Friday: one payment, many invoices
            day += timedelta(days=(4 - day.weekday()) % 7)
        if day > self.as_of:
            if rng.random() < 0.15 and inv.issue_date < self.as_of:  # a partial payment already arrived
                part = quantize(due_amount * Decimal(rng.choice((25, 40, 50))) / 100, cust.currency)
                pending.setdefault((cust.id, self.as_of - timedelta(days=rng.randrange(0, 5))), []).append((inv, part))
            return
        roll = rng.random()
        if roll < 0.07:
            amount = quantize(due_amount * Decimal(rng.choice((30, 50, 75))) / 100, cust.currency)  # partial
        else:
            amount = due_amount
        pending.setdefault((cust.id, day), []).append((inv, amount))

    def _pay(self, cust: Customer, day: date, items: list[tuple[Invoice, Decimal]], rng: random.Random) -> None:
        pid = self._next("payment")
        stamp = _at(day, rng)
        apps = []
        for inv, amount in items:
            amount = min(amount, inv.amount_due)
            if amount <= 0:
                continue
            apps.append(Application(inv.id, amount, day))
            inv.amount_paid += amount
            inv.modified = max(inv.modified, stamp)
            if inv.amount_due == 0:
                inv.status = "paid"
        if not apps:
            self._seq["payment"] -= 1
            return
        total = sum((a.amount for a in apps), Decimal(0))
        if rng.random() < 0.015:  # an overpayment: the excess stays unapplied on the customer
            total += quantize(Decimal(rng.randrange(5, 500)) / CURRENCIES[cust.currency][1], cust.currency)
        self.payments[pid] = Payment(pid, f"PYMT-{pid:07d}", cust.id, cust.currency, day, total, apps,
                                     f"REF{pid:08d}", self.rate(cust.currency, day), stamp, stamp)
