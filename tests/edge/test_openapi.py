"""The edge's OpenAPI document: valid, and in step with what the edge checks and answers."""

from __future__ import annotations

import jsonschema_rs
import orjson
import pytest
import schemathesis

from claudeopus.edge import errors
from claudeopus.edge.completions import DEFAULT_MAX_CHOICES, MAX_MODEL_NAME, parse_completion
from claudeopus.edge.openapi import openapi_document, openapi_json
from claudeopus.gateway_limits import MAX_OUTPUT_TOKENS

LIMIT = 1234


def test_the_document_is_valid_openapi_3_1_with_every_operation() -> None:
    schema = schemathesis.openapi.from_dict(openapi_document(LIMIT))
    schema.validate()
    operations = sorted(result.ok().label for result in schema.get_all_operations())
    assert operations == ["GET /openapi.json", "GET /v1/models", "POST /v1/chat/completions"]
    assert orjson.loads(openapi_json(LIMIT)) == openapi_document(LIMIT)


def test_every_error_the_completions_route_raises_is_documented() -> None:
    responses = openapi_document(LIMIT)["paths"]["/v1/chat/completions"]["post"]["responses"]
    route_level = {errors.RouteNotFound, errors.MethodNotAllowed}  # other paths or methods, not this operation
    statuses = {cls.status for cls in _subclasses(errors.OpenAIError) if cls not in route_level}
    assert {str(status) for status in statuses} <= set(responses)
    assert str(LIMIT) in responses["413"]["description"]
    assert "500" not in responses


def _subclasses(cls: type[errors.OpenAIError]) -> set[type[errors.OpenAIError]]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found))


def _request_validator() -> jsonschema_rs.Validator:
    schema = openapi_document(LIMIT)["components"]["schemas"]["ChatCompletionRequest"]
    return jsonschema_rs.validator_for(schema)


M = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": M},
        {"model": "m" * MAX_MODEL_NAME, "messages": M, "max_tokens": MAX_OUTPUT_TOKENS, "max_completion_tokens": 1},
        {"model": "m", "messages": [{}], "stream": True, "stream_options": {"include_usage": None}},
        {"model": "m", "messages": M, "stream": None, "stream_options": None, "max_tokens": None, "extra": [1]},
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}], "tools": []},
        {"model": "m", "messages": M, "n": DEFAULT_MAX_CHOICES, "best_of": 1},
        {"model": "m", "messages": M, "n": None, "best_of": None},
    ],
)
def test_bodies_the_document_accepts_the_edge_accepts(body: dict[str, object]) -> None:
    assert _request_validator().is_valid(body)
    parse_completion(orjson.dumps(body))


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"messages": M},
        {"model": "m"},
        {"model": "", "messages": M},
        {"model": "m" * (MAX_MODEL_NAME + 1), "messages": M},
        {"model": "m", "messages": []},
        {"model": "m", "messages": ["hi"]},
        {"model": "m", "messages": M, "stream": "yes"},
        {"model": "m", "messages": M, "stream_options": {}},
        {"model": "m", "messages": M, "stream": False, "stream_options": {"include_usage": True}},
        {"model": "m", "messages": M, "stream": True, "stream_options": {"include_usage": 1}},
        {"model": "m", "messages": M, "max_tokens": 0},
        {"model": "m", "messages": M, "max_completion_tokens": MAX_OUTPUT_TOKENS + 1},
        {"model": "m", "messages": M, "max_tokens": "5"},
        {"model": "m", "messages": M, "n": DEFAULT_MAX_CHOICES + 1},
        {"model": "m", "messages": M, "n": 0},
        {"model": "m", "messages": M, "best_of": "2"},
    ],
)
def test_bodies_the_document_refuses_the_edge_refuses(body: object) -> None:
    assert not _request_validator().is_valid(body)
    with pytest.raises(errors.BadRequest):
        parse_completion(orjson.dumps(body))
