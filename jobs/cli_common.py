"""What the ``arhub`` CLI modules share: the rich consoles and the ``bootstrap()`` shortcut."""
from __future__ import annotations

from rich.console import Console

console = Console(stderr=False)
err = Console(stderr=True)


def _ctx(migrate: bool = False):
    from jobs.bootstrap import bootstrap

    return bootstrap(migrate=migrate)
