"""The web process: ``create_app()``, the composition root for the web (gunicorn: ``console:create_app()``).

A flat list of ``init_app`` calls: database per request, security (CSRF on every form, secure
cookies, headers), login and roles (``console.auth``), Flask-Admin and the views of
``console/views`` (``console.admin``), the inbound email webhook, and the health check.
"""
from __future__ import annotations

from datetime import timedelta

from flask import Flask, jsonify
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()


def create_app(config: dict | None = None) -> Flask:
    from console import admin, auth, inbound, pay
    from middleware.db import connect, database
    from middleware.migrations import current_version, head
    from middleware.secrets import install_log_redaction
    from middleware.settings import get_settings, templates_dir

    settings = get_settings()
    # Templates: the project's templates/ (console/ pages, emails); Flask-Admin's own are found
    # through its blueprint. Static files: Flask-Admin's (Bootstrap, jQuery) and console/static:
    # nothing comes from a CDN.
    app = Flask(__name__, template_folder=str(templates_dir()), static_url_path="/assets")
    secure = settings.public_url.startswith("https://")
    app.config.update(
        SECRET_KEY=settings.secret_key, ARHUB_SETTINGS=settings,
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_NAME="arhub_session",
        REMEMBER_COOKIE_HTTPONLY=True, REMEMBER_COOKIE_SAMESITE="Lax", REMEMBER_COOKIE_SECURE=secure,
        REMEMBER_COOKIE_DURATION=timedelta(days=14), PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=12 * 3600,
    )
    if config:
        app.config.update(config)
    install_log_redaction(settings, logger=app.logger)
    connect(settings.database_url)

    @app.before_request
    def _open_db():
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close_db(exc):
        if not database.is_closed():
            database.close()

    @app.after_request
    def _security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    csrf.init_app(app)
    auth.init_app(app)
    admin.init_app(app)
    inbound.init_app(app)  # POST /inbound/email: replies, authenticated by signature (no console login)
    csrf.exempt(inbound.bp)
    pay.init_app(app)  # GET /pay/<token>: the customers' pay page (no login: the token is signed)

    @app.get("/healthz")
    def healthz():
        """Liveness and schema check for load balancers and ops."""
        version = current_version(database.obj)
        ok = version == head()
        return jsonify(status="ok" if ok else "migrations pending", schema_version=version,
                       latest_version=head()), (200 if ok else 503)

    return app
