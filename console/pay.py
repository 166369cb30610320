"""``GET /pay/<token>``: the public page behind the pay link of statements and dunning emails.

No login: the token is the customer's part of the link, ``<customer id>.<HMAC-SHA256>`` made by
``middleware.statements.customer_token`` with ``ARHUB_SECRET_KEY`` (96 bits of MAC: not
guessable, not forgeable for another customer id) and checked by ``verify_customer_token``
(current key, then ``ARHUB_SECRET_KEY_PREVIOUS``: rotating the key keeps the links already sent
working while the old key is listed, and revokes them when it is dropped). The link does not
expire: it is printed on PDFs and in emails customers keep.

The page shows what the statement shows, from the same source (``statement_context`` as of today
in ``ARHUB_TIMEZONE``): the customer's name, its open invoices in their billing currency with due
dates, the totals (open, unapplied credits, balance) per currency, and the remittance
instructions. With ``ARHUB_PAYMENT_URL`` set (a URL template with ``{customer}`` ``{amount}``
``{currency}`` ``{reference}``), one "Pay now" button per currency with a balance to pay.

An unknown, altered or revoked token, or a deleted customer, answers a plain 404 page that says
so (never a traceback, and nothing about the customer). GET only; the answer is not cached and
sends no Referer to the payment site (the token stays out of its logs).
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from urllib.parse import quote

from flask import Blueprint, Flask, current_app, render_template

from middleware.fx import round_money
from middleware.models import Customer
from middleware.statements import StatementNotFound, statement_context, verify_customer_token
from middleware.templating import format_day, format_money

__all__ = ["bp", "init_app", "payment_link"]

bp = Blueprint("pay", __name__)


def payment_link(template: str, *, customer: str, amount: Decimal, currency: str, reference: str) -> str:
    """``ARHUB_PAYMENT_URL`` with its placeholders filled, each value URL-encoded (the amount in the
    currency's minor units: ``1634.75``, ``12000`` for JPY)."""
    values = {"customer": customer, "amount": f"{round_money(amount, currency):f}", "currency": currency,
              "reference": reference}
    return template.format(**{k: quote(str(v), safe="") for k, v in values.items()})


def _not_found():
    response = current_app.make_response((render_template("console/pay/invalid.html"), 404))
    return _private(response)


def _private(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@bp.get("/pay/<token>")
def pay(token: str):
    settings = current_app.config["ARHUB_SETTINGS"]
    customer_id = verify_customer_token(token, settings)
    if customer_id is None:
        return _not_found()
    customer = Customer.get_or_none(Customer.id == customer_id)
    if customer is None or customer.deleted_at is not None:
        return _not_found()
    today = datetime.now(settings.tzinfo).date()
    try:
        ctx = statement_context(customer_id, as_of=today, reporting_currency=settings.reporting_currency,
                                settings=settings)
    except StatementNotFound:
        return _not_found()
    loc = ctx["locale"]
    reference = ctx["customer"]["number"] or str(customer_id)
    buttons = []
    if settings.payment_url:
        for total in ctx["totals"]:
            if total["balance"] > 0:
                buttons.append({"currency": total["currency"],
                                "label": format_money(total["balance"], total["currency"], loc),
                                "url": payment_link(settings.payment_url, customer=reference, amount=total["balance"],
                                                    currency=total["currency"], reference=reference)})
    html = render_template("console/pay/page.html", c=ctx, buttons=buttons, today=today,
                           money=lambda amount, currency: format_money(amount, currency, loc),
                           day=lambda value: format_day(value, "medium", loc))
    return _private(current_app.make_response(html))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
