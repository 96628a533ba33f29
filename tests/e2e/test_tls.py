"""Transport security end to end, with real certificates made by ``trustme``.

One module-wide deployment: control serves gRPC over mutual TLS (clients need a certificate from
the clients' CA), the edge serves HTTPS and reaches control with its own client certificate, and a
fake upstream answers. On it: the official ``openai`` SDK over HTTPS, the thin client and the
generated stubs over mutual TLS, the internal gateway service's credential rule over TLS, and the
refusals — plain text to a TLS port, an untrusted server, a missing client certificate and a
client certificate signed by another CA. Then the command line: HTTPS from ``serve``, ``admin``
over TLS, and exit status 2 with one clear line for unusable TLS files.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
import openai
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from claudeopus import keys
from claudeopus.client import AsyncClient, Client, UnavailableError
from claudeopus.v1 import gateway_pb2, gateway_pb2_grpc, usage_pb2
from tests.support import admin as admin_calls
from tests.support.cli import TIMEOUT, clean_env, run_cli
from tests.support.databases import fresh_database
from tests.support.fake_upstream import FakeUpstream, ThreadedServer
from tests.support.processes import CLI, Process, free_port, start_control, start_edge

T = TypeVar("T")
UPSTREAM_KEY = "upstream-secret-" + "t" * 24


@dataclass(frozen=True)
class Pair:
    """A certificate (with its chain) and its private key, as PEM files."""

    cert: str
    key: str


@dataclass(frozen=True)
class Pki:
    """Two CAs as a deployment would have them, plus a rogue one, and the certificates they signed."""

    server_ca: str  # signed control's and the edge's server certificates
    clients_ca: str  # signed the client certificates control accepts
    rogue_ca: str  # another CA: nothing it signed is trusted anywhere
    control: Pair
    edge_https: Pair
    edge_client: Pair
    admin_client: Pair
    rogue_client: Pair


def _write_pair(issued: trustme.LeafCert, directory: Path, name: str) -> Pair:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return Pair(str(cert), str(key))


def _write_ca(ca: trustme.CA, directory: Path, name: str) -> str:
    path = directory / f"{name}.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    server_ca, clients_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    return Pki(
        server_ca=_write_ca(server_ca, directory, "server-ca"),
        clients_ca=_write_ca(clients_ca, directory, "clients-ca"),
        rogue_ca=_write_ca(rogue_ca, directory, "rogue-ca"),
        control=_write_pair(server_ca.issue_cert("127.0.0.1", "localhost"), directory, "control"),
        edge_https=_write_pair(server_ca.issue_cert("127.0.0.1", "localhost"), directory, "edge"),
        edge_client=_write_pair(clients_ca.issue_cert("edge.claudeopus.test"), directory, "edge-client"),
        admin_client=_write_pair(clients_ca.issue_cert("admin.claudeopus.test"), directory, "admin-client"),
        rogue_client=_write_pair(rogue_ca.issue_cert("edge.claudeopus.test"), directory, "rogue-client"),
    )


def _mtls(pki: Pki, client: Pair | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting the server CA, presenting ``client`` (the admin's by default)."""
    pair = client or pki.admin_client
    return grpc.ssl_channel_credentials(
        root_certificates=Path(pki.server_ca).read_bytes(),
        private_key=Path(pair.key).read_bytes(),
        certificate_chain=Path(pair.cert).read_bytes(),
    )


def _control_env(pki: Pki) -> dict[str, str]:
    return {
        "CLAUDEOPUS_CONTROL_TLS_CERT": pki.control.cert,
        "CLAUDEOPUS_CONTROL_TLS_KEY": pki.control.key,
        "CLAUDEOPUS_CONTROL_CLIENT_CA": pki.clients_ca,
    }


def _edge_env(pki: Pki, client: Pair) -> dict[str, str]:
    return {
        "CLAUDEOPUS_TLS_CERT": pki.edge_https.cert,
        "CLAUDEOPUS_TLS_KEY": pki.edge_https.key,
        "CLAUDEOPUS_CONTROL_CA": pki.server_ca,
        "CLAUDEOPUS_CONTROL_CLIENT_CERT": client.cert,
        "CLAUDEOPUS_CONTROL_CLIENT_KEY": client.key,
    }


