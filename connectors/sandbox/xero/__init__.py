"""A Xero Accounting API emulator (WSGI, werkzeug) serving a generated :class:`Book`.

It answers as ``connectors/contracts/xero-accounting/xero_accounting.yaml`` describes,
for the read side an AR sync needs:

``POST /connect/token``
    OAuth2 client credentials (client id/secret by HTTP Basic or in the form) →
    ``access_token``, ``expires_in`` (default 1800), ``token_type: Bearer``.
``GET /connections``
    the tenant list a Xero custom connection sees.
``GET /api.xro/2.0/{Contacts,Invoices,CreditNotes,Payments,Overpayments,Currencies}``
    ``Authorization: Bearer <token>`` and ``xero-tenant-id`` required (401/403 in the
    problem-details shape Xero uses otherwise, 401 for an expired token);
    ``If-Modified-Since`` (HTTP-date or ISO 8601; records with UpdatedDateUTC ≥ it),
    ``page``/``pageSize`` (default 100, max 1000; a ``pagination`` object as the spec
    has it; without ``page`` everything is returned, as Xero does), ``where``
    (``Field=="value"`` / ``!=`` clauses joined by ``AND``/``&&``), ``Statuses``,
    ``includeArchived`` (Contacts), ``IDs``. Records are ordered by UpdatedDateUTC, then id.

How the book maps onto Xero:

* ids are ``uuid5`` of the book ids, so they are stable across runs;
* Contacts: ``ContactNumber`` is the book number; Xero has no parent/child link between
  contacts, so a subsidiary's parent goes in ``AccountNumber`` (the parent's
  ContactNumber); the escalation contact is a ``ContactPersons`` entry, the billing
  contact is the contact's own FirstName/LastName/EmailAddress; ``Addresses[].Country``
  holds the ISO country code, the ``POBOX`` address (the billing address) the book's street
  address (AddressLine1..4, City, Region, PostalCode); inactive customers are ``ARCHIVED`` (only listed with
  ``includeArchived=true``, as in Xero), deleted customers too;
* Invoices (ACCREC): open → AUTHORISED, paid → PAID, voided → VOIDED, book-deleted →
  DELETED (a minimal record: ids, number, type, status and the deletion time as
  UpdatedDateUTC, because the book keeps nothing else of a deleted invoice);
  ``CurrencyRate`` is Xero's convention, units of the invoice currency per one unit of
  the organisation's base currency (USD), i.e. ``1 / book.exchange_rate`` to 6 places;
* Payments: one Xero Payment per book application (``PaymentType`` ACCRECPAYMENT, with
  its Invoice); a book payment applied to several invoices is a batch payment, so its
  Xero payments share a ``BatchPaymentID``; the unapplied part of a book payment (an
  overpayment) is a RECEIVE-OVERPAYMENT record under ``/Overpayments``;
* CreditNotes (ACCRECCREDIT) carry their ``Allocations`` to invoices.

Dates and datetimes are Microsoft JSON dates (``"/Date(1550793549320+0000)/"``); money
is written as JSON numbers with the currency's minor units (JPY without decimals).

Testing extensions (not Xero behaviour; they exist solely so the generic REST connector's
other modes can be exercised against a real HTTP server): ``_paging=offset`` (``offset``/
``limit``), ``_paging=cursor`` (``cursor``/``limit``, ``meta.next_cursor`` in the body),
``_paging=next_link`` (``links.next`` in the body and a ``Link: <…>; rel="next"`` header);
a ``modifiedAfter`` ISO query parameter as an alternative to ``If-Modified-Since``; and
``credentials`` that enable HTTP Basic, an API-key header or static bearer tokens.

For speed (a million invoices served in 1,000-record pages) the filtered, ordered list of
record keys is snapshotted per (endpoint, since, filters) and dropped when the book
changes, and each record's JSON text is cached per (id, modified, ...) key.

This module imports nothing of the project but the book and the fault switches.

The modules:

``render``  book records as Xero JSON (Contacts, Invoices, CreditNotes, Payments, Overpayments,
            Currencies), Microsoft JSON dates, money and rates, :func:`xero_id`, and the cache of
            rendered records (:class:`~connectors.sandbox.xero.render.XeroRendering`, mixed into the app)
``app``     :class:`XeroApp`: routing, the OAuth token endpoint and auth, faults, ``where`` filters,
            paging, If-Modified-Since by bisection over cached snapshots; :func:`make_app`
"""
from __future__ import annotations

from connectors.sandbox.xero.app import SANDBOX_CREDENTIALS, XeroApp, make_app
from connectors.sandbox.xero.render import ms_date, ms_datetime, xero_id

# the module's other names before the split, importable from here as before (tests import _NS and _dumps)
from connectors.sandbox.xero.app import DEFAULT_EXPIRES_IN, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE  # noqa: F401
from connectors.sandbox.xero.app import PROVIDER, TENANT_NAME, parse_since, parse_where  # noqa: F401
from connectors.sandbox.xero.render import UTC, XeroRendering, _dumps, _NS, money, xero_rate  # noqa: F401

__all__ = ["SANDBOX_CREDENTIALS", "XeroApp", "make_app", "ms_date", "ms_datetime", "xero_id"]
