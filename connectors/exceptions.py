"""Connector errors, shared by every connector (see docs/connector-contract.md).

Third-party errors (HTTP status codes, zeep Faults, XML parser errors, timeouts) are
translated into these classes at the connector boundary.  All of them are pickle-safe so
they can cross an RQ worker boundary, and none of them carries secrets.
"""
from __future__ import annotations

__all__ = [
    "ConnectorError",
    "AuthError",
    "RateLimited",
    "RemoteError",
    "ConnectorTimeout",
    "MalformedResponse",
    "UnsafeXml",
    "ApiLimitExceeded",
    "SalesforceRequestError",
]


class ConnectorError(Exception):
    """Base class of every connector error.

    ``status`` is the HTTP status when one was involved, ``retryable`` tells the caller
    whether trying again later may help, ``detail`` is a short, secret-free extra text
    (e.g. a SOAP fault code or an excerpt of the response body).
    """

    def __init__(self, message: str, *, status: int | None = None,
                 retryable: bool = False, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.detail = detail

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.status, self.retryable, self.detail))

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
                f"retryable={self.retryable!r})")


def _rebuild(cls, message, status, retryable, detail):
    return cls(message, status=status, retryable=retryable, detail=detail)


class AuthError(ConnectorError):
    """Bad or missing credentials (HTTP 401/403, an authentication SOAP fault)."""


class RateLimited(ConnectorError):
    """HTTP 429 still returned after the configured retries."""

    def __init__(self, message: str, *, status: int | None = 429,
                 retryable: bool = True, detail: str | None = None) -> None:
        super().__init__(message, status=status, retryable=retryable, detail=detail)


class RemoteError(ConnectorError):
    """The remote side failed: 5xx after retries, or a SOAP Fault."""


class ConnectorTimeout(ConnectorError):
    """Connecting or reading took longer than the configured timeout."""

    def __init__(self, message: str, *, status: int | None = None,
                 retryable: bool = True, detail: str | None = None) -> None:
        super().__init__(message, status=status, retryable=retryable, detail=detail)


class MalformedResponse(ConnectorError):
    """The response could not be parsed (bad JSON/XML) or lacks the records path."""


class UnsafeXml(MalformedResponse):
    """The XML response has a DTD, entity declarations or external references."""


class ApiLimitExceeded(RateLimited):
    """The remote's API budget is spent (Salesforce ``REQUEST_LIMIT_EXCEEDED``): try after it resets."""

    budget_exhausted = True  # what middleware looks for (it does not import connector classes)

    def __init__(self, message: str, *, status: int | None = 403,
                 retryable: bool = True, detail: str | None = None) -> None:
        super().__init__(message, status=status, retryable=retryable, detail=detail)


class SalesforceRequestError(ConnectorError):
    """Salesforce refused a request; ``errors`` is its error array
    (``[{"errorCode": ..., "message": ..., "fields": [...]}]``)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 detail: str | None = None, errors: list[dict] | None = None) -> None:
        super().__init__(message, status=status, retryable=retryable, detail=detail)
        self.errors = list(errors or [])

    @property
    def codes(self) -> list[str]:
        return [str(e.get("errorCode")) for e in self.errors]

    def __reduce__(self):
        return (_rebuild_sf, (self.message, self.status, self.retryable, self.detail, self.errors))


def _rebuild_sf(message, status, retryable, detail, errors):
    return SalesforceRequestError(message, status=status, retryable=retryable, detail=detail, errors=errors)
