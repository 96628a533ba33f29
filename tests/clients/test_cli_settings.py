"""``claudeopus serve``'s settings: both parts read once, flags over variables over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from claudeopus.cli.settings import DEMO_UPSTREAM_PENDING, ServeSettings, local_target
from claudeopus.settings import SettingsError


def test_defaults_a_demo_upstream_and_one_token_made_for_this_process() -> None:
    settings = ServeSettings.from_env({"CLAUDEOPUS_SERVICE_TOKEN": "e" * 40})
    assert settings.demo_upstream and settings.edge.upstream_url == DEMO_UPSTREAM_PENDING
    assert (settings.edge.http_address, settings.control.grpc_address) == ("127.0.0.1:8080", "127.0.0.1:50051")
    assert settings.control.database_url == "sqlite://./claudeopus.db"
    assert settings.edge.service_token == settings.control.service_token != "e" * 40
    assert len(settings.control.service_token) >= 32
    assert settings.edge.control_target == "127.0.0.1:50051"
    assert settings.log_level == settings.edge.log_level == "info"
    assert settings.workers == 0, "the edge runs in the serve process unless workers are asked for"
    assert ServeSettings.from_env({}).control.service_token != settings.control.service_token
    served = settings.with_upstream("http://127.0.0.1:5/v1")
    assert served.edge.upstream_url == "http://127.0.0.1:5/v1" and served.demo_upstream
    assert served.control == settings.control


def test_flags_win_over_variables() -> None:
    env = {
        "CLAUDEOPUS_HTTP": "127.0.0.1:1",
        "CLAUDEOPUS_GRPC": "0.0.0.0:2",
        "CLAUDEOPUS_DATABASE_URL": "sqlite://./env.db",
        "CLAUDEOPUS_UPSTREAM_URL": "http://env/v1",
        "CLAUDEOPUS_CONTROL": "elsewhere:9",
        "CLAUDEOPUS_LOG_LEVEL": "debug",
        "CLAUDEOPUS_ACCESS_LOG_STDOUT": "1",
        "CLAUDEOPUS_WORKERS": "2",
    }
    from_env = ServeSettings.from_env(env)
    assert from_env.workers == 2
    assert ServeSettings.from_env(env, workers=1).workers == 1
    assert (from_env.edge.http_address, from_env.control.grpc_address) == ("127.0.0.1:1", "0.0.0.0:2")
    assert (from_env.control.database_url, from_env.edge.upstream_url) == ("sqlite://./env.db", "http://env/v1")
    assert not from_env.demo_upstream and from_env.edge.access_log_stdout
    assert from_env.edge.control_target == "127.0.0.1:2", "the built-in edge dials the built-in control"
    assert from_env.log_level == "debug"
    flags = ServeSettings.from_env(
        env,
        http_address="127.0.0.1:3",
        grpc_address="127.0.0.1:4",
        database_url="postgres://db/x",
        upstream_url="https://flag/v1",
        log_level="warning",
    )
    assert (flags.edge.http_address, flags.control.grpc_address, flags.edge.control_target) == (
        "127.0.0.1:3",
        "127.0.0.1:4",
        "127.0.0.1:4",
    )
    assert (flags.control.database_url, flags.edge.upstream_url) == ("postgres://db/x", "https://flag/v1")
    assert (flags.log_level, flags.edge.log_level) == ("warning", "warning")
    assert ServeSettings.from_env(env, upstream_url="").demo_upstream


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:7", "127.0.0.1:7"),
        ("[::1]:7", "[::1]:7"),
        ("10.0.0.2:7", "10.0.0.2:7"),
    ],
)
def test_the_edge_dials_the_control_beside_it(address: str, target: str) -> None:
    assert local_target(address) == target


@pytest.mark.parametrize(
    ("flags", "env", "name"),
    [
        ({"http_address": "nonsense"}, {}, "CLAUDEOPUS_HTTP"),
        ({}, {"CLAUDEOPUS_GRPC": "nonsense"}, "CLAUDEOPUS_GRPC"),
        ({"database_url": "mysql://db"}, {}, "CLAUDEOPUS_DATABASE_URL"),
        ({"upstream_url": "ftp://u"}, {}, "CLAUDEOPUS_UPSTREAM_URL"),
        ({}, {"CLAUDEOPUS_RESERVATION_TIMEOUT": "soon"}, "CLAUDEOPUS_RESERVATION_TIMEOUT"),
        ({}, {"CLAUDEOPUS_SPOOL_MAX_BYTES": "lots"}, "CLAUDEOPUS_SPOOL_MAX_BYTES"),
        ({}, {"CLAUDEOPUS_WORKERS": "many"}, "CLAUDEOPUS_WORKERS"),
        ({"workers": 65}, {}, "CLAUDEOPUS_WORKERS"),
    ],
)
def test_a_bad_value_of_either_part_is_named(flags: dict[str, str], env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        ServeSettings.from_env(env, **flags)  # type: ignore[arg-type]


def test_tls_on_the_built_in_control_needs_the_built_in_edge_to_trust_it(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = {name: f"{tmp_path}/{name}" for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    leaf.cert_chain_pems[0].write_to_path(paths["cert.pem"])
    leaf.private_key_pem.write_to_path(paths["key.pem"])
    server = {"CLAUDEOPUS_CONTROL_TLS_CERT": paths["cert.pem"], "CLAUDEOPUS_CONTROL_TLS_KEY": paths["key.pem"]}
    with pytest.raises(SettingsError, match="CLAUDEOPUS_CONTROL_TLS_CERT needs CLAUDEOPUS_CONTROL_CA"):
        ServeSettings.from_env(server)
    trusted = {**server, "CLAUDEOPUS_CONTROL_CA": paths["ca.pem"]}
    assert ServeSettings.from_env(trusted).edge.control_ca == paths["ca.pem"]
    mutual = {**trusted, "CLAUDEOPUS_CONTROL_CLIENT_CA": paths["ca.pem"]}
    with pytest.raises(SettingsError, match="CLAUDEOPUS_CONTROL_CLIENT_CA needs CLAUDEOPUS_CONTROL_CLIENT_CERT"):
        ServeSettings.from_env(mutual)
    client = {"CLAUDEOPUS_CONTROL_CLIENT_CERT": paths["cert.pem"], "CLAUDEOPUS_CONTROL_CLIENT_KEY": paths["key.pem"]}
    assert ServeSettings.from_env({**mutual, **client}).edge.control_client_cert == paths["cert.pem"]
