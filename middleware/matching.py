"""ERP customer ↔ Salesforce account matching.

Links each ``Customer`` (pulled from an ERP source) to at most one ``SfAccount`` (pulled
from a Salesforce source) and records *why* in ``Customer.match_state`` and in
``MatchCandidate`` rows. The algorithm, per run (``run_matching``):

1. **People first.** Customers a person decided (``manual``, ``manual_unlinked``) are never
   touched by a run; deleted customers are skipped too.
2. **External id.** An Account whose ``erp_key`` (the value of the configured external-id
   field in Salesforce) equals the customer's ``erp_key_field`` (``number`` by default) is
   linked: state ``external_id``. Two Accounts carrying the same key link nothing: both go
   to the review queue ("duplicate external id on 2 accounts").
3. **Score.** Otherwise candidate Accounts are found by *blocking* (never all pairs):
   the same normalized name, the same e-mail/website domain, and a rapidfuzz
   ``process.extract`` (token-sort ratio, ``score_cutoff``) over the Accounts that share the
   customer's rarest name token (see ``middleware.matching_score._Index``); a block of more than ``BIG_BLOCK`` Accounts is
   narrowed to the customer's country (plus Accounts without one). Each candidate scores::

       score = name_weight × name similarity          (0.9 × 0..100; token-sort ratio of
                                                       normalized names, "exact" when equal)
             + domain_weight    if domains agree       (+10; free-mail domains never count)
             + country_weight   if countries agree     (+5)
             − country_mismatch_penalty if they differ (−15)

   capped to 0..100 when stored; ranking and the margin use the uncapped sum, so a second
   piece of evidence still separates two perfect names. An Account carrying the external id
   of a *different* existing customer is never a candidate. Then, with the defaults:
   best ≥ ``link_threshold`` (90) and ahead of the runner-up by more than
   ``ambiguity_margin`` (5) → linked, state ``auto``; best ≥ ``review_threshold`` (70), or a
   tie at the top → state ``review`` with pending ``MatchCandidate`` rows (score, reasons);
   otherwise → ``unmatched``. An exact name alone scores 90 and links; the same name in a
   different country scores 75 and waits for review.
4. **Parents.** With ``parent_rule: inherit`` a child customer that matched nothing of its
   own takes its parent's Account (state ``auto``, reason "inherited from parent <name>").
   Whatever the rule, when a customer and its parent are both linked, the run reports
   Accounts whose ``parent_sf_id`` disagrees with the ERP hierarchy (a report, not a failure).
5. **Stability.** An ``auto`` link is kept while its Account exists and still scores at or
   above the link threshold (a new look-alike Account does not unlink it); when the Account
   is deleted or the evidence is gone the customer is decided afresh. Writes are computed as
   a difference against the store and done in bulk in one transaction: a second run with no
   new data writes nothing and reports every customer as unchanged.

Manual decisions (``link``, ``unlink``, ``reset``) write an ``AuditLog`` row each; the console
reads ``review_queue`` and ``explain_match``. Machine-written candidate rows are the pending
ones and those with ``decided_by == MACHINE``; rows a person decided are left alone by runs.

Where the code lives: the config, name and domain normalization, pair scoring and the blocking
indexes are in :mod:`middleware.matching_score` (no database); this module runs, writes and decides.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Iterable

from peewee import chunked

from .bulk import update_many, upsert
from .db import database, is_postgres, is_sqlite
from .locks import exclusive
# MatchConfig and MatchError are also re-exported (other modules import them from here)
from .matching_score import MatchConfig, MatchError, _Acc, _Cust, _Index, _score, _stored
from .matching_score import domain_of, normalize_name  # noqa: F401  (re-exported: other modules import them from here)
from .models import AuditLog, Customer, MatchCandidate, MatchState, SfAccount, Source, utcnow

MACHINE = "arhub:matching"  # decided_by of candidate rows a run accepted on its own
PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
EXTERNAL_ID, AUTO, MANUAL, REVIEW, UNMATCHED, MANUAL_UNLINKED = (
    s.value for s in (MatchState.EXTERNAL_ID, MatchState.AUTO, MatchState.MANUAL, MatchState.REVIEW,
                      MatchState.UNMATCHED, MatchState.MANUAL_UNLINKED))
INHERITED_PREFIX = "inherited from parent "
WRITE_CHUNK = 5000


# -- results --------------------------------------------------------------------------


@dataclass
class MatchResult:
    """What a run changed, by outcome; ``unchanged`` customers kept link, state and candidates."""

    linked_external_id: int = 0
    linked_auto: int = 0
    inherited: int = 0
    review: int = 0
    unmatched: int = 0
    unchanged: int = 0
    manual_kept: int = 0
    hierarchy_mismatches: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.linked_external_id + self.linked_auto + self.inherited + self.review + self.unmatched

    def as_dict(self) -> dict:
        return asdict(self) | {"changed": self.changed}


# -- decisions -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Decision:
    state: str
    sf_id: str | None
    rows: dict[str, tuple[str, float, list[str]]]  # sf_id -> (status, score, reasons) of machine rows
    kind: str  # external_id | auto | inherited | review | unmatched


def _decide_by_score(c: _Cust, scored: list[tuple[float, _Acc]], cfg: MatchConfig) -> _Decision:
    """``scored``: (uncapped score, Account), best first."""
    if not scored or scored[0][0] < cfg.review_threshold:
        return _Decision(UNMATCHED, None, {}, "unmatched")
    best = scored[0][0]
    clear = len(scored) == 1 or best - scored[1][0] > cfg.ambiguity_margin
    if best >= cfg.link_threshold and clear:
        a = scored[0][1]
        return _Decision(AUTO, a.sf_id, {a.sf_id: (ACCEPTED, _stored(best), _score(c, a, cfg)[1])}, "auto")
    floor = cfg.review_threshold if clear else min(cfg.review_threshold, best - cfg.ambiguity_margin)
    keep = [s for s in scored if s[0] >= floor][: max(cfg.max_candidates, 2)]
    tied = 0 if clear or best < cfg.link_threshold else sum(1 for raw, _ in keep if best - raw <= cfg.ambiguity_margin)
    rows = {}
    for raw, a in keep:
        reasons = _score(c, a, cfg)[1]
        if tied and best - raw <= cfg.ambiguity_margin:
            reasons.append(f"ambiguous: {tied} accounts within {cfg.ambiguity_margin:g} points")
        rows[a.sf_id] = (PENDING, _stored(raw), reasons)
    return _Decision(REVIEW, None, rows, "review")


def _resolve(source) -> Source:
    if isinstance(source, Source):
        return source
    found = Source.get_or_none((Source.id == source) if isinstance(source, int) else (Source.name == source))
    if found is None:
        raise MatchError(f"no source {source!r}")
    return found


def _config_for(sf_source: Source, config) -> MatchConfig:
    if isinstance(config, MatchConfig):
        return config
    if config is not None:
        return MatchConfig.from_dict(config)
    return MatchConfig.from_dict((sf_source.config or {}).get("matching", {}))


def run_matching(sf_source, *, erp_sources=None, config=None, now: datetime | None = None) -> MatchResult:
    """Match the ERP sources' customers (default: every non-Salesforce source) to ``sf_source``'s
    Accounts and write links, states and candidates. Idempotent; one run per Salesforce source
    at a time (``middleware.locks.LockBusy`` otherwise)."""
    started = time.perf_counter()
    sf = _resolve(sf_source)
    cfg = _config_for(sf, config)
    now = now or utcnow()
    if erp_sources is None:
        erp_ids = [s.id for s in Source.select(Source.id).where(Source.kind != "salesforce")]
    else:
        erp_ids = [_resolve(s).id for s in erp_sources]
    with exclusive(f"matching-{sf.id}"):
        result = _run(sf, erp_ids, cfg, now)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _rows(query) -> list[tuple]:
    """Rows of a peewee query as plain tuples, without per-value conversion (150k rows: seconds saved)."""
    return database.execute_sql(*query.sql()).fetchall()


def _load(sf: Source, erp_ids: list[int], cfg: MatchConfig):
    if not erp_ids:
        return [], [], {}
    key_field = getattr(Customer, cfg.erp_key_field)
    customers = [_Cust(*row) for row in _rows(
        Customer.select(Customer.id, Customer.name, Customer.email, Customer.country, Customer.parent, key_field,
                        Customer.sf_account_id, Customer.match_state)
        .where(Customer.source.in_(erp_ids), Customer.deleted_at.is_null()))]
    accounts = [_Acc(*row) for row in _rows(
        SfAccount.select(SfAccount.sf_id, SfAccount.name, SfAccount.name_key, SfAccount.erp_key, SfAccount.domain,
                         SfAccount.country, SfAccount.parent_sf_id)
        .where(SfAccount.source == sf.id, SfAccount.is_deleted == False))]  # noqa: E712
    existing: dict[int, dict[str, tuple[int, str, float, list[str]]]] = {}
    query = (MatchCandidate.select(MatchCandidate.id, MatchCandidate.customer, MatchCandidate.sf_account_id,
                                   MatchCandidate.status, MatchCandidate.score, MatchCandidate.reasons)
             .join(Customer, on=(MatchCandidate.customer == Customer.id))
             .where(Customer.source.in_(erp_ids), Customer.deleted_at.is_null(),
                    (MatchCandidate.status == PENDING) | (MatchCandidate.decided_by == MACHINE)))
    for row_id, cid, sf_id, status, score, reasons in _rows(query):
        existing.setdefault(cid, {})[sf_id] = (row_id, status, round(score, 1), json.loads(reasons))
    return customers, accounts, existing


def _run(sf: Source, erp_ids: list[int], cfg: MatchConfig, now: datetime) -> MatchResult:
    result = MatchResult()
    customers, accounts, existing = _load(sf, erp_ids, cfg)
    by_id = {c.id: c for c in customers}
    customer_keys = {c.erp_key for c in customers if c.erp_key}
    by_erp_key: dict[str, list[_Acc]] = {}
    for a in accounts:
        if a.erp_key:
            by_erp_key.setdefault(a.erp_key, []).append(a)
    # an Account that carries another existing customer's external id is nobody else's candidate
    pool = [a for a in accounts if a.erp_key is None or a.erp_key not in customer_keys]
    pool_by_sf = {a.sf_id: a for a in pool}
    index = _Index(pool)
    floor = min(cfg.review_threshold, cfg.link_threshold - cfg.ambiguity_margin)
    name_cutoff = max(0.0, (floor - cfg.domain_weight - cfg.country_weight) / cfg.name_weight)

    decisions: dict[int, _Decision] = {}
    for c in customers:
        if c.state in (MANUAL, MANUAL_UNLINKED):
            result.manual_kept += 1
            continue
        keyed = by_erp_key.get(c.erp_key, []) if c.erp_key else []
        if len(keyed) == 1:
            a = keyed[0]
            decisions[c.id] = _Decision(EXTERNAL_ID, a.sf_id, {
                a.sf_id: (ACCEPTED, 100.0, [f"external id {cfg.erp_key_field} = {c.erp_key}"])}, "external_id")
            continue
        if keyed:
            reasons = [f"external id {cfg.erp_key_field} = {c.erp_key}", f"duplicate external id on {len(keyed)} accounts"]
            decisions[c.id] = _Decision(REVIEW, None,
                                        {a.sf_id: (PENDING, 100.0, reasons) for a in keyed}, "review")
            continue
        scored = [(_score(c, pool[i], cfg, False)[0], pool[i]) for i in index.candidates(c, name_cutoff)]
        if len(scored) > 1:
            scored.sort(key=lambda s: (-s[0], s[1].sf_id))
        decision = _decide_by_score(c, scored, cfg)
        # an auto link that still holds is kept, even if a look-alike Account appeared since
        if (c.state == AUTO and c.sf_id and c.sf_id != decision.sf_id and c.sf_id in pool_by_sf
                and not _is_inherited(existing.get(c.id, {}).get(c.sf_id))):
            raw, _ = _score(c, pool_by_sf[c.sf_id], cfg, False)
            if raw >= cfg.link_threshold:
                decision = _Decision(c.state, c.sf_id, {sf_id: row[1:] for sf_id, row in existing.get(c.id, {}).items()},
                                     "auto")
        decisions[c.id] = decision

    if cfg.parent_rule == "inherit":
        _inherit(customers, by_id, decisions, pool_by_sf, accounts, cfg)

    writes_customers, deletes, upserts = [], [], []  # (sf_id, state, customer id), (customer id, row id), rows
    counted: dict[int, str] = {}  # customer id -> the MatchResult counter its change went to
    for c in customers:
        d = decisions.get(c.id)
        if d is None:
            continue
        have = existing.get(c.id, {})
        rows_same = have.keys() == d.rows.keys() and all(
            have[sf_id][1:] == row for sf_id, row in d.rows.items())
        link_same = (c.state, c.sf_id) == (d.state, d.sf_id)
        # a link that stays counts as unchanged even when its evidence is refreshed; a review whose
        # candidates changed is a change (the queue shows something new)
        if link_same and (rows_same or d.state != REVIEW):
            result.unchanged += 1
        else:
            counted[c.id] = _COUNTERS[d.kind]
            setattr(result, counted[c.id], getattr(result, counted[c.id]) + 1)
        if not link_same:
            writes_customers.append((d.sf_id, d.state, c.id))
            c.state, c.sf_id = d.state, d.sf_id
        if not rows_same:
            deletes.extend((c.id, row[0]) for sf_id, row in have.items() if sf_id not in d.rows)
            for sf_id, (status, score, reasons) in d.rows.items():
                if have.get(sf_id, (None,))[1:] != (status, score, reasons):
                    decided = (now, MACHINE) if status == ACCEPTED else (None, None)
                    upserts.append((c.id, sf_id, score, json.dumps(reasons, ensure_ascii=False), status, now, *decided))

    # SQLite: take the write lock up front, so a person's decision cannot land between the check below and the writes
    with (database.atomic(lock_type="IMMEDIATE") if is_sqlite() else database.atomic()):
        # a person may have decided while this run computed: their decision wins
        taken = _decided_by_people({w[2] for w in writes_customers} | {u[0] for u in upserts} | {d[0] for d in deletes})
        if taken:
            writes_customers = [w for w in writes_customers if w[2] not in taken]
            upserts = [u for u in upserts if u[0] not in taken]
            deletes = [d for d in deletes if d[0] not in taken]
            for cid in taken:
                if cid in counted:
                    setattr(result, counted[cid], getattr(result, counted[cid]) - 1)
                else:
                    result.unchanged -= 1
                result.manual_kept += 1
        for batch in chunked([row_id for _, row_id in deletes], 1000):
            MatchCandidate.delete().where(MatchCandidate.id.in_(batch)).execute()
        for batch in chunked(upserts, WRITE_CHUNK):
            upsert(MatchCandidate, ("customer_id", "sf_account_id", "score", "reasons", "status", "created_at",
                                    "decided_at", "decided_by"), batch,
                   ("customer_id", "sf_account_id"), ("score", "reasons", "status", "decided_at", "decided_by"))
        for batch in chunked(writes_customers, WRITE_CHUNK):
            update_many(Customer, ("id",), ("sf_account_id", "match_state"), batch)

    result.hierarchy_mismatches = _hierarchy_mismatches(customers, by_id, {a.sf_id: a for a in accounts})
    return result


def _decided_by_people(customer_ids: set[int]) -> set[int]:
    """Of these customers, those a person has decided by now (PostgreSQL: rows locked until commit)."""
    taken: set[int] = set()
    for batch in chunked(sorted(customer_ids), 1000):
        query = Customer.select(Customer.id, Customer.match_state).where(Customer.id.in_(batch))
        if is_postgres():
            query = query.for_update()
        taken.update(cid for cid, state in _rows(query) if state in (MANUAL, MANUAL_UNLINKED))
    return taken


_COUNTERS = {"external_id": "linked_external_id", "auto": "linked_auto", "inherited": "inherited",
             "review": "review", "unmatched": "unmatched"}


def _is_inherited(row) -> bool:
    return bool(row) and bool(row[3]) and str(row[3][0]).startswith(INHERITED_PREFIX)


_LINKED = (EXTERNAL_ID, AUTO, MANUAL)


def _inherit(customers, by_id, decisions, pool_by_sf, accounts, cfg) -> None:
    """Children with no match of their own take their parent's Account, level by level."""
    all_by_sf = {a.sf_id: a for a in accounts}

    def link_of(c: _Cust) -> str | None:
        d = decisions.get(c.id)
        state, sf_id = (d.state, d.sf_id) if d else (c.state, c.sf_id)
        return sf_id if state in _LINKED else None

    pending = [c for c in customers if c.parent_id in by_id and decisions.get(c.id) and decisions[c.id].kind == "unmatched"]
    for _ in range(32):  # hierarchy depth; cycles in bad data stop here
        progressed = False
        for c in list(pending):
            parent = by_id[c.parent_id]
            sf_id = link_of(parent)
            if sf_id is None or sf_id not in all_by_sf:
                continue
            raw, reasons = _score(c, all_by_sf[sf_id], cfg)
            decisions[c.id] = _Decision(AUTO, sf_id, {
                sf_id: (ACCEPTED, _stored(raw), [INHERITED_PREFIX + parent.name] + reasons)}, "inherited")
            pending.remove(c)
            progressed = True
        if not progressed:
            break


