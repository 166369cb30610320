"""Browser tests: the console served on loopback, driven by Playwright in Debian's Chromium.

``console_url`` serves ``create_app()`` over real HTTP against the test's database and Redis;
``page`` is a fresh browser context per test (its own cookies); when a test fails, a screenshot
of the page is kept under ``test-artifacts/screenshots/``. ``login(page, url, email)`` signs in
through the login form like a person would.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import service_missing
from tests.support.console import PASSWORD
from tests.support.wsgi import Servers

CHROMIUM = os.environ.get("ARHUB_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# Chromium as root in a closed network: no sandbox (root), no GPU, nothing phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        service_missing("Chromium", f"{CHROMIUM} not found (Debian package chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        service_missing("Playwright", str(exc))
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
        try:
            tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        except Exception as exc:  # the page may be gone; the test's own failure is what matters
            print(f"screenshot failed: {exc}")
    context.close()


@pytest.fixture
def console_app(db, redis_url):
    from console import create_app

    return create_app()


@pytest.fixture
def console_url(console_app):
    servers = Servers()
    yield servers(console_app)
    servers.stop()


@pytest.fixture
def make_user(db):
    """``make_user(email, role, name=None)``: a user who can log in with ``PASSWORD``."""
    from middleware.people import create_user

    def make(email: str, role: str, name: str | None = None):
        return create_user(email, name or email.split("@")[0].title(), role, PASSWORD, actor="test")
    return make


def login(page, base_url: str, email: str, password: str = PASSWORD) -> None:
    """Sign in through the login form and wait for the console's navigation bar."""
    page.goto(f"{base_url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_test_id("signed-in-as").wait_for()
