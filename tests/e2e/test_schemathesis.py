"""Bad input at the edge: schemathesis against the edge's own OpenAPI document, then hand-made abuse.

The document is fetched from a real edge (real control, fake upstream). Every operation is
run through schemathesis' coverage phase (boundary and invalid values, each once) and a seeded
Hypothesis fuzzing phase (positive and negative data), with a valid key, a key under a budget
(so the edge writes its default output cap into bodies), an unknown but well-formed key and a
malformed one. No response may be a 5xx or stray from the document (status, content type,
headers, body schema), and data the document calls invalid must be refused. ``-s`` prints the
case and 5xx counts per key and in total.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from claudeopus.edge.completions import MAX_OUTPUT_TOKENS
from tests.support import admin
from tests.support.processes import Gateway

pytestmark = pytest.mark.timeout(180)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Hypothesis examples per (operation, generation mode), by key.
FUZZ_EXAMPLES = {"valid": 200, "budgeted": 100, "unknown": 60, "malformed": 60}
UNKNOWN_KEY = "sk-co-" + "U" * 43
MALFORMED_KEY = "not-a-key"
# The fake upstream writes max_tokens words; a real one stops early. Keep each answer small.
FAKE_OUTPUT_CAP = 16


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


@pytest.fixture(scope="module")
def totals() -> Iterator[Tally]:
    total = Tally()
    yield total
    if total.cases:
        print(f"\nschemathesis {schemathesis.__version__} total: {total.cases} cases, {total.server_errors} x 5xx")


@pytest.fixture(scope="module")
def edge(gateway: Gateway) -> str:
    return gateway.edge_url.removesuffix("/v1")


@pytest.fixture(scope="module")
def schema(edge: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{edge}/openapi.json", timeout=10)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def _cheap_for_the_fake(case: schemathesis.Case) -> None:
    """Cap what the fake upstream would write (it honours any max_tokens word for word)."""
    body = case.body
    if isinstance(body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            # Only valid values, so invalid data stays invalid (the edge must still refuse it).
            if type(value) is int and FAKE_OUTPUT_CAP < value <= MAX_OUTPUT_TOKENS:
                body[name] = FAKE_OUTPUT_CAP


def _exercise(
    case: schemathesis.Case, base_url: str, session: requests.Session, tally: Tally, headers: dict[str, str] | None
) -> None:
    _cheap_for_the_fake(case)
    response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
    tally.cases += 1
    tally.statuses[response.status_code] += 1
    try:
        case.validate_response(
            response, checks=CHECKS, headers=headers, transport_kwargs={"base_url": base_url, "session": session}
        )
    except FailureGroup as group:
        tally.failures.append(f"{case.operation.label} -> {response.status_code}: {group}")


def _coverage(
    schema: schemathesis.BaseSchema, base_url: str, session: requests.Session, tally: Tally, headers: dict[str, str]
) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        config = schema.config.generation_for(operation=operation)
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config):
            _exercise(case, base_url, session, tally, headers)


def _fuzz(
    schema: schemathesis.BaseSchema,
    base_url: str,
    session: requests.Session,
    tally: Tally,
    headers: dict[str, str],
    examples: int,
) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, headers=headers)

            @settings(
                max_examples=examples,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                _exercise(case, base_url, session, tally, None)

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE and not operation.body, operation.label  # nothing to negate


def _secret(gateway: Gateway, key: str) -> str:
    if key == "unknown":
        return UNKNOWN_KEY
    if key == "malformed":
        return MALFORMED_KEY
    key_name, secret = gateway.new_user_key()
    if key == "budgeted":
        _budget(gateway, key_name)
    return secret


def _budget(gateway: Gateway, key_name: str) -> None:
    """A budget far from running out: its only effect is the default output cap written into bodies."""
    admin.call(
        gateway.control_target,
        gateway.admin_key,
        lambda c: c.create_budget(key_name, metric="output_tokens", period="total", limit=10**12),
    )


@pytest.mark.parametrize("key", list(FUZZ_EXAMPLES))
def test_schemathesis_finds_no_5xx_and_no_response_outside_the_document(
    gateway: Gateway,
    edge: str,
    schema: schemathesis.BaseSchema,
    session: requests.Session,
    totals: Tally,
    key: str,
) -> None:
    headers = {"Authorization": f"Bearer {_secret(gateway, key)}"}
    tally = Tally()
    started = time.monotonic()
    _coverage(schema, edge, session, tally, headers)
    covered = tally.cases
    _fuzz(schema, edge, session, tally, headers, FUZZ_EXAMPLES[key])
    print(
        f"\nschemathesis {schemathesis.__version__} ({key} key): {tally.cases} cases "
        f"({covered} coverage, {tally.cases - covered} fuzzed), {tally.server_errors} x 5xx, "
        f"{len(tally.failures)} failures, statuses {dict(sorted(tally.statuses.items()))}, "
        f"{time.monotonic() - started:.1f}s"
    )
    totals.cases += tally.cases
    totals.statuses.update(tally.statuses)
    assert tally.server_errors == 0
    assert not tally.failures, "\n\n".join(tally.failures[:5])


# -- hand-made abuse ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def error(self) -> dict[str, Any]:
        assert self.content_type.startswith("application/json"), (self.status, self.content_type, self.body[:200])
        error = orjson.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        return error


def _raw(edge: str, head: bytes, body: bytes = b"") -> Answer:
    """Send bytes no well-behaved client would, and read the answer."""
    host, port = edge.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, response.getheader("content-type", ""), response.read())


def _post(edge: str, secret: str, body: bytes, *headers: bytes) -> Answer:
    lines = [
        b"POST /v1/chat/completions HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Authorization: Bearer " + secret.encode(),
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
        *(headers or (b"Content-Type: application/json",)),
    ]
    return _raw(edge, b"\r\n".join(lines), body)


def _refused(answer: Answer, status: int, code: str | None = None) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    error = answer.error()
    if code is not None:
        assert error["code"] == code, error
    return error


def _messages(count: int, last: bytes = b"{}") -> bytes:
    return b'{"model": "fake-1", "messages": [' + b"{}," * (count - 1) + last + b"]}"


@pytest.fixture(scope="module")
def secret(gateway: Gateway) -> str:
    return gateway.new_user_key()[1]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "fake-1", "messages": [{"role": "user", "content": "\xff\xfe\xc3\x28"}]}',
        b'{"model": "\xe9t\xe9", "messages": [{"role": "user", "content": "x"}]}',
        '{"model": "fake-1", "messages": [{"role": "user", "content": "x"}]}'.encode("utf-16"),
        b"\xef\xbb\xbf" + b'{"model": "fake-1", "messages": [{"role": "user", "content": "x"}]}',
        b"\x00" * 64,
    ],
    ids=["invalid-utf8-content", "latin1-model", "utf16", "utf8-bom", "nul-bytes"],
)
def test_bodies_that_are_not_utf8_json_are_400(edge: str, secret: str, body: bytes) -> None:
    _refused(_post(edge, secret, body), 400, "invalid_json")


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (b"Bearer sk-co-" + b"A" * 1_000_000, 401, "invalid_api_key"),
        (b"Bearer " + b"x" * 200_000, 401, "invalid_api_key"),
        (b"Bearer sk-co-" + b"\xff\xfe" * 30, 401, "invalid_api_key"),
        (b"Bearer \t sk-co-" + b"A" * 43 + b"\t", 401, "invalid_api_key"),
        (b"Basic dXNlcjpwYXNz", 401, "invalid_api_key"),
        (b"Bearer", 401, "invalid_api_key"),
        (b"", 401, "missing_api_key"),
        # The HTTP parser refuses these before the edge sees the request.
        (b"Bearer sk-co-" + b"A" * 20 + b"\x01\x02\x1b[31m" + b"A" * 20, 400, "invalid_http_request"),
        (b"Bearer sk-co-" + b"A" * 43 + b"\x7f", 400, "invalid_http_request"),
        (b"Bearer sk-co-" + b"A" * 43 + b"\x00", 400, "invalid_http_request"),
    ],
    ids=["1MB-key", "200kB-junk", "high-bytes", "tabs", "basic", "no-secret", "empty", "control-chars", "del", "nul"],
)
def test_absurd_authorization_headers_are_refused(edge: str, authorization: bytes, status: int, code: str) -> None:
    body = _messages(1)
    answer = _raw(
        edge,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nAuthorization: " + authorization,
        body,
    )
    _refused(answer, status, code)


@pytest.mark.parametrize(
    "headers",
    [
        (b"X-Junk: " + b"j" * 500_000,),
        tuple(b"X-Many-%d: v" % i for i in range(5000)),
        (b"Content-Type: application/json", b"X-Ctl: a\x01b\x1bc"),
        (b"Content-Type: application/json", b"User-Agent: \xff\xfe\xfd"),
        (b"Content-Type: application/json; charset=\x01",),
    ],
    ids=["500kB-header", "5000-headers", "control-chars", "high-bytes", "control-in-content-type"],
)
def test_absurd_other_headers_never_break_the_edge(edge: str, secret: str, headers: tuple[bytes, ...]) -> None:
    answer = _post(edge, secret, _messages(1), *headers)
    assert answer.status < 500
    if answer.status != 200:
        answer.error()


@pytest.mark.parametrize(
    "content_type",
    [
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=xyz",
        b"application/xml",
        b"application/octet-stream",
        b"garbage",
        b"application/jsonx",
        b"",
    ],
)
def test_unknown_content_types_are_415(edge: str, secret: str, content_type: bytes) -> None:
    answer = _post(edge, secret, _messages(1), b"Content-Type: " + content_type)
    if content_type:
        _refused(answer, 415, "unsupported_media_type")
    else:
        assert answer.status == 200, "a missing Content-Type is read as JSON"


def test_json_content_types_are_read(edge: str, secret: str) -> None:
    for content_type in (b"application/json; charset=utf-8", b"APPLICATION/JSON", b"application/vnd.api+json"):
        assert _post(edge, secret, _messages(1), b"Content-Type: " + content_type).status == 200


def test_very_many_messages(gateway: Gateway, edge: str, secret: str) -> None:
    many = _messages(100_000)
    assert _post(edge, secret, many).status == 200, "100,000 tiny messages within the body limit are forwarded"
    assert len(gateway.upstream.received[-1].body["messages"]) == 100_000
    error = _refused(_post(edge, secret, _messages(100_000, last=b"7")), 400, "invalid_type")
    assert error["param"] == "messages[99999]"
    # Over the 8 MiB limit: refused on the declared length, before a byte of the body is read.
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
    head += secret.encode() + b"\r\nContent-Length: %d" % len(_messages(3_000_000))
    _refused(_raw(edge, head), 413, "request_too_large")


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"model": "fake-1", "messages": [{"content": %s}]}' % _nested(100_000), 400),
        (b'{"model": "fake-1", "messages": [{"content": %s}]}' % _nested(1_500), 400),
        (b"%s" % _nested(500), 400),
        (b'{"model": "fake-1", "messages": %s}' % (b'{"a":' * 5_000 + b"1" + b"}" * 5_000), 400),
        (
            b'{"model": "fake-1", "messages": [{"content": %s}], "stream": true, "stream_options": {}}' % _nested(300),
            400,
        ),
        (b'{"model": "fake-1", "messages": [{"content": %s}]}' % _nested(300), 400),  # the body is written again
        (b'{"model": "fake-1", "messages": [{"content": %s}]}' % _nested(250), 200),
    ],
    ids=[
        "100k-deep",
        "1500-deep",
        "top-level-array",
        "deep-objects",
        "300-deep-rewritten",
        "300-deep-relayed",
        "250-deep-relayed",
    ],
)
def test_deep_nesting(edge: str, secret: str, body: bytes, status: int) -> None:
    answer = _post(edge, secret, body)
    if status == 200:
        assert answer.status == 200, answer.body[:300]
    else:
        _refused(answer, status, "invalid_json")


def test_deep_nesting_under_a_default_output_cap_is_400_not_500(gateway: Gateway, edge: str) -> None:
    """A budget makes the edge write the output cap into the body; a body too deep to rewrite is refused."""
    key_name, secret = gateway.new_user_key()
    _budget(gateway, key_name)
    for body in (
        b'{"model": "fake-1", "messages": [{"content": %s}], "max_tokens": null}' % _nested(300),
        b'{"model": "fake-1", "messages": [{"content": %s, "max_tokens": 1}]}' % _nested(300),
    ):
        _refused(_post(edge, secret, body), 400, "invalid_json")
    answer = _post(edge, secret, b'{"model": "fake-1", "messages": [{"content": %s}]}' % _nested(250))
    assert answer.status == 200, "deep, but not too deep to be written again with the cap"
