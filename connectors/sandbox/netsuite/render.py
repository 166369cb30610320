"""Rendering the book as NetSuite SuiteTalk (2023_2) SOAP XML, for :mod:`connectors.sandbox.netsuite`.

The formatting helpers (``xsd:dateTime`` values, money in the currency's minor units, record and
custom-field refs, the platformCommon street address) and :class:`SoapRendering`: Customer,
Invoice, CreditMemo, CustomerPayment and CurrencyRate records, cached per record version.
"""
from __future__ import annotations

import zlib
from datetime import date, datetime, timezone
from decimal import Decimal
from xml.sax.saxutils import escape as _esc

from connectors.sandbox.book import CURRENCIES

UTC = timezone.utc
COUNTRIES = {"US": "_unitedStates", "CA": "_canada", "MX": "_mexico", "DE": "_germany", "FR": "_france",
             "NL": "_netherlands", "IE": "_ireland", "ES": "_spain", "GB": "_unitedKingdom", "JP": "_japan",
             "AU": "_australia", "NZ": "_newZealand"}
CURRENCY_IDS = {"USD": "1", "GBP": "2", "CAD": "3", "EUR": "4", "JPY": "5", "AUD": "6"}
TERMS_IDS = {15: "1", 30: "2", 45: "3", 60: "4"}
INVOICE_STATUS = {"open": "Open", "paid": "Paid In Full", "voided": "Voided"}
SUBSIDIARY = '<{p}:subsidiary internalId="1"><platformCore:name>Parent Company</platformCore:name></{p}:subsidiary>'


# ---------------------------------------------------------------------- formatting
def _dt(value: datetime) -> str:
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _d(value: date) -> str:
    return value.isoformat() + "T00:00:00Z"


_QUANTUM = {code: Decimal(1).scaleb(-spec[2]) for code, spec in CURRENCIES.items()}


def _money(amount: Decimal, currency: str) -> str:
    return str(amount.quantize(_QUANTUM[currency]))


def _num(value: Decimal) -> str:
    text = format(value, "f")
    return text


def _ref(prefix: str, tag: str, internal_id, name: str | None = None, rtype: str | None = None) -> str:
    attrs = f' internalId="{internal_id}"'
    if rtype:
        attrs += f' type="{rtype}"'
    inner = f"<platformCore:name>{_esc(name)}</platformCore:name>" if name is not None else ""
    return f"<{prefix}:{tag}{attrs}>{inner}</{prefix}:{tag}>"


def _street(address) -> str:
    """The street part of a platformCommon ``Address`` (after ``addressee``, in the XSD's order)."""
    if address is None:
        return ""
    parts = [(f"addr{n}", line) for n, line in enumerate(address.lines[:3], 1)]
    parts += [("city", address.city), ("state", address.region), ("zip", address.postal_code)]
    return "".join(f"<platformCommon:{tag}>{_esc(value)}</platformCommon:{tag}>" for tag, value in parts if value)


def _custom(kind: str, script_id: str, internal_id: int, value: str) -> str:
    return (f'<platformCore:customField internalId="{internal_id}" scriptId="{script_id}" '
            f'xsi:type="platformCore:{kind}CustomFieldRef"><platformCore:value>{value}</platformCore:value>'
            f"</platformCore:customField>")


def _item_id(description: str) -> int:
    return 100 + zlib.crc32(description.encode()) % 900


