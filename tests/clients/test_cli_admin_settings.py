"""``claudeopus admin``'s settings: read once from the environment; --control, --key and --insecure win."""

from __future__ import annotations

import pytest

from claudeopus.cli.admin.settings import AdminSettings
from claudeopus.client import TLSConfigError
from claudeopus.settings import SettingsError


def test_defaults_when_nothing_is_set() -> None:
    settings = AdminSettings.from_env({})
    assert (settings.control, settings.key, settings.insecure) == ("127.0.0.1:50051", "", False)
    assert (settings.tls_ca, settings.tls_cert, settings.tls_key) == ("", "", "")
    assert (settings.password, settings.current_password, settings.bootstrap_token) == ("", "", "")
    settings.check_tls()  # plain text: nothing to check
    assert AdminSettings.from_env({"CLAUDEOPUS_CONTROL": ""}).control == "127.0.0.1:50051"


def test_every_variable_is_read_and_secrets_stay_out_of_repr() -> None:
    env = {
        "CLAUDEOPUS_CONTROL": "control.internal:443",
        "CLAUDEOPUS_ADMIN_KEY": "sk-co-secret-key",
        "CLAUDEOPUS_CONTROL_CA": "ca.pem",
        "CLAUDEOPUS_CONTROL_CLIENT_CERT": "admin.pem",
        "CLAUDEOPUS_CONTROL_CLIENT_KEY": "admin.key",
        "CLAUDEOPUS_CONTROL_INSECURE": "1",
        "CLAUDEOPUS_PASSWORD": "new password here",
        "CLAUDEOPUS_CURRENT_PASSWORD": "old password here",
        "CLAUDEOPUS_BOOTSTRAP_TOKEN": "bootstrap-token",
    }
    settings = AdminSettings.from_env(env)
    assert (settings.control, settings.key, settings.insecure) == ("control.internal:443", "sk-co-secret-key", True)
    assert (settings.tls_ca, settings.tls_cert, settings.tls_key) == ("ca.pem", "admin.pem", "admin.key")
    assert (settings.password, settings.current_password, settings.bootstrap_token) == (
        "new password here",
        "old password here",
        "bootstrap-token",
    )
    for secret in ("sk-co-secret-key", "password here", "bootstrap-token"):
        assert secret not in repr(settings)


def test_command_line_values_win_and_none_means_not_given() -> None:
    env = {"CLAUDEOPUS_CONTROL": "env:1", "CLAUDEOPUS_ADMIN_KEY": "env-key"}
    settings = AdminSettings.from_env(env)
    assert settings.with_overrides(control=None, key=None) == settings
    flags = settings.with_overrides(control="flag:2", key="flag-key")
    assert (flags.control, flags.key) == ("flag:2", "flag-key")
    assert AdminSettings.from_env(env, insecure=True).insecure
    assert AdminSettings.from_env({"CLAUDEOPUS_CONTROL_INSECURE": "maybe"}, insecure=True).insecure
    assert not AdminSettings.from_env({"CLAUDEOPUS_CONTROL_INSECURE": "0"}, insecure=None).insecure


def test_a_malformed_insecure_variable_is_named() -> None:
    with pytest.raises(SettingsError, match="CLAUDEOPUS_CONTROL_INSECURE"):
        AdminSettings.from_env({"CLAUDEOPUS_CONTROL_INSECURE": "maybe"})


def test_unusable_tls_files_are_named_by_their_variables() -> None:
    settings = AdminSettings.from_env({"CLAUDEOPUS_CONTROL_CA": "/nonexistent/ca.pem"})
    with pytest.raises(TLSConfigError, match="CLAUDEOPUS_CONTROL_CA: cannot read"):
        settings.check_tls()
    half = AdminSettings.from_env({"CLAUDEOPUS_CONTROL_CLIENT_CERT": "admin.pem"})
    with pytest.raises(TLSConfigError, match="CLAUDEOPUS_CONTROL_CLIENT_CERT"):
        half.check_tls()
