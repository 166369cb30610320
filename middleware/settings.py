"""The one settings module: typed configuration read from the environment and ``.env``.

Every process (web, worker, cron, CLI) calls :func:`get_settings`. Values come from
the real environment first, then from a ``.env`` file (``ARHUB_ENV_FILE``, default
``./.env``) which never overrides a variable that is already set. Parsing is strict:
a bad value raises :class:`SettingsError` naming the variable, at start-up rather
than in the middle of a sync.

Defaults are safe for a single machine: SQLite and an embedded Redis under
``var_dir``, and a secret key generated once into ``<var_dir>/secret.key`` (mode 0600).
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from babel.numbers import is_currency
from dotenv import dotenv_values

__all__ = [
    "Settings",
    "SettingsError",
    "env_for",
    "get_settings",
    "load_settings",
    "redact_url",
    "reset_settings",
    "templates_dir",
]

T = TypeVar("T")

SECRET_KEY_FILE = "secret.key"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class SettingsError(ValueError):
    """A configuration variable is missing or malformed; the message names it."""

    def __init__(self, variable: str, message: str):
        self.variable = variable
        super().__init__(f"{variable}: {message}")

    def __reduce__(self):
        return (self.__class__, (self.variable, str(self).split(": ", 1)[1]))


def redact_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (``postgresql://u:***@h/db``)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :func:`load_settings` or :func:`get_settings`."""

    var_dir: Path
    database_url: str
    redis_url: str | None
    secret_key: str = field(repr=False)
    secret_key_previous: tuple[str, ...] = field(default=(), repr=False)
    reporting_currency: str = "USD"
    timezone: str = "UTC"
    sync_interval_minutes: int = 15
    salesforce_interval_minutes: int = 30
    sync_chunk_size: int = 2000
    sync_commit_rows: int = 20000
    sync_prepare: str = "process"
    cursor_overlap_seconds: int = 300
    log_level: str = "INFO"
    require_services: bool = False
    worker_shutdown_grace_seconds: int = 20
    public_url: str = "http://127.0.0.1:5000"  # where the console is reached (links pushed to Salesforce)
    # outbound email (dunning, statements)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_security: str = "none"  # none | starttls | tls
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_timeout_seconds: int = 30
    mail_from: str = "Accounts Receivable <ar@arhub.localhost>"
    reply_domain: str = "reply.arhub.localhost"  # Reply-To: reply+<thread token>@<reply_domain>
    # inbound replies
    inbound_secret: str | None = field(default=None, repr=False)  # HMAC key of POST /inbound/email
    imap_url: str | None = field(default=None, repr=False)  # imaps://user:password@host:993/INBOX
    # dunning
    dunning_plan_time: str = "07:00"  # local time (ARHUB_TIMEZONE) of the daily plan
    # the pay page's "Pay now" button: https://pay.example.com/?c={customer}&a={amount}&cur={currency}&ref={reference}
    payment_url: str | None = None
    # console
    cash_target: Decimal | None = None  # cash to collect per calendar month, in the reporting currency

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("secret_key", "secret_key_previous", "smtp_password", "inbound_secret"):
                value = "***" if value else value
            elif f.name.endswith("_url"):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


