"""The one place the upstream HTTP client is built.

The edge speaks httpx's interface, but not over httpx's own connection pool:
plain ``httpx.AsyncClient`` (httpcore) collapses under concurrency, from about
1,000 to about 230 requests/s at 64 concurrent connections on our 2-core
benchmark machine (encode/httpx#3215). The ``httpx-aiohttp`` transport keeps the
httpx API (requests, streaming, timeouts, exceptions) and lets aiohttp's
connector do the I/O: 3,238 vs 664 requests/s client-side at 64 concurrent
requests against nginx. Changing the choice is a change to this module only.

The rest of the edge relies on httpx's exception classes meaning what they say:

    httpx.ConnectError       no connection was made: nothing was sent, a retry is safe
    httpx.ConnectTimeout     connecting took longer than the connect timeout: nothing was sent
    httpx.ReadTimeout        connected, but the upstream fell silent for the read timeout
    httpx.ReadError,         connected, then the connection was reset, closed or cut short:
    httpx.RemoteProtocolError  the request may have reached the upstream

httpx-aiohttp 0.1 maps every ``aiohttp.ClientConnectionError`` it does not know better to
``httpx.ConnectTimeout`` (connection refused, a reset before the headers, a server closing
the connection, even a reset mid-body), so :class:`_Transport` maps them again from the
aiohttp exception it chains as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from claudeopus.edge.settings import EdgeSettings

KEEPALIVE_SECONDS = 30.0
WRITE_TIMEOUT_SECONDS = 30.0


def create_upstream_client(
    settings: EdgeSettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for the upstream, carrying the upstream's own key (never the client's)."""
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
        keepalive_expiry=KEEPALIVE_SECONDS,
    )
    timeout = httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        write=WRITE_TIMEOUT_SECONDS,
        pool=settings.upstream_connect_timeout,
    )
    headers = {"accept": "application/json"}
    if settings.upstream_api_key:
        headers["authorization"] = f"Bearer {settings.upstream_api_key}"
    return httpx.AsyncClient(
        base_url=settings.upstream_url.rstrip("/") + "/",
        transport=transport or _Transport(limits=limits),
        timeout=timeout,
        headers=headers,
        follow_redirects=False,
    )


class _Transport(AiohttpTransport):
    """``AiohttpTransport`` whose failures carry the httpx class that describes them."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as error:
            raise remapped(error) from error.__cause__
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Body(response.stream)
        return response


class _Body(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as error:
            raise remapped(error) from error.__cause__

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except httpx.TransportError as error:
            raise remapped(error) from error.__cause__


def remapped(error: httpx.TransportError) -> httpx.TransportError:
    """The httpx exception for the aiohttp failure behind ``error`` (``error`` itself if it is right)."""
    cause = error.__cause__
    kind: type[httpx.TransportError]
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(cause, aiohttp.ServerTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(cause, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(cause, aiohttp.ServerDisconnectedError):
        kind = httpx.RemoteProtocolError
    elif isinstance(cause, aiohttp.ClientConnectionError):
        kind = httpx.ReadError
    else:
        return error
    if type(error) is kind:
        return error
    # The aiohttp message names the host and the OS error, never a body; keep it for debugging.
    return kind(str(error), request=error._request)
