"""Reading a chat-completion request: just enough to authorize and forward it.

Only the fields the gateway needs are looked at (model, stream, stream_options,
max_tokens / max_completion_tokens, the multipliers n and best_of, that messages is a
non-empty list). Message contents are never inspected, copied into an error, or logged.

What goes upstream is the parsed object written again (orjson), not the client's bytes: a
key the client wrote twice, or spelt with escapes (``"mod\\u0065l"``), is read once here
and sent once, so the upstream serves exactly the model, output cap and number of choices
that were authorized, whichever duplicate its own parser would have kept. Every other field
passes with its value unchanged (numbers keep their value; only the JSON spelling may differ).
Everything here is one linear pass of orjson each way.

Example::

    request = parse_completion(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    assert request.model == "m" and not request.stream and request.choices == 1
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from claudeopus.edge.errors import BadRequest
from claudeopus.gateway_limits import MAX_OUTPUT_TOKENS

MAX_MODEL_NAME = 200
# Rough bytes-per-token of English JSON chat payloads; used only for the
# reservation estimate, never for billing.
BYTES_PER_TOKEN = 4
# How many choices (n, best_of) one request may ask for, unless the edge's settings say fewer or more
# (at most gateway_limits.MAX_CHOICES, the most control reserves for).
DEFAULT_MAX_CHOICES = 8
# How deep a body may nest: orjson reads 1024 levels but writes 254, and the body is written again.
MAX_DEPTH = 254
# Request fields that multiply what the upstream generates: each choice may produce the output cap.
MULTIPLIERS = ("n", "best_of")


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    stream: bool
    # The client asked for the final usage chunk itself.
    include_usage: bool
    # The output cap of each choice (0: none named).
    max_output_tokens: int
    # Rough input tokens (bytes / 4): billed only when the upstream reports no usage.
    estimated_input_tokens: int
    # Input tokens reserved against budgets: the body length in bytes, an upper bound for text
    # (no tokenizer spends less than a byte per token, and the JSON framing of each message is
    # longer than the chat template's per-message tokens).
    input_token_bound: int
    # What goes to the upstream: ``body`` written again (for streams: with include_usage forced on).
    upstream_body: bytes = field(repr=False)
    # How many choices the upstream generates (the larger of n and best_of; 1 when neither is given).
    choices: int = 1
    # The parsed body (never shown: it holds the prompt).
    body: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def reserved_output_tokens(self) -> int:
        """The most output the upstream may produce in all: the cap of each choice times the choices."""
        return self.max_output_tokens * self.choices


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
    """The output cap: the larger of the two limits when both are given (an upstream may honour either)."""
    most = 0
    for name in _LIMIT_KEYS:
        value = body.get(name)
        if value is None:
            continue
        most = max(most, _bounded(name, value, MAX_OUTPUT_TOKENS))
    return most


def _choices(body: dict[str, Any], max_choices: int) -> int:
    """How many choices the upstream generates: the larger of n and best_of (1 when neither is given)."""
    most = 1
    for name in MULTIPLIERS:
        value = body.get(name)
        if value is not None:
            most = max(most, _bounded(name, value, max_choices))
    return most


def _bounded(name: str, value: object, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise BadRequest(f"'{name}' must be an integer from 1 to {most}.", param=name, code="invalid_value")
    return value


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


def parse_completion(raw: bytes, max_choices: int = DEFAULT_MAX_CHOICES) -> CompletionRequest:
    """Check a ``/v1/chat/completions`` body; raise :class:`BadRequest` with OpenAI's wording."""
    body = _object(raw)
    model = _model(body)
    _messages(body)
    stream = _bool(body, "stream")
    max_output = _max_tokens(body)
    choices = _choices(body, max_choices)
    include_usage, options = _stream_options(body, stream)
    if stream and not include_usage:
        # Always ask the upstream for usage: billing needs it; the extra chunk is
        # removed again on the way back.
        body["stream_options"] = {**options, "include_usage": True}
    return CompletionRequest(
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_output_tokens=max_output,
        estimated_input_tokens=len(raw) // BYTES_PER_TOKEN + 1,
        input_token_bound=len(raw),
        upstream_body=_written(body),
        choices=choices,
        body=body,
    )


def with_output_cap(completion: CompletionRequest, tokens: int, field: str) -> CompletionRequest:
    """The request with ``field`` (max_completion_tokens or max_tokens) set to the reserved ``tokens``.

    Used when the client named no limit but a budget holds a default one (per choice): the
    upstream must not produce more than was reserved. A limit the client sent as null is dropped,
    so the upstream sees exactly one limit.
    """
    body = {k: v for k, v in completion.body.items() if k not in _LIMIT_KEYS or v is not None}
    body[field] = tokens
    return replace(completion, upstream_body=_written(body), max_output_tokens=tokens, body=body)


_LIMIT_KEYS = ("max_completion_tokens", "max_tokens")


def _written(body: dict[str, Any]) -> bytes:
    """The body as the upstream gets it; nested deeper than MAX_DEPTH, it cannot be written: refused."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None
