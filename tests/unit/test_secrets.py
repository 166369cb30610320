"""middleware.secrets: sealed credentials, key rotation, Secret, log redaction."""
from __future__ import annotations

import io
import logging
import pickle

import pytest
from cryptography.fernet import Fernet

from middleware.secrets import (
    DecryptionError,
    RedactingFilter,
    Secret,
    decrypt_json,
    encrypt_json,
    install_log_redaction,
    rotate_token,
)
from middleware.settings import load_settings


def settings_with(tmp_path, key, previous=""):
    return load_settings(
        {"ARHUB_VAR_DIR": str(tmp_path), "ARHUB_SECRET_KEY": key, "ARHUB_SECRET_KEY_PREVIOUS": previous},
        env_file="",
    )


def test_round_trip(tmp_path):
    """A credentials dict comes back equal, and the token does not contain the plaintext."""
    s = settings_with(tmp_path, "a passphrase, not a fernet key")
    creds = {"username": "svc", "password": "p@ss-w0rd", "nested": {"token": "t-123"}, "n": 3}
    token = encrypt_json(creds, s)
    assert isinstance(token, str)
    assert "p@ss-w0rd" not in token
    assert decrypt_json(token, s) == creds


def test_fernet_key_is_used_as_is(tmp_path):
    """An ARHUB_SECRET_KEY that is already a Fernet key is used directly (no derivation)."""
    key = Fernet.generate_key().decode()
    s = settings_with(tmp_path, key)
    token = Fernet(key.encode()).encrypt(b'{"a": 1}').decode()
    assert decrypt_json(token, s) == {"a": 1}


def test_wrong_key_fails_clearly(tmp_path):
    """A token sealed under another key raises DecryptionError naming the key variables."""
    token = encrypt_json({"password": "x"}, settings_with(tmp_path, "key-one"))
    with pytest.raises(DecryptionError, match="ARHUB_SECRET_KEY"):
        decrypt_json(token, settings_with(tmp_path, "key-two"))


def test_corrupt_token_fails_clearly(tmp_path):
    """Garbage is reported as DecryptionError, not a bare cryptography exception."""
    with pytest.raises(DecryptionError):
        decrypt_json("not-a-token", settings_with(tmp_path, "key-one"))


def test_rotation_with_previous_key(tmp_path):
    """During rotation old tokens still open; rotate_token re-seals them under the new key."""
    old = settings_with(tmp_path, "old-key")
    token = encrypt_json({"client_secret": "cs"}, old)
    rotating = settings_with(tmp_path, "new-key", previous="old-key")
    assert decrypt_json(token, rotating) == {"client_secret": "cs"}
    rotated = rotate_token(token, rotating)
    new_only = settings_with(tmp_path, "new-key")
    assert decrypt_json(rotated, new_only) == {"client_secret": "cs"}
    with pytest.raises(DecryptionError):
        decrypt_json(token, new_only)


def test_encrypt_json_rejects_non_dicts(tmp_path):
    """Only dicts are sealed, so decrypt_json always returns a dict."""
    with pytest.raises(TypeError):
        encrypt_json(["a"], settings_with(tmp_path, "k"))  # type: ignore[arg-type]


def test_secret_never_prints_its_value():
    """repr, str, f-strings and %-formatting show *** ; reveal() gives the value; pickles."""
    s = Secret("hunter2-value")
    assert repr(s) == "Secret('***')"
    assert str(s) == "***"
    assert f"{s}" == "***" and f"{s:>5}" == "  ***"
    assert "%s" % s == "***"
    assert s.reveal() == "hunter2-value"
    assert pickle.loads(pickle.dumps(s)).reveal() == "hunter2-value"
    assert Secret(s) == s and bool(Secret("")) is False


@pytest.fixture
def captured_logger(tmp_path):
    logger = logging.getLogger(f"arhub.test.redaction.{tmp_path.name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    s = load_settings(
        {
            "ARHUB_VAR_DIR": str(tmp_path),
            "ARHUB_SECRET_KEY": "the-app-secret-key",
            "ARHUB_DATABASE_URL": "postgresql://arhub:db-pass-42@db/arhub",
        },
        env_file="",
    )
    install_log_redaction(s, logger=logger)
    yield logger, stream
    logger.removeHandler(handler)


def test_log_filter_redacts_known_values_and_patterns(captured_logger):
    """Registered secrets and password=/token=/Bearer/URL/XML credential patterns become ***."""
    logger, stream = captured_logger
    wrapped = Secret("wrapped-credential-9")
    logger.info("key is %s", "the-app-secret-key")
    logger.info("connecting to %s", "postgresql://arhub:db-pass-42@db/arhub")
    logger.info("revealed %s", wrapped.reveal())
    logger.info("login user=bob password=pa55word token=abc.def")
    logger.info("payload %s", {"client_secret": "cs-777", "api_key": "ak-888"})
    logger.info("Authorization: Bearer eyJhbGciOi.x.y")
    logger.info("<ns:password>xml-pass</ns:password><ns:user>bob</ns:user>")
    logger.info("url https://u:inline-pw@erp.example.com/api")
    out = stream.getvalue()
    for secret in (
        "the-app-secret-key", "db-pass-42", "wrapped-credential-9", "pa55word", "abc.def",
        "cs-777", "ak-888", "eyJhbGciOi", "xml-pass", "inline-pw",
    ):
        assert secret not in out, secret
    assert "user=bob" in out and "<ns:user>bob</ns:user>" in out
    assert out.count("***") >= 10


def test_log_filter_redacts_tracebacks(captured_logger):
    """Exception text attached to a record is redacted too."""
    logger, stream = captured_logger
    try:
        raise RuntimeError("auth failed for password=tb-secret-1")
    except RuntimeError:
        logger.exception("sync failed")
    out = stream.getvalue()
    assert "RuntimeError" in out
    assert "tb-secret-1" not in out


def test_install_is_idempotent(captured_logger, tmp_path):
    """Installing twice leaves exactly one redaction filter on a handler."""
    logger, _ = captured_logger
    install_log_redaction(settings_with(tmp_path, "another-key"), logger=logger)
    ours = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    assert ours
    for handler in ours:
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
