"""In a real browser: signing in, seeing who you are, and a viewer refused an admin page."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import login

pytestmark = pytest.mark.e2e


def test_an_admin_logs_in_and_out(page, console_url, make_user):
    """The login form signs the admin in; the navigation shows name and role; logging out returns to /login."""
    make_user("ada@example.com", "admin", "Ada Admin")
    page.goto(console_url + "/")
    assert "/login" in page.url  # nothing without a login
    login(page, console_url, "ada@example.com")
    assert page.get_by_test_id("signed-in-as").inner_text() == "Ada Admin · admin"
    page.get_by_role("button", name="Log out").click()
    page.get_by_text("You are logged out.").wait_for()
    page.goto(console_url + "/users/")
    assert "/login" in page.url


def test_a_wrong_password_shows_an_error(page, console_url, make_user):
    """A mistyped password keeps the user on the login page with a message."""
    make_user("ada@example.com", "admin")
    page.goto(console_url + "/login")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Wrong email or password.").wait_for()


def test_a_viewer_is_refused_the_users_admin(page, console_url, make_user):
    """A viewer does not see the Admin menu, and opening the users page directly answers 403."""
    make_user("vic@example.com", "viewer", "Vic Viewer")
    login(page, console_url, "vic@example.com")
    assert page.get_by_role("link", name="Users").count() == 0
    response = page.goto(console_url + "/users/")
    assert response.status == 403
    assert "Your role (viewer) may not open this page" in page.content()
