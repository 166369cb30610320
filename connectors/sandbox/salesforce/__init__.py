"""A Salesforce REST + Bulk API 2.0 emulator (WSGI, werkzeug) over HTTPS on loopback.

What it serves, at the root of its own server (simple-salesforce keeps only host:port of an
instance URL):

``POST /services/oauth2/token``       password, client_credentials and JWT bearer grants
``POST /services/Soap/u/<ver>``       the SOAP ``login`` call
``/services/data/``                   versions; ``/services/data/vXX.X/``: resources, ``limits``,
                                      ``query``/``queryAll`` (+ ``nextRecordsUrl`` paging), ``sobjects``
                                      (describe, CRUD, upsert by external id, ``updated``/``deleted``),
                                      ``composite/sobjects`` (≤ 200 records, ``allOrNone``),
                                      ``composite`` (≤ 25 subrequests, one API call) and
                                      ``composite/batch`` (≤ 25, each subrequest charged),
                                      ``jobs/ingest`` and ``jobs/query`` (Bulk API 2.0)
``/_sandbox/``                        control API for tests (no auth): faults, session expiry, API
                                      budget, dropped fields, stats, seed truth

The org (:class:`Org`) keeps sObject descriptions and records (plain dicts keyed by 18-character
ids) in memory, behind one re-entrant lock, with indexes on external-id and lookup fields. Writes
are checked the way Salesforce checks them and fail with its error codes and messages; see
``docs/salesforce-sandbox.md``. :meth:`Org.from_book` seeds users, accounts, contacts and
opportunities from the ERP sandbox's :class:`~connectors.sandbox.book.Book`, with the mismatches
real orgs have, and records in ``org.seed_truth`` which customer should match which account.

:class:`SalesforceServer` runs it with a trustme certificate in a daemon thread.

The modules:

``schema``     org id and credentials, record ids, :class:`FieldDef`, :class:`SObjectType`, the
               standard sObject types, Salesforce errors
``org``        :class:`Org`: storage, indexes, SOQL execution, checked writes, custom objects/fields
``seed``       :meth:`Org.from_book` seeding, :func:`name_variant`, ``org.seed_truth``
``responses``  JSON/error responses and request bodies shared by the HTTP modules
``app``        :class:`SalesforceApp`: sessions, accounting, faults, routing, REST endpoints,
               composite, limits, the ``/_sandbox/`` control API
``bulk``       Bulk API 2.0 ingest and query jobs (mixed into the app)
``composite``  ``composite`` and ``composite/batch`` (mixed into the app)
``auth``       OAuth token grants and the SOAP login (mixed into the app)
``server``     :class:`SalesforceServer`

This package imports nothing of the project but the sandbox's book, fault switches and SOQL.
"""
from connectors.sandbox.salesforce.app import (API_VERSIONS, COMPOSITE_LIMIT, DEFAULT_API_BUDGET,
                                               DEFAULT_SESSION_SECONDS, MIN_QUERY_BATCH, QUERY_BATCH, Context,
                                               FaultSettings, QueryCursor, SalesforceApp, Session)
from connectors.sandbox.salesforce.bulk import MAX_INGEST_BYTES, IngestJob, QueryJob
from connectors.sandbox.salesforce.org import Org
from connectors.sandbox.salesforce.schema import (COUNTRIES, CURRENCY_CODES, INDUSTRIES, ORG_ID, SANDBOX_CREDENTIALS,
                                                  STAGES, UTC, ApiError, FieldDef, RecordError, SfError, SObjectType,
                                                  standard_types)
from connectors.sandbox.salesforce.seed import name_variant
from connectors.sandbox.salesforce.server import SalesforceServer

__all__ = [
    "API_VERSIONS", "COMPOSITE_LIMIT", "COUNTRIES", "CURRENCY_CODES", "DEFAULT_API_BUDGET", "DEFAULT_SESSION_SECONDS",
    "INDUSTRIES", "MAX_INGEST_BYTES", "MIN_QUERY_BATCH", "ORG_ID", "QUERY_BATCH", "SANDBOX_CREDENTIALS", "STAGES",
    "UTC", "ApiError", "Context", "FaultSettings", "FieldDef", "IngestJob", "Org", "QueryCursor", "QueryJob",
    "RecordError", "SObjectType", "SalesforceApp", "SalesforceServer", "Session", "SfError", "name_variant",
    "standard_types",
]