def _hierarchy_mismatches(customers, by_id, all_by_sf) -> list[dict]:
    out = []
    for c in customers:
        parent = by_id.get(c.parent_id)
        if parent is None or not c.sf_id or not parent.sf_id or c.sf_id == parent.sf_id:
            continue
        if c.state not in _LINKED or parent.state not in _LINKED:
            continue
        account = all_by_sf.get(c.sf_id)
        if account is None or account.parent_sf_id == parent.sf_id:
            continue
        out.append({"customer_id": c.id, "customer": c.name, "account": c.sf_id,
                    "account_parent": account.parent_sf_id, "parent_customer_id": parent.id,
                    "parent_customer": parent.name, "parent_account": parent.sf_id})
    return out


# -- manual decisions and the console ----------------------------------------------------------------


def _customer(customer_id: int) -> Customer:
    customer = Customer.get_or_none(Customer.id == customer_id)
    if customer is None:
        raise MatchError(f"no customer {customer_id}")
    return customer


def _snapshot(customer: Customer) -> dict:
    return {"match_state": customer.match_state, "sf_account_id": customer.sf_account_id}


def _audit(actor: str, action: str, customer: Customer, before: dict, now: datetime) -> None:
    AuditLog.create(at=now, actor=actor, action=action, object_type="customer", object_id=str(customer.id),
                    before=before, after=_snapshot(customer))


