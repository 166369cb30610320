"""jobs/bootstrap.py: the composition root for workers and the CLI."""
from __future__ import annotations

import os
import subprocess
import sys

from jobs.bootstrap import Context, bootstrap
from middleware.db import database
from middleware.migrations import current_version, head


def test_bootstrap_binds_the_database_and_migrates_on_request(settings):
    """bootstrap(migrate=True) binds middleware.db.database to ARHUB_DATABASE_URL and
    brings a fresh database to the head migration; a second call applies nothing."""
    ctx = bootstrap(settings, migrate=True)
    assert isinstance(ctx, Context)
    assert ctx.settings is settings
    assert database.obj is ctx.db
    assert current_version(ctx.db) == head()
    assert (settings.var_dir / "arhub.db").exists()
    again = bootstrap(settings, migrate=True)
    assert current_version(again.db) == head()


def test_context_gives_redis_and_queues(redis_url, settings):
    """The context hands out the configured Redis and the named queues."""
    ctx = bootstrap(settings, logging_=False)
    assert ctx.redis().ping()
    assert ctx.queue("dunning").name == "dunning"


def test_bootstrap_imports_no_flask_and_redacts_logs(tmp_path):
    """In a fresh process bootstrap() pulls in no Flask, and its log handler
    redacts the secret key and password= values."""
    code = (
        "import logging, sys\n"
        "from jobs.bootstrap import bootstrap\n"
        "bootstrap()\n"
        "assert 'flask' not in sys.modules, sorted(m for m in sys.modules if m.startswith('flask'))\n"
        "logging.getLogger('arhub.x').warning('key=%s password=hunter22', 'sekrit-key-123')\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")},
        "ARHUB_VAR_DIR": str(tmp_path),
        "ARHUB_ENV_FILE": "",
        "ARHUB_SECRET_KEY": "sekrit-key-123",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "WARNING arhub.x: key=*** password=***" in out.stderr
    assert "sekrit-key-123" not in out.stderr and "hunter22" not in out.stderr
