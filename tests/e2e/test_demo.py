"""``arhub demo``: the whole hub on its embedded defaults, with the console open and an admin login printed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAGES = ("/", "/customers/", "/customers/?sort=-overdue", "/customers/?bucket=61-90", "/workspace/",
         "/campaigns/", "/templates/", "/mappings/", "/matching/", "/ops/sync/", "/ops/queues/", "/ops/audit/",
         "/collected/")


def _login(base: str, email: str, password: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', session.get(base + "/login").text).group(1)
    resp = session.post(base + "/login", data={"email": email, "password": password, "csrf_token": token})
    assert resp.status_code == 200 and resp.url.rstrip("/") == base, f"{email} could not log in"
    return session


def test_demo_serves_the_console_with_the_printed_login_and_every_page_answers(tmp_path):
    """`arhub demo` prints the console's address and an admin password that logs in; after the
    first sync and dunning round, every console page answers for the admin, a collector and a
    viewer without a server error, and the customers list shows the synced book."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHUB_")}
    env.update(ARHUB_ENV_FILE="", ARHUB_VAR_DIR=str(tmp_path / "var"), ARHUB_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "demo", "--customers", "60", "--invoices", "400"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "keep running" in line:
                break
        output = "".join(lines)
        assert "keep running" in output, output[-3000:]
        flat = " ".join(output.split())
        base = re.search(r"console on (http://127\.0\.0\.1:\d+)", flat).group(1)
        password = re.search(r"admin@arhub\.demo with password (\S+)", flat).group(1)
        assert "the SMTP sink received" in flat
        for email in ("admin@arhub.demo", "ben@arhub.demo", "vera@arhub.demo"):
            session = _login(base, email, password)
            for path in PAGES:
                resp = session.get(base + path)
                assert resp.status_code == 200, f"{email} {path}: {resp.status_code}"
        listing = _login(base, "admin@arhub.demo", password).get(base + "/customers/").text
        assert len(re.findall(r'href="/customers/\d+"', listing)) >= 20  # the synced customers, linked
        # SIGTERM to the demo alone: it stops its worker, sandboxes and embedded Redis on the way out
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 0, "".join(lines)[-2000:] + proc.stdout.read()[-3000:]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "the demo left processes running (worker or embedded Redis)"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
