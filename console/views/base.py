"""Base classes for console views: login required, a permission to see the view, CSRF on
every form (Flask-WTF's token, which the app-wide ``CSRFProtect`` checks on every POST)."""
from __future__ import annotations

from flask import abort, redirect, request, url_for
from flask_admin import AdminIndexView, BaseView
from flask_admin.contrib.peewee import ModelView
from flask_admin.form import BaseForm
from flask_login import current_user
from flask_wtf import FlaskForm

from console.auth import PERMISSIONS, can

__all__ = ["SecureForm", "SecureIndexView", "SecureModelView", "SecureView"]


class SecureForm(BaseForm):
    """Flask-Admin's form base with Flask-WTF's CSRF token (field ``csrf_token``)."""

    Meta = FlaskForm.Meta


class _Protected:
    """Log in to see the view; ``permission`` (see ``console.auth.PERMISSIONS``) to use it."""

    permission = "view"

    def is_accessible(self) -> bool:
        return can(self.permission)

    def is_visible(self) -> bool:
        return self.is_accessible()

    def inaccessible_callback(self, name, **kwargs):
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        abort(403, description=f"Your role ({current_user.role}) may not open this page: it needs "
                               f"{' or '.join(sorted(PERMISSIONS[self.permission]))}.")


class SecureView(_Protected, BaseView):
    """A custom page (``@expose`` methods)."""


class SecureIndexView(_Protected, AdminIndexView):
    """The home page (the dashboard)."""


class SecureModelView(_Protected, ModelView):
    """A list/edit view of a peewee model. Reading needs ``permission``; creating, editing and
    deleting need ``edit_permission`` (``manage``: admins) unless a view says otherwise."""

    edit_permission = "manage"
    form_base_class = SecureForm
    page_size = 50
    can_set_page_size = True

    @property
    def can_create(self) -> bool:  # type: ignore[override]
        return self._can_create and can(self.edit_permission)

    @property
    def can_edit(self) -> bool:  # type: ignore[override]
        return self._can_edit and can(self.edit_permission)

    @property
    def can_delete(self) -> bool:  # type: ignore[override]
        return self._can_delete and can(self.edit_permission)

    _can_create = True
    _can_edit = True
    _can_delete = False

    # -- audit: who changed what, before and after (``audit_type``: the object type logged) --
    audit_type: str | None = None
    audit_exclude: tuple[str, ...] = ("password_hash", "created_at", "updated_at")

    def _audit_row(self, model) -> dict:
        from playhouse.shortcuts import model_to_dict

        row = model_to_dict(model, recurse=False)
        return {k: (v if isinstance(v, (int, bool, type(None))) else str(v))
                for k, v in row.items() if k not in self.audit_exclude}

    def on_model_change(self, form, model, is_created) -> None:
        if self.audit_type and not is_created and model.get_id() is not None:
            stored = type(model).get_or_none(type(model)._meta.primary_key == model.get_id())
            self._audit_before = self._audit_row(stored) if stored is not None else None
        else:
            self._audit_before = None

    def after_model_change(self, form, model, is_created) -> None:
        if self.audit_type:
            self._audit("created" if is_created else "updated", model, self._audit_before, self._audit_row(model))

    def after_model_delete(self, model) -> None:
        if self.audit_type:
            self._audit("deleted", model, self._audit_row(model), None)

    def _audit(self, verb: str, model, before, after) -> None:
        from middleware.models import AuditLog

        AuditLog.create(actor=current_user.email, action=f"{self.audit_type}.{verb}",
                        object_type=self.audit_type, object_id=str(model.get_id()), before=before, after=after)
