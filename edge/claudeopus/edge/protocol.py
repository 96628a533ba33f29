"""The edge's HTTP/1.1 protocol: uvicorn's httptools one, refusing unparseable requests in OpenAI's shape.

A request the HTTP parser cannot read (a control character in a header value, a malformed
request line or Content-Length) never reaches the application; uvicorn answers it with a plain
text 400. :class:`EdgeHttpProtocol` answers with OpenAI's error JSON instead, so every error a
client of the edge sees has one shape.

Example::

    async with HttpServer(app, "127.0.0.1", 8080, http=EdgeHttpProtocol):
        ...
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from claudeopus.edge import errors

__all__ = ["EdgeHttpProtocol"]

_UNPARSEABLE = errors.BadRequest(
    "The HTTP request could not be parsed (a header value holds a control character, or the request is malformed).",
    code="invalid_http_request",
).json()


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering a request it cannot parse with a JSON 400."""

    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(_UNPARSEABLE)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                _UNPARSEABLE,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