def _set_link(customer: Customer, state: str | None, sf_id: str | None) -> None:
    customer.match_state, customer.sf_account_id = state, sf_id
    Customer.update(match_state=state, sf_account_id=sf_id).where(Customer.id == customer.id).execute()


def link(customer_id: int, sf_account_id: str, actor: str) -> Customer:
    """A person links the customer to an Account: state ``manual``, kept by every later run.
    The chosen candidate is accepted, every other open one rejected."""
    now = utcnow()
    with database.atomic():
        customer = _customer(customer_id)
        account = (SfAccount.select().where(SfAccount.sf_id == sf_account_id, SfAccount.is_deleted == False)  # noqa: E712
                   .order_by(SfAccount.id).first())
        if account is None:
            raise MatchError(f"no Salesforce account {sf_account_id!r}")
        before = _snapshot(customer)
        decided = {"decided_at": now, "decided_by": actor}
        (MatchCandidate.update(status=REJECTED, **decided)
         .where(MatchCandidate.customer == customer.id, MatchCandidate.sf_account_id != sf_account_id,
                MatchCandidate.status != REJECTED).execute())
        if not MatchCandidate.update(status=ACCEPTED, **decided).where(
                MatchCandidate.customer == customer.id, MatchCandidate.sf_account_id == sf_account_id).execute():
            cfg = _config_for(account.source, None)
            raw, reasons = _score(_Cust(customer.id, customer.name, customer.email, customer.country, None,
                                        None, None, None),
                                  _Acc(account.sf_id, account.name, account.name_key, None, account.domain,
                                       account.country, None), cfg)
            MatchCandidate.insert(customer=customer.id, sf_account_id=sf_account_id, score=_stored(raw),
                                  reasons=[f"linked by {actor}"] + reasons, status=ACCEPTED, created_at=now,
                                  **decided).execute()
        _set_link(customer, MANUAL, sf_account_id)
        _audit(actor, "match.link", customer, before, now)
    return customer


