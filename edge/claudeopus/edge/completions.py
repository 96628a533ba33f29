"""Reading a chat-completion request: just enough to authorize and forward it.

Only the fields the gateway needs are looked at (model, stream, stream_options,
max_tokens / max_completion_tokens, that messages is a non-empty list). Message
contents are never inspected, copied into an error, or logged.

Example::

    request = parse_completion(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    assert request.model == "m" and not request.stream
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import orjson

from claudeopus.edge.errors import BadRequest

MAX_MODEL_NAME = 200
# Far above any model's output window; keeps every count inside int64 downstream.
MAX_OUTPUT_TOKENS = 100_000_000
# Rough bytes-per-token of English JSON chat payloads; used only for the
# reservation estimate, never for billing.
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    stream: bool
    # The client asked for the final usage chunk itself.
    include_usage: bool
    max_output_tokens: int
    # Rough input tokens (bytes / 4): billed only when the upstream reports no usage.
    estimated_input_tokens: int
    # Input tokens reserved against budgets: the body length in bytes, an upper bound for text
    # (no tokenizer spends less than a byte per token, and the JSON framing of each message is
    # longer than the chat template's per-message tokens).
    input_token_bound: int
    # What goes to the upstream (for streams: with include_usage forced on).
    upstream_body: bytes


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME or not model.isprintable():
        raise BadRequest(
            f"'model' must be a non-empty string of at most {MAX_MODEL_NAME} printable characters.",
            param="model",
            code="invalid_type",
        )
    return model


def _messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", param="messages", code="invalid_type")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"'messages[{index}]' must be an object.", param=f"messages[{index}]", code="invalid_type")


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean.", param=name, code="invalid_type")
    return value


def _max_tokens(body: dict[str, Any]) -> int:
    best = 0
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
            raise BadRequest(
                f"'{name}' must be an integer from 1 to {MAX_OUTPUT_TOKENS}.", param=name, code="invalid_value"
            )
        best = best or value
    return best


def _stream_options(body: dict[str, Any], stream: bool) -> tuple[bool, dict[str, Any]]:
    options = body.get("stream_options")
    if options is None:
        return False, {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object.", param="stream_options", code="invalid_type")
    if not stream:
        raise BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    include = options.get("include_usage", False)
    if include is not None and not isinstance(include, bool):
        raise BadRequest(
            "'stream_options.include_usage' must be a boolean.",
            param="stream_options.include_usage",
            code="invalid_type",
        )
    return bool(include), options


def parse_completion(raw: bytes) -> CompletionRequest:
    """Check a ``/v1/chat/completions`` body; raise :class:`BadRequest` with OpenAI's wording."""
    body = _object(raw)
    model = _model(body)
    _messages(body)
    stream = _bool(body, "stream")
    max_output = _max_tokens(body)
    include_usage, options = _stream_options(body, stream)
    if any(raw.count(name) > 1 for name in _CHECKED_KEYS):
        # Parsers disagree on which duplicate wins: the reserved output cap must be the upstream's.
        _reject_duplicate_top_level_keys(raw)
    if not max_output and any(name in raw for name in _LIMIT_NAMES):
        # with_output_cap would have to rewrite this body after authorize (a null or nested limit
        # key): refuse now, before anything is reserved, a body too deep to be written again.
        _check_rewritable(body)
    upstream_body = raw
    if stream and not include_usage:
        # Always ask the upstream for usage: billing needs it; the extra chunk is
        # removed again on the way back.
        upstream_body = _with_usage_requested(raw, body, options)
    return CompletionRequest(
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_output_tokens=max_output,
        estimated_input_tokens=len(raw) // BYTES_PER_TOKEN + 1,
        input_token_bound=len(raw),
        upstream_body=upstream_body,
    )


def with_output_cap(completion: CompletionRequest, tokens: int, field: str) -> CompletionRequest:
    """The request with ``field`` (max_completion_tokens or max_tokens) set to the reserved ``tokens``.

    Used when the client named no limit but a budget holds a default one: the
    upstream must not produce more than was reserved. The key is spliced in
    before the closing brace, so everything the client wrote stays as it was.
    """
    body = completion.upstream_body.rstrip()
    if any(name in body for name in _LIMIT_NAMES):
        # The client sent a limit key as null: set it in place (and drop null ones), so the
        # upstream sees exactly one limit whatever its parser does with repeated keys.
        parsed = {k: v for k, v in orjson.loads(body).items() if k not in _LIMIT_KEYS or v is not None}
        parsed[field] = tokens
        return replace(completion, upstream_body=orjson.dumps(parsed), max_output_tokens=tokens)
    capped = body[:-1].rstrip() + b',"' + field.encode() + b'":' + str(tokens).encode() + b"}"
    return replace(completion, upstream_body=capped, max_output_tokens=tokens)


_LIMIT_KEYS = ("max_tokens", "max_completion_tokens")
_LIMIT_NAMES = (b'"max_tokens"', b'"max_completion_tokens"')
_CHECKED_KEYS = (b'"model"', b'"max_tokens"', b'"max_completion_tokens"')
_USAGE_OPTION = b'"stream_options":{"include_usage":true}'


def _with_usage_requested(raw: bytes, body: dict[str, Any], options: dict[str, Any]) -> bytes:
    """The body with ``stream_options.include_usage`` on, the client's bytes kept where possible."""
    if "stream_options" not in body:
        # Splice one key in before the closing brace: numbers, key order and
        # anything else the client wrote reach the upstream unchanged.
        end = raw.rstrip()
        return end[:-1].rstrip() + b"," + _USAGE_OPTION + b"}"
    body["stream_options"] = {**options, "include_usage": True}
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None


def _check_rewritable(body: dict[str, Any]) -> None:
    """Refuse a body orjson can read but not write: it nests deeper than orjson writes (254 levels)."""
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None


def _reject_duplicate_top_level_keys(raw: bytes) -> None:
    """Refuse a body naming a top-level key twice: parsers disagree on which one wins."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        return dict(pairs) | {"__pairs__": pairs}

    try:
        top = json.loads(raw, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    names = [name for name, _ in top["__pairs__"]]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BadRequest(
            f"The request body repeats the key '{duplicates[0]}'.", param=duplicates[0], code="invalid_json"
        )
