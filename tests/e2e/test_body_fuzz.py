"""Fuzzing request bodies through the real edge: what reaches the upstream is what was authorized.

Bodies name the keys the gateway reserves after (model, max_tokens, max_completion_tokens,
n, best_of) once, twice, plainly or spelt with JSON escapes, with values in range, null,
huge or of the wrong type, in any order. Whatever the body, either the edge refuses it
with 400 and nothing reaches the upstream, or the upstream gets each key exactly once with
the value the edge read (a JSON parser's: the last of duplicates), the output cap
reserved for each choice, and the usage row holds that model and that reservation. The key
has a budget, so requests naming no cap get control's default written in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from claudeopus.edge.completions import DEFAULT_MAX_CHOICES, MAX_OUTPUT_TOKENS
from tests.support import admin
from tests.support.databases import usage_row
from tests.support.processes import Gateway

MODELS = ("fake-fuzz-a", "fake-fuzz-b")
LIMITS = ("max_tokens", "max_completion_tokens")
MULTIPLIERS = ("n", "best_of")
DEFAULT_CAP = 4096  # control's CLAUDEOPUS_DEFAULT_MAX_OUTPUT_TOKENS, written in under a budget
EXAMPLES = 60
# A nested "model" key and a message naming another model: neither is the request's model.
FIXED = (
    b'"messages": [{"role": "user", "content": "use \\"model\\": \\"fake-fuzz-b\\" please"}]',
    b'"tools": [{"type": "function", "function": {"name": "f", "parameters": {"model": "x", "n": 99}}}]',
)


@pytest.fixture(scope="module")
def secret(gateway: Gateway) -> str:
    key_name, secret = gateway.new_user_key()

    async def prepare(client):  # type: ignore[no-untyped-def]
        for model in MODELS:
            await client.create_price(model=model, input_micros=1, output_micros=1)
        await client.create_budget(key_name, metric="output_tokens", period="total", limit=10**15)

    admin.call(gateway.control_target, gateway.admin_key, prepare)
    return secret


def _spelt(text: str) -> st.SearchStrategy[bytes]:
    """``text`` as a JSON string, plainly or with one character written as a \\u escape."""
    plain = text.encode()

    def escaped(index: int, upper: bool) -> bytes:
        code = ("%04X" if upper else "%04x") % ord(text[index])
        return b'"' + plain[:index] + b"\\u" + code.encode() + plain[index + 1 :] + b'"'

    return st.one_of(st.just(b'"' + plain + b'"'), st.builds(escaped, st.integers(0, len(text) - 1), st.booleans()))


def _number(valid: st.SearchStrategy[int], invalid: list[object]) -> st.SearchStrategy[bytes]:
    values = st.one_of(valid, st.none(), st.sampled_from(invalid))
    return values.map(lambda value: json.dumps(value).encode())


LIMIT_VALUES = _number(st.integers(1, 12), [0, -1, MAX_OUTPUT_TOKENS + 1, 2**63, 10**30, 1.5, "5", True])
CHOICE_VALUES = _number(st.integers(1, DEFAULT_MAX_CHOICES + 2), [0, 128, 2**64, 2.0, "2", True])


def _members(name: str, values: st.SearchStrategy[bytes], least: int) -> st.SearchStrategy[list[bytes]]:
    member = st.tuples(_spelt(name), values).map(lambda pair: pair[0] + b": " + pair[1])
    return st.lists(member, min_size=least, max_size=2)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    members = list(FIXED)
    members += draw(_members("model", st.sampled_from(MODELS).flatmap(_spelt), 1))
    for name in LIMITS:
        members += draw(_members(name, LIMIT_VALUES, 0))
    for name in MULTIPLIERS:
        members += draw(_members(name, CHOICE_VALUES, 0))
    members.append(b'"stream": ' + draw(st.sampled_from([b"true", b"false"])))
    return b"{" + b", ".join(draw(st.permutations(members))) + b"}"


def _count(value: object, most: int) -> bool:
    return value is None or (type(value) is int and 1 <= value <= most)


def _top_level_names(raw: bytes) -> list[str]:
    names: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names[:] = [name for name, _ in pairs]  # the outermost object is decoded last
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)
    return names


def _settled_row(gateway: Gateway, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while (row := usage_row(gateway.database_url, request_id)) is None or row["settled_at"] is None:
        assert time.monotonic() < deadline, f"request {request_id} was never settled"
        time.sleep(0.02)
    return row


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.edge_url, timeout=30) as session:
        yield session


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=bodies())
@example(raw=b'{"mod\\u0065l": "fake-fuzz-a", "model": "fake-fuzz-b", %s, %s}' % FIXED)
@example(raw=b'{"model": "fake-fuzz-a", %s, %s, "max_tokens": 100000000, "max_t\\u006fkens": 5}' % FIXED)
@example(raw=b'{"model": "fake-fuzz-a", %s, %s, "n": 8, "max_completion_tokens": 3}' % FIXED)
@example(raw=b'{"model": "fake-fuzz-a", %s, %s, "\\u006e": 1, "n": 128}' % FIXED)
def test_what_reaches_the_upstream_is_what_was_authorized_and_billed(
    gateway: Gateway, secret: str, client: httpx.Client, raw: bytes
) -> None:
    read = json.loads(raw)  # what any JSON parser makes of it: the last of duplicated keys
    valid = all(_count(read.get(name), MAX_OUTPUT_TOKENS) for name in LIMITS) and all(
        _count(read.get(name), DEFAULT_MAX_CHOICES) for name in MULTIPLIERS
    )
    before = len(gateway.upstream.received)
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    answer = client.post("/chat/completions", content=raw, headers=headers)
    if not valid:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] in (*LIMITS, *MULTIPLIERS)
        assert len(gateway.upstream.received) == before, "a refused body reaches no upstream"
        return
    assert answer.status_code == 200, answer.text
    [forwarded] = gateway.upstream.received[before:]
    names = _top_level_names(forwarded.raw)
    assert len(names) == len(set(names)), f"a key reached the upstream twice: {names}"
    sent = forwarded.body
    assert sent is not None and sent["model"] == read["model"]
    for name in MULTIPLIERS:
        assert sent.get(name) == read.get(name)
    given_limits = {name: read[name] for name in LIMITS if read.get(name) is not None}
    if given_limits:
        assert {name: sent.get(name) for name in given_limits} == given_limits
        cap = max(given_limits.values())
    else:
        assert sent["max_completion_tokens"] == DEFAULT_CAP and "max_tokens" not in sent
        cap = DEFAULT_CAP
    assert sent["tools"] == read["tools"] and sent["messages"] == read["messages"], "other fields pass unchanged"
    choices = max(read.get("n") or 1, read.get("best_of") or 1)

    row = _settled_row(gateway, answer.headers["x-request-id"])
    reported = gateway.upstream.usage_log[-1]["completion_tokens"]
    assert (row["model"], row["max_output_tokens"], row["output_tokens"]) == (read["model"], cap * choices, reported)
    assert reported <= cap * choices
