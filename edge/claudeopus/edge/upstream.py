"""The one place the upstream HTTP client is built.

The edge speaks httpx's interface, but not over httpx's own connection pool:
plain ``httpx.AsyncClient`` (httpcore) collapses under concurrency, from about
1,000 to about 230 requests/s at 64 concurrent connections on our 2-core
benchmark machine (encode/httpx#3215). The ``httpx-aiohttp`` transport keeps the
httpx API (requests, streaming, timeouts, exceptions) and lets aiohttp's
connector do the I/O: 3,238 vs 664 requests/s client-side at 64 concurrent
requests against nginx. Changing the choice is a change to this module only.
"""

from __future__ import annotations

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
        transport=transport or AiohttpTransport(limits=limits),
        timeout=timeout,
        headers=headers,
        follow_redirects=False,
    )
