"""The web process: ``create_app()``, the composition root for the web (gunicorn: ``console:create_app()``).

This issue ships the factory and a health check; the Flask-Admin console (login,
dashboards, mappings, campaigns, collector workspace, ops) lands with issue 5.
"""
from __future__ import annotations

from flask import Flask, jsonify


def create_app(config: dict | None = None) -> Flask:
    from console import inbound
    from middleware.db import connect, database
    from middleware.migrations import current_version, head
    from middleware.secrets import install_log_redaction
    from middleware.settings import get_settings

    settings = get_settings()
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key, ARHUB_SETTINGS=settings)
    if config:
        app.config.update(config)
    install_log_redaction(settings, logger=app.logger)
    connect(settings.database_url)
    inbound.init_app(app)  # POST /inbound/email: replies, authenticated by signature (no console login)

    @app.before_request
    def _open_db():
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close_db(exc):
        if not database.is_closed():
            database.close()

    @app.get("/healthz")
    def healthz():
        """Liveness and schema check for load balancers and ops."""
        version = current_version(database.obj)
        ok = version == head()
        return jsonify(status="ok" if ok else "migrations pending", schema_version=version,
                       latest_version=head()), (200 if ok else 503)

    return app
