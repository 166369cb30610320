"""SMTP transport of outbound email (used by :mod:`middleware.mailer`): the mail errors and how SMTP
and network failures map to them (:func:`classify`), the SMTP conversation of one message
(:class:`SmtpSession`) and the one connection a mail worker keeps open between messages
(:func:`keep_connections`; this module owns that state)."""
from __future__ import annotations

import contextlib
import email.policy
import os
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage

from .settings import Settings

_SPACES = re.compile(r"[ \t\r\n]+")  # ASCII only: a formatted amount keeps its no-break spaces


# -- errors -------------------------------------------------------------------------------


class MailError(Exception):
    """An email that did not go out. ``subject`` names the action (or "test send"),
    ``recipient`` the address, ``reply`` the server's reply (``550 5.1.1 user unknown``)
    or the network error."""

    def __init__(self, message: str, *, subject: str | None = None, recipient: str | None = None,
                 reply: str | None = None, code: int | None = None):
        super().__init__(message)
        self.subject = subject
        self.recipient = recipient
        self.reply = reply
        self.code = code

    def __reduce__(self):
        return (_rebuild_error, (self.__class__, str(self), self.subject, self.recipient, self.reply, self.code))


class TransientMailError(MailError):
    """Worth trying again later: no answer, a 4xx reply, a dropped connection before DATA."""


class PermanentMailError(MailError):
    """Trying again will not help: a 5xx reply, a TLS or template problem, an unknown outcome."""


def _rebuild_error(cls, message, subject, recipient, reply, code):
    return cls(message, subject=subject, recipient=recipient, reply=reply, code=code)


