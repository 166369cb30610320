"""The sandbox server: ERP emulators plus a control API, on one WSGI app.

Mounted paths:

``/xero``       the Xero Accounting emulator (:mod:`connectors.sandbox.xero`)
``/netsuite``   the NetSuite SuiteTalk emulator (:mod:`connectors.sandbox.netsuite`, imported
                on first use so this module works while that emulator is missing)
``/_sandbox/``  control API for tests and demos:

* ``POST /_sandbox/faults`` a JSON list of :class:`Fault` dicts to queue; ``DELETE`` clears
  them; ``GET`` lists the queue and the count of API requests served.
* ``POST /_sandbox/mutate`` one of ``{"action": "modify_invoices", "count": 11000}`` (or ``"ids": [...]``),
  ``{"action": "add_payment", "invoice_id": N, "amount": "12.50", "date": "2025-01-31", "extra": "0"}``,
  ``{"action": "void_invoice", "id": N}``, ``{"action": "delete", "kind": "invoice", "id": N}``,
  ``{"action": "rename_customer", "id": N, "name": "..."}`` → a JSON result.
* ``GET /_sandbox/book`` counts, seed, as_of.

:class:`SandboxServer` runs it on a loopback port in a daemon thread (a context manager),
:func:`serve` runs it in the foreground for ``arhub sandbox serve``.
"""
from __future__ import annotations

import gc
import importlib
import json
import sys
import threading
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from connectors.sandbox import xero
from connectors.sandbox.book import KINDS, Book
from connectors.sandbox.faults import Fault, Faults

UTC = timezone.utc


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status=status, content_type="application/json")


class _LazyApp:
    """Imports ``module.make_app`` on first request; 503 while the module is missing."""

    def __init__(self, module: str, book: Book, faults: Faults, credentials: dict | None):
        self.module, self.book, self.faults, self.credentials = module, book, faults, credentials
        self._app = None
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if self._app is None:
            with self._lock:
                if self._app is None:
                    try:
                        make_app = importlib.import_module(self.module).make_app
                    except ImportError as exc:
                        return _json({"error": f"{self.module} is not available: {exc}"}, 503)(environ, start_response)
                    self._app = make_app(self.book, faults=self.faults, credentials=self.credentials)
        return self._app(environ, start_response)


class ControlApp:
    """``/_sandbox/``: fault switches, book mutations and book facts."""

    def __init__(self, book: Book, faults: Faults):
        self.book, self.faults = book, faults

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except (KeyError, LookupError) as exc:
            response = _json({"error": f"not found: {exc}"}, 404)
        except (TypeError, ValueError, InvalidOperation) as exc:
            response = _json({"error": f"bad request: {exc}"}, 400)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path, method = request.path.rstrip("/"), request.method
        if not path.startswith("/_sandbox"):  # mounted: PATH_INFO is relative to /_sandbox
            path = "/_sandbox" + path
        if path == "/_sandbox/faults":
            if method == "POST":
                data = json.loads(request.get_data(as_text=True) or "[]")
                items = data if isinstance(data, list) else [data]
                self.faults.push(*(Fault.from_json(item) for item in items))
                return _json({"queued": len(self.faults.queue)})
            if method == "DELETE":
                self.faults.clear()
                return _json({"queued": 0})
            if method == "GET":
                with self.faults.lock:
                    return _json({"queue": [vars(f) for f in self.faults.queue], "served": self.faults.served})
        elif path == "/_sandbox/mutate" and method == "POST":
            return _json(self.mutate(json.loads(request.get_data(as_text=True) or "{}")))
        elif path == "/_sandbox/book" and method == "GET":
            return _json(self.describe())
        return _json({"error": "no such control endpoint"}, 404)

    def describe(self) -> dict:
        book = self.book
        with book.lock:
            counts = {kind: len(book.records(kind)) for kind in KINDS}
            return {"seed": book.seed, "as_of": book.as_of.isoformat(), "base_currency": book.base_currency,
                    "counts": counts, "deleted": len(book.deleted)}

    def mutate(self, data: dict) -> dict:
        book = self.book
        action = data.get("action")
        now = datetime.fromisoformat(data["now"]) if data.get("now") else datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if action == "modify_invoices":
            ids = book.modify_invoices(int(data.get("count") or 0), now=now, seed=data.get("seed"),
                                       ids=[int(i) for i in data["ids"]] if data.get("ids") is not None else None)
            return {"action": action, "count": len(ids), "ids": ids}
        if action == "add_payment":
            day = date.fromisoformat(data["date"]) if data.get("date") else now.date()
            pay = book.add_payment(int(data["invoice_id"]), Decimal(str(data["amount"])), day, now,
                                   extra=Decimal(str(data.get("extra", "0"))))
            return {"action": action, "payment_id": pay.id, "number": pay.number, "amount": str(pay.amount)}
        if action == "void_invoice":
            book.void_invoice(int(data["id"]), now)
            return {"action": action, "id": int(data["id"])}
        if action == "delete":
            kind = data["kind"]
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}")
            book.delete(kind, int(data["id"]), now)
            return {"action": action, "kind": kind, "id": int(data["id"])}
        if action == "rename_customer":
            book.rename_customer(int(data["id"]), str(data["name"]), now)
            return {"action": action, "id": int(data["id"]), "name": data["name"]}
        raise ValueError(f"unknown action {action!r}")


