"""The edge's own OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand, because the routes read raw requests: it states exactly what
:mod:`claudeopus.edge.completions` checks (and nothing it does not, since a client
must be able to trust that a body the document calls invalid is refused), and
every status and error body the edge can answer with. A property-based run of
schemathesis against a real edge keeps the two in step
(``tests/e2e/test_schemathesis.py``).

Example::

    document = openapi_document(max_body_bytes=8 * 1024 * 1024)
    assert "/v1/chat/completions" in document["paths"]
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import orjson

from claudeopus.edge.completions import DEFAULT_MAX_CHOICES, MAX_DEPTH, MAX_MODEL_NAME
from claudeopus.gateway_limits import MAX_OUTPUT_TOKENS

__all__ = ["OPENAPI_PATH", "openapi_document", "openapi_json"]

OPENAPI_PATH = "/openapi.json"

_ERROR = {"$ref": "#/components/schemas/Error"}


def _version() -> str:
    try:
        return metadata.version("claudeopus")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _limit(note: str) -> dict[str, Any]:
    return {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": MAX_OUTPUT_TOKENS,
        "description": (
            f"The most tokens to generate per choice ({note}): an integer literal (5, not 5.0). "
            "With both limits given, the larger is reserved."
        ),
    }


def _multiplier(note: str, max_choices: int) -> dict[str, Any]:
    return {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": max_choices,
        "description": f"{note}: output is reserved for each; at most {max_choices} (CLAUDEOPUS_MAX_CHOICES).",
    }


def _schemas(max_choices: int) -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "description": "OpenAI's error body. Messages never quote the request body, a key or the upstream.",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string", "examples": ["invalid_request_error", "server_error"]},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"], "examples": ["invalid_api_key", "invalid_json"]},
                    },
                }
            },
        },
        "ChatCompletionRequest": {
            "type": "object",
            "description": (
                "What the gateway checks before forwarding; every other field (temperature, tools, ...) "
                "goes to the upstream with its value unchanged, and message contents are never inspected. "
                "A key given twice counts once, as its last value, and reaches the upstream once."
            ),
            "required": ["model", "messages"],
            "additionalProperties": True,
            "properties": {
                "model": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_MODEL_NAME,
                    "description": f"The model; at most {MAX_MODEL_NAME} printable characters.",
                },
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "description": "A chat message, forwarded as sent."},
                },
                "stream": {"type": ["boolean", "null"], "default": False},
                "stream_options": {
                    "type": ["object", "null"],
                    "properties": {"include_usage": {"type": ["boolean", "null"]}},
                },
                "max_tokens": _limit("deprecated by OpenAI in favour of max_completion_tokens"),
                "max_completion_tokens": _limit("preferred"),
                "n": _multiplier("How many choices to generate", max_choices),
                "best_of": _multiplier("How many candidates to generate (servers that support it)", max_choices),
            },
            # stream_options (an object, not null) only with "stream": true.
            "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
            "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
        },
        "ChatCompletion": {
            "type": "object",
            "description": "The upstream's chat.completion object, relayed as received.",
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": {"type": ["object", "null"]},
            },
        },
        "ChatCompletionEvent": {
            "type": "object",
            "description": (
                "One server-sent event (OpenAPI 3.1: the schema of each event): data is a chat.completion.chunk "
                "object as JSON, relayed as received, and the last event's data is [DONE]."
            ),
            "required": ["data"],
            "properties": {"data": {"type": "string"}},
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "description": "The upstream's models this key may use, as the gateway lists them.",
                    "items": {
                        "type": "object",
                        "required": ["id", "object", "created", "owned_by"],
                        "additionalProperties": False,
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"const": "model"},
                            "created": {"type": "integer"},
                            "owned_by": {"type": "string"},
                        },
                    },
                },
            },
        },
    }


def openapi_document(max_body_bytes: int, max_choices: int = DEFAULT_MAX_CHOICES) -> dict[str, Any]:
    """The document for an edge that refuses bodies over ``max_body_bytes`` and more than ``max_choices``."""
    request_id = {"x-request-id": {"description": "The request's id in usage records.", "schema": {"type": "string"}}}
    unparseable = _error("The HTTP request could not be parsed (code invalid_http_request).")
    unauthorized = _error(
        "No key, a malformed one, or one that is unknown, revoked, rotated away or expired "
        "(checked before the body is read)."
    )
    forbidden = _error("The key may not use this model or operation, or its account is suspended.")
    unavailable = _error(
        "Control could not be reached in time (nothing was forwarded), the usage spool is full, "
        "or the upstream account is out of credit."
    )
    completions = {
        "post": {
            "operationId": "createChatCompletion",
            "summary": "Create a chat completion (streaming or not), forwarded to the upstream.",
            "description": "Any other method on this path answers 405 with an Allow header.",
            "requestBody": {
                "required": True,
                "description": (
                    f"At most {max_body_bytes} bytes, nested at most {MAX_DEPTH} levels deep. A Content-Type "
                    "other than JSON is refused with 415; a missing one is read as JSON."
                ),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
            },
            "responses": {
                "200": {
                    "description": "The completion; with 'stream': true, server-sent events ending in [DONE].",
                    "headers": request_id,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                        "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionEvent"}},
                    },
                },
                "400": _error(
                    "The body is not JSON, or a checked field is missing or invalid (see param); or the HTTP "
                    "request itself could not be parsed (code invalid_http_request)."
                ),
                "401": unauthorized,
                "403": forbidden,
                "404": _error("The upstream does not know the model (its answer, redacted)."),
                "409": _error("The upstream refused the request as conflicting (its answer, redacted)."),
                "413": _error(f"The body is larger than {max_body_bytes} bytes."),
                "415": _error("The body is not sent as JSON."),
                "422": _error("The upstream refused the request's content (its answer, redacted)."),
                "429": _error("A budget ran out (insufficient_quota) or the upstream is rate limiting."),
                "502": _error("The upstream failed or answered nonsense."),
                "503": unavailable,
                "504": _error("The upstream did not answer in time."),
            },
        }
    }
    models = {
        "get": {
            "operationId": "listModels",
            "summary": "The upstream's models this key may use.",
            "description": "Any other method on this path answers 405 with an Allow header.",
            "responses": {
                "200": {
                    "description": "The model list.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}},
                },
                "400": unparseable,
                "401": unauthorized,
                "403": forbidden,
                "502": _error("The upstream failed or sent a malformed list."),
                "503": _error("Control could not be reached in time."),
                "504": _error("The upstream did not answer in time."),
            },
        }
    }
    document = {
        "get": {
            "operationId": "getOpenAPIDocument",
            "summary": "This document.",
            "security": [],
            "responses": {
                "200": {
                    "description": "This document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": unparseable,
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ClaudeOpus edge",
            "version": _version(),
            "description": (
                "OpenAI-compatible API of a ClaudeOpus gateway. Errors use OpenAI's shape; unknown paths answer 404."
            ),
        },
        "security": [{"bearer": []}],
        "paths": {"/v1/chat/completions": completions, "/v1/models": models, OPENAPI_PATH: document},
        "components": {
            "schemas": _schemas(max_choices),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A ClaudeOpus API key (sk-co-...)."}
            },
        },
    }


def openapi_json(max_body_bytes: int, max_choices: int = DEFAULT_MAX_CHOICES) -> bytes:
    """:func:`openapi_document` serialized once, as the route serves it."""
    return orjson.dumps(openapi_document(max_body_bytes, max_choices))
