"""Helpers shared by the integration tests: serve a WSGI app over real HTTP on loopback."""
from __future__ import annotations

import threading

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # paging tests make thousands of requests
        pass


class _Servers:
    """Starts WSGI apps on loopback ports in daemon threads; ``stop()`` shuts them all down."""

    def __init__(self):
        self._running = []

    def __call__(self, app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="wsgi-test-server", daemon=True)
        thread.start()
        self._running.append((server, thread))
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        for server, thread in self._running:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._running.clear()


@pytest.fixture
def serve_wsgi():
    """``serve_wsgi(app) -> base URL`` (``http://127.0.0.1:PORT``); stopped after the test."""
    servers = _Servers()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def serve_wsgi_module():
    """Like ``serve_wsgi`` but the servers live until the end of the test module."""
    servers = _Servers()
    yield servers
    servers.stop()


# -- the NetSuite emulator for a module's ``book`` (test_erp_soap, test_sandbox_netsuite) ---------------
@pytest.fixture(scope="module")
def faults():
    from connectors.sandbox.faults import Faults

    return Faults()


@pytest.fixture(scope="module")
def base_url(serve_wsgi_module, book, faults) -> str:
    """The NetSuite emulator serving the module's ``book`` fixture, with the module's ``faults``."""
    from connectors.sandbox.netsuite import make_app

    return serve_wsgi_module(make_app(book, faults=faults))


@pytest.fixture
def clear_faults(faults):
    """No fault queued before or after the test."""
    faults.clear()
    yield
    faults.clear()
