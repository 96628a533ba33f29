"""Control settings: read once from the environment, every bad value named in one line."""

from __future__ import annotations

import pytest

from claudeopus.control.settings import ControlSettings
from claudeopus.settings import SettingsError

TOKEN = {"CLAUDEOPUS_SERVICE_TOKEN": "t" * 32}


def test_reservation_settings_have_documented_defaults() -> None:
    settings = ControlSettings.from_env(TOKEN)
    assert settings.default_max_output_tokens == 4096
    assert settings.model_max_output_tokens == ()
    assert (settings.reservation_timeout, settings.sweep_interval) == (900.0, 30.0)


def test_reservation_settings_are_read_from_the_environment() -> None:
    settings = ControlSettings.from_env(
        {
            **TOKEN,
            "CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS": "1000",
            "CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS": " gpt-4o=16384, org/model:v2=8192 ,",
            "CLAUDEOPUS_RESERVATION_TIMEOUT": "2.5",
            "CLAUDEOPUS_SWEEP_INTERVAL": "0.5",
        }
    )
    assert settings.default_max_output_tokens == 1000
    assert settings.model_max_output_tokens == (("gpt-4o", 16384), ("org/model:v2", 8192))
    assert (settings.reservation_timeout, settings.sweep_interval) == (2.5, 0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS", "0"),
        ("CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS", "-5"),
        ("CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS", "1e3"),
        ("CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS", "100000001"),
        ("CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS", "gpt-4o"),
        ("CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS", "=5"),
        ("CLAUDEOPUS_MODEL_MAX_OUTPUT_TOKENS", "m=lots"),
        ("CLAUDEOPUS_RESERVATION_TIMEOUT", "0"),
        ("CLAUDEOPUS_RESERVATION_TIMEOUT", "soon"),
        ("CLAUDEOPUS_SWEEP_INTERVAL", "-1"),
        ("CLAUDEOPUS_SWEEP_INTERVAL", "nan"),
        ("CLAUDEOPUS_SESSION_TTL", "0"),
        ("CLAUDEOPUS_SESSION_TTL", "a day"),
        ("CLAUDEOPUS_PASSWORD_WORKERS", "0"),
        ("CLAUDEOPUS_PASSWORD_WORKERS", "65"),
        ("CLAUDEOPUS_LOGIN_ATTEMPTS_PER_MINUTE", "many"),
        ("CLAUDEOPUS_LOGIN_FAILURES_PER_HOUR", "0"),
        ("CLAUDEOPUS_EMAIL_PROBES_PER_HOUR", "-1"),
        ("CLAUDEOPUS_METHOD_CONCURRENCY", "0"),
        ("CLAUDEOPUS_LOGIN_CONCURRENCY", "1.5"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        ControlSettings.from_env({**TOKEN, name: value})


def test_credential_settings_have_defaults_and_are_read_from_the_environment() -> None:
    defaults = ControlSettings.from_env(TOKEN)
    assert defaults.session_ttl == 12 * 3600 and defaults.bootstrap_token_file == "claudeopus-bootstrap.token"
    assert (defaults.password_workers, defaults.login_concurrency, defaults.method_concurrency) == (1, 4, 32)
    assert (defaults.login_attempts_per_minute, defaults.login_failures_per_hour, defaults.email_probes_per_hour) == (
        30,
        20,
        20,
    )
    assert ControlSettings(service_token="t" * 32).bootstrap_token_file == ""  # embedded: the token stays in memory
    settings = ControlSettings.from_env(
        {
            **TOKEN,
            "CLAUDEOPUS_SESSION_TTL": "900",
            "CLAUDEOPUS_BOOTSTRAP_TOKEN_FILE": "/run/claudeopus/bootstrap.token",
            "CLAUDEOPUS_PASSWORD_WORKERS": "2",
            "CLAUDEOPUS_LOGIN_ATTEMPTS_PER_MINUTE": "5",
            "CLAUDEOPUS_LOGIN_FAILURES_PER_HOUR": "6",
            "CLAUDEOPUS_EMAIL_PROBES_PER_HOUR": "7",
            "CLAUDEOPUS_METHOD_CONCURRENCY": "8",
            "CLAUDEOPUS_LOGIN_CONCURRENCY": "3",
        }
    )
    assert settings.session_ttl == 900.0 and settings.bootstrap_token_file == "/run/claudeopus/bootstrap.token"
    assert (settings.password_workers, settings.login_attempts_per_minute, settings.login_failures_per_hour) == (
        2,
        5,
        6,
    )
    assert (settings.email_probes_per_hour, settings.method_concurrency, settings.login_concurrency) == (7, 8, 3)


def test_flags_win_over_the_environment_and_none_means_not_given() -> None:
    env = {
        **TOKEN,
        "CLAUDEOPUS_GRPC": "127.0.0.1:1",
        "CLAUDEOPUS_DATABASE_URL": "sqlite://./env.db",
        "CLAUDEOPUS_LOG_LEVEL": "debug",
    }
    from_env = ControlSettings.from_env(env, grpc_address=None, database_url=None, log_level=None)
    assert (from_env.grpc_address, from_env.database_url, from_env.log_level) == (
        "127.0.0.1:1",
        "sqlite://./env.db",
        "debug",
    )
    flags = ControlSettings.from_env(
        env, grpc_address="0.0.0.0:2", database_url="postgres://db/x", service_token="f" * 32, log_level="warning"
    )
    assert (flags.grpc_address, flags.database_url, flags.service_token, flags.log_level) == (
        "0.0.0.0:2",
        "postgres://db/x",
        "f" * 32,
        "warning",
    )
    defaults = ControlSettings.from_env(TOKEN)
    assert (defaults.grpc_address, defaults.database_url, defaults.log_level) == (
        "127.0.0.1:50051",
        "sqlite://./claudeopus.db",
        "info",
    )
    with pytest.raises(SettingsError, match="CLAUDEOPUS_DATABASE_URL"):
        ControlSettings.from_env(env, database_url="mysql://db")
