"""``arhub bench console``: server time of the console's customer list, customer page and dashboard
at scale.

One run, in a scratch SQLite database (or ``--db postgres``) under a temporary var dir, with the
var dir's embedded Redis (never a shared one):

1. **the store**, written straight in SQL in bulk (not measured): ``--customers`` customers (names
   from a small list with a number, six billing currencies with monthly rates to USD, segments,
   eight collectors and a team queue, 3% paused, 2% inactive, 30% linked to a Salesforce account,
   tags on a fifth), ``--invoices`` invoices over two years (half of those issued in the last 60 days
   open, 3% of older ones: every aging bucket filled; a tenth of the open ones part-paid; 0.2%
   without a rate), one **busy customer** with 0.1% of all invoices, unapplied payments on 1% of the
   customers, dunning actions of two campaigns on a third of the customers with something open, and
   notes. The dashboard figures are computed once as its job does (``compute_seconds``), and the
   per-customer balances (``middleware.balances``) once in full (``balance_refresh_seconds``: what
   the first list by amount of a new day pays); on PostgreSQL the store is then ``VACUUM ANALYZE``d
   as autovacuum keeps a store in use (the visibility map that index-only scans rely on);
2. **the requests**: the real Flask app (``console.create_app``) through its test client, logged in
   as an admin, ``--requests`` times per page after two warm-up requests, each timed around
   ``client.get`` in this process (server time, no network): the list's variants (default page, a
   deep page by name, a search, filters by collector, bucket and currency, sorts by overdue and
   open, a deep page of each amount sort, a deep page past the customers with something open, a
   combined filter), the customer page of the busy customer and of customers with open invoices,
   and the dashboard (its figures cached in Redis, as the web always reads them).

``list_p95_ms`` is the slowest list variant's p95, ``customer_p95_ms`` the slower customer page's.
"""
from __future__ import annotations

import os
import platform
import random
import re
import statistics
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from typing import Callable

PASSWORD = "bench-console-password"
ADMIN = "admin@bench.test"
COLLECTORS = [f"collector{n}@bench.test" for n in range(1, 9)]
CURRENCIES = ["USD"] * 45 + ["EUR"] * 20 + ["GBP"] * 12 + ["JPY"] * 8 + ["AUD"] * 8 + ["CAD"] * 7
RATES = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "JPY": 0.0067, "AUD": 0.66, "CAD": 0.73}
NAMES = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay", "Müller & Söhne",
         "Zoë's Café", "Soylent", "Tyrell", "Cyberdyne", "Wonka", "Oscorp", "Nakatomi"]
SEGMENTS = ["enterprise", "mid-market", "smb", None]
TAGS = ["strategic", "arr-100k-plus", "public-sector", "reseller", "watch"]


def _bulk(table: str, cols: tuple[str, ...], rows, batch: int = 20_000) -> int:
    """Insert ``rows`` into ``table`` in batches (executemany; execute_values on PostgreSQL)."""
    from middleware.db import database, is_postgres

    db = database.obj
    quoted = ", ".join(f'"{c}"' for c in cols)
    pg = is_postgres(db)
    n = 0
    buf: list = []

    def flush():
        cursor = db.cursor()
        if pg:
            from psycopg2.extras import execute_values
            execute_values(cursor, f'INSERT INTO "{table}" ({quoted}) VALUES %s', buf, page_size=2000)
        else:
            cursor.executemany(f'INSERT INTO "{table}" ({quoted}) VALUES ({", ".join("?" * len(cols))})', buf)

    with db.atomic():
        for row in rows:
            buf.append(row)
            if len(buf) >= batch:
                flush()
                n += len(buf)
                buf = []
        if buf:
            flush()
            n += len(buf)
    return n


