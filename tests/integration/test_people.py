"""Users (middleware.people) on SQLite and PostgreSQL: passwords are stored only as salted hashes and
checked, emails and roles are validated, and what the audit log keeps about a user never includes a secret."""
from __future__ import annotations

import pytest

from middleware import people
from middleware.models import AuditLog, User

PASSWORD = "correct horse battery staple"


def test_the_password_is_stored_only_as_a_salted_hash(db):
    """The stored value is a scrypt hash that does not contain the password; two users with the same
    password get different hashes; the right password verifies and a wrong one does not."""
    people.create_user("Anna@Corp.com", "Anna", "admin", PASSWORD)
    people.create_user("bob@corp.com", "Bob", "collector", PASSWORD)
    anna, bob = User.get(User.email == "anna@corp.com"), User.get(User.email == "bob@corp.com")

    assert anna.password_hash.startswith("scrypt:") and PASSWORD not in anna.password_hash
    assert anna.password_hash != bob.password_hash
    assert people.verify_password("ANNA@corp.com ", PASSWORD)
    assert not people.verify_password("anna@corp.com", PASSWORD.upper())
    assert not people.verify_password("nobody@corp.com", PASSWORD)
    assert people.authenticate("anna@corp.com", PASSWORD).role == "admin"


def test_set_password_replaces_the_old_one(db):
    """After a password change only the new password verifies."""
    people.create_user("anna@corp.com", "Anna", "collector", PASSWORD)
    people.set_password("anna@corp.com", "a brand new secret")
    assert people.verify_password("anna@corp.com", "a brand new secret")
    assert not people.verify_password("anna@corp.com", PASSWORD)


def test_no_password_and_inactive_users_cannot_log_in(db):
    """A user created without a password, and a deactivated one, never verify."""
    people.create_user("new@corp.com", "New", "viewer")
    people.create_user("gone@corp.com", "Gone", "collector", PASSWORD)
    User.update(active=False).where(User.email == "gone@corp.com").execute()
    assert not people.verify_password("new@corp.com", "")
    assert not people.verify_password("gone@corp.com", PASSWORD)


def test_the_audit_log_never_holds_the_password_or_its_hash(db):
    """Creating a user and changing their password are audited without the secret or its hash."""
    people.create_user("anna@corp.com", "Anna", "admin", PASSWORD, actor="root@corp.com")
    people.set_password("anna@corp.com", "another long secret", actor="anna@corp.com")
    stored = User.get(User.email == "anna@corp.com").password_hash
    rows = list(AuditLog.select().where(AuditLog.object_type == "user").order_by(AuditLog.id))
    assert [(r.action, r.actor) for r in rows] == [("user.create", "root@corp.com"), ("user.password", "anna@corp.com")]
    text = " ".join(f"{r.before} {r.after}" for r in rows)
    assert PASSWORD not in text and "another long secret" not in text and stored not in text


@pytest.mark.parametrize("email, role, password, message", [
    ("not-an-email", "collector", None, "not an email address"),
    ("anna@corp.com", "superuser", None, "unknown role"),
    ("anna@corp.com", "collector", "short", "at least 8 characters"),
])
def test_bad_users_are_refused(db, email, role, password, message):
    """Malformed emails, unknown roles and short passwords are refused and nothing is created."""
    with pytest.raises(people.PeopleError, match=message):
        people.create_user(email, "Anna", role, password)
    assert User.select().count() == 0


def test_an_email_is_one_user(db):
    """The same email in another case is the same user: a second one is refused."""
    people.create_user("anna@corp.com", "Anna", "collector")
    with pytest.raises(people.PeopleError, match="already exists"):
        people.create_user("ANNA@corp.com", "Anna Again", "admin")
