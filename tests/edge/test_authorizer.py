"""The edge's authorizer: requests that arrive while a batch is on its way travel together in the next.

A fake control stands in for the gRPC client: each BatchAuthorize waits at a gate the test
opens, and answers per request what the test told it to.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import grpc
import pytest

from claudeopus.client import ClaudeOpusError, UnavailableError, error_of
from claudeopus.edge import errors
from claudeopus.edge.completions import parse_completion
from claudeopus.edge.metering.authorizer import Authorizer
from claudeopus.edge.metering.port import AuthorizeCall
from claudeopus.edge.metering.refusals import AuthorizeTimedOut
from tests.support.fake_control import FakeControl

KEY_HASH = b"k" * 32
COMPLETION = parse_completion(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')


class GatedControl(FakeControl):
    """Answers each batch when ``gate`` is open: ``answers`` by request id (default: cap 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[list[str]] = []
        self.answers: dict[str, int | ClaudeOpusError] = {}
        self.failure: ClaudeOpusError | None = None

    async def authorize_batch(self, calls: Sequence[AuthorizeCall]) -> list[int | ClaudeOpusError]:
        self.batches.append([call.request_id for call in calls])
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return [self.answers.get(call.request_id, 0) for call in calls]


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_a_quiet_edge_sends_each_request_alone_a_busy_one_sends_what_queued_meanwhile() -> None:
    control = GatedControl()
    authorizer = Authorizer(control, timeout=5)
    first = ids(1)[0]
    control.answers[first] = 64
    assert await authorizer.authorize(first, KEY_HASH, COMPLETION) == 64
    assert control.batches == [[first]]

    control.gate.clear()
    leading, *queued = ids(6)
    calls = [asyncio.create_task(authorizer.authorize(leading, KEY_HASH, COMPLETION))]
    while len(control.batches) < 2:
        await asyncio.sleep(0)
    calls += [asyncio.create_task(authorizer.authorize(rid, KEY_HASH, COMPLETION)) for rid in queued]
    await asyncio.sleep(0.01)
    control.gate.set()
    assert await asyncio.gather(*calls) == [0] * 6
    assert control.batches[1:] == [[leading], queued], "the five that queued behind the first went in one call"
    await authorizer.aclose()


async def test_batches_are_cut_at_max_batch_in_arrival_order() -> None:
    control = GatedControl()
    control.gate.clear()
    authorizer = Authorizer(control, timeout=5, max_batch=3)
    wanted = ids(8)
    calls = [asyncio.create_task(authorizer.authorize(rid, KEY_HASH, COMPLETION)) for rid in wanted]
    await asyncio.sleep(0.01)
    control.gate.set()
    await asyncio.gather(*calls)
    assert control.batches == [wanted[0:3], wanted[3:6], wanted[6:8]]
    await authorizer.aclose()


async def test_each_request_gets_its_own_refusal_in_openai_shape() -> None:
    control = GatedControl()
    authorizer = Authorizer(control, timeout=5)
    control.gate.clear()
    quota, invalid, fine = ids(3)
    control.answers[quota] = error_of(grpc.StatusCode.RESOURCE_EXHAUSTED, "You exceeded ...", "BUDGET_EXHAUSTED")
    control.answers[invalid] = error_of(
        grpc.StatusCode.INVALID_ARGUMENT, "model: bad", "FIELD_INVALID", {"model": "bad"}
    )
    control.answers[fine] = 7
    calls = [authorizer.authorize(rid, KEY_HASH, COMPLETION) for rid in (quota, invalid, fine)]
    control.gate.set()
    refused_quota, refused_invalid, cap = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(refused_quota, errors.OpenAIError) and isinstance(refused_invalid, errors.OpenAIError)
    assert (refused_quota.status, refused_quota.code) == (429, "insufficient_quota")
    assert (refused_invalid.status, refused_invalid.code, refused_invalid.param) == (400, "invalid_value", "model")
    assert cap == 7
    await authorizer.aclose()


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused"), errors.ControlUnavailable),
        (ClaudeOpusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), AuthorizeTimedOut),
    ],
    ids=["unavailable", "deadline"],
)
async def test_a_failed_call_fails_each_request_with_an_error_of_its_own(
    failure: ClaudeOpusError, expected: type[errors.OpenAIError]
) -> None:
    control = GatedControl()
    control.failure = failure
    authorizer = Authorizer(control, timeout=5)
    results = await asyncio.gather(
        *(authorizer.authorize(rid, KEY_HASH, COMPLETION) for rid in ids(3)), return_exceptions=True
    )
    assert all(type(r) is expected for r in results), results
    assert all(r.status == 503 and r.code == "control_unavailable" for r in results)  # type: ignore[union-attr]
    assert len({id(r) for r in results}) == 3, "the forwarder adds headers to each: never one shared object"
    await authorizer.aclose()


