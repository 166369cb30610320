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
   customer's rarest name token (see ``_Index``); a block of more than ``BIG_BLOCK`` Accounts is
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
"""
from __future__ import annotations

import json
import re
import string
import time
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Iterable
from urllib.parse import urlsplit

from peewee import chunked
from rapidfuzz import fuzz, process

from .bulk import update_many, upsert
from .db import database, is_postgres, is_sqlite
from .locks import exclusive
from .models import AuditLog, Customer, MatchCandidate, MatchState, SfAccount, Source, utcnow

MACHINE = "arhub:matching"  # decided_by of candidate rows a run accepted on its own
PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
EXTERNAL_ID, AUTO, MANUAL, REVIEW, UNMATCHED, MANUAL_UNLINKED = (
    s.value for s in (MatchState.EXTERNAL_ID, MatchState.AUTO, MatchState.MANUAL, MatchState.REVIEW,
                      MatchState.UNMATCHED, MatchState.MANUAL_UNLINKED))
INHERITED_PREFIX = "inherited from parent "
NUMBERS_PENALTY = 4  # "acme labs 12" vs "acme labs": the name without its numbers, minus this
NUMBERS_CONFLICT = 10  # "acme labs 42" vs "acme labs 421": the name without its numbers, minus this
BIG_BLOCK = 500  # a name block larger than this is narrowed to the customer's country
SECOND_BLOCK_CAP = 500  # the second-rarest token's block is searched only when this small
MAX_BLOCK = 1000  # larger (after narrowing) is not a block: the two rarest tokens together, or no fuzzy search
EXTRACT_LIMIT = 5  # best fuzzy hits kept per block (before evidence is added)
PER_NAME_CAP = 2  # Accounts taken per similar name (numbered look-alikes: "acme labs 1", "acme labs 2", ...)
DOMAIN_CAP = 50  # Accounts on one domain looked at per customer
DIGIT_PATH_CAP = 20  # Accounts reached through the "same name but numbers" index
WRITE_CHUNK = 5000


class MatchError(ValueError):
    """A manual decision that cannot be made (unknown customer or Account), or a bad config."""


# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class MatchConfig:
    """``source.config["matching"]`` of the Salesforce source; every key is optional."""

    erp_key_field: str = "number"  # Customer attribute the Account's external-id field holds
    link_threshold: float = 90.0
    review_threshold: float = 70.0
    ambiguity_margin: float = 5.0
    name_weight: float = 0.9
    domain_weight: float = 10.0
    country_weight: float = 5.0
    country_mismatch_penalty: float = 15.0
    parent_rule: str = "own"  # own | inherit
    max_candidates: int = 5  # candidates kept for review per customer

    @classmethod
    def from_dict(cls, data: dict | None) -> "MatchConfig":
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise MatchError(f"matching config: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
        values = {}
        for name, value in data.items():
            kind = type(getattr(cls, name))
            try:
                values[name] = kind(value)
            except (TypeError, ValueError):
                raise MatchError(f"matching config: {name} must be {kind.__name__}, not {value!r}") from None
        config = cls(**values)
        if config.erp_key_field not in ("number", "external_id"):
            raise MatchError(f"matching config: erp_key_field must be 'number' or 'external_id', not {config.erp_key_field!r}")
        if config.parent_rule not in ("own", "inherit"):
            raise MatchError(f"matching config: parent_rule must be 'own' or 'inherit', not {config.parent_rule!r}")
        if not 0 <= config.review_threshold <= config.link_threshold <= 100:
            raise MatchError("matching config: need 0 <= review_threshold <= link_threshold <= 100")
        if config.ambiguity_margin < 0 or config.max_candidates < 1 or config.name_weight <= 0:
            raise MatchError("matching config: ambiguity_margin >= 0, max_candidates >= 1, name_weight > 0")
        return config


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


# -- normalization --------------------------------------------------------------------

# Legal forms as token sequences of the normalized name (dots already removed: "B.V." -> "bv").
_LEGAL_SUFFIXES = sorted({
    ("inc",), ("incorporated",), ("llc",), ("llp",), ("lp",), ("pllc",), ("ltd",), ("limited",), ("corp",),
    ("corporation",), ("co",), ("company",), ("gmbh",), ("mbh",), ("ag",), ("kg",), ("ohg",), ("ug",),
    ("gmbh", "and", "co", "kg"), ("and", "co"), ("and", "co", "kg"), ("sas",), ("sasu",), ("sa",), ("sarl",), ("eurl",),
    ("bv",), ("nv",), ("sl",), ("slu",), ("srl",), ("spa",), ("plc",), ("pty",), ("pty", "ltd"), ("pte", "ltd"),
    ("pvt", "ltd"), ("private", "limited"), ("kk",), ("gk",), ("oy",), ("oyj",), ("ab",), ("as",), ("a", "s"),
    ("asa",), ("aps",), ("sp", "z", "oo"), ("sro",), ("kft",), ("zrt",), ("bhd",), ("sdn", "bhd"), ("ltda",),
    ("sa", "de", "cv"), ("s", "de", "rl"), ("s", "de", "rl", "de", "cv"), ("sab", "de", "cv"), ("co", "ltd"),
    ("ооо",), ("оао",), ("зао",), ("пао",), ("ао",),
}, key=len, reverse=True)
_SUFFIXES_BY_LAST: dict[str, list[tuple[str, ...]]] = {}
for _form in _LEGAL_SUFFIXES:  # longest first within each list
    _SUFFIXES_BY_LAST.setdefault(_form[-1], []).append(_form)
_LEGAL_PREFIXES = {"ооо", "оао", "зао", "пао", "ао", "the"}
# Written without spaces in CJK names, before or after the name: removed wherever they occur.
_CJK_FORMS = ("股份有限公司", "有限公司", "株式会社", "有限会社", "合同会社", "(株)", "(有)", "주식회사", "(주)")
_TRANSLIT = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})
_JOINERS = {".", "'", "`", "´", "’", "‘"}  # "B.V." -> "bv", "O'Brien" -> "obrien"
_ASCII_PUNCT = str.maketrans({c: ("" if c in _JOINERS else " and " if c == "&" else " ") for c in string.punctuation})


def _is_latin(ch: str) -> bool:
    o = ord(ch)
    return o < 0x250 or 0x1E00 <= o < 0x1F00


def _fold(text: str) -> str:
    """Casefold, NFKD, accents off Latin letters (other scripts keep their marks), then NFC."""
    text = unicodedata.normalize("NFKD", text.casefold())
    out, base_latin = [], False
    for ch in text:
        if unicodedata.combining(ch):
            if not base_latin:
                out.append(ch)
            continue
        base_latin = _is_latin(ch)
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out)).translate(_TRANSLIT)


def _strip_punctuation(text: str) -> str:
    if text.isascii():
        return text.translate(_ASCII_PUNCT)
    out = []
    for ch in text:
        if ch in _JOINERS:
            continue
        if ch == "&":
            out.append(" and ")
        elif unicodedata.category(ch)[0] in "PS":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _strip_legal_forms(tokens: list[str]) -> list[str]:
    if len(tokens) > 1 and tokens[0] in _LEGAL_PREFIXES:
        tokens = tokens[1:]
    # trailing legal forms, looking through numbers after them ("acme labs inc 12" -> "acme labs 12")
    numbers: list[str] = []
    while len(tokens) > 1:
        last = tokens[-1]
        if last.isdigit():
            numbers.insert(0, tokens.pop())
            continue
        for form in _SUFFIXES_BY_LAST.get(last, ()):
            n = len(form)
            if len(tokens) > n and tuple(tokens[-n:]) == form:
                del tokens[-n:]
                break
        else:
            break
    return tokens + numbers


def normalize_name(name: str | None) -> str:
    """The matching key of a company name: case, accents, punctuation and legal form removed.

    ``"Müller & Söhne GmbH"`` → ``"muller and sohne"``; ``"ACME LABS INC 12"`` → ``"acme labs 12"``;
    ``"東京システム株式会社"`` → ``"東京システム"``. The Salesforce pull stores it as ``SfAccount.name_key``.
    """
    if not name:
        return ""
    if name.isascii():
        text = name.lower()
    else:
        text = _fold(name)
        for form in _CJK_FORMS:
            if form in text:
                text = text.replace(form, " ")
    tokens = _strip_punctuation(text).split()
    return " ".join(_strip_legal_forms(tokens))


FREE_MAIL = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "yahoo.com", "ymail.com",
    "rocketmail.com", "aol.com", "icloud.com", "me.com", "mac.com", "proton.me", "protonmail.com", "pm.me",
    "gmx.com", "gmx.de", "gmx.net", "web.de", "t-online.de", "freenet.de", "mail.com", "mail.ru", "yandex.ru",
    "yandex.com", "qq.com", "163.com", "126.com", "naver.com", "orange.fr", "free.fr", "laposte.net", "libero.it",
    "zoho.com", "fastmail.com", "hey.com", "comcast.net", "btinternet.com", "bigpond.com", "seznam.cz", "wp.pl",
})
_FREE_MAIL_FAMILY = re.compile(r"(yahoo|hotmail|outlook|live|gmx|aol|yandex)(\.com?)?\.[a-z]{2,3}")
# Suffixes shared by unrelated organisations: "a.example.com" and "b.example.com" are different companies.
SHARED_SUFFIXES = frozenset({
    "example.com", "example.org", "example.net", "github.io", "gitlab.io", "herokuapp.com", "wixsite.com",
    "myshopify.com", "blogspot.com", "wordpress.com", "squarespace.com", "azurewebsites.net", "co.uk", "com.au",
})
_NOT_PLAIN_ADDRESS = re.compile(r"[\s,;<>\"'()\[\]/]")
_HOST = re.compile(r"[^\s/@:?#]+\.[^\s/@:?#.]+")


def domain_of(email_or_url: str | None) -> str | None:
    """The lower-case host of an e-mail address or a URL, without ``www.``; None for free-mail
    (gmail.com, outlook.com, …) and for anything that is not a host name."""
    if not email_or_url:
        return None
    value = email_or_url.strip().lower()
    if value.startswith("mailto:"):
        value = value[7:]
    if value.count("@") == 1 and not _NOT_PLAIN_ADDRESS.search(value):  # the common case: "ap@acme.de"
        host = value.partition("@")[2]
    elif "@" in value and "://" not in value:
        address = next((part for part in re.split(r"[\s,;]+", value) if "@" in part), "")
        host = address.rsplit("@", 1)[1].strip("<>\"'()[]")
    else:
        try:
            host = urlsplit(value if "://" in value else "//" + value).hostname or ""
        except ValueError:
            return None
    host = host.strip(".")
    if host.startswith("www."):
        host = host[4:]
    if not _HOST.fullmatch(host):
        return None
    if host in FREE_MAIL or _FREE_MAIL_FAMILY.fullmatch(host):
        return None
    return host


def _same_domain(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return long_.endswith("." + short) and short not in SHARED_SUFFIXES


def _parent_domains(host: str) -> Iterable[str]:
    """``billing.acme.de`` → ``billing.acme.de``, ``acme.de`` (never a shared suffix)."""
    labels = host.split(".")
    for i in range(len(labels) - 1):
        candidate = ".".join(labels[i:])
        if i and candidate in SHARED_SUFFIXES:
            break
        yield candidate


# -- in-memory views of the rows ---------------------------------------------------------------


class _Named:
    """Name forms shared by customers and Accounts: full key, sorted tokens, sorted tokens without numbers."""

    __slots__ = ("key", "sorted_full", "core", "has_digits", "numbers", "words")

    def _set_name(self, key: str) -> None:
        tokens = key.split()
        self.key = key
        self.sorted_full = " ".join(sorted(tokens))
        # tuples, not sets: 300,000 of these are held at once
        if any(t.isdigit() for t in tokens):
            words = [t for t in tokens if not t.isdigit()]
            self.has_digits = True
            self.numbers = tuple(sorted({t for t in tokens if t.isdigit()}))
            self.core = " ".join(sorted(words)) if words else self.sorted_full
            self.words = tuple(dict.fromkeys(words or tokens))  # blocking tokens
        else:
            self.has_digits, self.numbers, self.core = False, (), self.sorted_full
            self.words = tuple(dict.fromkeys(tokens))


def _country(value: str | None) -> str | None:
    """An ISO 3166 alpha-2 code, upper-case; anything else ("Germany") is no evidence rather than a mismatch."""
    value = (value or "").strip().upper()
    return value if len(value) == 2 and value.isalpha() else None


class _Acc(_Named):
    __slots__ = ("sf_id", "name", "erp_key", "domain", "country", "parent_sf_id")

    def __init__(self, sf_id, name, name_key, erp_key, domain, country, parent_sf_id):
        self.sf_id, self.name, self.erp_key = sf_id, name, (erp_key or "").strip() or None
        self.domain = (domain or "").strip().lower() or None
        self.country = _country(country)
        self.parent_sf_id = parent_sf_id
        self._set_name(name_key if name_key is not None else normalize_name(name))


class _Cust(_Named):
    __slots__ = ("id", "name", "erp_key", "domain", "country", "parent_id", "sf_id", "state")

    def __init__(self, cid, name, email, country, parent_id, erp_key, sf_id, state):
        self.id, self.name, self.parent_id, self.sf_id, self.state = cid, name, parent_id, sf_id, state
        self.erp_key = (str(erp_key).strip() or None) if erp_key is not None else None
        self.domain = domain_of(email)
        self.country = _country(country)
        self._set_name(normalize_name(name))


def _score(c: _Cust, a: _Acc, cfg: MatchConfig, explain: bool = True) -> tuple[float, list[str] | None]:
    """(uncapped score, reasons) of one customer/Account pair; reasons None unless ``explain``
    (a run scores every candidate but explains only the ones it keeps)."""
    if c.key and c.key == a.key:
        sim, how = 100.0, "exact"
    else:
        sim, how = fuzz.ratio(c.sorted_full, a.sorted_full), "token sort"  # == token_sort_ratio of the keys
        if c.has_digits != a.has_digits:  # numbers on one side only: "acme labs 12" vs "acme labs"
            core = fuzz.ratio(c.core, a.core) - NUMBERS_PENALTY
            if core > sim:
                sim, how = core, "token sort, ignoring numbers"
        elif c.has_digits and c.numbers != a.numbers:  # "acme labs 42" vs "acme labs 421": not a typo
            sim, how = max(0.0, min(sim, fuzz.ratio(c.core, a.core) - NUMBERS_CONFLICT)), "token sort, numbers differ"
    raw = cfg.name_weight * sim
    domain = country = None  # None: no evidence; True: agree; False: differ
    if c.domain and a.domain:
        domain = _same_domain(c.domain, a.domain)
        if domain:
            raw += cfg.domain_weight
    if c.country and a.country:
        country = c.country == a.country
        raw += cfg.country_weight if country else -cfg.country_mismatch_penalty
    if not explain:
        return raw, None
    reasons = [f"name {sim:.0f} ({how})"]
    if domain is not None:
        reasons.append(f"domain {a.domain}" if domain else f"domain differs: {c.domain} vs {a.domain}")
    if country is not None:
        reasons.append(f"country {c.country}" if country else f"country differs: {c.country} vs {a.country}")
    return raw, reasons


def _stored(raw: float) -> float:
    return round(min(100.0, max(0.0, raw)), 1)


# -- candidate retrieval (blocking) --------------------------------------------------------------


class _Index:
    """Blocking indexes over the candidate Accounts.

    Fuzzy comparison runs only against the Accounts sharing the customer's *rarest* name token
    (fewest Accounts carry it), plus those sharing the second rarest when that block is small:
    rare tokens are what tells companies apart, and a shared token survives word order, prefixes
    and a typo in any other word. Numbers never block (every ERP appends its own). A block of
    more than ``BIG_BLOCK`` Accounts is narrowed to the customer's country (and Accounts with
    none); one still above ``MAX_BLOCK`` is replaced by the Accounts carrying *both* rarest
    tokens, or, for a one-word name, skipped: such a customer is then found only by exact name,
    name without numbers, or domain. That bounds a run's time on degenerate data."""

    def __init__(self, accounts: list[_Acc]):
        self.accounts = accounts
        self.by_key: dict[str, list[int]] = {}
        self.by_domain: dict[str, list[int]] = {}
        self.by_core_plain: dict[str, list[int]] = {}  # Accounts whose name has no numbers, by name
        self.by_core_numbered: dict[str, list[int]] = {}  # Accounts whose name has numbers, by name without them
        self.postings: dict[str, list[int]] = {}
        for i, a in enumerate(accounts):
            if not a.key:
                continue
            self.by_key.setdefault(a.key, []).append(i)
            if a.domain:
                self.by_domain.setdefault(a.domain, []).append(i)
            (self.by_core_numbered if a.has_digits else self.by_core_plain).setdefault(a.core, []).append(i)
            for word in a.words:
                self.postings.setdefault(word, []).append(i)
        self._by_country: dict[str, dict[str | None, list[int]]] = {}
        self._narrowed: dict[tuple, list[int]] = {}
        self._choice_cache: dict[tuple, tuple[list[str], list[list[int]]]] = {}

    def _block(self, token: str, country: str | None) -> tuple[list[int], tuple[str, str | None]]:
        """The Accounts carrying ``token`` (narrowed to ``country`` and no country when big) and a cache key."""
        ids = self.postings[token]
        if len(ids) <= BIG_BLOCK or not country:
            return ids, (token, None)
        split = self._by_country.get(token)
        if split is None:  # one pass per big token: its Accounts by country
            split = self._by_country[token] = {}
            for i in ids:
                split.setdefault(self.accounts[i].country, []).append(i)
        key = (token, country)
        narrowed = self._narrowed.get(key)
        if narrowed is None:
            narrowed = self._narrowed[key] = sorted(split.get(country, []) + split.get(None, []))
        return narrowed, key

    def _choices(self, ids: list[int], key) -> tuple[list[str], list[list[int]]]:
        """The block's distinct names without numbers, and the Accounts behind each."""
        cached = self._choice_cache.get(key)
        if cached is None:
            groups: dict[str, list[int]] = {}
            for i in ids:
                groups.setdefault(self.accounts[i].core, []).append(i)
            cached = self._choice_cache[key] = (list(groups), list(groups.values()))
        return cached

    def candidates(self, c: _Cust, name_cutoff: float) -> set[int]:
        found: set[int] = set()
        if c.key:
            found.update(self.by_key.get(c.key, ()))
            other = self.by_core_numbered if not c.has_digits else self.by_core_plain
            found.update(other.get(c.core, ())[:DIGIT_PATH_CAP])
            postings = self.postings
            tokens = sorted((len(postings[w]), w) for w in c.words if w in postings)
            blocks = []
            if tokens:
                first, first_key = self._block(tokens[0][1], c.country)
                if len(first) <= MAX_BLOCK:
                    blocks.append((first, first_key))
                if len(tokens) > 1:
                    second, second_key = self._block(tokens[1][1], c.country)
                    if len(first) > MAX_BLOCK:  # too common alone: the Accounts that carry both rarest tokens
                        both_key = (first_key, second_key)
                        both = self._narrowed.get(both_key)
                        if both is None:
                            both = self._narrowed[both_key] = sorted(set(first).intersection(second))
                        if len(both) <= MAX_BLOCK:
                            blocks.append((both, both_key))
                    elif len(second) <= SECOND_BLOCK_CAP:
                        blocks.append((second, second_key))
            for ids, key in blocks:
                names, groups = self._choices(ids, key)
                # names compared without their numbers (exact and numbered names come from by_key / by_core)
                for _name, _sim, pos in process.extract(c.core, names, scorer=fuzz.ratio,
                                                        limit=EXTRACT_LIMIT, score_cutoff=name_cutoff):
                    found.update(groups[pos][:PER_NAME_CAP])
        if c.domain:
            for host in _parent_domains(c.domain):
                found.update(self.by_domain.get(host, ())[:DOMAIN_CAP])
        return found


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
