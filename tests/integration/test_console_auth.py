"""The console lets nobody in without a login, limits password guessing, and checks CSRF on posts."""
from __future__ import annotations

import pytest

from console import create_app
from middleware.people import create_user, set_password
from tests.support.console import PASSWORD
from tests.support.console import csrf as _csrf



@pytest.fixture
def app(db, redis_url):
    create_user("ada@example.com", "Ada Admin", "admin", PASSWORD, actor="test")
    create_user("vic@example.com", "Vic Viewer", "viewer", PASSWORD, actor="test")
    return create_app()


def _login(client, email, password=PASSWORD):
    token = _csrf(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def test_every_page_redirects_to_login_until_signed_in(app):
    """The home page sends a stranger to /login, which then brings them back where they were going."""
    client = app.test_client()
    resp = client.get("/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    resp = _login(client, "ada@example.com")
    assert resp.status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert "Ada Admin" in page and "admin" in page


def test_wrong_password_is_refused_and_guessing_is_rate_limited(app):
    """Five wrong passwords for one email from one address: the sixth try, even a right one, gets 429."""
    client = app.test_client()
    for _ in range(5):
        resp = _login(client, "ada@example.com", "wrong password!")
        assert resp.status_code == 401 and "Wrong email or password" in resp.get_data(as_text=True)
    resp = _login(client, "ada@example.com")
    assert resp.status_code == 429
    assert "Too many failed logins" in resp.get_data(as_text=True)
    # another user from the same address is not locked out by Ada's failures
    assert _login(client, "vic@example.com").status_code == 302


def test_a_post_without_the_csrf_token_is_refused(app):
    """Logging in (or anything else) without the form's CSRF token answers 400 and signs nobody in."""
    client = app.test_client()
    resp = client.post("/login", data={"email": "ada@example.com", "password": PASSWORD})
    assert resp.status_code == 400
    assert client.get("/").status_code == 302


def test_a_password_change_ends_existing_sessions(app):
    """After the password is reset, the old session cookie no longer opens the console."""
    client = app.test_client()
    _login(client, "ada@example.com")
    assert client.get("/").status_code == 200
    set_password("ada@example.com", "another long password", actor="test")
    assert client.get("/").status_code == 302


def test_logout_needs_a_post_with_the_token(app):
    """A GET to /logout does nothing; the page's logout form signs the user out."""
    client = app.test_client()
    _login(client, "ada@example.com")
    assert client.get("/logout").status_code == 405
    token = _csrf(client.get("/").get_data(as_text=True))
    client.post("/logout", data={"csrf_token": token})
    assert client.get("/").status_code == 302


def test_session_cookie_is_http_only_and_not_sent_cross_site(app):
    """The session cookie carries HttpOnly and SameSite=Lax."""
    client = app.test_client()
    resp = _login(client, "ada@example.com")
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if c.startswith("arhub_session="))
    assert "arhub_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_an_admin_edit_of_a_user_is_audited_with_before_and_after(app):
    """Changing a user's role in the console writes who did it, and the role before and after."""
    from middleware.models import AuditLog, User

    client = app.test_client()
    _login(client, "ada@example.com")
    vic = User.get(User.email == "vic@example.com")
    form = client.get(f"/users/edit/?id={vic.id}").get_data(as_text=True)
    resp = client.post(f"/users/edit/?id={vic.id}", data={
        "csrf_token": _csrf(form), "name": "Vic Viewer", "role": "collector", "active": "y",
        "timezone": "UTC", "locale": "en", "away_until": "", "cover": "__None"})
    assert resp.status_code == 302
    assert User.get_by_id(vic.id).role == "collector"
    entry = AuditLog.select().where(AuditLog.action == "user.updated").get()
    assert entry.actor == "ada@example.com" and entry.object_id == str(vic.id)
    assert entry.before["role"] == "viewer" and entry.after["role"] == "collector"
    assert "password_hash" not in entry.after


def test_an_edit_without_the_csrf_token_changes_nothing(app):
    """A forged form post (no token) to the users admin is refused and the role stays."""
    from middleware.models import User

    client = app.test_client()
    _login(client, "ada@example.com")
    vic = User.get(User.email == "vic@example.com")
    resp = client.post(f"/users/edit/?id={vic.id}", data={"name": "Vic", "role": "admin", "active": "y"})
    assert resp.status_code == 400
    assert User.get_by_id(vic.id).role == "viewer"