# -- typed parsers -----------------------------------------------------------------


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(name, f"expected a positive integer, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(name, f"expected a positive integer, got {raw!r}")
    return value


def _non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(name, f"expected an integer >= 0, got {raw!r}") from None
    if value < 0:
        raise SettingsError(name, f"expected an integer >= 0, got {raw!r}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(name, f"expected one of 1/0, true/false, yes/no, on/off, got {raw!r}")


def _currency(name: str, raw: str) -> str:
    code = raw.strip().upper()
    if len(code) != 3 or not is_currency(code):
        raise SettingsError(name, f"expected an ISO 4217 currency code such as USD or EUR, got {raw!r}")
    return code


def _timezone(name: str, raw: str) -> str:
    tz = raw.strip()
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError(name, f"expected an IANA time zone such as UTC or Europe/Paris, got {raw!r}") from None
    return tz


def _log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise SettingsError(name, f"expected one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
    return level


def _http_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise SettingsError(name, f"expected an http(s) URL like https://arhub.example.com, got {raw!r}")
    return value


_PAYMENT_FIELDS = ("customer", "amount", "currency", "reference")


def _payment_url(name: str, raw: str) -> str:
    """An http(s) URL template whose only placeholders are {customer} {amount} {currency} {reference}."""
    import string

    value = raw.strip()
    if not value.startswith(("http://", "https://")):
        raise SettingsError(name, f"expected an http(s) URL template like https://pay.example.com/?amount={{amount}}, "
                                  f"got {raw!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        raise SettingsError(name, f"not a valid URL template ({exc}): {raw!r}") from None
    unknown = sorted(fields - set(_PAYMENT_FIELDS))
    if unknown:
        raise SettingsError(name, f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}; "
                                  f"allowed: {', '.join('{' + f + '}' for f in _PAYMENT_FIELDS)}")
    return value


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise SettingsError(name, f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value
    return parse


def _clock_time(name: str, raw: str) -> str:
    value = raw.strip()
    try:
        hours, minutes = (int(part) for part in value.split(":"))
        if not (0 <= hours < 24 and 0 <= minutes < 60):
            raise ValueError
    except ValueError:
        raise SettingsError(name, f"expected a local time HH:MM such as 07:00, got {raw!r}") from None
    return f"{hours:02d}:{minutes:02d}"


def _amount(name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw.strip().replace(",", "").replace("_", ""))
    except InvalidOperation:
        raise SettingsError(name, f"expected an amount such as 250000 or 250000.00, got {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise SettingsError(name, f"expected an amount >= 0 such as 250000, got {raw!r}")
    return value


def _database_url(name: str, raw: str) -> str:
    url = raw.strip()
    scheme = urlsplit(url).scheme
    if not (scheme.startswith("sqlite") or scheme in ("postgres", "postgresql")):
        raise SettingsError(name, f"expected a sqlite:/// or postgresql:// URL, got {redact_url(url)!r}")
    return url


def _redis_url(name: str, raw: str) -> str | None:
    url = raw.strip()
    if not url:
        return None
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(name, f"expected a redis://, rediss:// or unix:// URL, got {redact_url(url)!r}")
    return url


def _secret_key_file(var_dir: Path) -> str:
    """Read ``<var_dir>/secret.key``, creating it (mode 0600) the first time, race-free."""
    path = var_dir / SECRET_KEY_FILE
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if not key:
            raise SettingsError("ARHUB_SECRET_KEY", f"{path} is empty; delete it or set ARHUB_SECRET_KEY") from None
        return key
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


# -- loading -----------------------------------------------------------------------


def _merged_environ(environ: Mapping[str, str], env_file: str | os.PathLike | None) -> dict[str, str]:
    """``environ`` over the values of ``env_file`` (a real variable always wins)."""
    merged: dict[str, str] = {}
    if env_file is None:
        env_file = environ.get("ARHUB_ENV_FILE", ".env")
    if env_file and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(environ)
    return merged


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike | None = None,
) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``) and ``env_file``.

    ``env_file=None`` means ``$ARHUB_ENV_FILE`` or ``./.env``; pass ``""`` to read none.
    """
    env = _merged_environ(os.environ if environ is None else environ, env_file)

    def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = env.get(name)
        if raw is None or (raw.strip() == "" and parse is not _bool):
            return default
        return parse(name, raw)

    var_dir = Path(env.get("ARHUB_VAR_DIR") or "./var").expanduser().resolve()
    database_url = get("ARHUB_DATABASE_URL", _database_url, f"sqlite:///{var_dir / 'arhub.db'}")
    secret_key = (env.get("ARHUB_SECRET_KEY") or "").strip() or _secret_key_file(var_dir)
    previous = tuple(k.strip() for k in (env.get("ARHUB_SECRET_KEY_PREVIOUS") or "").split(",") if k.strip())

    return Settings(
        var_dir=var_dir,
        database_url=database_url,
        redis_url=get("ARHUB_REDIS_URL", _redis_url, None),
        secret_key=secret_key,
        secret_key_previous=previous,
        reporting_currency=get("ARHUB_REPORTING_CURRENCY", _currency, "USD"),
        timezone=get("ARHUB_TIMEZONE", _timezone, "UTC"),
        sync_interval_minutes=get("ARHUB_SYNC_INTERVAL_MINUTES", _positive_int, 15),
        salesforce_interval_minutes=get("ARHUB_SALESFORCE_INTERVAL_MINUTES", _positive_int, 30),
        sync_chunk_size=get("ARHUB_SYNC_CHUNK_SIZE", _positive_int, 2000),
        sync_commit_rows=get("ARHUB_SYNC_COMMIT_ROWS", _positive_int, 20000),
        sync_prepare=get("ARHUB_SYNC_PREPARE", _choice("process", "thread"), "process"),
        cursor_overlap_seconds=get("ARHUB_CURSOR_OVERLAP_SECONDS", _non_negative_int, 300),
        log_level=get("ARHUB_LOG_LEVEL", _log_level, "INFO"),
        require_services=get("ARHUB_REQUIRE_SERVICES", _bool, False),
        worker_shutdown_grace_seconds=get("ARHUB_WORKER_SHUTDOWN_GRACE_SECONDS", _non_negative_int, 20),
        public_url=get("ARHUB_PUBLIC_URL", _http_url, "http://127.0.0.1:5000"),
        smtp_host=get("ARHUB_SMTP_HOST", _text, "127.0.0.1"),
        smtp_port=get("ARHUB_SMTP_PORT", _positive_int, 1025),
        smtp_security=get("ARHUB_SMTP_SECURITY", _choice("none", "starttls", "tls"), "none"),
        smtp_username=get("ARHUB_SMTP_USERNAME", _text, None),
        smtp_password=get("ARHUB_SMTP_PASSWORD", _text, None),
        smtp_timeout_seconds=get("ARHUB_SMTP_TIMEOUT_SECONDS", _positive_int, 30),
        mail_from=get("ARHUB_MAIL_FROM", _text, "Accounts Receivable <ar@arhub.localhost>"),
        reply_domain=get("ARHUB_REPLY_DOMAIN", _text, "reply.arhub.localhost"),
        inbound_secret=get("ARHUB_INBOUND_SECRET", _text, None),
        imap_url=get("ARHUB_IMAP_URL", _text, None),
        dunning_plan_time=get("ARHUB_DUNNING_PLAN_TIME", _clock_time, "07:00"),
        payment_url=get("ARHUB_PAYMENT_URL", _payment_url, None),
        cash_target=get("ARHUB_CASH_TARGET", _amount, None),
    )


_lock = threading.Lock()
_cached: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, loaded once from ``os.environ`` and ``.env``."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = load_settings()
            logging.getLogger(__name__).debug("loaded %r", _cached)
        return _cached


def reset_settings() -> None:
    """Forget the cached settings (tests, or after changing the environment)."""
    global _cached
    with _lock:
        _cached = None


def env_for(settings: Settings) -> dict[str, str]:
    """The ``ARHUB_*`` variables that make a child process resolve ``settings`` again."""
    env: dict[str, Any] = {
        "ARHUB_VAR_DIR": str(settings.var_dir),
        "ARHUB_DATABASE_URL": settings.database_url,
        "ARHUB_SECRET_KEY": settings.secret_key,
        "ARHUB_REPORTING_CURRENCY": settings.reporting_currency,
        "ARHUB_TIMEZONE": settings.timezone,
        "ARHUB_SYNC_INTERVAL_MINUTES": settings.sync_interval_minutes,
        "ARHUB_SALESFORCE_INTERVAL_MINUTES": settings.salesforce_interval_minutes,
        "ARHUB_SYNC_CHUNK_SIZE": settings.sync_chunk_size,
        "ARHUB_SYNC_COMMIT_ROWS": settings.sync_commit_rows,
        "ARHUB_SYNC_PREPARE": settings.sync_prepare,
        "ARHUB_CURSOR_OVERLAP_SECONDS": settings.cursor_overlap_seconds,
        "ARHUB_LOG_LEVEL": settings.log_level,
        "ARHUB_REQUIRE_SERVICES": "1" if settings.require_services else "0",
        "ARHUB_WORKER_SHUTDOWN_GRACE_SECONDS": settings.worker_shutdown_grace_seconds,
        "ARHUB_PUBLIC_URL": settings.public_url,
        "ARHUB_SMTP_HOST": settings.smtp_host,
        "ARHUB_SMTP_PORT": settings.smtp_port,
        "ARHUB_SMTP_SECURITY": settings.smtp_security,
        "ARHUB_SMTP_TIMEOUT_SECONDS": settings.smtp_timeout_seconds,
        "ARHUB_MAIL_FROM": settings.mail_from,
        "ARHUB_REPLY_DOMAIN": settings.reply_domain,
        "ARHUB_DUNNING_PLAN_TIME": settings.dunning_plan_time,
    }
    for name, value in (("ARHUB_SMTP_USERNAME", settings.smtp_username), ("ARHUB_SMTP_PASSWORD", settings.smtp_password),
                        ("ARHUB_INBOUND_SECRET", settings.inbound_secret), ("ARHUB_IMAP_URL", settings.imap_url),
                        ("ARHUB_PAYMENT_URL", settings.payment_url)):
        if value:
            env[name] = value
    if settings.cash_target is not None:
        env["ARHUB_CASH_TARGET"] = settings.cash_target
    if settings.secret_key_previous:
        env["ARHUB_SECRET_KEY_PREVIOUS"] = ",".join(settings.secret_key_previous)
    if settings.redis_url:
        env["ARHUB_REDIS_URL"] = settings.redis_url
    return {k: str(v) for k, v in env.items()}


def templates_dir() -> Path:
    """The shipped ``templates/`` directory (emails, statements, console overrides).

    In a checkout or an editable install it is ``<repo>/templates``; in a wheel install
    it is the data-only package ``arhub_templates`` (see pyproject.toml).
    """
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if checkout.is_dir():
        return checkout
    import importlib.util

    spec = importlib.util.find_spec("arhub_templates")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("arhub templates not found: neither ./templates nor the arhub_templates package")
    return Path(next(iter(spec.submodule_search_locations)))