def _not_found(environ, start_response):
    return _json({"error": "not found; emulators live under /xero and /netsuite, control under /_sandbox"},
                 404)(environ, start_response)


def make_sandbox_app(book: Book, *, faults: Faults | None = None, credentials: dict | None = None):
    """One WSGI app with both emulators and the control API sharing ``book`` and ``faults``.

    ``credentials`` optionally maps ``"xero"`` / ``"netsuite"`` to each emulator's
    ``credentials`` argument.
    """
    faults = faults if faults is not None else Faults()
    credentials = credentials or {}
    control = ControlApp(book, faults)
    return DispatcherMiddleware(_not_found, {
        "/xero": xero.make_app(book, faults=faults, credentials=credentials.get("xero")),
        "/netsuite": _LazyApp("connectors.sandbox.netsuite", book, faults, credentials.get("netsuite")),
        "/_sandbox": control,
    })


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # tests page thousands of times
        pass


class SandboxServer:
    """The sandbox on a local port in a daemon thread::

        with SandboxServer(Book(customers=50, invoices=500)) as sandbox:
            requests.get(sandbox.xero_url + "/api.xro/2.0/Invoices", ...)
    """

    def __init__(self, book: Book | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 faults: Faults | None = None, credentials: dict | None = None, ssl_context=None,
                 quiet: bool = True, customers: int = 200, invoices: int = 2000, seed: int = 7):
        self.book = book if book is not None else Book(customers=customers, invoices=invoices, seed=seed)
        self.faults = faults if faults is not None else Faults()
        self.app = make_sandbox_app(self.book, faults=self.faults, credentials=credentials)
        self._server = make_server(host, port, self.app, threaded=True, ssl_context=ssl_context,
                                   request_handler=_QuietHandler if quiet else None)
        self._server.daemon_threads = True
        scheme = "https" if ssl_context is not None else "http"
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"{scheme}://{bound_host}:{bound_port}"
        self._thread: threading.Thread | None = None

    @property
    def xero_url(self) -> str:
        return self.url + "/xero"

    @property
    def netsuite_url(self) -> str:
        return self.url + "/netsuite"

    def start(self) -> "SandboxServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "SandboxServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxServer({self.url!r})"


def serve(host: str = "127.0.0.1", port: int = 8765, customers: int = 200, invoices: int = 2000,
          seed: int = 7, salesforce_port: int | None = 8766, ca_file: str | None = None) -> None:
    """Run the sandbox in the foreground until interrupted (``arhub sandbox serve``).

    The ERP emulators answer on ``port`` over HTTP; the Salesforce emulator (an org seeded from
    the same book when it is first called) on ``salesforce_port`` over HTTPS, its CA written to
    ``ca_file``. ``salesforce_port=None`` serves the ERPs only; a busy Salesforce port is reported
    and the ERPs serve anyway.
    """
    book = Book(customers=customers, invoices=invoices, seed=seed)
    salesforce = None
    if salesforce_port is not None:
        from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as SF
        from connectors.sandbox.salesforce import Org, SalesforceServer

        try:  # the org is seeded from the book on the first Salesforce request, not before
            salesforce = SalesforceServer(lambda: Org.from_book(book, seed=seed), host=host, port=salesforce_port,
                                          ca_file=ca_file).start()
        except OSError as exc:  # the ERP sandboxes still serve (benchmarks start several)
            print(f"salesforce sandbox not started: port {salesforce_port}: {exc}", file=sys.stderr, flush=True)
    gc.freeze()  # the book is long-lived: keep its millions of objects out of every GC pass
    server = make_server(host, port, make_sandbox_app(book), threaded=True)
    print(f"arhub sandbox on http://{host}:{server.server_address[1]} "
          f"(xero: /xero, netsuite: /netsuite, control: /_sandbox); "
          f"xero client_id={xero.SANDBOX_CREDENTIALS['client_id']} tenant_id={xero.SANDBOX_CREDENTIALS['tenant_id']}",
          flush=True)
    if salesforce is not None:
        print(f"salesforce sandbox on {salesforce.url} (CA: {salesforce.ca_file}; control: /_sandbox; org seeded "
              f"from the book on the first request); "
              f"username={SF['username']} password={SF['password']} security_token={SF['security_token']} "
              f"client_id={SF['client_id']} client_secret={SF['client_secret']} "
              f"organization_id={SF['organization_id']}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if salesforce is not None:
            salesforce.stop()
