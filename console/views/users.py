"""Users (admins only): who may log in, with which role, and who covers whom while away.

Passwords are never shown or edited here: ``arhub users password`` sets them (hashed)."""
from __future__ import annotations

from console.views.base import SecureModelView
from middleware.models import User

MENU_ORDER = 90


class UserView(SecureModelView):
    permission = "manage"
    audit_type = "user"
    _can_create = False
    column_list = ("email", "name", "role", "active", "timezone", "locale", "away_until", "cover")
    column_searchable_list = ("email", "name")
    column_filters = ("role", "active")
    form_columns = ("name", "role", "active", "timezone", "locale", "away_until", "cover")
    form_choices = {"role": [("admin", "admin"), ("collector", "collector"), ("viewer", "viewer")]}


def register(admin) -> None:
    admin.add_view(UserView(User, name="Users", category="Admin", endpoint="users"))
