"""Serve WSGI apps over real HTTP on loopback, in daemon threads (integration and browser tests)."""
from __future__ import annotations

import threading

from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # paging tests make thousands of requests
        pass


class Servers:
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
