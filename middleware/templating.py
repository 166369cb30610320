"""Rendering of admin-edited and shipped templates, always in Jinja2's sandbox.

Admins edit email templates in the console, so a template is untrusted code: it renders in a
``SandboxedEnvironment`` (no attribute access to internals, no ``__class__`` walks), with
autoescaping for HTML, ``StrictUndefined`` (a typo is an error that names the variable, not
an empty string), and formatting filters backed by Babel:

* ``money(amount, currency)``: ``1.234,56 €`` in the template's locale, the currency's
  own minor units (JPY has none);
* ``date``: ``12 Nov 2026`` / ``12.11.2026`` by locale (``format`` = short|medium|long);
* ``percent``, ``number``.

Amounts are formatted from ``Decimal`` exactly (never through float).
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel.core import Locale, UnknownLocaleError
from babel.dates import format_date as _babel_date
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, pass_context, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from .fx import round_money


class TemplateRenderError(ValueError):
    """A template that cannot render: names the template and the cause (line when known)."""


@lru_cache(maxsize=512)
def parse_locale(locale: str | None, default: str = "en") -> str:
    """A Babel locale identifier (``de_DE``, ``fr``) or ``default`` when unknown."""
    if not locale:
        return default
    try:
        return str(Locale.parse(locale.replace("-", "_")))
    except (UnknownLocaleError, ValueError):
        return default


def format_money(amount: Decimal | int | str | None, currency: str, locale: str = "en") -> str:
    """``amount`` in ``currency`` for ``locale``, with the currency's own decimals."""
    if amount is None:
        return ""
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    # rounded half up to the currency's minor unit first (the glossary's rule; Babel alone rounds half even)
    return format_currency(round_money(value, currency), currency, locale=parse_locale(locale))


def format_day(value: date | datetime | None, fmt: str = "medium", locale: str = "en") -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.date()
    return _babel_date(value, format=fmt, locale=parse_locale(locale))


def _env(loader=None, *, html: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=loader, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        autoescape=select_autoescape(["html", "htm"], default_for_string=html, default=html))
    return env


def environment(locale: str = "en", *, html: bool = False, loader=None) -> SandboxedEnvironment:
    """A sandboxed environment whose filters format for ``locale``."""
    env = _env(loader, html=html)
    loc = parse_locale(locale)
    env.filters["money"] = lambda amount, currency: format_money(amount, currency, loc)
    env.filters["date"] = lambda value, fmt="medium": format_day(value, fmt, loc)
    env.filters["number"] = lambda value, fmt=None: "" if value is None else format_decimal(
        value if isinstance(value, Decimal) else Decimal(str(value)), format=fmt, locale=loc)
    env.filters["percent"] = lambda value: "" if value is None else format_percent(
        value if isinstance(value, Decimal) else Decimal(str(value)), locale=loc)
    env.globals["locale"] = loc
    return env


@lru_cache(maxsize=512)
def compiled(source: str, html: bool = False):
    """``source`` compiled once per process for every locale (the ``money``, ``date``, ``number``
    and ``percent`` filters format for the render's locale): a forked work horse inherits what
    its parent compiled, and a process never compiles the same text twice. An edited template is
    new text: compiled on first use."""
    env = _env(None, html=html)
    env.filters["money"] = pass_context(lambda ctx, amount, currency: format_money(amount, currency, ctx[_LOCALE]))
    env.filters["date"] = pass_context(lambda ctx, value, fmt="medium": format_day(value, fmt, ctx[_LOCALE]))
    env.filters["number"] = pass_context(lambda ctx, value, fmt=None: "" if value is None else format_decimal(
        value if isinstance(value, Decimal) else Decimal(str(value)), format=fmt, locale=ctx[_LOCALE]))
    env.filters["percent"] = pass_context(lambda ctx, value: "" if value is None else format_percent(
        value if isinstance(value, Decimal) else Decimal(str(value)), locale=ctx[_LOCALE]))
    return env.from_string(source)


_LOCALE = "_arhub_render_locale"


def render_string(source: str, context: dict[str, Any], *, locale: str = "en", html: bool = False,
                  name: str = "template") -> str:
    """Render an admin-edited template text in the sandbox. Errors name ``name`` and the cause."""
    try:
        loc = parse_locale(locale)
        return compiled(source, html).render({"locale": loc, **context, _LOCALE: loc})
    except TemplateError as exc:
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise TemplateRenderError(f"{name}{line}: {exc.message or exc}") from exc


def file_environment(directory: str | Path, locale: str = "en", *, html: bool = True) -> SandboxedEnvironment:
    """A sandboxed environment loading shipped templates from ``directory`` (statements)."""
    return environment(locale, html=html, loader=FileSystemLoader(str(directory)))
