"""Who may use the console, and what each role may do.

* **Login** (``/login``, ``/logout``): Flask-Login over :class:`middleware.models.User`; the
  password is checked by :func:`middleware.people.authenticate` (werkzeug scrypt hashes, same work
  for an unknown email). The session remembers ``<user id>.<fingerprint of the hash>``, so a
  password change or a deactivation ends every session of that user.
* **Rate limit**: failed logins are counted in Redis per address and per (address, email);
  5 failures of one email from one address, or 20 from one address, within 15 minutes answer 429
  until the window passes. A success clears the (address, email) counter.
* **Roles**: ``admin`` > ``collector`` > ``viewer``. :data:`PERMISSIONS` names what each action
  needs; views declare ``permission`` (to see them) and check :func:`can` before each action.
"""
from __future__ import annotations

import hashlib
from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import DataRequired

from middleware.models import Role, User

__all__ = ["PERMISSIONS", "ConsoleUser", "can", "init_app", "login_manager", "require"]

# permission -> the roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "view": frozenset({Role.ADMIN.value, Role.COLLECTOR.value, Role.VIEWER.value}),  # read anything
    "work": frozenset({Role.ADMIN.value, Role.COLLECTOR.value}),  # notes, pauses, promises, approvals, sends
    "manage": frozenset({Role.ADMIN.value}),  # campaigns, mappings, templates, users, matching, ops actions
}

FAILURES_PER_EMAIL = 5
FAILURES_PER_ADDRESS = 20
FAILURE_WINDOW_SECONDS = 15 * 60

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please log in to use arhub."
login_manager.login_message_category = "info"
login_manager.session_protection = "strong"

bp = Blueprint("auth", __name__)


class ConsoleUser(UserMixin):
    """The signed-in person, detached from the database row it was read from."""

    def __init__(self, user: User):
        self.id = user.id
        self.email = user.email
        self.name = user.name
        self.role = user.role
        self.timezone = user.timezone
        self.locale = user.locale
        self._fingerprint = _fingerprint(user)

    def get_id(self) -> str:
        return f"{self.id}.{self._fingerprint}"

    def can(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


def _fingerprint(user: User) -> str:
    return hashlib.sha256(f"{user.password_hash}|{user.role}|{user.active}".encode()).hexdigest()[:16]


@login_manager.user_loader
def _load_user(user_id: str):
    ident, _, fingerprint = (user_id or "").partition(".")
    if not ident.isdigit():
        return None
    user = User.get_or_none((User.id == int(ident)) & (User.active == True))  # noqa: E712
    if user is None or not user.password_hash or _fingerprint(user) != fingerprint:
        return None
    return ConsoleUser(user)


def can(permission: str) -> bool:
    """Whether the signed-in user holds ``permission`` (see :data:`PERMISSIONS`)."""
    return bool(current_user.is_authenticated and current_user.can(permission))


def require(permission: str):
    """Decorator for console routes: log in first, then hold ``permission`` (else 403)."""
    def decorate(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if not can(permission):
                abort(403, description=f"Your role ({current_user.role}) may not do this: it needs "
                                       f"{' or '.join(sorted(PERMISSIONS[permission]))}.")
            return view(*args, **kwargs)
        return wrapped
    return decorate


# -- rate limiting ------------------------------------------------------------------------


def _limiter_keys(email: str) -> tuple[str, str]:
    address = request.remote_addr or "?"
    digest = hashlib.sha256(email.encode()).hexdigest()[:24]  # never the email itself in Redis keys
    return f"arhub:login-fail:addr:{address}", f"arhub:login-fail:user:{address}:{digest}"


def _redis():
    from jobs.queues import get_redis

    return get_redis()


def _blocked_for(email: str) -> int:
    """Seconds until this address may try this email again (0: it may now)."""
    client = _redis()
    by_address, by_user = _limiter_keys(email)
    counts = client.mget(by_address, by_user)
    over = [key for key, count, limit in ((by_address, counts[0], FAILURES_PER_ADDRESS),
                                          (by_user, counts[1], FAILURES_PER_EMAIL))
            if count is not None and int(count) >= limit]
    return max((max(client.ttl(key), 1) for key in over), default=0)


def _record_failure(email: str) -> None:
    pipe = _redis().pipeline()
    for key in _limiter_keys(email):
        pipe.incr(key)
        pipe.expire(key, FAILURE_WINDOW_SECONDS, nx=True)
    pipe.execute()


def _clear_failures(email: str) -> None:
    _redis().delete(_limiter_keys(email)[1])


# -- views --------------------------------------------------------------------------------


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])
    remember = BooleanField("Keep me signed in on this computer")


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host): never an open redirect."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("admin.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login page; on success, back to where the user was going."""
    from middleware.people import authenticate

    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        wait = _blocked_for(email)
        if wait:
            minutes = max(1, (wait + 59) // 60)
            flash(f"Too many failed logins from this address. Try again in {minutes} minute"
                  f"{'s' if minutes > 1 else ''}.", "danger")
            return render_template("console/login.html", form=form), 429
        user = authenticate(email, form.password.data)
        if user is None:
            _record_failure(email)
            flash("Wrong email or password.", "danger")
            status = 401
        else:
            _clear_failures(email)
            login_user(ConsoleUser(user), remember=bool(form.remember.data))
            return redirect(_safe_next(request.args.get("next")))
    elif request.method == "POST":
        status = 400
    return render_template("console/login.html", form=form), status


@bp.route("/logout", methods=["POST"])
def logout():
    """Log out (a POST with the CSRF token: a link elsewhere cannot log anyone out)."""
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    app.register_blueprint(bp)

    @app.errorhandler(403)
    def _forbidden(exc):
        return render_template("console/error.html", code=403, title="Not allowed",
                               message=getattr(exc, "description", "")), 403

    @app.context_processor
    def _permissions():
        return {"can": can}
