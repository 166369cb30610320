"""Logging in: the OAuth 2.0 token endpoint (password, client credentials and JWT bearer grants)
and the SOAP ``login`` call, mixed into :class:`~connectors.sandbox.salesforce.app.SalesforceApp`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import xml.etree.ElementTree as ET
from html import escape
from typing import Any

from werkzeug.wrappers import Request, Response

from connectors.sandbox.salesforce.responses import _json
from connectors.sandbox.soql import to18

class LoginFlows:
    """The login endpoints, mixed into :class:`SalesforceApp` (whose ``org``, ``credentials``,
    ``jwt_key``, ``session_seconds`` and ``issue_token`` they use)."""

    # ------------------------------------------------------------------ login
    def _login_error(self, error: str, description: str) -> Response:
        return _json({"error": error, "error_description": description}, 400)

    def _user_by_username(self, username: str) -> dict | None:
        ids = self.org.find("User", "Username", username or "")
        return self.org.tables["User"][ids[0]] if ids else None

    def _token_response(self, request: Request, user_id: str) -> Response:
        token = self.issue_token(user_id)
        issued = str(int(time.time() * 1000))
        host = f"https://{request.host}"
        identity = f"{host}/id/{self.org.org_id}/{user_id}"
        signature = base64.b64encode(hmac.new(self.credentials["client_secret"].encode(),
                                              (identity + issued).encode(), hashlib.sha256).digest()).decode()
        return _json({"access_token": token, "instance_url": host, "id": identity, "token_type": "Bearer",
                      "issued_at": issued, "signature": signature})

    def oauth_token(self, request: Request) -> Response:
        form = request.form
        grant = form.get("grant_type")
        creds = self.credentials
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return self._login_error("invalid_client", "invalid client credentials")
        if grant == "password":
            if not _same(client_id, creds["client_id"]):
                return self._login_error("invalid_client_id", "client identifier invalid")
            if not _same(client_secret, creds["client_secret"]):
                return self._login_error("invalid_client", "invalid client credentials")
            user = self._user_by_username(form.get("username", ""))
            expected = creds["password"] + creds["security_token"]
            if user is None or not user["IsActive"] or user["Username"] != creds["username"] \
                    or not _same(form.get("password", ""), expected):
                return self._login_error("invalid_grant", "authentication failure")
            return self._token_response(request, user["Id"])
        if grant == "client_credentials":
            if not _same(client_id, creds["client_id"]):
                return self._login_error("invalid_client_id", "client identifier invalid")
            if not _same(client_secret, creds["client_secret"]):
                return self._login_error("invalid_client", "invalid client credentials")
            return self._token_response(request, self.org.api_user_id)
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_login(request, form.get("assertion", ""))
        return self._login_error("unsupported_grant_type", "grant type not supported")

    def _jwt_login(self, request: Request, assertion: str) -> Response:
        parts = assertion.split(".")
        if len(parts) != 3:
            return self._login_error("invalid_grant", "invalid assertion")
        try:
            header = json.loads(_b64url(parts[0]))
            claims = json.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except (ValueError, UnicodeDecodeError):
            return self._login_error("invalid_grant", "invalid assertion")
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            return self._login_error("invalid_grant", "invalid assertion")
        if self.jwt_key is None:
            return self._login_error("invalid_client", "no certificate is configured for this connected app "
                                                       "(SalesforceServer(jwt_public_key=...))")
        if not _verify_rs256(self.jwt_key, f"{parts[0]}.{parts[1]}".encode(), signature):
            return self._login_error("invalid_grant", "invalid assertion")
        if not _same(claims.get("iss", ""), self.credentials["client_id"]):
            return self._login_error("invalid_client_id", "client identifier invalid")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        allowed = {"https://login.salesforce.com", "https://test.salesforce.com", f"https://{request.host}"}
        if not any(isinstance(a, str) and a.rstrip("/") in allowed for a in audiences):
            return self._login_error("invalid_grant", "audience is invalid")
        try:
            exp = float(claims.get("exp"))
        except (TypeError, ValueError):
            return self._login_error("invalid_grant", "invalid assertion")
        if exp < time.time():
            return self._login_error("invalid_grant", "expired authorization code")
        user = self._user_by_username(str(claims.get("sub", "")))
        if user is None or not user["IsActive"]:
            return self._login_error("invalid_grant", "user hasn't approved this consumer")
        return self._token_response(request, user["Id"])

    def soap_login(self, request: Request) -> Response:
        version = request.path.rstrip("/").rsplit("/", 1)[-1]
        body = request.get_data()
        if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
            return _soap_fault("INVALID_LOGIN", "DOCTYPE is not allowed")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return _soap_fault("INVALID_LOGIN", "Invalid XML", faultcode="soapenv:Client")
        ns = "{urn:partner.soap.sforce.com}"
        login = root.find(f".//{ns}login")
        if login is None:
            return _soap_fault("INVALID_LOGIN", "No operation available for request login", faultcode="soapenv:Client")
        username = (login.findtext(f"{ns}username") or "").strip()
        password = login.findtext(f"{ns}password") or ""
        scope_org = root.findtext(f".//{ns}organizationId")
        creds = self.credentials
        user = self._user_by_username(username)
        ok = user is not None and user["IsActive"] and user["Username"] == creds["username"]
        if ok and scope_org:
            ok = to18(scope_org.strip()) == self.org.org_id and _same(password, creds["password"])
        elif ok:
            ok = _same(password, creds["password"] + creds["security_token"])
        if not ok:
            return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        token = self.issue_token(user["Id"])
        host = f"https://{request.host}"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<soapenv:Body><loginResponse><result>'
            f'<metadataServerUrl>{host}/services/Soap/m/{escape(version)}/{self.org.org_id}</metadataServerUrl>'
            '<passwordExpired>false</passwordExpired><sandbox>true</sandbox>'
            f'<serverUrl>{host}/services/Soap/u/{escape(version)}/{self.org.org_id}</serverUrl>'
            f'<sessionId>{escape(token)}</sessionId><userId>{user["Id"]}</userId>'
            '<userInfo><accessibilityMode>false</accessibilityMode>'
            f'<currencySymbol>$</currencySymbol><orgAttachmentFileSizeLimit>5242880</orgAttachmentFileSizeLimit>'
            f'<orgDefaultCurrencyIsoCode>{self.org.currency}</orgDefaultCurrencyIsoCode>'
            '<orgDisallowHtmlAttachments>false</orgDisallowHtmlAttachments><orgHasPersonAccounts>false'
            f'</orgHasPersonAccounts><organizationId>{self.org.org_id}</organizationId>'
            '<organizationMultiCurrency>true</organizationMultiCurrency>'
            '<organizationName>arhub Sandbox</organizationName><profileId>00eDn000000ARHUB</profileId>'
            '<roleId xsi:nil="true"/><sessionSecondsValid>'
            f'{self.session_seconds}</sessionSecondsValid><userEmail>{escape(user["Email"])}</userEmail>'
            f'<userFullName>{escape(user["Name"])}</userFullName><userId>{user["Id"]}</userId>'
            f'<userLanguage>en_US</userLanguage><userLocale>en_US</userLocale>'
            f'<userName>{escape(user["Username"])}</userName><userTimeZone>UTC</userTimeZone>'
            '<userType>Standard</userType><userUiSkin>Theme3</userUiSkin></userInfo>'
            '</result></loginResponse></soapenv:Body></soapenv:Envelope>')
        return Response(xml, content_type="text/xml; charset=utf-8")


def _same(given: Any, expected: str) -> bool:
    return secrets.compare_digest(str(given or "").encode(), str(expected).encode())


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _load_public_key(pem: str | bytes):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.encode() if isinstance(pem, str) else pem
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return load_pem_public_key(data)


def _verify_rs256(key, message: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _soap_fault(code: str, message: str, faultcode: str | None = None) -> Response:
    xml = ('<?xml version="1.0" encoding="UTF-8"?>'
           '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
           'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           f'<soapenv:Body><soapenv:Fault><faultcode>{faultcode or "sf:" + code}</faultcode>'
           f'<faultstring>{code}: {escape(message)}</faultstring><detail>'
           '<sf:LoginFault xsi:type="sf:LoginFault">'
           f'<sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{escape(message)}'
           '</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>')
    return Response(xml, status=500, content_type="text/xml; charset=utf-8")