def _reply_text(code: int | None, text: bytes | str | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _SPACES.sub(" ", text or "").strip()
    return f"{code} {text}".strip() if code and code > 0 else text


def _error(kind: type[MailError], subject: str, recipient: str | None, what: str, reply: str,
           code: int | None = None) -> MailError:
    to = f" to {recipient}" if recipient else ""
    return kind(f"{subject}{to}: {what}: {reply}", subject=subject, recipient=recipient, reply=reply, code=code)


def _by_code(code: int | None) -> type[MailError]:
    return PermanentMailError if code is not None and 500 <= code < 600 else TransientMailError


def classify(exc: BaseException, *, subject: str, recipient: str | None, stage: str) -> MailError | None:
    """The :class:`MailError` an SMTP or network exception stands for (None: not a mail error).

    5xx replies are permanent, 4xx replies, timeouts, refused or dropped connections transient.
    """
    if isinstance(exc, MailError):
        return exc
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        reply = _reply_text(exc.smtp_code, exc.smtp_error)
        return _error(_by_code(exc.smtp_code), subject, recipient, "SMTP authentication failed", reply, exc.smtp_code)
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code if exc.smtp_code and exc.smtp_code > 0 else None
        return _error(_by_code(code), subject, recipient, f"refused at {stage}", _reply_text(code, exc.smtp_error),
                      code)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return _error(PermanentMailError, subject, recipient, f"the server does not support {stage}", str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _error(PermanentMailError, subject, recipient, "the SMTP server's TLS certificate is not trusted",
                      str(exc))
    if isinstance(exc, (smtplib.SMTPException, OSError)):  # disconnects, timeouts, refused connections, TLS
        return _error(TransientMailError, subject, recipient, f"no answer at {stage}",
                      f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return None


# -- SMTP ---------------------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    # the system's trust store (or $SSL_CERT_FILE / $SSL_CERT_DIR), hostname checked, TLS >= 1.2
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


#: One SMTP connection kept between messages by a non-forking mail worker (jobs.queues.MailWorker
#: turns it on): ``(server key, connection, last used, pid)``. Off (the default), every message
#: has its own connection.
_kept: dict = {"on": False, "entry": None}
#: A kept connection idle longer than this is closed rather than reused (servers drop idle ones).
KEEP_IDLE_SECONDS = 30.0


def keep_connections(on: bool = True) -> None:
    """Keep one SMTP connection open between messages in this process (``on``), or stop and
    close it. Only for a process that sends one message after another (a forked work horse
    gains nothing: it exits after its message)."""
    _kept["on"] = on
    if not on:
        entry, _kept["entry"] = _kept["entry"], None
        if entry is not None:
            _quit(entry[1])


def _server_key(settings: Settings) -> tuple:
    return (settings.smtp_host, settings.smtp_port, settings.smtp_security, settings.smtp_username)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        with contextlib.suppress(OSError):
            smtp.close()


def _keep(smtp: smtplib.SMTP, settings: Settings) -> bool:
    if not _kept["on"]:
        return False
    old, _kept["entry"] = _kept["entry"], (_server_key(settings), smtp, time.monotonic(), os.getpid())
    if old is not None and old[1] is not smtp:
        _quit(old[1])
    return True


def _take_kept(settings: Settings) -> smtplib.SMTP | None:
    """The kept connection when it is to the same server, of this process, recently used and
    still answering ``NOOP`` with 250; else None (and it is closed)."""
    entry, _kept["entry"] = _kept["entry"], None
    if entry is None:
        return None
    key, smtp, used, pid = entry
    if pid != os.getpid():  # inherited through a fork: the parent's socket, not ours to use
        return None
    if not _kept["on"] or key != _server_key(settings) or time.monotonic() - used > KEEP_IDLE_SECONDS:
        _quit(smtp)
        return None
    try:
        code, _ = smtp.noop()
    except (smtplib.SMTPException, OSError):
        with contextlib.suppress(OSError):
            smtp.close()
        return None
    if code != 250:
        _quit(smtp)
        return None
    return smtp


class SmtpSession:
    """One SMTP connection for one message, tracking how far the conversation got.

    ``phase``: ``connect`` → ``envelope`` → ``data`` (DATA sent, no content yet) →
    ``content`` (the message is on the wire: only the reply tells whether it was taken) →
    ``replied``. A failure before ``content`` means the server cannot have the message.
    """

    def __init__(self, settings: Settings, subject: str):
        self.settings = settings
        self.subject = subject
        self.phase = "connect"
        self.smtp: smtplib.SMTP | None = None

    @contextlib.contextmanager
    def _stage(self, stage: str, recipient: str | None) -> Iterator[None]:
        """SMTP and network exceptions inside become :class:`MailError` naming ``stage``."""
        try:
            yield
        except MailError:
            raise
        except Exception as exc:
            mail_error = classify(exc, subject=self.subject, recipient=recipient, stage=stage)
            if mail_error is None:
                raise
            raise mail_error from exc

    def _refused(self, code: int, text: bytes, recipient: str, what: str) -> MailError:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            self.smtp.rset()  # type: ignore[union-attr]
        return _error(_by_code(code), self.subject, recipient, what, _reply_text(code, text), code)

    def connect(self, recipient: str | None = None) -> None:
        s = self.settings
        self.smtp = _take_kept(s)
        if self.smtp is not None:  # the previous message's connection, still answering NOOP
            self.phase = "envelope"
            return
        with self._stage("connect", recipient):
            if s.smtp_security == "tls":
                self.smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds,
                                             context=_tls_context())
            else:
                self.smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
            self.smtp.ehlo()
        if s.smtp_security == "starttls":
            with self._stage("STARTTLS", recipient):
                if not self.smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("STARTTLS is not offered (ARHUB_SMTP_SECURITY=starttls)")
                self.smtp.starttls(context=_tls_context())
                self.smtp.ehlo()
        if s.smtp_username:
            with self._stage("AUTH", recipient):
                self.smtp.login(s.smtp_username, s.smtp_password or "")
        self.phase = "envelope"

    def deliver(self, envelope_from: str, to: str, cc: list[str], data: bytes, *,
                before_data: Callable[[], None] = lambda: None) -> dict[str, str]:
        """MAIL, RCPT for ``to`` and ``cc``, ``before_data()``, DATA. Returns the Cc addresses
        the server refused (address → reply); a refused ``to`` stops before DATA."""
        smtp = self.smtp
        assert smtp is not None and self.phase == "envelope"
        recipients = list(dict.fromkeys([to, *cc]))
        options = [f"SIZE={len(data)}"] if smtp.has_extn("size") else []
        if any(not a.isascii() for a in (envelope_from, *recipients)):
            if not smtp.has_extn("smtputf8"):
                raise _error(PermanentMailError, self.subject, to, "refused at MAIL FROM",
                             "the server does not support SMTPUTF8 (non-ASCII address)")
            options += ["SMTPUTF8", "BODY=8BITMIME"]
        with self._stage("MAIL FROM", to):
            code, text = smtp.mail(envelope_from, options)
        if code != 250:
            raise self._refused(code, text, to, "sender refused at MAIL FROM")
        refused: dict[str, str] = {}
        for rcpt in recipients:
            with self._stage("RCPT TO", rcpt):
                code, text = smtp.rcpt(rcpt)
            if code not in (250, 251):
                if rcpt == to:
                    raise self._refused(code, text, to, "recipient refused at RCPT TO")
                refused[rcpt] = _reply_text(code, text)
        before_data()
        self.phase = "data"
        with self._stage("DATA", to):
            code, text = smtp.docmd("data")
        if code != 354:
            raise self._refused(code, text, to, "refused at DATA")
        payload = re.sub(rb"(?m)^\.", b"..", data)
        payload += b"" if payload.endswith(b"\r\n") else b"\r\n"
        self.phase = "content"
        smtp.send(payload + b".\r\n")
        code, text = smtp.getreply()
        self.phase = "replied"
        if code != 250:
            raise _error(_by_code(code), self.subject, to, "message refused after DATA", _reply_text(code, text),
                         code)
        return refused

    def close(self) -> None:
        """QUIT politely (its failure changes nothing: the outcome is already known); with
        :func:`keep_connections` on, a connection whose last message got its reply is kept for
        the next one instead."""
        if self.smtp is None:
            return
        if self.phase == "replied" and _keep(self.smtp, self.settings):
            self.smtp = None
            return
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            with contextlib.suppress(OSError):
                self.smtp.close()
        self.smtp = None


def _serialize(msg: EmailMessage, recipients: list[str], envelope_from: str) -> bytes:
    if any(not a.isascii() for a in (envelope_from, *recipients)):
        return msg.as_bytes(policy=email.policy.SMTPUTF8)
    return msg.as_bytes(policy=email.policy.SMTP)