def build_store(customers: int, invoices: int, today: date, seed: int = 1) -> dict:
    """The store described in the module docstring, written straight in SQL; returns counts and the
    ids the requests use."""
    from middleware.db import database
    from middleware.models import Campaign, Company, Source, Tag
    from middleware.people import create_user

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    Company.create(name="Bench Receivables Inc.", reporting_currency="USD")
    source = Source.create(name="erp", kind="rest", config={})
    create_user(ADMIN, "Ada Admin", "admin", PASSWORD, actor="bench")
    for n, email in enumerate(COLLECTORS, 1):
        create_user(email, f"Collector {n}", "collector", PASSWORD, actor="bench")
    # monthly rates to USD for two years, moving a little
    _bulk("fx_rate", ("base_currency", "currency", "rate_date", "rate", "source_name", "created_at"),
          (("USD", cur, today - timedelta(days=30 * m), round(rate * (1 + 0.02 * ((m % 5) - 2) / 2), 6), "bench", now)
           for cur, rate in RATES.items() if cur != "USD" for m in range(25)))
    ccur: list[str] = [""]
    crow = []
    for i in range(1, customers + 1):
        cur = rng.choice(CURRENCIES)
        ccur.append(cur)
        paused = today + timedelta(days=rng.randint(1, 30)) if rng.random() < 0.03 else None
        sf = f"001BENCH{i:010d}" if rng.random() < 0.3 else None
        crow.append((source.id, f"C{i}", f"CUST-{i:06d}", f"{rng.choice(NAMES)} {i}", f"ap@c{i}.example.com",
                     cur, rng.choice(SEGMENTS), rng.choice(COLLECTORS + [None]), sf,
                     ("linked" if sf else rng.choice(["unmatched", "review", None])), paused,
                     "bench" if paused else None, rng.random() < 0.02, "x" * 32, now, now))
    _bulk("customer", ("source_id", "external_id", "number", "name", "email", "billing_currency", "segment",
                       "collector", "sf_account_id", "match_state", "paused_until", "paused_reason", "inactive",
                       "content_hash", "created_at", "updated_at"), crow)
    del crow
    first_id = database.execute_sql('SELECT MIN("id") FROM "customer"').fetchone()[0]
    cid = lambda i: first_id + i - 1  # noqa: E731  customer number i (1-based) → its id
    busy = 1
    busy_share = max(invoices // 1000, 50)
    rate_of = {cur: RATES[cur] for cur in RATES}

    def invoice_rows():
        for j in range(1, invoices + 1):
            i = busy if j <= busy_share else rng.randint(1, customers)
            cur = ccur[i]
            issued = today - timedelta(days=rng.randint(0, 730))
            due = issued + timedelta(days=rng.choice((14, 30, 30, 30, 45, 60)))
            amount = round(rng.uniform(50, 20000) * 150, 0) if cur == "JPY" else round(rng.uniform(50, 20000), 2)
            is_open = rng.random() < (0.5 if (today - issued).days < 60 else 0.03)
            open_amount = 0.0
            if is_open:
                open_amount = round(amount * rng.uniform(0.2, 0.9), 2) if rng.random() < 0.1 else amount
            rate = rate_of[cur]
            missing = is_open and rng.random() < 0.002
            yield (source.id, f"I{j}", f"INV-{j:08d}", cid(i), f"C{i}", cur, amount, rate, issued,
                   round(amount * rate, 2), False, "x" * 32, now, now, issued, issued, due,
                   "open" if is_open else "paid", open_amount, None if missing else round(open_amount * rate, 2),
                   today if is_open else None, open_amount)

    n_inv = _bulk("invoice", ("source_id", "external_id", "number", "customer_id", "customer_external_id", "currency",
                              "amount", "fx_rate", "fx_rate_date", "amount_reporting", "fx_missing", "content_hash",
                              "created_at", "updated_at", "issue_date", "sent_date", "due_date", "status",
                              "open_amount", "open_amount_reporting", "revalued_at", "erp_open_amount"),
                  invoice_rows())
    # unapplied payments on 1% of the customers
    pays = rng.sample(range(1, customers + 1), max(customers // 100, 1))
    _bulk("payment", ("source_id", "external_id", "number", "customer_id", "customer_external_id", "currency",
                      "amount", "fx_rate", "fx_rate_date", "amount_reporting", "fx_missing", "content_hash",
                      "created_at", "updated_at", "date", "unapplied_amount", "reference"),
          ((source.id, f"P{i}", f"PAY-{i:06d}", cid(i), f"C{i}", ccur[i], 500.0, RATES[ccur[i]], today,
            round(500 * RATES[ccur[i]], 2), False, "x" * 32, now, now, today - timedelta(days=3), 200.0, f"R{i}")
           for i in pays))
    # tags on a fifth of the customers
    tags = [Tag.create(name=t).id for t in TAGS]
    _bulk("customer_tag", ("customer_id", "tag_id", "origin", "created_at"),
          ((cid(i), t, rng.choice(["rule", "manual"]), now) for i in range(1, customers + 1) if rng.random() < 0.2
           for t in rng.sample(tags, rng.randint(1, 2))))
    # dunning actions of two campaigns on a third of the customers with something open
    campaigns = [Campaign.create(name=name).id for name in ("Standard", "Enterprise gentle")]
    with_open = [r[0] for r in database.execute_sql(
        'SELECT DISTINCT "customer_id" FROM "invoice" WHERE "status" = \'open\' AND "open_amount" > 0').fetchall()]
    dunned = [c for c in with_open if rng.random() < 0.33]
    statuses = ["sent", "sent", "skipped", "planned", "failed"]

    def actions():
        for c in dunned:
            for k in range(rng.randint(1, 4)):
                status = rng.choice(statuses)
                yield (f"bench-{c}-{k}", c, rng.choice(campaigns), today - timedelta(days=7 * k), status,
                       "paused" if status == "skipped" else None, "email", "[]", "[]", 0, now, now)

    n_actions = _bulk("dunning_action", ("key", "customer_id", "campaign_id", "planned_for", "status", "reason",
                                         "channel", "invoice_ids", "cc", "attempts", "created_at", "updated_at"),
                      actions())
    notes = [cid(busy)] * 40 + [rng.choice(with_open) for _ in range(max(customers // 20, 1))]
    n_notes = _bulk("activity", ("customer_id", "kind", "body", "actor", "created_at"),
                    ((c, "note", "Called AP, they will pay by Friday.", rng.choice(COLLECTORS), now) for c in notes))
    n_open = database.execute_sql('SELECT COUNT(*) FROM "invoice" WHERE "status" = \'open\' AND "open_amount" > 0'
                                  ).fetchone()[0]
    typical = rng.sample(with_open, min(len(with_open), 25))
    return {"customers": customers, "invoices": n_inv, "open_invoices": n_open, "customers_with_open": len(with_open),
            "busy_customer_id": cid(busy), "busy_customer_invoices": busy_share, "dunning_actions": n_actions,
            "notes": n_notes, "typical_ids": typical}


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    k = max(int(round(q * len(ordered) + 0.5)) - 1, 0)  # nearest rank
    return ordered[min(k, len(ordered) - 1)]


def _login(client) -> None:
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)
    resp = client.post("/login", data={"email": ADMIN, "password": PASSWORD, "csrf_token": token})
    if resp.status_code != 302:
        raise RuntimeError(f"login failed: {resp.status_code}")


def console(*, customers: int = 15000, invoices: int = 100000, requests: int = 50, db_kind: str = "sqlite",
            pg_url: str = "postgresql://postgres@127.0.0.1:5432/test", log: Callable[[str], None] | None = None
            ) -> dict:
    from jobs.bench_salesforce import _scratch_database
    from jobs.bootstrap import bootstrap

    say = log or (lambda message: None)
    load_start = os.getloadavg()[0]
    saved_redis = os.environ.pop("ARHUB_REDIS_URL", None)  # the var dir's embedded Redis: nobody else's
    try:
        with tempfile.TemporaryDirectory(prefix="arhub-bench-console-") as workdir, \
                _scratch_database(db_kind, pg_url, workdir):
            ctx = bootstrap(migrate=True, logging_=False)
            from console import create_app
            from jobs.dashboard import compute_figures, refresh_dashboard
            from middleware import balances
            from middleware.people import today as company_today

            today = company_today()
            t0 = time.perf_counter()
            store = build_store(customers, invoices, today)
            load_seconds = time.perf_counter() - t0
            say(f"store built in {load_seconds:.1f} s: {store['invoices']:,} invoices, "
                f"{store['open_invoices']:,} open, {store['customers_with_open']:,} customers with something open")
            from middleware.db import database, is_postgres
            if is_postgres():
                # what autovacuum has done to a store in use (it is on by default; a bulk load
                # leaves no visibility map, so index-only scans would visit the heap for every row)
                database.execute_sql("VACUUM ANALYZE")
            t0 = time.perf_counter()
            balances.refresh(None, today)
            refresh_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            compute_figures(today, ctx.settings)
            compute_seconds = time.perf_counter() - t0
            refresh_dashboard(today.isoformat())  # cached in Redis, as the web reads it
            if is_postgres():  # autovacuum again, after the refresh rewrote every balance row
                database.execute_sql('VACUUM ANALYZE "customer_balance"')
            say(f"balances refreshed in {refresh_seconds:.2f} s; dashboard figures computed in {compute_seconds:.2f} s")

            app = create_app()
            client = app.test_client()
            _login(client)
            per = 50
            deep_name = max(int(customers * 0.8) // per, 1)
            deep_amount = max(int(store["customers_with_open"] * 0.8) // per, 1)
            tail = max((store["customers_with_open"] + (customers - store["customers_with_open"]) // 2) // per, 1)
            rng = random.Random(2)
            searches = [f"{rng.choice(NAMES).split()[0].lower()} {rng.randint(1, max(customers // 100, 1))}"
                        for _ in range(requests + 2)]
            busy = store["busy_customer_id"]
            typical = store["typical_ids"]
            variants: dict[str, Callable[[int], str]] = {
                "list_default": lambda n: "/customers/",
                "list_deep_page": lambda n: f"/customers/?page={deep_name}",
                "list_search": lambda n: "/customers/?q=" + searches[n].replace(" ", "+"),
                "list_collector": lambda n: f"/customers/?collector={COLLECTORS[n % len(COLLECTORS)]}",
                "list_bucket": lambda n: "/customers/?bucket=" + ["1-30", "31-60", "61-90", "91%2B"][n % 4],
                "list_currency": lambda n: "/customers/?currency=" + ["EUR", "GBP", "JPY"][n % 3],
                "list_sort_overdue": lambda n: "/customers/?sort=overdue",
                "list_sort_open": lambda n: "/customers/?sort=open",
                "list_sort_overdue_deep": lambda n: f"/customers/?sort=overdue&page={deep_amount}",
                "list_sort_open_asc_tail": lambda n: f"/customers/?sort=open&dir=asc&page={tail}",
                "list_combined": lambda n: (f"/customers/?collector={COLLECTORS[n % len(COLLECTORS)]}&overdue_min=1000"
                                            "&bucket=61-90&currency=EUR&sort=overdue"),
                "customer_busy": lambda n: f"/customers/{busy}",
                "customer_typical": lambda n: f"/customers/{typical[n % len(typical)]}",
                "dashboard": lambda n: "/",
            }
            timings: dict[str, list[float]] = {}
            for name, url in variants.items():
                for n in range(2):  # warm-up: not counted
                    resp = client.get(url(n))
                    if resp.status_code != 200:
                        raise RuntimeError(f"{url(n)}: HTTP {resp.status_code}")
                samples = []
                for n in range(requests):
                    t0 = time.perf_counter()
                    resp = client.get(url(n))
                    samples.append((time.perf_counter() - t0) * 1000)
                    if resp.status_code != 200:
                        raise RuntimeError(f"{url(n)}: HTTP {resp.status_code}")
                timings[name] = samples
                say(f"{name:26s} p50 {statistics.median(samples):7.1f} ms  p95 {_percentile(samples, 0.95):7.1f} ms")
            from jobs.queues import close_embedded
            close_embedded(ctx.settings)
    finally:
        if saved_redis is not None:
            os.environ["ARHUB_REDIS_URL"] = saved_redis

    def fig(names: list[str], q: float) -> float:
        return round(max(_percentile(timings[n], q) for n in names), 1)

    lists = [n for n in timings if n.startswith("list_")]
    pages = ["customer_busy", "customer_typical"]
    result = {
        "date": date.today().isoformat(), "db": db_kind, "customers": customers, "invoices": store["invoices"],
        "open_invoices": store["open_invoices"], "customers_with_open": store["customers_with_open"],
        "busy_customer_invoices": store["busy_customer_invoices"], "requests": requests,
        "list_p95_ms": fig(lists, 0.95), "list_p50_ms": fig(lists, 0.5),
        "customer_p95_ms": fig(pages, 0.95), "customer_p50_ms": fig(pages, 0.5),
        "dashboard_p95_ms": fig(["dashboard"], 0.95), "dashboard_p50_ms": fig(["dashboard"], 0.5),
        "dashboard_compute_seconds": round(compute_seconds, 2), "balance_refresh_seconds": round(refresh_seconds, 2),
        "load_seconds": round(load_seconds, 1),
        "variants": {n: {"p50_ms": round(statistics.median(s), 1), "p95_ms": round(_percentile(s, 0.95), 1),
                         "max_ms": round(max(s), 1)} for n, s in timings.items()},
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}",
        "load_avg_1m": f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
    }
    return result


def render(result: dict, title: str):
    from rich.table import Table

    table = Table("figure", "value", title=title)
    for key, value in result.items():
        if key != "variants":
            table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    for name, v in result["variants"].items():
        table.add_row(f"  {name}", f"p50 {v['p50_ms']} ms, p95 {v['p95_ms']} ms, max {v['max_ms']} ms")
    return table