async def test_a_request_giving_up_in_the_queue_is_never_sent_one_on_its_way_must_be_released() -> None:
    control = GatedControl()
    control.gate.clear()
    authorizer = Authorizer(control, timeout=0.2)
    on_its_way, queued = ids(2)
    first = asyncio.create_task(authorizer.authorize(on_its_way, KEY_HASH, COMPLETION))
    while not control.batches:
        await asyncio.sleep(0)
    second = asyncio.create_task(authorizer.authorize(queued, KEY_HASH, COMPLETION))
    with pytest.raises(AuthorizeTimedOut):
        await first  # control may have reserved it: the forwarder releases it
    with pytest.raises(errors.ControlUnavailable) as caught:
        await second
    assert type(caught.value) is errors.ControlUnavailable, "never sent: nothing to release"
    control.gate.set()
    later = ids(1)[0]
    assert await authorizer.authorize(later, KEY_HASH, COMPLETION) == 0
    assert control.batches == [[on_its_way], [later]], "the request that gave up in the queue never left"
    await authorizer.aclose()


async def test_shutdown_lets_the_batch_on_its_way_finish_and_refuses_the_rest() -> None:
    control = GatedControl()
    control.gate.clear()
    authorizer = Authorizer(control, timeout=5)
    on_its_way, queued = ids(2)
    first = asyncio.create_task(authorizer.authorize(on_its_way, KEY_HASH, COMPLETION))
    while not control.batches:
        await asyncio.sleep(0)
    second = asyncio.create_task(authorizer.authorize(queued, KEY_HASH, COMPLETION))
    await asyncio.sleep(0)
    closing = asyncio.create_task(authorizer.aclose())
    await asyncio.sleep(0.01)
    control.gate.set()
    await closing
    assert await first == 0
    assert await second == 0, "queued before shutdown: sent by the draining task"
    with pytest.raises(errors.ControlUnavailable):
        await authorizer.authorize(ids(1)[0], KEY_HASH, COMPLETION)
    assert len(control.batches) == 2


def exhausted(leases_end_ms: int | None) -> ClaudeOpusError:
    metadata = {"budget_scope": "reseller"}
    if leases_end_ms is not None:
        metadata["leases_end_in_ms"] = str(leases_end_ms)
    return error_of(grpc.StatusCode.RESOURCE_EXHAUSTED, "budget exhausted", "BUDGET_EXHAUSTED", metadata=metadata)


class ScriptedControl(FakeControl):
    """Answers the n-th BatchAuthorize with ``script[n]`` (the last one from then on)."""

    def __init__(self, script: list[int | ClaudeOpusError]) -> None:
        super().__init__()
        self.script = script
        self.calls = 0

    async def authorize_batch(self, calls: Sequence[AuthorizeCall]) -> list[int | ClaudeOpusError]:
        answer = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return [answer for _ in calls]


async def test_a_refusal_while_leases_hold_the_rest_is_asked_again_until_they_end() -> None:
    control = ScriptedControl([exhausted(500), exhausted(480), 32])
    authorizer = Authorizer(control, timeout=5)
    started = asyncio.get_running_loop().time()
    assert await authorizer.authorize(ids(1)[0], KEY_HASH, COMPLETION) == 32, "admitted once the slice came back"
    assert control.calls == 3 and asyncio.get_running_loop().time() - started < 0.2, (
        "asked again at once, not at 500 ms"
    )
    await authorizer.aclose()


async def test_a_refusal_is_final_once_the_leases_ended_or_when_none_holds_the_budget() -> None:
    control = ScriptedControl([exhausted(150)])
    authorizer = Authorizer(control, timeout=5)
    started = asyncio.get_running_loop().time()
    with pytest.raises(errors.OpenAIError) as refused:
        await authorizer.authorize(ids(1)[0], KEY_HASH, COMPLETION)
    waited = asyncio.get_running_loop().time() - started
    assert refused.value.status == 429 and 0.14 <= waited < 1.0 and 3 <= control.calls <= 6
    plain = ScriptedControl([exhausted(None)])
    authorizer = Authorizer(plain, timeout=5)
    with pytest.raises(errors.OpenAIError):
        await authorizer.authorize(ids(1)[0], KEY_HASH, COMPLETION)
    assert plain.calls == 1, "no lease holds the budget: refused at once"
    await authorizer.aclose()
