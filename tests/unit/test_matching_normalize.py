"""Name and domain normalization for matching (middleware.matching.normalize_name, domain_of), and its config."""
from __future__ import annotations

import pytest

from middleware.matching import MatchConfig, MatchError, domain_of, normalize_name


@pytest.mark.parametrize("name, key", [
    ("Acme Labs, Inc.", "acme labs"),
    ("ACME LABS INC 12", "acme labs 12"),
    ("Acme Labs Incorporated", "acme labs"),
    ("Acme Holdings Co., Ltd.", "acme holdings"),
    ("Globex LLC", "globex"),
    ("Globex Corp.", "globex"),
    ("Globex Corporation", "globex"),
    ("Smith & Co.", "smith"),
    ("Initech B.V.", "initech"),
    ("Initech BV", "initech"),
    ("Hooli Pty Ltd", "hooli"),
    ("Hooli Limited", "hooli"),
    ("Stark K.K.", "stark"),
    ("Stark AG", "stark"),
    ("Virtucon SARL", "virtucon"),
    ("Virtucon SAS", "virtucon"),
    ("Łódź Logistyka S.L.", "lodz logistyka"),
    ("Monarch PLC", "monarch"),
    ("Globex S.A. de C.V. 7", "globex 7"),
    ("Wonka GmbH & Co. KG", "wonka"),
])
def test_legal_forms_are_removed(name, key):
    """Legal forms at the end of a name are dropped, also when the ERP appended a number after them."""
    assert normalize_name(name) == key


@pytest.mark.parametrize("name, key", [
    ("Müller & Söhne GmbH", "muller and sohne"),
    ("Société Générale d'Études SAS", "societe generale detudes"),
    ("İstanbul Yazılım", "istanbul yazilim"),
    ("Ærø Fiskeri A/S", "aero fiskeri"),
    ("Straße der Ideen", "strasse der ideen"),
    ("ＡＣＭＥ　Ｌａｂｓ", "acme labs"),  # full-width forms (NFKD)
])
def test_case_accents_and_ampersand(name, key):
    """Casefold, accents stripped from Latin letters, "&" spelled "and", compatibility forms folded."""
    assert normalize_name(name) == key


@pytest.mark.parametrize("name, key", [
    ("東京システム株式会社", "東京システム"),
    ("株式会社東京システム", "東京システム"),
    ("㈱東京システム", "東京システム"),
    ("東京システム 株式会社 11", "東京システム 11"),
    ("ｶﾞｽ株式会社", "ガス"),  # half-width katakana: the voiced mark is kept, not stripped like an accent
    ("ООО «Ромашка»", "ромашка"),
    ("हिंदी कंपनी", "हिंदी कंपनी"),  # Devanagari vowel signs are combining marks and must stay
])
def test_non_latin_scripts_are_kept(name, key):
    """Names in other scripts keep their letters and marks; their legal forms are removed too."""
    assert normalize_name(name) == key


def test_punctuation_and_whitespace():
    """Punctuation becomes a space (dots and apostrophes join), runs of whitespace collapse, and a
    leading "The" is dropped; a name that is only a legal form keeps it rather than becoming empty."""
    assert normalize_name("  O'Brien  &  O'Neill,PLC ") == "obrien and oneill"
    assert normalize_name("The Home-Depot") == "home depot"
    assert normalize_name("Inc.") == "inc"
    assert normalize_name("") == "" and normalize_name(None) == ""


def test_same_company_same_key():
    """Spellings of one company that the ERP and Salesforce commonly differ on share one key."""
    assert normalize_name("Müller & Söhne GmbH") == normalize_name("Muller and Sohne")
    assert normalize_name("Acme Labs, Inc.") == normalize_name("ACME LABS INC")


@pytest.mark.parametrize("value, domain", [
    ("ap@acme42.example.com", "acme42.example.com"),
    ("Jane Doe <Jane@Acme.COM>", "acme.com"),
    ("mailto:billing@acme.de", "acme.de"),
    ("ap@acme.de; cfo@acme.de", "acme.de"),
    ("https://www.Acme.com/about?x=1", "acme.com"),
    ("http://acme.com:8080", "acme.com"),
    ("www.acme.co.uk", "acme.co.uk"),
    ("acme.io", "acme.io"),
])
def test_domain_of_emails_and_urls(value, domain):
    """The lower-case host of an e-mail address or a website, without "www."."""
    assert domain_of(value) == domain


@pytest.mark.parametrize("value", [
    "someone@gmail.com", "someone@outlook.com", "someone@yahoo.com", "someone@hotmail.com",
    "someone@yahoo.co.uk", "someone@hotmail.fr", "https://gmail.com", "someone@web.de",
])
def test_free_mail_is_no_domain(value):
    """Free-mail providers never count as a company's domain."""
    assert domain_of(value) is None


@pytest.mark.parametrize("value", [None, "", "not a domain", "localhost", "someone@"])
def test_domain_of_nonsense(value):
    """Values without a host name give None."""
    assert domain_of(value) is None


def test_config_defaults_and_validation():
    """An empty config gives the documented defaults; unknown keys and bad values are refused by name."""
    config = MatchConfig.from_dict({})
    assert (config.erp_key_field, config.link_threshold, config.review_threshold, config.ambiguity_margin,
            config.parent_rule) == ("number", 90, 70, 5, "own")
    assert (config.name_weight, config.domain_weight, config.country_weight, config.country_mismatch_penalty) == \
        (0.9, 10, 5, 15)
    assert MatchConfig.from_dict({"link_threshold": "95"}).link_threshold == 95.0
    for bad, word in (({"link_treshold": 95}, "link_treshold"), ({"parent_rule": "adopt"}, "parent_rule"),
                      ({"erp_key_field": "name"}, "erp_key_field"), ({"review_threshold": 95}, "review_threshold"),
                      ({"link_threshold": "high"}, "link_threshold")):
        with pytest.raises(MatchError, match=word):
            MatchConfig.from_dict(bad)
