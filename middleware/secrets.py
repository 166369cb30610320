"""Credentials at rest and in logs.

* :func:`encrypt_json` / :func:`decrypt_json` seal a ``Source``'s credentials dict with
  Fernet (AES-128-CBC + HMAC-SHA256). The key comes from ``settings.secret_key``: used
  as is when it already is a Fernet key, otherwise derived with HKDF-SHA256. Keys named
  in ``ARHUB_SECRET_KEY_PREVIOUS`` (comma separated) still decrypt, so a key can be
  rotated: set the new key, keep the old one as previous, re-encrypt with
  :func:`rotate_token`, then drop the previous key.
* :class:`Secret` wraps a credential so ``repr``/``str``/f-strings show ``***``.
* :class:`RedactingFilter` scrubs registered secret values and ``password=`` /
  ``token=`` style patterns from log records; ``bootstrap()`` and ``create_app()``
  install it with :func:`install_log_redaction`.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import threading

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from middleware.settings import Settings, get_settings

__all__ = [
    "DecryptionError",
    "RedactingFilter",
    "Secret",
    "decrypt_json",
    "encrypt_json",
    "install_log_redaction",
    "redact",
    "register_secret",
    "rotate_token",
]

_HKDF_SALT = b"arhub.secrets.v1"
_HKDF_INFO = b"arhub credentials fernet key"
REDACTED = "***"


class DecryptionError(ValueError):
    """A token could not be decrypted with the current or any previous key."""


# -- keys ------------------------------------------------------------------------


def _is_fernet_key(key: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def fernet_key(secret_key: str) -> bytes:
    """The Fernet key for ``secret_key``: itself if it is one, else HKDF-SHA256 of it."""
    if _is_fernet_key(secret_key):
        return secret_key.encode("ascii")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(
        secret_key.encode("utf-8")
    )
    return base64.urlsafe_b64encode(derived)


@functools.lru_cache(maxsize=8)
def _multifernet(current: str, previous: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(fernet_key(k)) for k in (current, *previous)])


def _keys(settings: Settings | None) -> MultiFernet:
    s = settings or get_settings()
    return _multifernet(s.secret_key, tuple(s.secret_key_previous))


# -- sealing ---------------------------------------------------------------------


def encrypt_json(data: dict, settings: Settings | None = None) -> str:
    """Seal ``data`` (a JSON-serialisable dict) into a URL-safe text token."""
    if not isinstance(data, dict):
        raise TypeError(f"encrypt_json expects a dict, got {type(data).__name__}")
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return _keys(settings).encrypt(payload).decode("ascii")


def decrypt_json(token: str, settings: Settings | None = None) -> dict:
    """Open a token made by :func:`encrypt_json` with the current or a previous key."""
    try:
        payload = _keys(settings).decrypt(token.encode("ascii") if isinstance(token, str) else token)
    except (InvalidToken, UnicodeEncodeError) as exc:
        raise DecryptionError(
            "cannot decrypt stored credentials: the token is corrupt or was sealed with a key that "
            "is neither ARHUB_SECRET_KEY nor listed in ARHUB_SECRET_KEY_PREVIOUS"
        ) from exc
    return json.loads(payload)


def rotate_token(token: str, settings: Settings | None = None) -> str:
    """Re-seal ``token`` under the current key (it may have been sealed with a previous one)."""
    try:
        return _keys(settings).rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken as exc:
        raise DecryptionError("cannot rotate: token not readable with any configured key") from exc


# -- Secret ----------------------------------------------------------------------


class Secret:
    """A credential that does not print: ``repr``, ``str`` and f-strings give ``***``.

    ``reveal()`` returns the value for the one place that must send it. Creating a
    ``Secret`` also registers the value with the log redaction filter.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, got {type(value).__name__}")
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return format(REDACTED, spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self):
        return (Secret, (self._value,))


# -- log redaction ---------------------------------------------------------------

_registry_lock = threading.Lock()
_registered: set[str] = set()
_MIN_SECRET_LEN = 4  # shorter values would redact ordinary words

_KEYS = r"password|passwd|pwd|pass|token|access_token|refresh_token|id_token|secret|client_secret|api_key|apikey|session_id|sessionid|authorization"
_PATTERNS = [
    # HTTP auth schemes
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)(?!\*\*\*)([A-Za-z0-9._~+/=-]{6,})"),
    # key=value, key: value, 'key': 'value', "key": "value", <key>value</key> is below
    re.compile(r"(?i)(\b(?:" + _KEYS + r")\b[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*)([^\s\"'&,;}<)]+)"),
    # user:password@host in URLs
    re.compile(r"(://[^/\s:@]*:)(?!\*\*\*)([^@\s/]+)(@)"),
    # SOAP / XML elements such as <password>..</password>, <ns:token>..</ns:token>
    re.compile(r"(?i)(<(?:\w+:)?(?:" + _KEYS + r")\b[^>]*>)(?!\*\*\*)([^<]+)(<)"),
]


def register_secret(value: str | None) -> None:
    """Have the redaction filter replace ``value`` wherever it appears in a log line."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _registry_lock:
            _registered.add(value)


def redact(text: str, extra: frozenset[str] | set[str] = frozenset()) -> str:
    """``text`` with registered secrets and credential-looking patterns replaced by ``***``."""
    with _registry_lock:
        values = sorted(_registered | set(extra), key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED + (m.group(3) if m.re.groups >= 3 else ""), text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback text) with :func:`redact`."""

    def __init__(self, secrets: set[str] | frozenset[str] = frozenset()):
        super().__init__()
        self.secrets = frozenset(s for s in secrets if s and len(s) >= _MIN_SECRET_LEN)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not hide the record
            message = f"{record.msg!r} {record.args!r} (unformattable: {exc})"
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def install_log_redaction(settings: Settings | None = None, logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one :class:`RedactingFilter` to every handler of ``logger`` (default root).

    Handler filters see records propagated from every child logger, which logger
    filters do not. Secrets of ``settings`` (the secret keys, URL passwords) are
    registered. Idempotent.
    """
    s = settings or get_settings()
    for value in (s.secret_key, *s.secret_key_previous):
        register_secret(value)
    for url in (s.database_url, s.redis_url):
        password = _url_password(url)
        if password:
            register_secret(password)
    target = logging.getLogger() if logger is None else logger
    flt = RedactingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt


def _url_password(url: str | None) -> str | None:
    if not url:
        return None
    from urllib.parse import unquote, urlsplit

    password = urlsplit(url).password
    return unquote(password) if password else None

