"""A NetSuite SuiteTalk (SOAP, WSDL 2023_2) emulator serving the generated sandbox book.

``make_app(book, faults=..., credentials=...)`` returns a werkzeug WSGI app that:

* serves the real WSDL at ``GET /wsdl/netsuite.wsdl`` (its ``soap:address`` rewritten to
  this server's ``/services/NetSuitePort_2023_2``) and the 46 XSDs at ``GET /wsdl/xsd/<name>.xsd``;
* answers ``POST /services/NetSuitePort_2023_2`` for ``search`` (CustomerSearchBasic,
  TransactionSearchBasic with ``type anyOf _invoice|_creditMemo|_customerPayment``,
  CurrencyRateSearchBasic, also wrapped in the ``*Search`` record's ``basic``),
  ``searchMoreWithId`` and ``getDeleted``; anything else is a SOAP fault;
* authenticates every call: ``tokenPassport`` (TBA, HMAC-SHA256), the legacy ``passport``
  header (not in the 2023_2 WSDL any more, accepted by local name), a WS-Security
  UsernameToken, or HTTP Basic;
* plays back the fault switches of :mod:`connectors.sandbox.faults`.

How the book maps onto NetSuite records (documented because NetSuite has no 1:1 field for
some of them):

* Customer ``email`` is the book's billing contact e-mail; the escalation contact (a separate
  Contact record in NetSuite) is rendered as custom entity fields
  ``custentity_arhub_escalation_email`` / ``custentity_arhub_escalation_name``
  (StringCustomFieldRef); ARR is ``custentity_arhub_arr`` (DoubleCustomFieldRef); the country
  is the default billing address in ``addressbookList``, with the book's street address
  (``addr1``-``addr3``, ``city``, ``state``, ``zip``: platformCommon ``Address``, in its
  sequence order; empty parts left out).
* Invoice ``amountPaid`` is what NetSuite shows: payments *and* applied credits
  (``total - amountRemaining``); the book's sent date is ``custbody_arhub_sent_date``
  (DateCustomFieldRef); the book's ``po_number`` is ``otherRefNum``; ``status`` is
  ``Open`` / ``Paid In Full`` / ``Voided`` (an ``xsd:string`` in the XSD).
* Currency rates are ``listAcct:CurrencyRate`` records found with ``CurrencyRateSearchBasic``
  (the 2023_2 contract has it); there is no ``lastModifiedDate`` on them, so incremental
  pulls filter on ``effectiveDate`` (compared by day).
* Business dates (tranDate, dueDate, applyDate, ...) are ``xsd:dateTime`` at midnight UTC.

Pages come from a snapshot of ids taken by the first ``search`` (like NetSuite): a record
modified between pages keeps its place but is rendered with its current content; a record
deleted between pages is skipped.

The modules:

``render``  formatting (dates, money, record refs, custom fields) and the book's records as SOAP XML
            (Customer, Invoice, CreditMemo, CustomerPayment, CurrencyRate), cached per record version
            (:class:`~connectors.sandbox.netsuite.render.SoapRendering`, mixed into the emulator)
``app``     :class:`NetSuiteEmulator`: WSDL/XSD serving, SOAP parsing and faults, authentication,
            ``search``/``searchMoreWithId`` snapshots and paging, ``getDeleted``; :func:`make_app`
"""
from __future__ import annotations

from connectors.sandbox.netsuite.app import CONTRACT_DIR, NS, SANDBOX_CREDENTIALS, NetSuiteEmulator, SoapFault, make_app

# the module's other names before the split, importable from here as before
from connectors.sandbox.netsuite.app import END_OF_DAY, KIND_RECORD_TYPE, RECORD_TYPES, SERVICE_PATH  # noqa: F401
from connectors.sandbox.netsuite.app import TRAN_TYPES, WSDL_PATH, WSSE_NS  # noqa: F401
from connectors.sandbox.netsuite.render import COUNTRIES, CURRENCY_IDS, INVOICE_STATUS, SUBSIDIARY  # noqa: F401
from connectors.sandbox.netsuite.render import TERMS_IDS, UTC, SoapRendering  # noqa: F401

__all__ = ["CONTRACT_DIR", "NS", "SANDBOX_CREDENTIALS", "NetSuiteEmulator", "SoapFault", "make_app"]