def unlink(customer_id: int, actor: str) -> Customer:
    """A person says "no Account": state ``manual_unlinked``; no run links it again until ``reset``."""
    now = utcnow()
    with database.atomic():
        customer = _customer(customer_id)
        before = _snapshot(customer)
        (MatchCandidate.update(status=REJECTED, decided_at=now, decided_by=actor)
         .where(MatchCandidate.customer == customer.id, MatchCandidate.status != REJECTED).execute())
        _set_link(customer, MANUAL_UNLINKED, None)
        _audit(actor, "match.unlink", customer, before, now)
    return customer


def reset(customer_id: int, actor: str) -> Customer:
    """Back to automatic: no link, no state, no candidates; the next run decides (the audit log
    keeps what people decided before)."""
    now = utcnow()
    with database.atomic():
        customer = _customer(customer_id)
        before = _snapshot(customer)
        MatchCandidate.delete().where(MatchCandidate.customer == customer.id).execute()
        _set_link(customer, None, None)
        _audit(actor, "match.reset", customer, before, now)
    return customer


def _account_names(sf_ids: Iterable[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    # the source condition lets the (source, sf_id) index serve the lookup instead of a scan of every Account
    sf_sources = Source.select(Source.id).where(Source.kind == "salesforce")
    for batch in chunked(sorted(set(sf_ids)), 500):
        for sf_id, name, deleted in (SfAccount.select(SfAccount.sf_id, SfAccount.name, SfAccount.is_deleted)
                                     .where(SfAccount.source.in_(sf_sources), SfAccount.sf_id.in_(batch))
                                     .order_by(SfAccount.is_deleted.desc())
                                     .tuples()):
            names[sf_id] = name  # a live Account's name wins over a deleted one's
    return names


def _candidate_dicts(rows, names) -> list[dict]:
    return [{"sf_account_id": r.sf_account_id, "account": names.get(r.sf_account_id), "score": r.score,
             "reasons": r.reasons, "status": r.status}
            for r in sorted(rows, key=lambda r: (-r.score, r.sf_account_id))]


def review_queue(limit: int = 50, offset: int = 0) -> list[dict]:
    """Customers waiting in review, best candidate score first, each with its candidates best first.

    The pending candidates are read best first along the ``(status, score)`` index and stop once the
    page is full: a customer first appears at its best score, so the order is (best desc, id), and a
    page costs the candidates of the customers up to it, not a GROUP BY over the whole queue."""
    page: list[tuple] = []
    seen: set[int] = set()
    stream = (MatchCandidate.select(Customer.id, Customer.name, Customer.number, MatchCandidate.score)
              .join(Customer, on=(MatchCandidate.customer == Customer.id))
              .where(MatchCandidate.status == PENDING, Customer.match_state == REVIEW,
                     Customer.deleted_at.is_null())
              .order_by(MatchCandidate.score.desc(), Customer.id).tuples())
    batch, start = max(4 * (offset + limit), 200), 0
    while len(page) < limit:
        rows_read = 0
        for cid, name, number, score in stream.limit(batch).offset(start):
            rows_read += 1
            if cid in seen:
                continue
            seen.add(cid)
            if len(seen) > offset:
                page.append((cid, name, number, score))
                if len(page) == limit:
                    break
        if rows_read < batch:
            break
        start, batch = start + batch, batch * 2
    if not page:
        return []
    rows: dict[int, list[MatchCandidate]] = {}
    for row in MatchCandidate.select().where(MatchCandidate.customer.in_([p[0] for p in page]),
                                             MatchCandidate.status == PENDING):
        rows.setdefault(row.customer_id, []).append(row)
    names = _account_names(r.sf_account_id for group in rows.values() for r in group)
    return [{"customer_id": cid, "customer": name, "number": number, "best_score": score,
             "candidates": _candidate_dicts(rows.get(cid, []), names)} for cid, name, number, score in page]


def explain_match(customer_id: int) -> dict:
    """Why the customer is (not) linked: state, Account, score, reasons, open candidates, who decided."""
    customer = _customer(customer_id)
    rows = list(MatchCandidate.select().where(MatchCandidate.customer == customer.id))
    names = _account_names([r.sf_account_id for r in rows] + ([customer.sf_account_id] if customer.sf_account_id else []))
    out = {"customer_id": customer.id, "customer": customer.name, "state": customer.match_state,
           "account": None, "score": None, "reasons": [], "candidates": [], "decided_by": None, "decided_at": None}
    if customer.sf_account_id:
        out["account"] = {"sf_id": customer.sf_account_id, "name": names.get(customer.sf_account_id)}
        chosen = next((r for r in rows if r.sf_account_id == customer.sf_account_id and r.status == ACCEPTED), None)
        if chosen is not None:
            out.update(score=chosen.score, reasons=chosen.reasons, decided_by=chosen.decided_by,
                       decided_at=chosen.decided_at)
    pending = [r for r in rows if r.status == PENDING]
    out["candidates"] = _candidate_dicts(pending, names)
    state = customer.match_state
    if state == REVIEW and pending:
        out["score"], out["reasons"] = out["candidates"][0]["score"], out["candidates"][0]["reasons"]
    elif state in (MANUAL, MANUAL_UNLINKED):
        last = (AuditLog.select().where(AuditLog.object_type == "customer", AuditLog.object_id == str(customer.id),
                                        AuditLog.action.in_(("match.link", "match.unlink")))
                .order_by(AuditLog.at.desc(), AuditLog.id.desc()).first())
        if last is not None:
            out["decided_by"], out["decided_at"] = last.actor, last.at
            if state == MANUAL_UNLINKED:
                out["reasons"] = [f"unlinked by {last.actor}"]
    elif state == UNMATCHED:
        out["reasons"] = ["no Salesforce account scored high enough for review"]
    elif state is None:
        out["reasons"] = ["not matched yet"]
    return out
