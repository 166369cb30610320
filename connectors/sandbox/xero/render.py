"""Rendering the book as Xero Accounting JSON, for :mod:`connectors.sandbox.xero`.

Stable ids (:func:`xero_id`: uuid5 of the book ids), Microsoft JSON dates (:func:`ms_date`,
:func:`ms_datetime`), money in the currency's minor units, Xero's CurrencyRate, the JSON writer
that turns marked number strings into JSON numbers (:func:`_dumps`), and
:class:`XeroRendering`: Contacts, Invoices (with the hand-written hot path
``_invoice_text``), CreditNotes, Payments and Overpayments, cached per record version.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from json.encoder import encode_basestring as _q  # what json.dumps(ensure_ascii=False) uses
from typing import TYPE_CHECKING, Any

from connectors.sandbox.book import CURRENCIES

if TYPE_CHECKING:
    from connectors.sandbox.xero.app import _Endpoint

UTC = timezone.utc
_NS = uuid.UUID("6f1c1f5e-3a7b-5d2e-9b0a-7c2a1e0d4b11")
_NS_BYTES = _NS.bytes
_CACHE_LIMIT = 2_500_000  # rendered records kept (all endpoints); cleared wholesale beyond it
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)
_MS = timedelta(milliseconds=1)
_NUM = "\x00"  # marks a pre-formatted JSON number inside a string before the final text
_CURRENCY_NAMES = {"USD": "United States Dollar", "EUR": "Euro", "GBP": "British Pound",
                   "JPY": "Japanese Yen", "AUD": "Australian Dollar"}
_RATE_PLACES = Decimal("0.000001")
_QTY_PLACES = Decimal("0.0001")


_HEX_VARIANT = {c: format((int(c, 16) & 0x3) | 0x8, "x") for c in "0123456789abcdef"}
_KIND_HASH: dict[str, Any] = {}


def _address(address) -> dict:
    """The street part of a Xero ``Address``: AddressLine1..4, City, Region, PostalCode (empty ones left out)."""
    if address is None:
        return {}
    out = {f"AddressLine{n}": line for n, line in enumerate(address.lines[:4], 1)}
    out.update((key, value) for key, value in (("City", address.city), ("Region", address.region),
                                               ("PostalCode", address.postal_code)) if value)
    return out


def xero_id(kind: str, *key: object) -> str:
    """The stable Xero uuid of a book record: ``uuid5(namespace, "kind:key...")``.

    Computed like :func:`uuid.uuid5` (a test checks it), without building a UUID object: it is hot.
    """
    base = _KIND_HASH.get(kind)
    if base is None:
        base = _KIND_HASH[kind] = hashlib.sha1(_NS_BYTES + kind.encode())
    h = base.copy()
    if key:
        h.update((":" + ":".join(map(str, key))).encode())
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_HEX_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def ms_date(day: date) -> str:
    return f"/Date({(day - _EPOCH_DAY).days * 86_400_000}+0000)/"


def ms_datetime(stamp: datetime) -> str:
    return f"/Date({(stamp - _EPOCH) // _MS}+0000)/"


def _num(text: str) -> str:
    return _NUM + text


_MONEY_FORMAT = {code: f".{spec[2]}f" for code, spec in CURRENCIES.items()}


def money(amount: Decimal, currency: str) -> str:
    """A money amount with the currency's minor units (book amounts are already quantized)."""
    return _NUM + format(amount, _MONEY_FORMAT.get(currency, ".2f"))


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if "." in text else text + ".0"


_RATES: dict[Decimal, str] = {}


def xero_rate(book_rate: Decimal) -> str:
    """Xero's CurrencyRate: invoice-currency units per one base-currency unit (6 places)."""
    text = _RATES.get(book_rate)
    if text is None:
        if book_rate == 0:
            text = _NUM + "1.0"
        else:
            text = _NUM + _plain((Decimal(1) / book_rate).quantize(_RATE_PLACES, rounding=ROUND_HALF_UP))
        if len(_RATES) < 100_000:
            _RATES[book_rate] = text
    return text


