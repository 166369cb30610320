"""Matching's pure part (:mod:`middleware.matching`), no database: its config (``MatchConfig``,
``MatchError``), company-name and domain normalization (``normalize_name``, ``domain_of``), the
in-memory views of customers and Accounts, the score of one customer/Account pair, and the blocking
indexes that find a customer's candidate Accounts (``_Index``). A move out of ``middleware/matching.py``;
``middleware.matching`` re-exports the names other modules import from it.
"""
from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, fields
from typing import Iterable
from urllib.parse import urlsplit

from rapidfuzz import fuzz, process

NUMBERS_PENALTY = 4  # "acme labs 12" vs "acme labs": the name without its numbers, minus this
NUMBERS_CONFLICT = 10  # "acme labs 42" vs "acme labs 421": the name without its numbers, minus this
BIG_BLOCK = 500  # a name block larger than this is narrowed to the customer's country
SECOND_BLOCK_CAP = 500  # the second-rarest token's block is searched only when this small
MAX_BLOCK = 1000  # larger (after narrowing) is not a block: the two rarest tokens together, or no fuzzy search
EXTRACT_LIMIT = 5  # best fuzzy hits kept per block (before evidence is added)
PER_NAME_CAP = 2  # Accounts taken per similar name (numbered look-alikes: "acme labs 1", "acme labs 2", ...)
DOMAIN_CAP = 50  # Accounts on one domain looked at per customer
DIGIT_PATH_CAP = 20  # Accounts reached through the "same name but numbers" index


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
