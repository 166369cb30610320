"""Composition root for workers, the cron process and the CLI (the web has ``create_app``).

``bootstrap()`` is the one place a non-web process wires itself up: settings,
logging with secret redaction, the database proxy. It imports nothing from Flask.
It is idempotent, so a job, a worker and the CLI may all call it.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from middleware.secrets import install_log_redaction
from middleware.settings import Settings, get_settings

if TYPE_CHECKING:
    import peewee
    import redis
    from rq import Queue

__all__ = ["Context", "bootstrap", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Context:
    """What a worker or CLI command needs: settings, the database, Redis on demand."""

    settings: Settings
    db: "peewee.Database"

    def redis(self) -> "redis.Redis":
        from jobs.queues import get_redis

        return get_redis(self.settings)

    def queue(self, name: str = "default") -> "Queue":
        from jobs.queues import get_queue

        return get_queue(name, self.settings)


def configure_logging(settings: Settings) -> None:
    """Root logging at ``settings.log_level`` to stderr, every handler redacting secrets."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # libraries that narrate every step at INFO (WeasyPrint's layout steps, aiosmtpd's sessions):
    # their warnings still show; ARHUB_LOG_LEVEL=DEBUG brings the rest back
    if root.level > logging.DEBUG:
        for chatty in ("weasyprint.progress", "mail.log"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    install_log_redaction(settings, logger=root)


def bootstrap(settings: Settings | None = None, *, migrate: bool = False, logging_: bool = True) -> Context:
    """Wire up a worker/CLI process and return its :class:`Context`.

    ``migrate=True`` also applies pending schema migrations (the CLI's ``demo`` and
    ``migrate`` commands; workers never migrate).
    """
    from middleware.db import connect

    s = settings or get_settings()
    if logging_:
        configure_logging(s)
    db = connect(s.database_url)
    if migrate:
        from middleware.migrations import upgrade

        applied = upgrade(db)
        if applied:
            logging.getLogger(__name__).info("applied migrations: %s", ", ".join(map(str, applied)))
    return Context(settings=s, db=db)