def _dumps(obj: Any) -> str:
    """JSON text of a record, with the marked number strings turned into JSON numbers."""
    parts = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).split('"\\u0000')
    for n in range(1, len(parts)):
        part = parts[n]
        end = part.index('"')
        parts[n] = part[:end] + part[end + 1:]
    return "".join(parts)


class XeroRendering:
    """The records of each endpoint as Xero JSON, mixed into :class:`~connectors.sandbox.xero.app.XeroApp`
    (whose ``book``, ``_cache``, ``_contact_ids``, ``_deleted_numbers`` and ``_applications`` they use)."""

    # ---------------------------------------------------------------- rendering
    def _render(self, endpoint: _Endpoint, keys: list) -> list[str]:
        name = endpoint.name
        book = self.book
        out = []
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        with book.lock:
            if name == "Invoices":
                rev = self._applications()
            for k in keys:
                if name == "Invoices":
                    if k > 0:
                        inv = book.invoices[k]
                        ck = ("I", k, inv.modified, len(rev.get(k, ())), book.customers[inv.customer_id].name
                              if inv.customer_id in book.customers else "")
                    else:
                        ck = ("I", k)
                elif name == "Contacts":
                    ck = ("C", k, book.customers[k].modified) if k > 0 else ("C", k)
                elif name == "CreditNotes":
                    if k > 0:
                        memo = book.credit_memos[k]
                        ck = ("N", k, memo.modified, self._customer_name(memo.customer_id))
                    else:
                        ck = ("N", k)
                elif name == "Payments":
                    if k[0] > 0:
                        pay = book.payments[k[0]]
                        ck = ("P", k, pay.modified, self._customer_name(pay.customer_id))
                    else:
                        ck = ("P", k)
                else:  # Overpayments
                    pay = book.payments[k]
                    ck = ("O", k, pay.modified, pay.amount, self._customer_name(pay.customer_id))
                text = cache.get(ck)
                if text is None:
                    text = self._invoice_text(k, rev) if name == "Invoices" and k > 0 else _dumps(self._record(name, k))
                    cache[ck] = text
                out.append(text)
        return out

    def _customer_name(self, customer_id: int) -> str:
        cust = self.book.customers.get(customer_id)
        return cust.name if cust is not None else ""

    def _contact_ref(self, customer_id: int) -> dict:
        contact_id = self._contact_ids.get(customer_id)
        if contact_id is None:
            contact_id = self._contact_ids[customer_id] = xero_id("customer", customer_id)
        ref = {"ContactID": contact_id}
        cust = self.book.customers.get(customer_id)
        if cust is not None:
            ref["Name"] = cust.name
        return ref

    def _record(self, name: str, key) -> dict:
        return {"Invoices": self._invoice, "Contacts": self._contact, "CreditNotes": self._credit_note,
                "Payments": self._payment, "Overpayments": self._overpayment}[name](key)

    def _contact(self, key: int) -> dict:
        book = self.book
        if key < 0:
            stamp = next((d.deleted_at for d in book.deleted if d.kind == "customer" and d.id == -key), _EPOCH)
            return {"ContactID": xero_id("customer", -key), "ContactNumber": self._deleted_numbers.get(("customer", -key), ""),
                    "ContactStatus": "ARCHIVED", "UpdatedDateUTC": ms_datetime(stamp)}
        c = book.customers[key]
        billing = next((p for p in c.contacts if p.role == "billing"), None)
        record: dict[str, Any] = {
            "ContactID": xero_id("customer", c.id),
            "ContactNumber": c.number,
            "ContactStatus": "ARCHIVED" if c.inactive else "ACTIVE",
            "Name": c.name,
        }
        if c.parent_id is not None:
            parent = book.customers.get(c.parent_id)
            record["AccountNumber"] = parent.number if parent is not None else f"CUST-{c.parent_id:06d}"
        if billing is not None:
            first, _, last = billing.name.partition(" ")
            record.update({"FirstName": first, "LastName": last})
        record["EmailAddress"] = c.email
        record["ContactPersons"] = [
            {"FirstName": p.name.partition(" ")[0], "LastName": p.name.partition(" ")[2],
             "EmailAddress": p.email, "IncludeInEmails": False}
            for p in c.contacts if p.role == "escalation"]
        record.update({
            "BankAccountDetails": "",
            "Addresses": [{"AddressType": "POBOX", **_address(c.address), "Country": c.country},
                          {"AddressType": "STREET", "Country": c.country}],
            "Phones": [{"PhoneType": "DEFAULT", "PhoneNumber": billing.phone if billing else ""}],
            "UpdatedDateUTC": ms_datetime(c.modified),
            "ContactGroups": [],
            "IsSupplier": False,
            "IsCustomer": True,
            "DefaultCurrency": c.currency,
            "PaymentTerms": {"Sales": {"Day": c.terms_days, "Type": "DAYSAFTERBILLDATE"}},
            "SalesTrackingCategories": [],
            "PurchasesTrackingCategories": [],
            "HasAttachments": False,
            "HasValidationErrors": False,
        })
        return record

    def _invoice_text(self, key: int, rev: dict | None = None) -> str:
        """The JSON text of a live invoice, written directly (the hot path of a big pull).

        Writes exactly what ``_dumps(self._invoice(key))`` writes (a test holds it to that);
        ``_invoice`` stays the readable reference and serves ``where`` filters.
        """
        book = self.book
        inv = book.invoices[key]
        cur = inv.currency
        fmt = _MONEY_FORMAT.get(cur, ".2f")
        zero = format(Decimal(0), fmt)
        payments, credits, last_paid = [], [], None
        for src, rid, n in (rev if rev is not None else self._applications()).get(inv.id, ()):
            if src == "p":
                pay = book.payments.get(rid)
                if pay is None:
                    continue
                app = pay.applications[n]
                payments.append(
                    f'{{"PaymentID":"{xero_id("payment", rid, n)}","Date":"{ms_date(app.date)}",'
                    f'"Amount":{format(app.amount, fmt)},"Reference":{_q(pay.reference)},'
                    f'"CurrencyRate":{xero_rate(pay.exchange_rate)[1:]},"HasAccount":false,'
                    f'"HasValidationErrors":false}}')
            else:
                memo = book.credit_memos.get(rid)
                if memo is None:
                    continue
                app = memo.applications[n]
                cn_id = xero_id("credit_memo", rid)
                credits.append(
                    f'{{"CreditNoteID":"{cn_id}","CreditNoteNumber":{_q(memo.number)},"ID":"{cn_id}",'
                    f'"Date":"{ms_date(app.date)}","Total":{format(memo.total, fmt)},'
                    f'"AppliedAmount":{format(app.amount, fmt)},"HasAttachments":false,"HasErrors":false}}')
            last_paid = app.date if last_paid is None else max(last_paid, app.date)
        status = {"open": "AUTHORISED", "paid": "PAID", "voided": "VOIDED"}[inv.status]
        contact = self._contact_ref(inv.customer_id)
        contact_text = (f'{{"ContactID":"{contact["ContactID"]}","Name":{_q(contact["Name"])}}}' if "Name" in contact
                        else f'{{"ContactID":"{contact["ContactID"]}"}}')
        lines = ",".join(
            f'{{"Description":{_q(ln.description)},"UnitAmount":{format(ln.unit_price, fmt)},"TaxType":"NONE",'
            f'"TaxAmount":{zero},"LineAmount":{format(ln.amount, fmt)},"AccountCode":"200",'
            f'"Quantity":{format(ln.quantity.quantize(_QTY_PLACES), "f")},"LineItemID":"{xero_id("line", inv.id, n)}"}}'
            for n, ln in enumerate(inv.lines))
        issue, due = inv.issue_date.isoformat(), inv.due_date.isoformat()
        total = format(inv.total, fmt)
        text = (
            f'{{"Type":"ACCREC","InvoiceID":"{xero_id("invoice", inv.id)}","InvoiceNumber":{_q(inv.number)},'
            f'"Reference":{_q(inv.po_number)},"Payments":[{",".join(payments)}],"CreditNotes":[{",".join(credits)}],'
            f'"Prepayments":[],"Overpayments":[],"AmountDue":{format(inv.amount_due, fmt)},'
            f'"AmountPaid":{format(inv.amount_paid, fmt)},"AmountCredited":{format(inv.amount_credited, fmt)},'
            f'"SentToContact":{"true" if inv.sent_date is not None else "false"},'
            f'"CurrencyRate":{xero_rate(inv.exchange_rate)[1:]},"IsDiscounted":false,"HasAttachments":false,'
            f'"HasErrors":false,"Contact":{contact_text},"DateString":"{issue}T00:00:00",'
            f'"Date":"{ms_date(inv.issue_date)}","DueDateString":"{due}T00:00:00","DueDate":"{ms_date(inv.due_date)}",'
            f'"Status":"{status}","LineAmountTypes":"Exclusive","LineItems":[{lines}],"SubTotal":{total},'
            f'"TotalTax":{zero},"Total":{total},"UpdatedDateUTC":"{ms_datetime(inv.modified)}","CurrencyCode":{_q(cur)}')
        if status == "PAID" and last_paid is not None:
            text += f',"FullyPaidOnDate":"{ms_date(last_paid)}"'
        return text + "}"

    def _invoice(self, key: int) -> dict:
        book = self.book
        if key < 0:
            stamp = next((d.deleted_at for d in book.deleted if d.kind == "invoice" and d.id == -key), _EPOCH)
            return {"Type": "ACCREC", "InvoiceID": xero_id("invoice", -key),
                    "InvoiceNumber": self._deleted_numbers.get(("invoice", -key), ""),
                    "Status": "DELETED", "UpdatedDateUTC": ms_datetime(stamp)}
        inv = book.invoices[key]
        cur = inv.currency
        payments, credits, last_paid = [], [], None
        for src, rid, n in self._applications().get(inv.id, ()):
            if src == "p":
                pay = book.payments.get(rid)
                if pay is None:
                    continue
                app = pay.applications[n]
                payments.append({"PaymentID": xero_id("payment", rid, n), "Date": ms_date(app.date),
                                 "Amount": money(app.amount, cur), "Reference": pay.reference,
                                 "CurrencyRate": xero_rate(pay.exchange_rate), "HasAccount": False,
                                 "HasValidationErrors": False})
            else:
                memo = book.credit_memos.get(rid)
                if memo is None:
                    continue
                app = memo.applications[n]
                credits.append({"CreditNoteID": xero_id("credit_memo", rid), "CreditNoteNumber": memo.number,
                                "ID": xero_id("credit_memo", rid), "Date": ms_date(app.date),
                                "Total": money(memo.total, cur), "AppliedAmount": money(app.amount, cur),
                                "HasAttachments": False, "HasErrors": False})
            last_paid = app.date if last_paid is None else max(last_paid, app.date)
        status = {"open": "AUTHORISED", "paid": "PAID", "voided": "VOIDED"}[inv.status]
        record: dict[str, Any] = {
            "Type": "ACCREC",
            "InvoiceID": xero_id("invoice", inv.id),
            "InvoiceNumber": inv.number,
            "Reference": inv.po_number,
            "Payments": payments,
            "CreditNotes": credits,
            "Prepayments": [],
            "Overpayments": [],
            "AmountDue": money(inv.amount_due, cur),
            "AmountPaid": money(inv.amount_paid, cur),
            "AmountCredited": money(inv.amount_credited, cur),
            "SentToContact": inv.sent_date is not None,
            "CurrencyRate": xero_rate(inv.exchange_rate),
            "IsDiscounted": False,
            "HasAttachments": False,
            "HasErrors": False,
            "Contact": self._contact_ref(inv.customer_id),
            "DateString": f"{inv.issue_date.isoformat()}T00:00:00",
            "Date": ms_date(inv.issue_date),
            "DueDateString": f"{inv.due_date.isoformat()}T00:00:00",
            "DueDate": ms_date(inv.due_date),
            "Status": status,
            "LineAmountTypes": "Exclusive",
            "LineItems": [{"Description": ln.description, "UnitAmount": money(ln.unit_price, cur),
                           "TaxType": "NONE", "TaxAmount": money(Decimal(0), cur),
                           "LineAmount": money(ln.amount, cur), "AccountCode": "200",
                           "Quantity": _num(format(ln.quantity.quantize(_QTY_PLACES), "f")),
                           "LineItemID": xero_id("line", inv.id, n)}
                          for n, ln in enumerate(inv.lines)],
            "SubTotal": money(inv.total, cur),
            "TotalTax": money(Decimal(0), cur),
            "Total": money(inv.total, cur),
            "UpdatedDateUTC": ms_datetime(inv.modified),
            "CurrencyCode": cur,
        }
        if status == "PAID" and last_paid is not None:
            record["FullyPaidOnDate"] = ms_date(last_paid)
        return record

    def _credit_note(self, key: int) -> dict:
        book = self.book
        if key < 0:
            stamp = next((d.deleted_at for d in book.deleted if d.kind == "credit_memo" and d.id == -key), _EPOCH)
            return {"CreditNoteID": xero_id("credit_memo", -key), "Type": "ACCRECCREDIT",
                    "CreditNoteNumber": self._deleted_numbers.get(("credit_memo", -key), ""),
                    "Status": "DELETED", "UpdatedDateUTC": ms_datetime(stamp)}
        memo = book.credit_memos[key]
        cur = memo.currency
        allocations = []
        for n, app in enumerate(memo.applications):
            inv = book.invoices.get(app.invoice_id)
            number = inv.number if inv is not None else self._deleted_numbers.get(("invoice", app.invoice_id), "")
            allocations.append({"AllocationID": xero_id("allocation", memo.id, n), "Amount": money(app.amount, cur),
                                "Date": ms_date(app.date), "IsDeleted": False,
                                "Invoice": {"InvoiceID": xero_id("invoice", app.invoice_id), "InvoiceNumber": number,
                                            "Type": "ACCREC"}})
        remaining = memo.unapplied
        record: dict[str, Any] = {
            "CreditNoteID": xero_id("credit_memo", memo.id),
            "CreditNoteNumber": memo.number,
            "ID": xero_id("credit_memo", memo.id),
            "Type": "ACCRECCREDIT",
            "Reference": memo.reason,
            "Contact": self._contact_ref(memo.customer_id),
            "DateString": f"{memo.date.isoformat()}T00:00:00",
            "Date": ms_date(memo.date),
            "Status": "PAID" if remaining <= 0 else "AUTHORISED",
            "LineAmountTypes": "Exclusive",
            "LineItems": [{"Description": memo.reason, "Quantity": _num("1.0000"),
                           "UnitAmount": money(memo.total, cur), "LineAmount": money(memo.total, cur),
                           "TaxType": "NONE", "TaxAmount": money(Decimal(0), cur), "AccountCode": "200",
                           "LineItemID": xero_id("credit_line", memo.id)}],
            "SubTotal": money(memo.total, cur),
            "TotalTax": money(Decimal(0), cur),
            "Total": money(memo.total, cur),
            "UpdatedDateUTC": ms_datetime(memo.modified),
            "CurrencyCode": cur,
            "CurrencyRate": xero_rate(memo.exchange_rate),
            "RemainingCredit": money(max(remaining, Decimal(0)), cur),
            "AppliedAmount": money(memo.total - remaining, cur),
            "Allocations": allocations,
            "Payments": [],
            "HasAttachments": False,
            "HasErrors": False,
        }
        if remaining <= 0 and memo.applications:
            record["FullyPaidOnDate"] = ms_date(max(a.date for a in memo.applications))
        return record

    def _payment(self, key: tuple[int, int]) -> dict:
        book = self.book
        pid, n = key
        if pid < 0:
            stamp = next((d.deleted_at for d in book.deleted if d.kind == "payment" and d.id == -pid), _EPOCH)
            return {"PaymentID": xero_id("payment", -pid, 0), "PaymentType": "ACCRECPAYMENT",
                    "Status": "DELETED", "Reference": "", "UpdatedDateUTC": ms_datetime(stamp)}
        pay = book.payments[pid]
        app = pay.applications[n]
        cur = pay.currency
        inv = book.invoices.get(app.invoice_id)
        number = inv.number if inv is not None else self._deleted_numbers.get(("invoice", app.invoice_id), "")
        record: dict[str, Any] = {"PaymentID": xero_id("payment", pid, n)}
        if len(pay.applications) > 1:
            record["BatchPaymentID"] = xero_id("batch_payment", pid)
        record.update({
            "Date": ms_date(app.date),
            "BankAmount": money(app.amount, cur),
            "Amount": money(app.amount, cur),
            "Reference": pay.reference,
            "CurrencyRate": xero_rate(pay.exchange_rate),
            "PaymentType": "ACCRECPAYMENT",
            "Status": "AUTHORISED",
            "UpdatedDateUTC": ms_datetime(pay.modified),
            "HasAccount": True,
            "IsReconciled": False,
            "Account": {"AccountID": xero_id("account", "bank"), "Code": "090"},
            "Invoice": {"Type": "ACCREC", "InvoiceID": xero_id("invoice", app.invoice_id), "InvoiceNumber": number,
                        "Contact": self._contact_ref(pay.customer_id), "CurrencyCode": cur,
                        "Payments": [], "CreditNotes": [], "Prepayments": [], "Overpayments": [],
                        "HasErrors": False, "IsDiscounted": False, "LineItems": []},
            "HasValidationErrors": False,
        })
        return record

    def _overpayment(self, key: int) -> dict:
        pay = self.book.payments[key]
        cur = pay.currency
        excess = pay.unapplied
        return {
            "OverpaymentID": xero_id("overpayment", pay.id),
            "ID": xero_id("overpayment", pay.id),
            "Type": "RECEIVE-OVERPAYMENT",
            "Reference": pay.reference,
            "RemainingCredit": money(excess, cur),
            "Allocations": [],
            "Payments": [{"PaymentID": xero_id("overpayment_payment", pay.id), "Date": ms_date(pay.date),
                          "Amount": money(excess, cur), "Reference": pay.reference,
                          "CurrencyRate": xero_rate(pay.exchange_rate), "HasAccount": False,
                          "HasValidationErrors": False}],
            "HasAttachments": False,
            "Contact": self._contact_ref(pay.customer_id),
            "DateString": f"{pay.date.isoformat()}T00:00:00",
            "Date": ms_date(pay.date),
            "Status": "AUTHORISED",
            "LineAmountTypes": "NoTax",
            "LineItems": [],
            "SubTotal": money(excess, cur),
            "TotalTax": money(Decimal(0), cur),
            "Total": money(excess, cur),
            "UpdatedDateUTC": ms_datetime(pay.modified),
            "CurrencyCode": cur,
            "CurrencyRate": xero_rate(pay.exchange_rate),
        }
