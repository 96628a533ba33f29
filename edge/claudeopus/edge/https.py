"""HTTPS on the edge's port: uvicorn's TLS options, and a protocol that lets the edge stop promptly.

asyncio closes a TLS connection politely: it sends ``close_notify`` and waits up to 30 seconds for
the client's own, which an idle keep-alive connection in an SDK's pool never sends until it is used
again. Over plain HTTP uvicorn's graceful shutdown closes such connections at once; over TLS every
idle client would hold the edge's shutdown for those 30 seconds. :class:`HttpsProtocol` aborts a
connection that has no request in flight (it carries nothing to lose: the client opens a new one),
and lets a connection with a response in progress finish first, exactly as over HTTP.

Example::

    async with HttpServer(app, "0.0.0.0", 8443, **uvicorn_options("edge.pem", "edge.key")):
        ...
"""

from __future__ import annotations

from typing import Any

from claudeopus.edge.protocol import EdgeHttpProtocol


class HttpsProtocol(EdgeHttpProtocol):
    """The edge's protocol (OpenAI-shaped 400s), aborting idle connections on shutdown instead of closing them."""

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


def uvicorn_options(cert: str, key: str) -> dict[str, Any]:
    """Options for :class:`claudeopus.edge.server.HttpServer`: HTTPS with ``cert``/``key``, or plain HTTP.

    Both use the edge's protocol (:mod:`claudeopus.edge.protocol`).
    """
    if not cert:
        return {"http": EdgeHttpProtocol}
    return {"ssl_certfile": cert, "ssl_keyfile": key, "http": HttpsProtocol}


__all__ = ["HttpsProtocol", "uvicorn_options"]