class SoapRendering:
    """The book's records as SOAP XML, mixed into :class:`~connectors.sandbox.netsuite.app.NetSuiteEmulator`
    (whose ``book``, ``_cache`` and ``_cache_size`` they use)."""

    # ------------------------------------------------------------------ rendering
    def _render(self, kind: str, rid: int, rec) -> str:
        cust = self.book.customers.get(getattr(rec, "customer_id", None)) if kind != "customer" else None
        key = (kind, rid, rec.modified, cust.modified if cust is not None else None)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        text = getattr(self, f"_render_{kind}")(rid, rec)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = text
        return text

    def _customer_ref(self, prefix: str, tag: str, customer_id: int) -> str:
        cust = self.book.customers.get(customer_id)
        name = f"{cust.number} {cust.name}" if cust is not None else None
        return _ref(prefix, tag, customer_id, name)

    @staticmethod
    def _currency_ref(prefix: str, currency: str) -> str:
        return _ref(prefix, "currency", CURRENCY_IDS[currency], currency)

    def _render_customer(self, rid, c) -> str:
        p = "listRel"
        billing = next((x for x in c.contacts if x.role == "billing"), None)
        escalation = next((x for x in c.contacts if x.role == "escalation"), None)
        parts = [f'<platformCore:record internalId="{c.id}" xsi:type="listRel:Customer">',
                 f"<listRel:entityId>{_esc(c.number)}</listRel:entityId>",
                 "<listRel:isPerson>false</listRel:isPerson>",
                 f"<listRel:companyName>{_esc(c.name)}</listRel:companyName>"]
        if c.parent_id is not None:
            parts.append(self._customer_ref(p, "parent", c.parent_id))
        if billing is not None and billing.phone:
            parts.append(f"<listRel:phone>{_esc(billing.phone)}</listRel:phone>")
        parts.append(f"<listRel:email>{_esc(billing.email if billing else c.email)}</listRel:email>")
        parts.append(f"<listRel:isInactive>{'true' if c.inactive else 'false'}</listRel:isInactive>")
        parts.append(f"<listRel:dateCreated>{_dt(c.created)}</listRel:dateCreated>")
        parts.append(SUBSIDIARY.format(p=p))
        parts.append(_ref(p, "terms", TERMS_IDS.get(c.terms_days, "2"), f"Net {c.terms_days}"))
        parts.append(self._currency_ref(p, c.currency))
        parts.append(f"<listRel:lastModifiedDate>{_dt(c.modified)}</listRel:lastModifiedDate>")
        parts.append(
            "<listRel:addressbookList><listRel:addressbook><listRel:defaultShipping>true</listRel:defaultShipping>"
            "<listRel:defaultBilling>true</listRel:defaultBilling><listRel:isResidential>false</listRel:isResidential>"
            f"<listRel:label>Billing</listRel:label><listRel:addressbookAddress>"
            f"<platformCommon:country>{COUNTRIES.get(c.country, '_unitedStates')}</platformCommon:country>"
            f"<platformCommon:attention>{_esc(billing.name) if billing else ''}</platformCommon:attention>"
            f"<platformCommon:addressee>{_esc(c.name)}</platformCommon:addressee>"
            f"{_street(c.address)}</listRel:addressbookAddress><listRel:internalId>{c.id}</listRel:internalId>"
            "</listRel:addressbook></listRel:addressbookList>")
        custom = [_custom("Double", "custentity_arhub_arr", 501, _money(c.arr, c.currency))]
        if escalation is not None:
            custom.append(_custom("String", "custentity_arhub_escalation_email", 502, _esc(escalation.email)))
            custom.append(_custom("String", "custentity_arhub_escalation_name", 503, _esc(escalation.name)))
        parts.append(f"<listRel:customFieldList>{''.join(custom)}</listRel:customFieldList>")
        parts.append("</platformCore:record>")
        return "".join(parts)

    def _render_invoice(self, rid, inv) -> str:
        p, cur = "tranSales", inv.currency
        cust = self.book.customers.get(inv.customer_id)
        terms = cust.terms_days if cust is not None else (inv.due_date - inv.issue_date).days
        remaining = inv.amount_due
        paid = Decimal(0) if inv.status == "voided" else inv.total - remaining
        lines = "".join(
            f"<tranSales:item>{_ref(p, 'item', _item_id(ln.description), ln.description)}"
            f"<tranSales:line>{n}</tranSales:line><tranSales:description>{_esc(ln.description)}</tranSales:description>"
            f"<tranSales:amount>{_money(ln.amount, cur)}</tranSales:amount>"
            f"<tranSales:quantity>{_num(ln.quantity)}</tranSales:quantity>"
            f"<tranSales:rate>{_money(ln.unit_price, cur)}</tranSales:rate></tranSales:item>"
            for n, ln in enumerate(inv.lines, 1))
        parts = [f'<platformCore:record internalId="{inv.id}" xsi:type="tranSales:Invoice">',
                 f"<tranSales:createdDate>{_dt(inv.created)}</tranSales:createdDate>",
                 f"<tranSales:lastModifiedDate>{_dt(inv.modified)}</tranSales:lastModifiedDate>",
                 self._customer_ref(p, "entity", inv.customer_id),
                 f"<tranSales:tranDate>{_d(inv.issue_date)}</tranSales:tranDate>",
                 f"<tranSales:tranId>{_esc(inv.number)}</tranSales:tranId>",
                 _ref(p, "terms", TERMS_IDS.get(terms, "2"), f"Net {terms}"),
                 SUBSIDIARY.format(p=p),
                 self._currency_ref(p, cur),
                 f"<tranSales:dueDate>{_d(inv.due_date)}</tranSales:dueDate>"]
        if inv.po_number:
            parts.append(f"<tranSales:otherRefNum>{_esc(inv.po_number)}</tranSales:otherRefNum>")
        if inv.memo:
            parts.append(f"<tranSales:memo>{_esc(inv.memo)}</tranSales:memo>")
        parts += [f"<tranSales:amountPaid>{_money(paid, cur)}</tranSales:amountPaid>",
                  f"<tranSales:amountRemaining>{_money(remaining, cur)}</tranSales:amountRemaining>",
                  f"<tranSales:exchangeRate>{_num(inv.exchange_rate)}</tranSales:exchangeRate>",
                  f"<tranSales:currencyName>{cur}</tranSales:currencyName>",
                  f"<tranSales:subTotal>{_money(inv.total, cur)}</tranSales:subTotal>",
                  f"<tranSales:total>{_money(inv.total, cur)}</tranSales:total>",
                  f"<tranSales:status>{INVOICE_STATUS[inv.status]}</tranSales:status>"]
        if cust is not None:
            parts.append(f"<tranSales:email>{_esc(cust.email)}</tranSales:email>")
        parts.append(f'<tranSales:itemList replaceAll="false">{lines}</tranSales:itemList>')
        if inv.sent_date is not None:
            parts.append("<tranSales:customFieldList>"
                         + _custom("Date", "custbody_arhub_sent_date", 601, _d(inv.sent_date))
                         + "</tranSales:customFieldList>")
        parts.append("</platformCore:record>")
        return "".join(parts)

    def _apply_lines(self, prefix: str, apps, cur: str, payment: bool) -> str:
        out = []
        for n, app in enumerate(apps):
            inv = self.book.invoices.get(app.invoice_id)
            ref = f"<{prefix}:refNum>{_esc(inv.number)}</{prefix}:refNum>" if inv is not None else ""
            total = f"<{prefix}:total>{_money(inv.total, cur)}</{prefix}:total>" if inv is not None else ""
            line = f"<{prefix}:line>{n}</{prefix}:line>"
            out.append(
                f"<{prefix}:apply><{prefix}:apply>true</{prefix}:apply><{prefix}:doc>{app.invoice_id}</{prefix}:doc>"
                + (line if payment else "")
                + f"<{prefix}:applyDate>{_d(app.date)}</{prefix}:applyDate><{prefix}:type>Invoice</{prefix}:type>"
                + ref + total + f"<{prefix}:currency>{cur}</{prefix}:currency>"
                + f"<{prefix}:amount>{_money(app.amount, cur)}</{prefix}:amount>"
                + ("" if payment else line) + f"</{prefix}:apply>")
        return "".join(out)

    def _render_credit_memo(self, rid, cm) -> str:
        p, cur = "tranCust", cm.currency
        applied = cm.total - cm.unapplied
        return "".join([
            f'<platformCore:record internalId="{cm.id}" xsi:type="tranCust:CreditMemo">',
            f"<tranCust:createdDate>{_dt(cm.created)}</tranCust:createdDate>",
            f"<tranCust:lastModifiedDate>{_dt(cm.modified)}</tranCust:lastModifiedDate>",
            self._currency_ref(p, cur),
            self._customer_ref(p, "entity", cm.customer_id),
            f"<tranCust:tranDate>{_d(cm.date)}</tranCust:tranDate>",
            f"<tranCust:tranId>{_esc(cm.number)}</tranCust:tranId>",
            SUBSIDIARY.format(p=p),
            f"<tranCust:memo>{_esc(cm.reason)}</tranCust:memo>",
            f"<tranCust:exchangeRate>{_num(cm.exchange_rate)}</tranCust:exchangeRate>",
            f"<tranCust:currencyName>{cur}</tranCust:currencyName>",
            f"<tranCust:unapplied>{_money(cm.unapplied, cur)}</tranCust:unapplied>",
            f"<tranCust:applied>{_money(applied, cur)}</tranCust:applied>",
            f"<tranCust:total>{_money(cm.total, cur)}</tranCust:total>",
            f"<tranCust:status>{'Fully Applied' if cm.unapplied == 0 else 'Open'}</tranCust:status>",
            f'<tranCust:applyList replaceAll="false">{self._apply_lines(p, cm.applications, cur, False)}'
            "</tranCust:applyList>",
            "</platformCore:record>"])

    def _render_payment(self, rid, pay) -> str:
        p, cur = "tranCust", pay.currency
        unapplied = pay.unapplied
        return "".join([
            f'<platformCore:record internalId="{pay.id}" xsi:type="tranCust:CustomerPayment">',
            f"<tranCust:createdDate>{_dt(pay.created)}</tranCust:createdDate>",
            f"<tranCust:lastModifiedDate>{_dt(pay.modified)}</tranCust:lastModifiedDate>",
            self._customer_ref(p, "customer", pay.customer_id),
            self._currency_ref(p, cur),
            f"<tranCust:payment>{_money(pay.amount, cur)}</tranCust:payment>",
            f"<tranCust:tranDate>{_d(pay.date)}</tranCust:tranDate>",
            f"<tranCust:tranId>{_esc(pay.number)}</tranCust:tranId>",
            f"<tranCust:checkNum>{_esc(pay.reference)}</tranCust:checkNum>",
            f"<tranCust:currencyName>{cur}</tranCust:currencyName>",
            f"<tranCust:exchangeRate>{_num(pay.exchange_rate)}</tranCust:exchangeRate>",
            f"<tranCust:total>{_money(pay.amount, cur)}</tranCust:total>",
            SUBSIDIARY.format(p=p),
            f"<tranCust:applied>{_money(pay.amount - unapplied, cur)}</tranCust:applied>",
            f"<tranCust:unapplied>{_money(unapplied, cur)}</tranCust:unapplied>",
            "<tranCust:status>Deposited</tranCust:status>",
            f'<tranCust:applyList replaceAll="false">{self._apply_lines(p, pay.applications, cur, True)}'
            "</tranCust:applyList>",
            "</platformCore:record>"])

    def _render_fx_rate(self, rid, rate) -> str:
        return "".join([
            f'<platformCore:record internalId="{rid}" xsi:type="listAcct:CurrencyRate">',
            _ref("listAcct", "baseCurrency", CURRENCY_IDS[self.book.base_currency], self.book.base_currency),
            _ref("listAcct", "transactionCurrency", CURRENCY_IDS[rate.currency], rate.currency),
            f"<listAcct:exchangeRate>{_num(rate.rate)}</listAcct:exchangeRate>",
            f"<listAcct:effectiveDate>{_d(rate.date)}</listAcct:effectiveDate>",
            "</platformCore:record>"])
