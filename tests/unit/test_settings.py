"""middleware.settings: defaults, typed parsing, .env, the generated secret key, repr."""
from __future__ import annotations

import os
import stat

import pytest

from middleware.settings import Settings, SettingsError, get_settings, load_settings, redact_url, reset_settings


def load(tmp_path, env_file="", **env):
    environ = {"ARHUB_VAR_DIR": str(tmp_path / "var"), **env}
    return load_settings(environ, env_file=env_file)


def test_defaults_are_embedded_and_local(tmp_path):
    """With nothing configured: SQLite and secret key under var_dir, embedded Redis, USD, UTC."""
    s = load(tmp_path)
    var = (tmp_path / "var").resolve()
    assert s.var_dir == var
    assert s.database_url == f"sqlite:///{var}/arhub.db"
    assert s.redis_url is None
    assert s.reporting_currency == "USD"
    assert s.timezone == "UTC"
    assert (s.sync_interval_minutes, s.sync_chunk_size, s.cursor_overlap_seconds) == (15, 2000, 300)
    assert s.log_level == "INFO"
    assert s.require_services is False


def test_var_dir_defaults_to_dot_var_resolved_against_cwd(tmp_path, monkeypatch):
    """Without ARHUB_VAR_DIR the var dir is ./var, made absolute so child processes agree."""
    monkeypatch.chdir(tmp_path)
    s = load_settings({}, env_file="")
    assert s.var_dir == (tmp_path / "var").resolve()
    assert s.var_dir.is_absolute()


def test_secret_key_generated_once_with_mode_0600(tmp_path):
    """An unset ARHUB_SECRET_KEY is generated into <var_dir>/secret.key (0600) and reused."""
    first = load(tmp_path)
    key_file = first.var_dir / "secret.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert len(first.secret_key) >= 40
    assert load(tmp_path).secret_key == first.secret_key
    assert load(tmp_path, ARHUB_SECRET_KEY="explicit-key").secret_key == "explicit-key"


def test_typed_values_are_parsed(tmp_path):
    """Integers, booleans, currency (upper-cased), zone, level and URLs come out typed."""
    s = load(
        tmp_path,
        ARHUB_DATABASE_URL="postgresql://arhub:pw@db.internal:5432/arhub",
        ARHUB_REDIS_URL="redis://cache:6379/2",
        ARHUB_REPORTING_CURRENCY="eur",
        ARHUB_TIMEZONE="Europe/Paris",
        ARHUB_SYNC_INTERVAL_MINUTES="5",
        ARHUB_SYNC_CHUNK_SIZE="500",
        ARHUB_CURSOR_OVERLAP_SECONDS="0",
        ARHUB_LOG_LEVEL="debug",
        ARHUB_REQUIRE_SERVICES="yes",
        ARHUB_SECRET_KEY_PREVIOUS="old-1, old-2",
    )
    assert s.database_url == "postgresql://arhub:pw@db.internal:5432/arhub"
    assert s.redis_url == "redis://cache:6379/2"
    assert s.reporting_currency == "EUR"
    assert s.timezone == "Europe/Paris"
    assert (s.sync_interval_minutes, s.sync_chunk_size, s.cursor_overlap_seconds) == (5, 500, 0)
    assert s.log_level == "DEBUG"
    assert s.require_services is True
    assert s.secret_key_previous == ("old-1", "old-2")


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ARHUB_SYNC_INTERVAL_MINUTES", "fifteen"),
        ("ARHUB_SYNC_INTERVAL_MINUTES", "0"),
        ("ARHUB_SYNC_CHUNK_SIZE", "-5"),
        ("ARHUB_CURSOR_OVERLAP_SECONDS", "1.5"),
        ("ARHUB_REPORTING_CURRENCY", "XYZ"),
        ("ARHUB_REPORTING_CURRENCY", "dollars"),
        ("ARHUB_TIMEZONE", "Mars/Olympus"),
        ("ARHUB_LOG_LEVEL", "LOUD"),
        ("ARHUB_REQUIRE_SERVICES", "maybe"),
        ("ARHUB_DATABASE_URL", "mysql://root@localhost/arhub"),
        ("ARHUB_REDIS_URL", "http://localhost:6379"),
    ],
)
def test_bad_value_error_names_the_variable(tmp_path, variable, value):
    """A malformed value raises SettingsError whose message starts with the variable name."""
    with pytest.raises(SettingsError) as info:
        load(tmp_path, **{variable: value})
    assert str(info.value).startswith(f"{variable}: ")
    assert info.value.variable == variable


