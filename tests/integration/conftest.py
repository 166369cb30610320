"""Helpers shared by the integration tests: serve a WSGI app over real HTTP on loopback."""
from __future__ import annotations

import pytest

from tests.support.wsgi import Servers as _Servers


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
