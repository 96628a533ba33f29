"""The one place the upstream HTTP client lives: aiohttp, behind a small interface.

The edge needs four things from an upstream exchange: send a request and get the
response head, read the whole body, iterate the body as it arrives (SSE), and close.
:class:`Upstream` and :class:`UpstreamResponse` are exactly that, so the choice of
HTTP client is this module only.

Why aiohttp directly. Measured on our 2-core benchmark machine against nginx, client
side, 64 concurrent requests: httpx's own pool 664 requests/s (it collapses under
concurrency, encode/httpx#3215), httpx over the ``httpx-aiohttp`` transport 3,238,
aiohttp directly 15,209. End to end through the edge, the benchmark's A/B (README,
"Benchmark") decided it: httpx's request and response objects on top of aiohttp cost
more than the 25 % the choice allowed.

Failures carry what they mean for the caller, from the aiohttp error behind them:

    ConnectFailed       no connection was made: nothing was sent, a retry is safe
    ConnectTimedOut     connecting took longer than the connect timeout: nothing was sent
    ReadTimedOut        connected, but the upstream fell silent for the read timeout
    ConnectionBroken    connected, then the connection was reset, closed or cut short,
                        or the answer was not HTTP: the request may have reached the upstream

Their messages name a host or an OS error, never anything the upstream sent.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol

import aiohttp
import certifi
from yarl import URL

from claudeopus.edge.settings import EdgeSettings

KEEPALIVE_SECONDS = 30.0
READ_CHUNK_BYTES = 64 * 1024


class UpstreamError(Exception):
    """An upstream exchange failed; the subclass says how far it got."""


class ConnectFailed(UpstreamError):
    """No connection was made (refused, unreachable): nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class ConnectTimedOut(UpstreamTimeout):
    """Connecting (or waiting for a free connection) took longer than the connect timeout."""


class ReadTimedOut(UpstreamTimeout):
    """Connected, but the upstream fell silent for longer than the read timeout."""


class ConnectionBroken(UpstreamError):
    """Connected, then the exchange broke: the upstream may have seen the request."""


class UpstreamResponse(Protocol):
    """A response whose head has arrived; its body is read once, whole or as it comes."""

    @property
    def status_code(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    async def aread(self) -> bytes: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """Requests to the upstream's API, relative to its base URL (``chat/completions``)."""

    async def send(self, method: str, path: str, body: bytes | None = None) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class AiohttpUpstream:
    """One aiohttp session (connection pool) for the upstream, carrying the upstream's own key.

    Example::

        upstream = AiohttpUpstream(settings)
        response = await upstream.send("POST", "chat/completions", body)
        body = await response.aread()
        await upstream.aclose()
    """

    def __init__(self, settings: EdgeSettings) -> None:
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_max_connections,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=_ssl_context(settings.upstream_ca_file) if settings.upstream_url.startswith("https://") else True,
        )
        headers = {"accept": "application/json"}
        if settings.upstream_api_key:
            headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.upstream_connect_timeout,  # a free connection, then connecting
                sock_connect=settings.upstream_connect_timeout,
                sock_read=settings.upstream_read_timeout,
            ),
            read_bufsize=READ_CHUNK_BYTES,
            raise_for_status=False,
        )
        self._base = settings.upstream_url.rstrip("/") + "/"
        self._urls: dict[str, URL] = {}

    async def send(self, method: str, path: str, body: bytes | None = None) -> UpstreamResponse:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._base + path)
        headers = {"content-type": "application/json"} if body is not None else None
        with _mapped:
            response = await self._session.request(method, url, data=body, headers=headers, allow_redirects=False)
        return _Response(response)

    async def aclose(self) -> None:
        await self._session.close()


class _Response:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.content_type = response.headers.get("content-type", "")

    async def aread(self) -> bytes:
        with _mapped:
            return await self._response.read()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            with _mapped:
                chunk = await content.readany()
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # A body read to its end has already gone back to the pool; one cut short (a client
        # that left mid-stream, a timeout) closes its connection rather than reuse it half read.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class _Mapped:
    """aiohttp's failures as this module's; the order matters (the classes overlap). A class, not a
    generator-based context manager: it wraps every upstream call, and this costs a fifth as much."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if error is None or not isinstance(error, aiohttp.ClientError):
            return
        if isinstance(error, aiohttp.ConnectionTimeoutError):
            raise ConnectTimedOut(str(error)) from error
        if isinstance(error, aiohttp.ServerTimeoutError):
            raise ReadTimedOut(str(error)) from error
        if isinstance(error, aiohttp.ClientConnectorError):
            raise ConnectFailed(str(error)) from error
        # Only the class: a parser error's text can quote what the upstream sent.
        raise ConnectionBroken(type(error).__name__) from error


_mapped = _Mapped()


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    """Verify the upstream against ``ca_file`` (the edge's SSL_CERT_FILE) when set, else certifi's bundle."""
    return ssl.create_default_context(cafile=ca_file or certifi.where())
