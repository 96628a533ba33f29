"""Control settings: read once from the environment, every bad value named in one line."""

from __future__ import annotations

import pytest

from claudeopus.control.settings import ControlSettings, SettingsError

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
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        ControlSettings.from_env({**TOKEN, name: value})
