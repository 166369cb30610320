"""Reading replies without a database (middleware.inbox): suggestions in English and German, HTML to text,
quoted text, invoice-number candidates, automatic mail."""
from __future__ import annotations

from datetime import date

import pytest

from middleware.inbox import html_to_text, invoice_number_candidates, is_free_mail, new_text, parse, suggest

TODAY = date(2026, 11, 20)  # a Friday


def said(text: str, numbers=("INV-1001",)) -> list[str]:
    return [s.describe() for s in suggest(text, today=TODAY, invoice_numbers=list(numbers))]


@pytest.mark.parametrize("text, expected", [
    ("We will pay by 4 December.", "promise until 2026-12-04"),
    ("We'll settle the balance on December 4th, 2026.", "promise until 2026-12-04"),
    ("Payment will be made on 2026-12-04.", "promise until 2026-12-04"),
    ("The invoice will be paid by 04.12.2026 at the latest.", "promise until 2026-12-04"),
    ("We will make the payment by the end of the month.", "promise until 2026-11-30"),
    ("We will transfer EUR 1.200,00 on Monday.", "promise until 2026-11-23 amount 1200.00 EUR"),
    ("We can pay $1,250.50 by 12/15/2026.", "promise until 2026-12-15 amount 1250.50 USD"),
    ("Wir werden den Betrag bis zum 04.12.2026 überweisen.", "promise until 2026-12-04"),
    ("Die Zahlung erfolgt am 4. Dezember.", "promise until 2026-12-04"),
    ("Die Rechnung wird spätestens am 4.12. beglichen.", "promise until 2026-12-04"),
    ("Wir zahlen Freitag.", "promise until 2026-11-20"),
    ("We will pay it on 04/12/2026.", "promise (no date found)"),  # 4 December or April 12th: not guessed
])
def test_promise_language_is_suggested_with_its_date(text, expected):
    """Promise-to-pay phrasings in English and German give one promise suggestion, dated when the date is clear."""
    assert said(text) == [expected]


@pytest.mark.parametrize("text, expected", [
    ("We dispute invoice INV-1001.", ["dispute on INV-1001"]),
    ("This is an incorrect invoice, please correct it.", ["dispute on INV-1001"]),  # the one invoice named
    ("Gegen die Rechnung INV-1001 legen wir Widerspruch ein.", ["dispute on INV-1001"]),
    ("Die Rechnung ist fehlerhaft.", ["dispute on INV-1001"]),
    ("We were charged twice for INV-1001 and INV-1002.", ["dispute on INV-1001", "dispute on INV-1002"]),
])
def test_dispute_language_is_suggested_on_the_invoices_it_names(text, expected):
    """Dispute phrasings name the customer's invoices they mention (or the only one the reply is about)."""
    assert said(text, numbers=("INV-1001", "INV-1002") if "1002" in text else ("INV-1001",)) == expected


@pytest.mark.parametrize("text", [
    "We will not pay this until the credit note arrives.",
    "Wir werden die Rechnung nicht bezahlen.",
    "I'll send you the documents tomorrow.",
    "Wir werden das prüfen.",
    "Thanks for the reminder, we do not dispute the amount.",
    "Guten Morgen, anbei die Unterlagen.",
])
def test_no_suggestion_from_negations_or_unrelated_sentences(text):
    """Negated promises, unrelated future tense and "we do not dispute" suggest nothing."""
    assert said(text, numbers=()) == []


def test_quoted_text_is_not_read_for_suggestions():
    """Lines quoted with ">" and everything after "On ... wrote:" / "-----Original Message-----" are dropped."""
    body = ("Thanks, noted.\n\nOn Mon, 16 Nov 2026 at 09:00, AR <ar@x.test>\nwrote:\n> Payment will be made on 1 Dec\n")
    assert new_text(body).strip() == "Thanks, noted."
    outlook = "Ok.\n\n-----Original Message-----\nFrom: AR\nWe dispute nothing"
    assert new_text(outlook).strip() == "Ok."
    german = "Danke.\n\nVon: AR <ar@x.test>\nGesendet: Montag\nAn: ap@acme.test\n"
    assert new_text(german).strip() == "Danke."


def test_html_becomes_readable_text():
    """Paragraphs, line breaks, list items and blockquotes survive; scripts and styles do not."""
    markup = ("<html><head><style>p{color:red}</style></head><body><p>Hello &amp; thanks,</p>"
              "<div>line one</div><div>line two<br>three</div><ul><li>a</li><li>b</li></ul>"
              "<blockquote><p>quoted</p></blockquote><script>alert(1)</script></body></html>")
    assert html_to_text(markup) == "Hello & thanks,\n\nline one\nline two\nthree\n\n- a\n- b\n\n> quoted"


def test_invoice_number_candidates_stand_alone():
    """Numbers glued to other letters/digits by - or _ are part of a longer token; /, ., # separate."""
    found = invoice_number_candidates("Re: INV-1001. Nr.10042, #10043 PO-10044 10045/10046 ab1")
    assert {"INV-1001", "10042", "10043", "10045", "10046"} <= set(found)
    assert "10044" not in found and "ab1" not in found


def test_free_mail_domains_by_name_and_by_provider_family():
    assert is_free_mail("gmail.com") and is_free_mail("GMX.de") and is_free_mail("yahoo.co.uk")
    assert is_free_mail("hotmail.fr") and not is_free_mail("acme.example.com")


@pytest.mark.parametrize("headers, auto", [
    ("Auto-Submitted: auto-replied\r\n", True),
    ("Auto-Submitted: no\r\n", False),
    ("X-Autoreply: yes\r\n", True),
    ("Precedence: junk\r\n", True),
    ("Precedence: first-class\r\n", False),
    ("", False),
])
def test_automatic_mail_is_recognised_by_its_headers(headers, auto):
    raw = f"From: a@b.test\r\nSubject: Re: Invoice\r\n{headers}\r\nbody\r\n".encode()
    assert (parse(raw).auto_reply is not None) is auto


def test_parse_survives_broken_input():
    """Unknown charsets, a missing Message-ID and junk bytes still parse: text with replacements, an id
    derived from the bytes."""
    raw = (b"From: =?x-unknown?q?J=FCrgen?= <j@acme.test>\r\nSubject: =?utf-8?q?broken\r\n"
           b"Content-Type: text/plain; charset=x-unknown\r\n\r\nZahlung \xfc\x00ber 100\r\n")
    parsed = parse(raw)
    assert parsed.from_address == "j@acme.test"
    assert parsed.message_id.endswith("@no-message-id.arhub.invalid")
    assert "Zahlung" in parsed.body_text and "\x00" not in parsed.body_text
    assert parse(raw).message_id == parsed.message_id