@dataclass
class TlsGateway:
    pki: Pki
    log_dir: Path
    token: str
    upstream: FakeUpstream
    upstream_url: str
    control: Process
    control_port: int
    edge: Process
    edge_port: int
    admin_key: str

    @property
    def control_target(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    @property
    def edge_url(self) -> str:
        return f"https://127.0.0.1:{self.edge_port}/v1"

    def client(self, key: str | None = None) -> AsyncClient:
        """The thin async client over mutual TLS, as an admin would hold it."""
        admin = self.pki.admin_client
        return AsyncClient(
            self.control_target, key=key, tls_ca=self.pki.server_ca, tls_cert=admin.cert, tls_key=admin.key
        )

    def call(self, work: Callable[[AsyncClient], Awaitable[T]], key: str | None = None) -> T:
        async def runner() -> T:
            async with self.client(key or self.admin_key) as client:
                return await work(client)

        return asyncio.run(runner())

    def new_user_key(self) -> tuple[str, str]:
        async def make(client: AsyncClient) -> tuple[str, str]:
            account = await client.create_account(email=f"tls-{secrets.token_hex(4)}@example.com", role="user")
            created = await client.create_api_key(parent=account.name)
            return created.api_key.name, created.secret

        return self.call(make)

    def settled(self, api_key: str, count: int) -> list[usage_pb2.UsageRecord]:
        deadline = time.monotonic() + 10
        while True:

            async def records(client: AsyncClient) -> list[usage_pb2.UsageRecord]:
                return [r async for r in client.iter_usage_records(api_key=api_key)]

            found = [r for r in self.call(records) if r.status != usage_pb2.USAGE_STATUS_RESERVED]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def https(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=self.pki.server_ca), timeout=30)

    def openai(self, secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.edge_url, api_key=secret, http_client=self.https(), max_retries=0)


