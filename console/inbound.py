"""``POST /inbound/email``: customer replies pushed by a mail provider's inbound webhook or a relay.

The body is the raw RFC 5322 message (``Content-Type: message/rfc822``; ``text/plain`` and
``application/octet-stream`` are read the same way), or a form with the message in the field
(or file) ``message``. The request authenticates itself, not a console login:

* ``X-Arhub-Timestamp``: the send time in Unix seconds, within 5 minutes of ours (either way);
* ``X-Arhub-Signature: sha256=<hex>``: HMAC-SHA256 with ``ARHUB_INBOUND_SECRET`` over
  ``<timestamp>.`` followed by the exact request body bytes (:func:`sign`).

The timestamp is inside the signed bytes, so an old request cannot be replayed with a fresh
timestamp; a replay inside the window stores nothing new (Message-IDs are stored once).

Answers (JSON): 202 ``{"id", "message_id", "status", "routed_to", "customer_id", "matched_by",
"duplicate"}``; 401 ``{"error": ...}`` for a missing, malformed, stale or wrong signature; 503
when ``ARHUB_INBOUND_SECRET`` is not set (the endpoint is off); 400 for an empty message; 413
over 25 MiB; 415 for another content type.
"""
from __future__ import annotations

import hashlib
import hmac
import time

from flask import Blueprint, Flask, current_app, jsonify, request

from middleware.inbox import InboxError, ingest

__all__ = ["MAX_MESSAGE_BYTES", "TIMESTAMP_TOLERANCE_SECONDS", "bp", "init_app", "sign"]

MAX_MESSAGE_BYTES = 25 * 1024 * 1024
TIMESTAMP_TOLERANCE_SECONDS = 300
_RAW_TYPES = {"message/rfc822", "text/plain", "application/octet-stream"}
_FORM_TYPES = {"multipart/form-data", "application/x-www-form-urlencoded"}

bp = Blueprint("inbound", __name__)


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Arhub-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _error(status: int, message: str):
    return jsonify(error=message), status


def _authentication_error(secret: str, body: bytes) -> str | None:
    """Why the request is not authentic, or None when it is."""
    timestamp = request.headers.get("X-Arhub-Timestamp", "").strip()
    signature = request.headers.get("X-Arhub-Signature", "").strip()
    if not timestamp:
        return "missing X-Arhub-Timestamp header (Unix seconds)"
    if not signature:
        return "missing X-Arhub-Signature header (sha256=<hex HMAC of '<timestamp>.<body>'>)"
    try:
        sent = int(timestamp)
    except ValueError:
        return "X-Arhub-Timestamp is not an integer number of Unix seconds"
    if abs(time.time() - sent) > TIMESTAMP_TOLERANCE_SECONDS:
        return (f"X-Arhub-Timestamp is more than {TIMESTAMP_TOLERANCE_SECONDS // 60} minutes from the server's "
                "clock (a replayed request, or clock skew)")
    if not signature.startswith("sha256="):
        return "X-Arhub-Signature must be sha256=<hex>"
    if not hmac.compare_digest(signature.encode(), sign(secret, timestamp, body).encode()):
        return "X-Arhub-Signature does not match the body (wrong secret, or the body was altered)"
    return None


@bp.post("/inbound/email")
def inbound_email():
    """Receive one reply: authenticate, store, match and route it (middleware.inbox.ingest)."""
    secret = current_app.config["ARHUB_SETTINGS"].inbound_secret
    if not secret:
        return _error(503, "inbound email is disabled: ARHUB_INBOUND_SECRET is not set")
    if request.content_length is not None and request.content_length > MAX_MESSAGE_BYTES:
        return _error(413, f"message larger than {MAX_MESSAGE_BYTES} bytes")
    request.max_content_length = MAX_MESSAGE_BYTES
    body = request.get_data(cache=True)  # the exact bytes that were signed; form parsing reads the cache
    problem = _authentication_error(secret, body)
    if problem:
        return _error(401, problem)
    if request.mimetype in _FORM_TYPES:
        upload = request.files.get("message")
        raw = upload.read() if upload else request.form.get("message", "").encode("utf-8")
    elif request.mimetype in _RAW_TYPES or not request.mimetype:
        raw = body
    else:
        return _error(415, f"unsupported Content-Type {request.mimetype!r}: send message/rfc822, "
                           "or a form with the field 'message'")
    try:
        message, created = ingest(raw)
    except InboxError as exc:
        return _error(400, str(exc))
    return jsonify(id=message.id, message_id=message.message_id, status=message.status,
                   routed_to=message.routed_to, customer_id=message.customer_id, matched_by=message.matched_by,
                   duplicate=not created), 202


#: The console's login check must let this endpoint through: it authenticates by signature.
inbound_email.login_exempt = True  # type: ignore[attr-defined]


def init_app(app: Flask) -> None:
    """Register the blueprint; exempt it from CSRF when Flask-WTF's CSRFProtect is already set up
    (a CSRFProtect added later must ``csrf.exempt(console.inbound.bp)``)."""
    app.register_blueprint(bp)
    csrf = app.extensions.get("csrf")
    if csrf is not None:
        csrf.exempt(bp)
