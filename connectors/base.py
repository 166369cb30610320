"""What every ERP connector shares: the page it yields and the mapping-preview sample."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass
class Page:
    """One page of raw records (see docs/connector-contract.md)."""

    records: list[dict]
    number: int
    total_pages: int | None
    server_time: datetime | None = None


def forget_connections(session) -> None:
    """In a forked child: let ``session`` open connections of its own.

    A child forked from a process with pooled keep-alive connections holds copies of the
    same sockets; two processes talking over one connection corrupt it (and TLS state can't
    be shared at all). Closing the pools in the child only closes the child's descriptors
    (no TLS close_notify is sent), so the parent's connections stay usable.
    """
    for adapter in getattr(session, "adapters", {}).values():
        adapter.close()


class SampleMixin:
    """``sample()`` for a connector with ``pull(object_name, since)``."""

    def sample(self, object_name: str) -> dict | None:
        """The first record of ``object_name`` (for a mapping preview), or None."""
        pages = self.pull(object_name, None)
        try:
            first = next(pages, None)
        finally:
            pages.close()
        return first.records[0] if first and first.records else None