def test_url_errors_do_not_echo_passwords(tmp_path):
    """The error for a bad URL names the variable but not the password inside it."""
    with pytest.raises(SettingsError) as info:
        load(tmp_path, ARHUB_DATABASE_URL="mysql://root:hunter2@localhost/arhub")
    assert "hunter2" not in str(info.value)


def test_dotenv_is_read_but_real_environment_wins(tmp_path):
    """Values in .env apply; a variable set in the real environment overrides .env."""
    env_file = tmp_path / ".env"
    env_file.write_text("ARHUB_REPORTING_CURRENCY=GBP\nARHUB_SYNC_CHUNK_SIZE=100\n")
    s = load(tmp_path, env_file=env_file, ARHUB_SYNC_CHUNK_SIZE="250")
    assert s.reporting_currency == "GBP"
    assert s.sync_chunk_size == 250


def test_dotenv_location_from_arhub_env_file(tmp_path):
    """ARHUB_ENV_FILE chooses the .env file when no explicit env_file is given."""
    env_file = tmp_path / "custom.env"
    env_file.write_text("ARHUB_TIMEZONE=Asia/Tokyo\n")
    s = load_settings({"ARHUB_VAR_DIR": str(tmp_path / "var"), "ARHUB_ENV_FILE": str(env_file)})
    assert s.timezone == "Asia/Tokyo"


def test_repr_hides_secret_key_and_url_passwords(tmp_path):
    """repr/str show neither the secret key, previous keys, nor passwords inside URLs."""
    s = load(
        tmp_path,
        ARHUB_SECRET_KEY="super-secret-key-value",
        ARHUB_SECRET_KEY_PREVIOUS="older-secret-key-value",
        ARHUB_DATABASE_URL="postgresql://arhub:db-password-1@db:5432/arhub",
        ARHUB_REDIS_URL="redis://:redis-password-2@cache:6379/0",
    )
    for text in (repr(s), str(s), f"{s}"):
        for secret in ("super-secret-key-value", "older-secret-key-value", "db-password-1", "redis-password-2"):
            assert secret not in text
        assert "postgresql://arhub:***@db:5432/arhub" in text
        assert "secret_key='***'" in text


def test_redact_url_keeps_urls_without_password():
    """redact_url only touches the password component."""
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redact_url("postgresql://u:p@h/db") == "postgresql://u:***@h/db"
    assert redact_url(None) is None


def test_settings_are_frozen(tmp_path):
    """Settings cannot be mutated after loading."""
    s = load(tmp_path)
    with pytest.raises(AttributeError):
        s.sync_chunk_size = 1  # type: ignore[misc]


def test_get_settings_is_cached_until_reset(tmp_path, monkeypatch):
    """get_settings() returns one object per process until reset_settings()."""
    monkeypatch.setenv("ARHUB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ARHUB_ENV_FILE", "")
    monkeypatch.setenv("ARHUB_SYNC_CHUNK_SIZE", "10")
    reset_settings()
    try:
        first = get_settings()
        monkeypatch.setenv("ARHUB_SYNC_CHUNK_SIZE", "20")
        assert get_settings() is first
        reset_settings()
        assert get_settings().sync_chunk_size == 20
        assert isinstance(first, Settings)
    finally:
        reset_settings()


def test_templates_dir_is_the_shipped_templates_directory():
    """templates_dir() locates the templates/ directory (the arhub_templates data package)."""
    from middleware.settings import templates_dir

    path = templates_dir()
    assert path.is_dir()
    assert (path / "README.md").is_file()
