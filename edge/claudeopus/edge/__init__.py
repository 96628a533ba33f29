"""ClaudeOpus edge: the OpenAI-compatible HTTP API (BlackSheep) in front of an upstream.

Layout:

- ``settings``: the typed settings object, read once.
- ``app``: ``build_app(settings)`` assembles routes, lifespan and error handlers.
- ``routes``: thin handlers for ``/v1/chat/completions``, ``/v1/models`` and ``/openapi.json``.
- ``openapi``: the edge's own OpenAPI 3.1 document (what it checks, every status it answers).
- ``protocol``: uvicorn's HTTP protocol, refusing unparseable requests with OpenAI's error JSON.
- ``completions``: parsing and checking a completion request (no framework).
- ``sse``: splitting an SSE byte stream into events and reading ``usage`` (no framework).
- ``relay``: relaying an upstream stream chunk by chunk, settling at the end.
- ``upstream``: the one place the upstream HTTP client is built.
- ``control``: the gRPC client of control's internal gateway service.
- ``settler``: owned background settles, drained on shutdown.
- ``spool``: the durable local spool of settles that could not reach control.
- ``replay``: the owned task that replays the spool to control, oldest first.
- ``errors``: OpenAI-shaped errors.
- ``access_log``: one line per request (ASGI middleware) to a rotating file and/or stdout.
"""

from claudeopus.edge.app import build_app
from claudeopus.edge.settings import EdgeSettings

__all__ = ["EdgeSettings", "build_app"]
