"""serve's secrets key: the environment's when set, else one made once into a 0600 file and kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from claudeopus.cli.secrets_key import SECRETS_KEY_FILE, with_secrets_key
from claudeopus.control.secrets import generate_key, parse_keys
from claudeopus.control.settings import ControlSettings
from claudeopus.settings import SettingsError

TOKEN = {"CLAUDEOPUS_SERVICE_TOKEN": "t" * 32}


def test_a_key_is_made_once_owner_only_and_read_on_every_later_start(tmp_path: Path) -> None:
    made = with_secrets_key(ControlSettings.from_env(TOKEN), tmp_path)
    path = tmp_path / SECRETS_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert made.secrets_keys == parse_keys(path.read_text())
    assert with_secrets_key(ControlSettings.from_env(TOKEN), tmp_path).secrets_keys == made.secrets_keys


def test_the_environments_key_wins_and_no_file_is_made(tmp_path: Path) -> None:
    key = generate_key()
    control = ControlSettings.from_env({**TOKEN, "CLAUDEOPUS_SECRETS_KEY": key})
    assert with_secrets_key(control, tmp_path).secrets_keys == parse_keys(key)
    assert not (tmp_path / SECRETS_KEY_FILE).exists()


@pytest.mark.parametrize("content", ["", "not a key\n"])
def test_a_damaged_key_file_stops_the_start_without_quoting_it(tmp_path: Path, content: str) -> None:
    (tmp_path / SECRETS_KEY_FILE).write_text(content)
    with pytest.raises(SettingsError, match="restore it, or set CLAUDEOPUS_SECRETS_KEY") as refused:
        with_secrets_key(ControlSettings.from_env(TOKEN), tmp_path)
    assert "not a key" not in str(refused.value)
