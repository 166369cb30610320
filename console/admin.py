"""Flask-Admin for the console: the admin object, its theme and the views of ``console/views``."""
from __future__ import annotations

import importlib
import pkgutil

from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme

import console.views

__all__ = ["init_app", "view_modules"]


def view_modules() -> list:
    """The modules of ``console.views`` that register views, in menu order."""
    found = []
    for info in pkgutil.iter_modules(console.views.__path__):
        module = importlib.import_module(f"console.views.{info.name}")
        if callable(getattr(module, "register", None)):
            found.append(module)
    return sorted(found, key=lambda m: (getattr(m, "MENU_ORDER", 100), m.__name__))


def init_app(app: Flask) -> Admin:
    from console.views.base import SecureIndexView

    modules = view_modules()
    index_view = next((m.index_view() for m in modules if callable(getattr(m, "index_view", None))), None)
    admin = Admin(app, name="arhub", url="/",
                  index_view=index_view or SecureIndexView(url="/", name="Home", template="console/home.html"),
                  theme=Bootstrap4Theme(base_template="console/master.html", fluid=True))
    for module in modules:
        module.register(admin)
    app.extensions["arhub_admin"] = admin
    return admin
