"""The web process answers its health check from the database it is configured for."""
from __future__ import annotations

from console import create_app


def test_healthz_reports_the_schema_version(db, settings):
    """A migrated database answers 200 with its schema version; gunicorn's factory needs no arguments."""
    from middleware.migrations import head

    client = create_app().test_client()
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok", "schema_version": head(), "latest_version": head()}
