"""HTTP routes at OpenAI's paths; thin: read the request, call the forwarder, answer.

No ``from __future__ import annotations`` here: BlackSheep reads a handler's annotations as
objects, and calls a handler that takes only the request and is declared to return a Response
as it is, without wrapping it in a parameter binder and a response converter.
"""

from types import MappingProxyType

from blacksheep import Application, Content, Request, Response, StreamedContent
from blacksheep.contents import ASGIContent

from claudeopus import keys
from claudeopus.edge import errors
from claudeopus.edge.disconnect import Receive
from claudeopus.edge.forward import Forwarder
from claudeopus.edge.openapi import OPENAPI_PATH, openapi_json
from claudeopus.edge.replies import BodyReply, Reply

_BEARER = b"bearer "
# Every route the edge serves, with its method: the access log names a request by its template.
ROUTES = MappingProxyType({"/v1/chat/completions": "POST", "/v1/models": "GET", OPENAPI_PATH: "GET"})


def bearer_secret(request: Request) -> str:
    value = request.get_first_header(b"authorization")
    if not value:
        raise errors.missing_key()
    if value[: len(_BEARER)].lower() != _BEARER:
        raise errors.AuthenticationFailed(
            "The Authorization header must be 'Bearer <API key>'.", code="invalid_api_key"
        )
    try:
        secret = value[len(_BEARER) :].strip().decode("ascii")
    except UnicodeDecodeError:
        secret = ""
    # Malformed keys are refused before the body is read or control is asked.
    if not keys.looks_like_secret(secret):
        raise errors.AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    return secret


def require_json(request: Request) -> None:
    """Refuse a body sent as anything but JSON (415); a missing Content-Type is read as JSON."""
    value = request.get_first_header(b"content-type")
    if not value:
        return
    media_type = value.split(b";", 1)[0].strip().lower()
    if media_type != b"application/json" and not media_type.endswith(b"+json"):
        raise errors.UnsupportedMediaType(
            "The request body must be JSON, sent with 'Content-Type: application/json'.",
            code="unsupported_media_type",
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing anything over ``limit`` bytes before reading it all."""
    declared = request.get_first_header(b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    receive = _receive(request)
    if receive is None:
        return b""  # no body (BlackSheep gives a request without one no content)
    # The ASGI messages themselves: the common body is one message, read without a generator.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise errors.BadRequest("The client closed the connection before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> errors.OpenAIError:
    return errors.PayloadTooLarge(f"The request body is larger than {limit} bytes.", code="request_too_large")


def _receive(request: Request) -> Receive | None:
    content = request.content
    return content.receive if isinstance(content, ASGIContent) else None


def to_response(reply: Reply) -> Response:
    if isinstance(reply, BodyReply):
        response = Response(reply.status, None, Content(reply.content_type, reply.body))
    else:
        response = Response(reply.status, None, StreamedContent(reply.content_type, reply.events))
    for name, value in reply.headers:
        response.add_header(name, value)
    return response


def error_response(error: errors.OpenAIError) -> Response:
    response = Response(error.status, None, Content(b"application/json", error.json()))
    for name, value in error.headers:
        response.add_header(name, value)
    return response


def register_routes(app: Application, max_body_bytes: int, max_choices: int) -> None:
    """The edge's routes on ``app``; their :class:`Forwarder` is the one the app's lifespan registers
    as a service, looked up once each time the app starts (not per request)."""
    serving: list[Forwarder] = []  # the started app's forwarder

    async def resolve_forwarder(app: Application) -> None:
        serving[:] = [app.services.resolve(Forwarder)]

    async def drop_forwarder(app: Application) -> None:
        serving.clear()

    app.after_start += resolve_forwarder
    app.on_stop += drop_forwarder

    async def chat_completions(request: Request) -> Response:
        forwarder = serving[0]
        try:
            secret = bearer_secret(request)
            require_json(request)
            hashed = await forwarder.authenticate(secret)  # an unknown key never has its body read
        except errors.OpenAIError as refused:
            # The body stays unread: close the connection rather than receive it only to drop it.
            refused.headers.append((b"connection", b"close"))
            raise
        receive = _receive(request)
        raw = await read_body(request, max_body_bytes)
        return to_response(await forwarder.chat_completions(hashed, raw, receive))

    async def list_models(request: Request) -> Response:
        return to_response(await serving[0].models(bearer_secret(request)))

    document = openapi_json(max_body_bytes, max_choices)

    async def openapi_document(request: Request) -> Response:
        return Response(200, None, Content(b"application/json", document))

    async def not_found(request: Request) -> Response:
        allowed = ROUTES.get(request.path.rstrip("/"))
        if allowed is not None:
            error: errors.OpenAIError = errors.MethodNotAllowed(
                f"{request.method} is not supported on {request.path}; use {allowed}.", code="method_not_allowed"
            )
            error.headers.append((b"allow", allowed.encode()))
        else:
            error = errors.RouteNotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
        return error_response(error)

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get(OPENAPI_PATH, openapi_document)
    app.router.fallback = not_found
