"""Edge settings: read once from the environment; a command-line value wins over its variable."""

from __future__ import annotations

import pytest

from claudeopus.edge.settings import EdgeSettings
from claudeopus.settings import SettingsError

BASE = {"CLAUDEOPUS_UPSTREAM_URL": "http://127.0.0.1:9/v1", "CLAUDEOPUS_SERVICE_TOKEN": "t" * 32}


def test_flags_win_over_the_environment_and_none_means_not_given() -> None:
    env = {**BASE, "CLAUDEOPUS_HTTP": "127.0.0.1:1", "CLAUDEOPUS_CONTROL": "control:2", "CLAUDEOPUS_LOG_LEVEL": "debug"}
    from_env = EdgeSettings.from_env(env, http_address=None, control_target=None, log_level=None)
    assert (from_env.http_address, from_env.control_target, from_env.log_level) == ("127.0.0.1:1", "control:2", "debug")
    flags = EdgeSettings.from_env(
        env, http_address="0.0.0.0:3", control_target="other:4", upstream_url="https://u/v1", log_level="warning"
    )
    assert (flags.http_address, flags.control_target, flags.upstream_url, flags.log_level) == (
        "0.0.0.0:3",
        "other:4",
        "https://u/v1",
        "warning",
    )
    defaults = EdgeSettings.from_env(BASE)
    assert (defaults.http_address, defaults.control_target, defaults.log_level) == (
        "127.0.0.1:8080",
        "127.0.0.1:50051",
        "info",
    )


def test_a_flag_replaces_a_malformed_variable_which_is_then_not_read() -> None:
    env = {**BASE, "CLAUDEOPUS_ACCESS_LOG_STDOUT": "sometimes"}
    with pytest.raises(SettingsError, match="CLAUDEOPUS_ACCESS_LOG_STDOUT"):
        EdgeSettings.from_env(env)
    assert EdgeSettings.from_env(env, access_log_stdout=True).access_log_stdout


def test_a_bad_flag_is_named_by_its_variable() -> None:
    with pytest.raises(SettingsError, match="CLAUDEOPUS_HTTP must look like HOST:PORT"):
        EdgeSettings.from_env(BASE, http_address="nonsense")
    with pytest.raises(SettingsError, match="CLAUDEOPUS_SERVICE_TOKEN"):
        EdgeSettings.from_env(BASE, service_token="short")
