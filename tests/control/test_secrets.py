"""Upstream credentials at rest: sealed per resource, opened by any listed key, never shown."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from claudeopus.control.secrets import SecretBox, SecretsError, fingerprint, generate_key, last_four, parse_keys
from claudeopus.control.settings import ControlSettings
from claudeopus.settings import SettingsError

CREDENTIAL = "sk-ant-api03-" + "x" * 40 + "WXYZ"


def box(*keys: str) -> SecretBox:
    return SecretBox(parse_keys(",".join(keys)))


def test_a_sealed_credential_opens_for_its_resource_and_holds_no_plaintext() -> None:
    sealed = box(generate_key()).seal(CREDENTIAL, context="upstreams/anthropic")
    assert CREDENTIAL.encode() not in sealed and b"WXYZ" not in sealed
    key = generate_key()
    assert box(key).open(box(key).seal(CREDENTIAL, context="upstreams/a"), context="upstreams/a") == CREDENTIAL


def test_two_seals_of_one_credential_differ() -> None:
    sealer = box(generate_key())
    assert sealer.seal(CREDENTIAL, context="upstreams/a") != sealer.seal(CREDENTIAL, context="upstreams/a")


def test_a_sealed_credential_moved_to_another_resource_does_not_open() -> None:
    sealer = box(generate_key())
    sealed = sealer.seal(CREDENTIAL, context="upstreams/a")
    with pytest.raises(SecretsError, match="another resource") as refused:
        sealer.open(sealed, context="upstreams/b")
    assert CREDENTIAL not in str(refused.value)


@pytest.mark.parametrize("damage", [lambda b: b[:-1] + bytes([b[-1] ^ 1]), lambda b: b[:10], lambda b: b"\x02" + b[1:]])
def test_an_altered_sealed_credential_is_refused(damage: Callable[[bytes], bytes]) -> None:
    sealer = box(generate_key())
    with pytest.raises(SecretsError):
        sealer.open(damage(sealer.seal(CREDENTIAL, context="upstreams/a")), context="upstreams/a")


def test_rotation_opens_with_an_old_key_and_reseals_with_the_new_one() -> None:
    old, new = generate_key(), generate_key()
    sealed = box(old).seal(CREDENTIAL, context="upstreams/a")
    rotating = box(new, old)
    assert rotating.open(sealed, context="upstreams/a") == CREDENTIAL
    assert not rotating.is_current(sealed)
    resealed = rotating.reseal(sealed, context="upstreams/a")
    assert rotating.is_current(resealed) and rotating.reseal(resealed, context="upstreams/a") == resealed
    assert box(new).open(resealed, context="upstreams/a") == CREDENTIAL
    with pytest.raises(SecretsError, match="no longer lists"):
        box(new).open(sealed, context="upstreams/a")


def test_keys_are_parsed_current_first_and_bad_ones_named_by_position_only() -> None:
    first, second = generate_key(), generate_key()
    assert parse_keys(f" {first} , {second.rstrip('=')} ") == (
        base64.urlsafe_b64decode(first),
        base64.urlsafe_b64decode(second),
    )
    assert parse_keys("") == () and parse_keys("  ") == ()
    for value in (f"{first},short", f"{first},", "not base64 at all!", base64.urlsafe_b64encode(b"k" * 16).decode()):
        with pytest.raises(SettingsError, match=r"CLAUDEOPUS_SECRETS_KEY: key [12] is not 32 bytes") as refused:
            parse_keys(value)
        assert first not in str(refused.value)
    with pytest.raises(SettingsError, match="listed twice"):
        parse_keys(f"{first},{first}")


def test_control_reads_its_secrets_keys_once_and_never_shows_them() -> None:
    key = generate_key()
    settings = ControlSettings.from_env({"CLAUDEOPUS_SERVICE_TOKEN": "t" * 32, "CLAUDEOPUS_SECRETS_KEY": key})
    assert settings.secrets_keys == (base64.urlsafe_b64decode(key),)
    assert key not in repr(settings) and "secrets_keys" not in repr(settings)
    assert ControlSettings.from_env({"CLAUDEOPUS_SERVICE_TOKEN": "t" * 32}).secrets_keys == ()


def test_a_credential_is_shown_only_as_a_fingerprint_and_its_last_four() -> None:
    assert fingerprint(CREDENTIAL) == fingerprint(CREDENTIAL) != fingerprint(CREDENTIAL + "x")
    assert fingerprint(CREDENTIAL).startswith("sha256:") and len(fingerprint(CREDENTIAL)) == len("sha256:") + 16
    assert last_four(CREDENTIAL) == "WXYZ"
    assert last_four("short-secret") == ""
