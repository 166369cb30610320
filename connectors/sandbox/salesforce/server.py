"""The emulator over HTTPS on a loopback port (:class:`SalesforceServer`), with a trustme
certificate, in a daemon thread.
"""
from __future__ import annotations

import os
import ssl
import tempfile
import threading
from typing import Callable

from werkzeug.serving import WSGIRequestHandler, make_server

from connectors.sandbox.book import Book
from connectors.sandbox.salesforce.app import (DEFAULT_API_BUDGET, DEFAULT_SESSION_SECONDS, FaultSettings,
                                                SalesforceApp)
from connectors.sandbox.salesforce.org import Org

class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # paging tests make thousands of requests
        pass


class SalesforceServer:
    """The emulator over HTTPS on a loopback port, in a daemon thread::

        with SalesforceServer(Org.from_book(Book(customers=300, invoices=1000))) as sf:
            session = requests.Session(); session.verify = sf.ca_file
            ...  # sf.url, sf.org, sf.app (control methods), SANDBOX_CREDENTIALS

    A trustme CA issues the certificate for 127.0.0.1 and localhost (and ``host``); its PEM is
    written to ``ca_file`` (a temporary file when not given, removed on stop).
    """

    def __init__(self, org: Org | Callable[[], Org] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 ca_file: str | os.PathLike | None = None, book: Book | None = None, seed: int = 7,
                 credentials: dict | None = None, api_budget: int = DEFAULT_API_BUDGET,
                 session_seconds: int = DEFAULT_SESSION_SECONDS, jwt_public_key: str | bytes | None = None,
                 quiet: bool = True):
        import trustme

        if org is None:
            org = Org.from_book(book if book is not None else Book(customers=300, invoices=1000, seed=seed),
                                seed=seed)
        self.app = SalesforceApp(org, credentials=credentials, api_budget=api_budget,
                                 session_seconds=session_seconds, jwt_public_key=jwt_public_key)
        self.credentials = self.app.credentials
        self.ca = trustme.CA(organization_name="arhub sandbox")
        names = ["127.0.0.1", "localhost"] + ([host] if host not in ("127.0.0.1", "localhost", "0.0.0.0") else [])
        cert = self.ca.issue_cert(*names)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        self._temp_ca = ca_file is None
        if ca_file is None:
            fd, ca_path = tempfile.mkstemp(prefix="arhub-sf-ca-", suffix=".pem")
            os.close(fd)
        else:
            ca_path = os.fspath(ca_file)
            os.makedirs(os.path.dirname(os.path.abspath(ca_path)), exist_ok=True)
        self.ca.cert_pem.write_to_path(ca_path)
        self.ca_file = ca_path
        try:
            self._server = make_server(host, port, self.app, threaded=True, ssl_context=context,
                                       request_handler=_QuietHandler if quiet else None)
        except SystemExit as exc:  # werkzeug exits the process when the port is taken; a library must not
            raise OSError(f"cannot listen on {host}:{port}: address already in use") from exc
        self._server.daemon_threads = True
        bound_port = self._server.server_address[1]
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"https://{url_host}:{bound_port}"
        self._thread: threading.Thread | None = None

    @property
    def org(self) -> Org:
        """The in-memory org (built now if it was given as a factory)."""
        return self.app.org

    # control shortcuts (the same as /_sandbox/)
    def set_faults(self, **settings) -> FaultSettings:
        return self.app.set_faults(**settings)

    def clear_faults(self) -> None:
        self.app.clear_faults()

    def expire_sessions(self) -> int:
        return self.app.expire_sessions()

    def set_budget(self, max: int | None = None, used: int | None = None) -> dict:  # noqa: A002
        return self.app.set_budget(max, used)

    def stats(self) -> dict:
        return self.app.get_stats()

    def reset_stats(self) -> None:
        self.app.reset_stats()

    def drop_field(self, obj: str, name: str) -> str:
        return self.org.drop_field(obj, name)

    def restore_field(self, obj: str, name: str) -> str:
        return self.org.restore_field(obj, name)

    def token(self, user_id: str | None = None) -> str:
        """A session for ``user_id`` (default: the integration user) without a login call."""
        return self.app.issue_token(user_id or self.org.api_user_id)

    def start(self) -> "SalesforceServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="salesforce-sandbox",
                                            daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
        if self._temp_ca:
            try:
                os.unlink(self.ca_file)
            except OSError:
                pass

    def __enter__(self) -> "SalesforceServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SalesforceServer({self.url!r})"
