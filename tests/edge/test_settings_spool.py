"""The spool's settings: defaults, the environment, refusals."""

from __future__ import annotations

import pytest

from claudeopus.edge.settings import EdgeSettings
from claudeopus.settings import SettingsError

BASE = {"CLAUDEOPUS_UPSTREAM_URL": "http://127.0.0.1:9/v1", "CLAUDEOPUS_SERVICE_TOKEN": "t" * 32}


def test_the_spool_defaults_to_spool_in_the_working_directory_and_64_mib() -> None:
    settings = EdgeSettings.from_env(BASE)
    assert (settings.spool_dir, settings.spool_max_bytes) == ("spool", 64 * 1024 * 1024)


def test_the_spool_settings_come_from_the_environment() -> None:
    settings = EdgeSettings.from_env(
        {**BASE, "CLAUDEOPUS_SPOOL_DIR": "/var/lib/co/spool", "CLAUDEOPUS_SPOOL_MAX_BYTES": "4096"}
    )
    assert (settings.spool_dir, settings.spool_max_bytes) == ("/var/lib/co/spool", 4096)


@pytest.mark.parametrize("raw", ["0", "-1", "lots", "nan"])
def test_a_bad_spool_size_is_refused_by_name(raw: str) -> None:
    with pytest.raises(SettingsError, match="CLAUDEOPUS_SPOOL_MAX_BYTES"):
        EdgeSettings.from_env({**BASE, "CLAUDEOPUS_SPOOL_MAX_BYTES": raw})


def test_a_blank_spool_directory_is_refused() -> None:
    with pytest.raises(SettingsError, match="CLAUDEOPUS_SPOOL_DIR"):
        EdgeSettings(upstream_url="http://127.0.0.1:9/v1", service_token="t" * 32, spool_dir=" ")


def test_the_settle_linger_is_read_from_the_environment_and_checked() -> None:
    assert EdgeSettings.from_env(BASE).settle_linger == 0.01
    assert EdgeSettings.from_env({**BASE, "CLAUDEOPUS_SETTLE_LINGER": "0"}).settle_linger == 0
    assert EdgeSettings.from_env({**BASE, "CLAUDEOPUS_SETTLE_LINGER": "0.25"}).settle_linger == 0.25
    for raw in ("-1", "2", "soon", "nan"):
        with pytest.raises(SettingsError, match="CLAUDEOPUS_SETTLE_LINGER"):
            EdgeSettings.from_env({**BASE, "CLAUDEOPUS_SETTLE_LINGER": raw})


def test_leases_last_a_second_unless_set_and_0_turns_them_off() -> None:
    assert EdgeSettings.from_env(BASE).lease_seconds == 1.0
    assert EdgeSettings.from_env({**BASE, "CLAUDEOPUS_LEASE_SECONDS": ""}).lease_seconds == 1.0
    assert EdgeSettings.from_env({**BASE, "CLAUDEOPUS_LEASE_SECONDS": "2.5"}).lease_seconds == 2.5
    assert EdgeSettings.from_env({**BASE, "CLAUDEOPUS_LEASE_SECONDS": "0"}).lease_seconds == 0
    for raw in ("-1", "0.01", "61", "soon"):
        with pytest.raises(SettingsError, match="CLAUDEOPUS_LEASE_SECONDS"):
            EdgeSettings.from_env({**BASE, "CLAUDEOPUS_LEASE_SECONDS": raw})
