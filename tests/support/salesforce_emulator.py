"""The Salesforce emulator's test helpers (tests/integration/sandbox_salesforce/): the API version,
the transport adapter that sends simple-salesforce's hard-coded login host to the sandbox, the
password login, an authenticated REST call, and readers of query results and org tables."""
from __future__ import annotations

from urllib.parse import urlsplit

import requests

from connectors.sandbox.salesforce import SANDBOX_CREDENTIALS as CREDS

V = "59.0"


class ToSandbox(requests.adapters.HTTPAdapter):
    """Sends requests addressed to ``https://<anything>.salesforce.com`` to the sandbox instead:
    simple-salesforce's login helpers hard-code that host. The request still travels over real HTTPS."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        if parts.hostname and parts.hostname.endswith(".salesforce.com"):
            request.url = self.base + request.url[len(f"{parts.scheme}://{parts.netloc}"):]
        return super().send(request, **kwargs)


def password_login(session, server, password=None) -> requests.Response:
    return session.post(server.url + "/services/oauth2/token", data={
        "grant_type": "password", "client_id": CREDS["client_id"], "client_secret": CREDS["client_secret"],
        "username": CREDS["username"],
        "password": password if password is not None else CREDS["password"] + CREDS["security_token"]})


def api(session, server, token, method, path, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    headers["Authorization"] = f"Bearer {token}"
    return session.request(method, f"{server.url}/services/data/v{V}/{path}", headers=headers, **kwargs)


def ids_of(result) -> list[str]:
    return [r["Id"] for r in result["records"]]


def live(server, obj):
    return [r for r in server.org.tables[obj].values() if not r["IsDeleted"]]
