"""``claudeopus.tls``: PEM files checked once, with one line naming the setting; and the settings using it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from claudeopus import tls
from claudeopus.client import AsyncClient, Client, TLSConfigError
from claudeopus.control.settings import ControlSettings
from claudeopus.edge.settings import EdgeSettings
from tests.support.cli import run_cli

TOKEN = "s" * 40


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("tls-files")
    ca = trustme.CA()
    leaf, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("localhost")
    paths = {name: str(directory / name) for name in ("ca.pem", "cert.pem", "key.pem", "other.key", "junk.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    leaf.cert_chain_pems[0].write_to_path(paths["cert.pem"])
    leaf.private_key_pem.write_to_path(paths["key.pem"])
    other.private_key_pem.write_to_path(paths["other.key"])
    Path(paths["junk.pem"]).write_text("hello\n")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    paths["encrypted.key"] = str(directory / "encrypted.key")
    Path(paths["encrypted.key"]).write_bytes(encrypted)
    paths["missing.pem"] = str(directory / "missing.pem")
    return paths


def test_good_files_pass_and_build_credentials(files: dict[str, str]) -> None:
    assert tls.check_server(files["cert.pem"], files["key.pem"], files["ca.pem"]) is True
    assert tls.check_client(files["ca.pem"], files["cert.pem"], files["key.pem"]) is True
    assert isinstance(
        tls.server_credentials(files["cert.pem"], files["key.pem"], files["ca.pem"]), grpc.ServerCredentials
    )
    assert isinstance(tls.channel_credentials(files["ca.pem"]), grpc.ChannelCredentials)


def test_nothing_set_means_plain_text() -> None:
    assert tls.check_server("", "") is False
    assert tls.check_client("", "", "") is False
    assert tls.channel_credentials() is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: tls.read_pem(f["missing.pem"], "X_CERT"), "X_CERT: cannot read '.*missing.pem': No such file"),
        (lambda f: tls.read_pem(f["junk.pem"], "X_CERT"), "X_CERT: '.*junk.pem' is not a PEM file"),
        (
            lambda f: tls.check_key_pair(f["cert.pem"], f["other.key"], "X_CERT", "X_KEY"),
            "X_CERT / X_KEY: .* are not a certificate and its unencrypted private key",
        ),
        (
            lambda f: tls.check_key_pair(f["cert.pem"], f["encrypted.key"], "X_CERT", "X_KEY"),
            "are not a certificate and its unencrypted private key",
        ),
        (lambda f: tls.check_ca(f["key.pem"], "X_CA"), "X_CA: .* holds no usable CA certificate"),
        (lambda f: tls.check_server(f["cert.pem"], ""), "tls_cert and tls_key go together"),
        (lambda f: tls.check_server("", "", f["ca.pem"]), "client_ca needs tls_cert and tls_key"),
        (lambda f: tls.check_client("", "", f["key.pem"]), "tls_cert and tls_key go together"),
    ],
)
def test_unusable_files_raise_one_line_naming_the_setting(files: dict[str, str], call: object, message: str) -> None:
    with pytest.raises(TLSConfigError, match=message) as raised:
        call(files)  # type: ignore[operator]
    assert "\n" not in str(raised.value)


def test_edge_settings_read_tls_from_the_environment_and_flags_win(files: dict[str, str]) -> None:
    env = {
        "CLAUDEOPUS_SERVICE_TOKEN": TOKEN,
        "CLAUDEOPUS_UPSTREAM_URL": "http://127.0.0.1:9/v1",
        "CLAUDEOPUS_TLS_CERT": files["missing.pem"],
        "CLAUDEOPUS_TLS_KEY": files["key.pem"],
        "CLAUDEOPUS_CONTROL_CA": files["ca.pem"],
        "CLAUDEOPUS_CONTROL_CLIENT_CERT": files["cert.pem"],
        "CLAUDEOPUS_CONTROL_CLIENT_KEY": files["key.pem"],
    }
    with pytest.raises(TLSConfigError, match="CLAUDEOPUS_TLS_CERT: cannot read"):
        EdgeSettings.from_env(env)
    settings = EdgeSettings.from_env(env, tls_cert=files["cert.pem"])
    assert (settings.tls_cert, settings.tls_key) == (files["cert.pem"], files["key.pem"])
    assert (settings.control_ca, settings.control_client_cert) == (files["ca.pem"], files["cert.pem"])
    plain = EdgeSettings.from_env({"CLAUDEOPUS_SERVICE_TOKEN": TOKEN, "CLAUDEOPUS_UPSTREAM_URL": "http://a/v1"})
    assert (plain.tls_cert, plain.control_ca, plain.control_client_cert) == ("", "", "")


def test_control_settings_read_tls_from_the_environment(files: dict[str, str]) -> None:
    env = {
        "CLAUDEOPUS_SERVICE_TOKEN": TOKEN,
        "CLAUDEOPUS_CONTROL_TLS_CERT": files["cert.pem"],
        "CLAUDEOPUS_CONTROL_TLS_KEY": files["key.pem"],
        "CLAUDEOPUS_CONTROL_CLIENT_CA": files["ca.pem"],
    }
    settings = ControlSettings.from_env(env)
    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (
        files["cert.pem"],
        files["key.pem"],
        files["ca.pem"],
    )
    with pytest.raises(TLSConfigError, match="CLAUDEOPUS_CONTROL_CLIENT_CA needs CLAUDEOPUS_CONTROL_TLS_CERT"):
        ControlSettings.from_env({"CLAUDEOPUS_SERVICE_TOKEN": TOKEN, "CLAUDEOPUS_CONTROL_CLIENT_CA": files["ca.pem"]})
    assert ControlSettings.from_env({"CLAUDEOPUS_SERVICE_TOKEN": TOKEN}).tls_cert == ""


def test_client_takes_tls_files_or_credentials_not_both(files: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="either credentials or tls_ca"):
        Client("127.0.0.1:1", tls_ca=files["ca.pem"], credentials=grpc.ssl_channel_credentials())
    with pytest.raises(TLSConfigError, match="tls_ca: cannot read"):
        Client("127.0.0.1:1", tls_ca=files["missing.pem"])
    Client("127.0.0.1:1", tls_ca=files["ca.pem"]).close()  # nothing is dialled until the first call


# -- plain text only to this machine ----------------------------------------------------------------

REMOTE = (
    "control.invalid:50051",
    "192.0.2.10:50051",
    "[2001:db8::1]:50051",
    "dns:///control.invalid:443",
    "control.localhost:50051",
)
LOCAL = ("127.0.0.1:50051", "localhost:50051", "[::1]:50051", "127.8.9.10:1", "unix:/tmp/c.sock", "ipv4:127.0.0.1:1")


@pytest.mark.parametrize("target", REMOTE)
def test_a_client_refuses_plain_text_to_another_host_unless_insecure(target: str, files: dict[str, str]) -> None:
    assert not tls.is_loopback_target(target)
    with pytest.raises(tls.PlainTextRefused, match="insecure"):
        Client(target, key="sk-co-" + "x" * 43)
    Client(target, insecure=True).close()  # said explicitly; nothing is dialled until the first call
    Client(target, tls_ca=files["ca.pem"]).close()  # TLS: always fine


async def test_the_async_client_refuses_alike() -> None:
    with pytest.raises(tls.PlainTextRefused):
        AsyncClient(REMOTE[0])
    await AsyncClient(REMOTE[0], insecure=True).close()


@pytest.mark.parametrize("target", LOCAL)
def test_plain_text_to_this_machine_needs_no_flag(target: str) -> None:
    assert tls.is_loopback_target(target)
    Client(target).close()


def test_the_cli_refuses_plain_text_to_another_host_without_insecure() -> None:
    result = run_cli(["admin", "accounts", "list", "--control", REMOTE[0], "--key", "sk-co-" + "x" * 43])
    assert result.returncode == 2, result.describe()
    assert "--insecure" in result.stderr and "Traceback" not in result.stderr
    assert "sk-co-" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(["admin", "--insecure"], {}), (["admin"], {"CLAUDEOPUS_CONTROL_INSECURE": "1"})],
    ids=["flag", "environment"],
)
def test_the_cli_dials_another_host_in_plain_text_with_insecure(args: list[str], env: dict[str, str]) -> None:
    key = "sk-co-" + "x" * 43
    result = run_cli([*args, "accounts", "list", "--control", REMOTE[0], "--key", key, "--json"], env=env)
    assert result.returncode == 1, result.describe()  # dialled (and failed to reach it), not refused
    assert result.json()["error"]["code"] == "UNAVAILABLE"
    assert "--insecure" not in result.stderr and key not in result.stdout + result.stderr