@pytest.fixture(scope="module")
def tls_gateway(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    log_dir = tmp_path_factory.mktemp("tls-gateway")
    token = secrets.token_urlsafe(32)
    upstream = FakeUpstream()
    with fresh_database(log_dir) as url, ThreadedServer(upstream) as upstream_server:
        control, control_port = start_control(url, token, log_dir, env=_control_env(pki), grpc_credentials=_mtls(pki))
        processes = [control]
        try:
            edge, edge_port = start_edge(
                control_port,
                upstream_server.url,
                token,
                log_dir,
                upstream_key=UPSTREAM_KEY,
                env=_edge_env(pki, pki.edge_client),
                tls_ca=pki.server_ca,
            )
            processes.append(edge)
            gateway = TlsGateway(
                pki, log_dir, token, upstream, upstream_server.url, control, control_port, edge, edge_port, ""
            )

            async def bootstrap(client: AsyncClient) -> str:
                token = admin_calls.bootstrap_token(log_dir)
                return (await client.bootstrap_admin("root@example.com", "Root", token=token)).secret

            async def anonymous() -> str:
                async with gateway.client() as client:
                    return await bootstrap(client)

            gateway.admin_key = asyncio.run(anonymous())

            async def price(client: AsyncClient) -> None:  # only priced models are served
                await client.create_price(model="fake-1", input_micros=0, output_micros=0)

            gateway.call(price)
            yield gateway
        finally:
            for process in reversed(processes):
                process.stop()


# -- the edge over HTTPS, through mutual TLS to control ----------------------------------------------


def test_openai_sdk_over_https_with_mutual_tls_to_control(tls_gateway: TlsGateway) -> None:
    key_name, secret = tls_gateway.new_user_key()
    client = tls_gateway.openai(secret)

    reply = client.chat.completions.create(
        model="fake-1", messages=[{"role": "user", "content": "over tls"}], max_tokens=4
    )
    assert reply.choices[0].message.content.startswith("echo:over tls")
    chunks = list(
        client.chat.completions.create(
            model="fake-1", messages=[{"role": "user", "content": "streamed"}], max_tokens=3, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("echo:streamed")
    assert [m.id for m in client.models.list()] == ["fake-1"]

    # Authorize and settle both crossed the mutual-TLS link: the usage is exact.
    records = tls_gateway.settled(key_name, 2)
    assert len(records) == 2
    assert all(r.status == usage_pb2.USAGE_STATUS_SUCCEEDED for r in records)
    assert sorted(r.output_tokens for r in records) == [3, 4]
    assert tls_gateway.upstream.received[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_edge_refuses_plain_http_and_is_refused_by_clients_that_do_not_trust_it(tls_gateway: TlsGateway) -> None:
    plain = f"http://127.0.0.1:{tls_gateway.edge_port}/v1/models"
    began = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain, timeout=5)
    assert time.monotonic() - began < 5, "plain text to the HTTPS port must fail at once, not hang"

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_gateway.edge_url}/models", timeout=5)  # the system roots do not know our CA
    rogue = ssl.create_default_context(cafile=tls_gateway.pki.rogue_ca)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_gateway.edge_url}/models", timeout=5, verify=rogue)

    # Still serving, and still no 5xx: a key-less request is the client's business.
    with tls_gateway.https() as https:
        assert https.get(f"{tls_gateway.edge_url}/models").status_code == 401
    assert tls_gateway.edge.alive()
    assert "Traceback" not in tls_gateway.edge.output()


def test_edge_with_a_client_certificate_from_another_ca_fails_closed(tls_gateway: TlsGateway) -> None:
    gateway = tls_gateway
    own_dir = gateway.log_dir / "edge-rogue"  # its own working directory: one edge per spool
    own_dir.mkdir(exist_ok=True)
    edge, port = start_edge(
        gateway.control_port,
        gateway.upstream_url,
        gateway.token,
        own_dir,
        name="edge-rogue",
        env={**_edge_env(gateway.pki, gateway.pki.rogue_client), "CLAUDEOPUS_CONTROL_TIMEOUT": "2"},
        tls_ca=gateway.pki.server_ca,
    )
    try:
        _, secret = gateway.new_user_key()
        forwarded = len(gateway.upstream.received)
        client = openai.OpenAI(
            base_url=f"https://127.0.0.1:{port}/v1", api_key=secret, http_client=gateway.https(), max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
        assert refused.value.status_code == 503
        assert len(gateway.upstream.received) == forwarded, "nothing may be forwarded without authorization"
    finally:
        edge.stop()


# -- control over TLS: the thin client, the generated stubs, the refusals ---------------------------


def test_thin_clients_over_mutual_tls(tls_gateway: TlsGateway) -> None:
    gateway, admin = tls_gateway, tls_gateway.pki.admin_client
    with Client(
        gateway.control_target,
        key=gateway.admin_key,
        tls_ca=gateway.pki.server_ca,
        tls_cert=admin.cert,
        tls_key=Path(admin.key),  # paths may be str or os.PathLike
    ) as client:
        account = client.create_account(email=f"sync-{secrets.token_hex(4)}@example.com", role="reseller")
        assert client.get_account(account.name).email == account.email

    async def read(client: AsyncClient) -> str:
        return (await client.get_account(account.name)).email

    assert gateway.call(read) == account.email


def test_generated_stubs_over_mutual_tls(tls_gateway: TlsGateway) -> None:
    with grpc.secure_channel(tls_gateway.control_target, _mtls(tls_gateway.pki)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("no client certificate", lambda p: {"tls_ca": p.server_ca}),
        (
            "client certificate of another CA",
            lambda p: {"tls_ca": p.server_ca, "tls_cert": p.rogue_client.cert, "tls_key": p.rogue_client.key},
        ),
        (
            "server not trusted",
            lambda p: {"tls_ca": p.rogue_ca, "tls_cert": p.admin_client.cert, "tls_key": p.admin_client.key},
        ),
    ],
)
def test_control_refuses_callers_without_a_trusted_certificate(
    tls_gateway: TlsGateway, case: str, options: Callable[[Pki], dict[str, str]]
) -> None:
    with (
        Client(tls_gateway.control_target, key=tls_gateway.admin_key, timeout=5, **options(tls_gateway.pki)) as client,
        pytest.raises(UnavailableError),
    ):
        client.list_accounts()
    assert tls_gateway.control.alive()


def test_plain_text_to_the_tls_control_port_fails_cleanly(tls_gateway: TlsGateway) -> None:
    began = time.monotonic()
    with (
        Client(tls_gateway.control_target, key=tls_gateway.admin_key, timeout=5) as client,
        pytest.raises(UnavailableError),
    ):
        client.list_accounts()
    assert time.monotonic() - began < 5
    with grpc.insecure_channel(tls_gateway.control_target) as channel, pytest.raises(grpc.RpcError) as failed:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert tls_gateway.control.alive()


def test_gateway_service_over_tls_admits_only_the_service_token(tls_gateway: TlsGateway) -> None:
    """A valid client certificate is not a credential: the service token still is the only one."""
    _, secret = tls_gateway.new_user_key()
    request = gateway_pb2.VerifyApiKeyRequest(key_hash=keys.hash_secret_bytes(secret))
    with grpc.secure_channel(tls_gateway.control_target, _mtls(tls_gateway.pki)) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        for metadata in ((), (("authorization", f"Bearer {tls_gateway.admin_key}"),)):
            with pytest.raises(grpc.RpcError) as refused:
                gateway.VerifyApiKey(request, metadata=metadata, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        reply = gateway.VerifyApiKey(request, metadata=(("authorization", f"Bearer {tls_gateway.token}"),), timeout=5)
    assert reply.api_key.startswith("apiKeys/")


# -- the command line ----------------------------------------------------------------------------------


def test_admin_cli_over_mutual_tls(tls_gateway: TlsGateway) -> None:
    gateway, admin = tls_gateway, tls_gateway.pki.admin_client
    base = {"CLAUDEOPUS_CONTROL": gateway.control_target, "CLAUDEOPUS_ADMIN_KEY": gateway.admin_key}
    tls_env = {
        "CLAUDEOPUS_CONTROL_CA": gateway.pki.server_ca,
        "CLAUDEOPUS_CONTROL_CLIENT_CERT": admin.cert,
        "CLAUDEOPUS_CONTROL_CLIENT_KEY": admin.key,
    }
    listed = run_cli(["admin", "accounts", "list", "--json"], env=clean_env({**base, **tls_env})).ok().json()
    assert listed["accounts"] and all(a["name"].startswith("accounts/") for a in listed["accounts"])
    got = run_cli(["admin", "accounts", "get", "accounts/1", "--json"], env=clean_env({**base, **tls_env})).ok()
    assert got.json()["email"] == "root@example.com"

    plain = run_cli(["admin", "accounts", "list"], env=clean_env(base))
    assert plain.returncode == 1, plain.describe()
    assert "Traceback" not in plain.stderr


def test_serve_over_https(pki: Pki, tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    args = [CLI, "serve", "--http", f"127.0.0.1:{http_port}", "--grpc", f"127.0.0.1:{grpc_port}"]
    args += ["--tls-cert", pki.edge_https.cert, "--tls-key", pki.edge_https.key]
    out, err = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(args, env=clean_env(), cwd=tmp_path, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "ClaudeOpus ready" not in err.read_text():
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        assert f"edge https://127.0.0.1:{http_port}" in err.read_text()
        first_start = (tmp_path / "claudeopus-first-start.txt").read_text()  # stdout is no terminal here
        demo_key = next(line.split(":", 1)[1].strip() for line in first_start.splitlines() if "demo API key" in line)
        assert f"https://127.0.0.1:{http_port}/v1" in first_start
        client = openai.OpenAI(
            base_url=f"https://127.0.0.1:{http_port}/v1",
            api_key=demo_key,
            http_client=httpx.Client(verify=ssl.create_default_context(cafile=pki.server_ca)),
            max_retries=0,
        )
        reply = client.chat.completions.create(model="demo-small", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        # The SDK keeps its connection open and idle: it must not hold the shutdown (TLS waits politely).
        began = time.monotonic()
        process.terminate()
        process.wait(TIMEOUT)
        assert time.monotonic() - began < 10, "an idle HTTPS client held the edge's shutdown"
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert process.returncode == 0, err.read_text()


def _garbage(tmp: Path) -> str:
    path = tmp / "garbage.pem"
    path.write_text("not a certificate\n")
    return str(path)


BAD_FILES: list[tuple[str, Callable[[Pki, Path], tuple[list[str], dict[str, str]]], str]] = [
    (
        "edge: missing certificate",
        lambda p, t: (["edge", "--tls-cert", str(t / "missing.pem"), "--tls-key", p.edge_https.key], {}),
        "CLAUDEOPUS_TLS_CERT: cannot read",
    ),
    (
        "edge: not PEM",
        lambda p, t: (["edge", "--tls-cert", _garbage(t), "--tls-key", p.edge_https.key], {}),
        "is not a PEM file",
    ),
    (
        "edge: key of another certificate",
        lambda p, t: (["edge", "--tls-cert", p.edge_https.cert, "--tls-key", p.control.key], {}),
        "are not a certificate and its unencrypted private key",
    ),
    (
        "edge: certificate without key",
        lambda p, t: (["edge", "--tls-cert", p.edge_https.cert], {}),
        "CLAUDEOPUS_TLS_CERT and CLAUDEOPUS_TLS_KEY go together",
    ),
    (
        "edge: missing control CA",
        lambda p, t: (["edge"], {"CLAUDEOPUS_CONTROL_CA": str(t / "missing-ca.pem")}),
        "CLAUDEOPUS_CONTROL_CA: cannot read",
    ),
    (
        "control: missing certificate",
        lambda p, t: (["control", "--tls-cert", str(t / "missing.pem"), "--tls-key", p.control.key], {}),
        "CLAUDEOPUS_CONTROL_TLS_CERT: cannot read",
    ),
    (
        "control: client CA without TLS",
        lambda p, t: (["control", "--client-ca", p.clients_ca], {}),
        "CLAUDEOPUS_CONTROL_CLIENT_CA needs",
    ),
    (
        "serve: missing key",
        lambda p, t: (["serve", "--tls-cert", p.edge_https.cert, "--tls-key", str(t / "missing.key")], {}),
        "CLAUDEOPUS_TLS_KEY: cannot read",
    ),
    (
        "serve: control TLS the built-in edge cannot verify",
        lambda p, t: (
            ["serve"],
            {"CLAUDEOPUS_CONTROL_TLS_CERT": p.control.cert, "CLAUDEOPUS_CONTROL_TLS_KEY": p.control.key},
        ),
        "CLAUDEOPUS_CONTROL_TLS_CERT needs CLAUDEOPUS_CONTROL_CA",
    ),
    (
        "admin: missing CA",
        lambda p, t: (["admin", "accounts", "list"], {"CLAUDEOPUS_CONTROL_CA": str(t / "missing-ca.pem")}),
        "CLAUDEOPUS_CONTROL_CA: cannot read",
    ),
]


@pytest.mark.parametrize(("case", "command", "expected"), BAD_FILES, ids=[case for case, _, _ in BAD_FILES])
def test_cli_refuses_unusable_tls_files_with_one_line(
    pki: Pki,
    tmp_path: Path,
    case: str,
    command: Callable[[Pki, Path], tuple[list[str], dict[str, str]]],
    expected: str,
) -> None:
    args, extra = command(pki, tmp_path)
    env = clean_env(
        {
            "CLAUDEOPUS_SERVICE_TOKEN": "s" * 40,
            "CLAUDEOPUS_UPSTREAM_URL": "http://127.0.0.1:9/v1",
            "CLAUDEOPUS_DATABASE_URL": f"sqlite://{tmp_path / 'never.db'}",
            "CLAUDEOPUS_ADMIN_KEY": "sk-co-unused",
            **extra,
        }
    )
    result = run_cli(args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("claudeopus: "), result.describe()
    assert expected in lines[0], result.describe()
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "claudeopus.db").exists()
