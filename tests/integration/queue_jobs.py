"""Job functions enqueued by tests/integration/test_queues.py and run by a real rq worker.

They live in an importable module (not the test file) because the worker process
imports them by dotted name.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def write_pid(path: str) -> int:
    """Write this process's pid to ``path`` and return it."""
    Path(path).write_text(str(os.getpid()))
    return os.getpid()


def slow_write(path: str, seconds: float) -> str:
    """Mark ``path.started``, sleep ``seconds``, then write ``path`` (proof it finished)."""
    Path(path + ".started").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(path).write_text("done")
    return "done"


def source_names() -> list[str]:
    """Names of the Source rows the worker sees in its own database connection
    (set up by the worker's bootstrap from ARHUB_DATABASE_URL)."""
    from middleware.models import Source

    return sorted(s.name for s in Source.select())
