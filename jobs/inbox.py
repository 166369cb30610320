"""Inbound replies from a mailbox: ``poll_imap()`` reads unseen messages from ``ARHUB_IMAP_URL``.

``ARHUB_IMAP_URL`` is ``imaps://user:password@host[:993][/FOLDER]`` (TLS from the first byte)
or ``imap://user:password@host[:143][/FOLDER]`` (STARTTLS when the server offers it; a server
that does not is only accepted on a loopback address, so a password never crosses a network
in clear text). User and password are percent-encoded; the folder defaults to INBOX.

Each unseen message is fetched with ``BODY.PEEK[]`` (which, unlike ``RFC822``, leaves it
unseen), handed to :func:`middleware.inbox.receive`, and flagged ``\\Seen`` only after that
committed. A crash in between leaves it unseen, so the next poll reads it again and the
Message-ID check stores it once. One poll runs at a time (a lock; a second one returns
``skipped``); each reads at most ``limit`` messages, oldest first.
"""
from __future__ import annotations

import imaplib
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["ImapError", "ImapTarget", "parse_imap_url", "poll_imap"]

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 500
TIMEOUT_SECONDS = 60


class ImapError(RuntimeError):
    """The mailbox could not be read (configuration, TLS, login, or a protocol error)."""

    def __reduce__(self):
        return (self.__class__, (str(self),))


@dataclass(frozen=True)
class ImapTarget:
    tls: bool  # imaps://
    host: str
    port: int
    user: str
    password: str
    folder: str

    def __repr__(self) -> str:
        return f"ImapTarget(tls={self.tls}, host={self.host!r}, port={self.port}, user={self.user!r}, folder={self.folder!r})"


def parse_imap_url(url: str) -> ImapTarget:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("imap", "imaps"):
        raise ImapError("ARHUB_IMAP_URL must start with imaps:// or imap://")
    if not parts.hostname or parts.username is None or parts.password is None:
        raise ImapError("ARHUB_IMAP_URL needs user, password and host: imaps://user:password@host/INBOX")
    tls = parts.scheme == "imaps"
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    return ImapTarget(tls=tls, host=parts.hostname, port=parts.port or (993 if tls else 143),
                      user=unquote(parts.username), password=unquote(parts.password), folder=folder)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(response: tuple, what: str) -> list:
    status, data = response
    if status != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        raise ImapError(f"IMAP {what} failed: {status} {detail}".strip())
    return data


def _open(target: ImapTarget, ssl_context: ssl.SSLContext | None) -> imaplib.IMAP4:
    context = ssl_context or ssl.create_default_context()
    try:
        if target.tls:
            conn = imaplib.IMAP4_SSL(target.host, target.port, ssl_context=context, timeout=TIMEOUT_SECONDS)
        else:
            conn = imaplib.IMAP4(target.host, target.port, timeout=TIMEOUT_SECONDS)
            if "STARTTLS" in conn.capabilities:
                conn.starttls(ssl_context=context)
            elif not _is_loopback(target.host):
                conn.shutdown()
                raise ImapError(f"{target.host} offers no STARTTLS: use imaps:// (the password is never sent in clear)")
        conn.login(target.user, target.password)
    except imaplib.IMAP4.error as exc:
        raise ImapError(f"IMAP login to {target.host}:{target.port} as {target.user} failed: {exc}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ImapError(f"cannot reach IMAP server {target.host}:{target.port}: {exc}") from exc
    return conn


def _literal(data: list) -> bytes | None:
    """The message bytes of a FETCH answer (the literal that follows ``BODY[]``)."""
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and re.search(rb"BODY\[\]", item[0]):
            return item[1]
    return None


def poll_imap(url: str | None = None, *, limit: int = DEFAULT_LIMIT, ssl_context: ssl.SSLContext | None = None) -> dict:
    """RQ job (and ``arhub inbox poll``): receive every unseen message of the mailbox.

    ``url`` defaults to ``ARHUB_IMAP_URL``; unset, the poll is ``disabled``. ``ssl_context``
    overrides the default certificate check (a private CA). Returns counts: ``fetched``,
    ``stored`` (new rows), ``duplicates`` (Message-IDs already stored), per-status counts
    of the stored ones, and ``left`` (unseen messages beyond ``limit``, for the next poll).
    Errors propagate (the job fails, and what was not flagged is read again next time)."""
    from jobs.bootstrap import bootstrap
    from middleware.inbox import ingest
    from middleware.locks import LockBusy, exclusive

    ctx = bootstrap()
    url = url or ctx.settings.imap_url
    if not url:
        return {"status": "disabled", "message": "ARHUB_IMAP_URL is not set"}
    target = parse_imap_url(url)
    try:
        with exclusive("inbox-imap-poll"):
            return _poll(target, limit, ssl_context, ingest)
    except LockBusy:
        return {"status": "skipped", "message": "another IMAP poll is running"}


def _poll(target: ImapTarget, limit: int, ssl_context, ingest) -> dict:
    counts: dict = {"status": "ok", "fetched": 0, "stored": 0, "duplicates": 0, "left": 0}
    conn = _open(target, ssl_context)
    try:
        _check(conn.select(_quote(target.folder)), f"SELECT {target.folder}")
        uids = [int(u) for u in b" ".join(_check(conn.uid("SEARCH", None, "UNSEEN"), "SEARCH UNSEEN")).split()]
        uids.sort()
        counts["left"] = max(0, len(uids) - limit)
        for uid in uids[:limit]:
            data = _check(conn.uid("FETCH", str(uid), "(BODY.PEEK[])"), f"FETCH {uid}")
            raw = _literal(data)
            if raw is None:  # expunged meanwhile
                continue
            counts["fetched"] += 1
            message, created = ingest(raw)  # commits before we flag it
            if created:
                counts["stored"] += 1
                counts[message.status] = counts.get(message.status, 0) + 1
            else:
                counts["duplicates"] += 1
            _check(conn.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Seen)"), f"STORE {uid} +FLAGS \\Seen")
        log.info("IMAP poll of %s@%s/%s: %s", target.user, target.host, target.folder, counts)
        return counts
    except imaplib.IMAP4.error as exc:
        raise ImapError(f"IMAP error on {target.host}:{target.port}: {exc}") from exc
    except OSError as exc:
        raise ImapError(f"IMAP connection to {target.host}:{target.port} lost: {exc}") from exc
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass  # the connection is already gone; nothing left to close


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
