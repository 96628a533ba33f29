"""The upstream client: settings read once, and aiohttp's failures carrying what they mean for a retry."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from claudeopus.edge.settings import EdgeSettings
from claudeopus.edge.upstream import (
    AiohttpUpstream,
    ConnectFailed,
    ConnectionBroken,
    ConnectTimedOut,
    ReadTimedOut,
    UpstreamError,
)
from claudeopus.settings import SettingsError
from tests.support.fault_upstream import unanswered_port
from tests.support.processes import free_port

BASE = {"CLAUDEOPUS_UPSTREAM_URL": "http://127.0.0.1:9/v1", "CLAUDEOPUS_SERVICE_TOKEN": "t" * 32}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def test_retries_and_the_longest_exchange_have_defaults_and_come_from_the_environment() -> None:
    default = EdgeSettings.from_env(BASE)
    assert (default.upstream_connect_retries, default.upstream_max_duration) == (1, 600.0)
    chosen = EdgeSettings.from_env(
        {**BASE, "CLAUDEOPUS_UPSTREAM_CONNECT_RETRIES": "0", "CLAUDEOPUS_UPSTREAM_MAX_DURATION": "2.5"}
    )
    assert (chosen.upstream_connect_retries, chosen.upstream_max_duration) == (0, 2.5)


@pytest.mark.parametrize("raw", ["-1", "101", "two", "1.5"])
def test_a_bad_retry_count_is_refused_by_name(raw: str) -> None:
    with pytest.raises(SettingsError, match="CLAUDEOPUS_UPSTREAM_CONNECT_RETRIES"):
        EdgeSettings.from_env({**BASE, "CLAUDEOPUS_UPSTREAM_CONNECT_RETRIES": raw})


async def test_an_https_upstream_is_verified_against_ssl_cert_file_read_with_the_settings(tmp_path: Path) -> None:
    https = {**BASE, "CLAUDEOPUS_UPSTREAM_URL": "https://127.0.0.1:9/v1"}
    assert EdgeSettings.from_env(https).upstream_ca_file == ""
    await AiohttpUpstream(EdgeSettings.from_env(https)).aclose()  # certifi's bundle
    missing = str(tmp_path / "no-such-ca.pem")
    settings = EdgeSettings.from_env({**https, "SSL_CERT_FILE": missing})
    assert settings.upstream_ca_file == missing
    with pytest.raises(FileNotFoundError):
        AiohttpUpstream(settings)


async def _failure(url: str) -> type[UpstreamError]:
    env = {
        **BASE,
        "CLAUDEOPUS_UPSTREAM_URL": url,
        "CLAUDEOPUS_UPSTREAM_CONNECT_TIMEOUT": "0.3",
        "CLAUDEOPUS_UPSTREAM_READ_TIMEOUT": "0.3",
    }
    upstream = AiohttpUpstream(EdgeSettings.from_env(env))
    try:
        response = await upstream.send("POST", "chat/completions", b"{}")
        try:
            await response.aread()
        finally:
            await response.aclose()
    except UpstreamError as error:
        return type(error)
    finally:
        await upstream.aclose()
    raise AssertionError("no failure")


async def _served(handler: Handler) -> type[UpstreamError]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        return await _failure(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
    await writer.drain()
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(2)
    writer.close()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SECRET-CANARY not http at all\r\n\r\n")
    await writer.drain()
    writer.close()


def test_a_refused_connection_is_a_connect_failure_not_a_timeout() -> None:
    assert asyncio.run(_failure(f"http://127.0.0.1:{free_port()}/v1")) is ConnectFailed


def test_a_connection_never_accepted_is_a_connect_timeout() -> None:
    with unanswered_port() as port:
        assert asyncio.run(_failure(f"http://127.0.0.1:{port}/v1")) is ConnectTimedOut


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (_reset, ConnectionBroken),
        (_close, ConnectionBroken),
        (_cut, ConnectionBroken),
        (_garbage, ConnectionBroken),
        (_silent, ReadTimedOut),
    ],
    ids=["reset-before-headers", "closed-before-headers", "body-cut-short", "not-http", "silent-after-request"],
)
def test_failures_after_connecting_are_never_connect_errors(handler: Handler, expected: type) -> None:
    assert asyncio.run(_served(handler)) is expected


def test_a_broken_exchange_never_quotes_what_the_upstream_sent() -> None:
    async def run() -> str:
        server = await asyncio.start_server(_garbage, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            upstream = AiohttpUpstream(
                EdgeSettings.from_env({**BASE, "CLAUDEOPUS_UPSTREAM_URL": f"http://127.0.0.1:{port}"})
            )
            try:
                await upstream.send("POST", "chat/completions", b"{}")
            except ConnectionBroken as error:
                return str(error)
            finally:
                await upstream.aclose()
        raise AssertionError("no failure")

    assert "CANARY" not in asyncio.run(run())
