"""The edge's LeaseBook against a fake control: what it admits, what it gives back, and when."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence

import grpc
import orjson
import pytest

from claudeopus.client import ClaudeOpusError, UnavailableError
from claudeopus.costs import capped_cost_micros
from claudeopus.edge.completions import CompletionRequest, parse_completion
from claudeopus.edge.metering.leases import LeaseBook
from claudeopus.edge.metering.types import Lease, LeaseUse
from tests.support.fake_control import FakeControl

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def rid() -> str:
    return str(uuid.uuid4())


def completion(
    max_tokens: int | None = 10, model: str = "m", text: str = "hi", stream: bool = False, n: int | None = None
) -> CompletionRequest:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if n is not None:
        body["n"] = n
    return parse_completion(orjson.dumps(body))


def lease(requests: int = 3, **changes: object) -> Lease:
    one = completion()
    values: dict[str, object] = {
        "lease_id": "00000000-0000-4000-8000-000000000001",
        "ttl": 1.0,
        "unlimited": False,
        "input_tokens": one.input_token_bound * requests,
        "output_tokens": 10 * requests,
        "cost_micros": 0,
        "prices": None,
        "default_output_tokens": 64,
        "caps_output": True,
    }
    values.update(changes)
    return Lease(**values)  # type: ignore[arg-type]


class LeasingControl(FakeControl):
    def __init__(self, granted: Lease | ClaudeOpusError | None) -> None:
        super().__init__()
        self.granted = granted
        self.asked: list[tuple[bytes, str, float]] = []

    async def grant_lease(self, key_hash: bytes, completion: CompletionRequest, ttl: float) -> Lease | None:
        self.asked.append((key_hash, completion.model, ttl))
        if isinstance(self.granted, ClaudeOpusError):
            raise self.granted
        if self.granted is None:
            return None
        return dataclasses.replace(self.granted, lease_id=f"00000000-0000-4000-8000-{len(self.asked):012d}")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settled(book: LeaseBook, control: LeasingControl, asked: int = 1) -> None:
    """Wait until the book asked control ``asked`` times and took the answer in."""
    for _ in range(200):
        if len(control.asked) >= asked:
            await asyncio.sleep(0.01)
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the book did not ask for a lease")


async def test_nothing_is_admitted_before_a_lease_then_requests_count_against_it() -> None:
    control = LeasingControl(lease(3))
    book = LeaseBook(control, 1.0, clock=Clock(), wall_ns=lambda: 123)
    assert book.admit(KEY, completion(), rid()) is None
    book.want(KEY, completion())
    book.want(KEY, completion())  # one request for a lease is enough
    await settled(book, control)
    assert control.asked == [(KEY, "m", 1.0)]
    admitted = [book.admit(KEY, completion(), rid()) for _ in range(4)]
    assert [a is not None for a in admitted] == [True, True, True, False], "three requests' worth"
    first = admitted[0]
    assert first is not None and first.cap == 0, "the request named its own max_tokens"
    assert (first.leased.max_output_tokens, first.leased.reserve_time_ns) == (10, 123)
    assert first.leased.estimated_input_tokens == completion().input_token_bound
    assert book.admit(OTHER_KEY, completion(), rid()) is None and book.admit(KEY, completion(model="n"), rid()) is None
    await book.aclose()
    [use] = control.returned
    assert (use.requests, use.output_tokens) == (3, 30), "given back when a request no longer fit"


async def test_a_request_without_max_tokens_reserves_and_caps_the_default() -> None:
    control = LeasingControl(lease(3, output_tokens=200))
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    admitted = book.admit(KEY, completion(max_tokens=None), rid())
    assert admitted is not None and (admitted.cap, admitted.leased.max_output_tokens) == (64, 64)
    await book.aclose()


async def test_a_request_for_several_choices_takes_its_output_cap_for_each_of_them() -> None:
    control = LeasingControl(lease(8, output_tokens=80))  # 80 output tokens: eight requests of 10
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    four = book.admit(KEY, completion(n=4), rid())
    assert four is not None and (four.cap, four.leased.max_output_tokens) == (0, 40)
    assert book.admit(KEY, completion(n=5), rid()) is None, "50 more would pass the 80 leased"
    other = LeasingControl(lease(3, output_tokens=200))
    defaulted = LeaseBook(other, 1.0)
    defaulted.want(KEY, completion())
    await settled(defaulted, other)
    capped = defaulted.admit(KEY, completion(max_tokens=None, n=3), rid())
    assert capped is not None and (capped.cap, capped.leased.max_output_tokens) == (64, 192), "the cap is per choice"
    await book.aclose()
    await defaulted.aclose()


async def test_a_cost_budget_prices_each_request_at_the_leases_prices() -> None:
    prices = (2_000_000, 3_000_000)
    one = completion()
    cost = capped_cost_micros(one.input_token_bound, 10, *prices)
    control = LeasingControl(lease(2, cost_micros=2 * cost, prices=prices))
    book = LeaseBook(control, 1.0)
    book.want(KEY, one)
    await settled(book, control)
    first, second, third = (book.admit(KEY, one, rid()) for _ in range(3))
    assert first is not None and first.leased.reserved_cost_micros == cost
    assert second is not None and third is None
    await book.aclose()
    assert control.returned[0].cost_micros == 2 * cost


async def test_an_unlimited_lease_counts_requests_and_caps_nothing() -> None:
    control = LeasingControl(lease(0, unlimited=True, caps_output=False))
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    admitted = [book.admit(KEY, completion(max_tokens=None), rid()) for _ in range(50)]
    assert all(a is not None and a.cap == 0 for a in admitted)
    await book.aclose()
    assert control.returned[0].requests == 50


async def test_a_lease_ends_at_its_time_and_its_successor_asked_for_at_half_time_goes_on() -> None:
    clock = Clock()
    control = LeasingControl(lease(100))
    book = LeaseBook(control, 1.0, clock=clock)
    book.want(KEY, completion())
    await settled(book, control)
    assert book.admit(KEY, completion(), rid()) is not None
    clock.now += 0.4
    assert book.admit(KEY, completion(), rid()) is not None
    assert len(control.asked) == 1, "not half its time yet"
    clock.now += 0.2
    assert book.admit(KEY, completion(), rid()) is not None
    await settled(book, control, asked=2)
    assert control.returned == [], "the first lease still runs"
    clock.now += 0.4  # the first lease's time is up: its successor (asked for at 100.6) takes over
    admitted = book.admit(KEY, completion(), rid())
    assert admitted is not None and admitted.leased.lease_id.endswith("2")
    clock.now += 0.6  # and the successor's too
    assert book.admit(KEY, completion(), rid()) is None
    await book.aclose()
    assert [(use.lease_id[-1], use.requests) for use in control.returned] == [("1", 3), ("2", 1)]


async def test_a_half_used_lease_asks_for_its_successor_and_a_busy_key_never_waits() -> None:
    control = LeasingControl(lease(16))
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    admitted = []
    for _ in range(40):
        admitted.append(book.admit(KEY, completion(), rid()))
        await settled(book, control, asked=len(control.asked))
    assert all(admitted), "each lease's successor was there before it ran out"
    assert len({a.leased.lease_id for a in admitted if a}) == 3
    await book.aclose()
    assert sum(use.requests for use in control.returned) == 40


async def test_a_small_lease_near_a_limit_gets_no_successor() -> None:
    control = LeasingControl(lease(4))
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    admitted = []
    for _ in range(5):
        admitted.append(book.admit(KEY, completion(), rid()))
        await asyncio.sleep(0.01)
    assert [a is not None for a in admitted] == [True] * 4 + [False]
    assert len(control.asked) == 1, "a second slice would keep budget from other edges"
    await book.aclose()


async def test_no_lease_or_a_refusal_is_not_asked_about_again_at_once() -> None:
    for answer in (None, ClaudeOpusError(grpc.StatusCode.PERMISSION_DENIED, "no", "MODEL_NOT_ALLOWED")):
        clock = Clock()
        control = LeasingControl(answer)
        book = LeaseBook(control, 1.0, clock=clock)
        book.want(KEY, completion())
        await settled(book, control)
        for _ in range(20):
            await asyncio.sleep(0.005)
        book.want(KEY, completion())
        assert len(control.asked) == 1 and book.admit(KEY, completion(), rid()) is None
        clock.now += 1.5
        book.want(KEY, completion())
        await settled(book, control, asked=2)
        assert len(control.asked) == 2
        await book.aclose()


async def test_shutdown_gives_every_lease_back_and_admits_nothing_more() -> None:
    control = LeasingControl(lease(5))
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    assert book.admit(KEY, completion(), rid()) is not None
    await book.aclose()
    assert [use.requests for use in control.returned] == [1]
    assert book.admit(KEY, completion(), rid()) is None
    book.want(KEY, completion())
    assert len(control.asked) == 1


@pytest.mark.parametrize("failures", [1, 3])
async def test_a_return_control_did_not_take_is_sent_again(failures: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("claudeopus.edge.metering.leases.NO_LEASE_BACKOFF_SECONDS", 0.01)
    control = LeasingControl(lease(5))
    calls = 0
    real = control.return_leases

    async def flaky(uses: Sequence[LeaseUse]) -> None:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise ClaudeOpusError(grpc.StatusCode.UNAVAILABLE, "down")
        await real(uses)

    control.return_leases = flaky  # type: ignore[method-assign]
    book = LeaseBook(control, 0.05)
    book.want(KEY, completion())
    await settled(book, control)
    for _ in range(200):
        if control.returned:
            break
        await asyncio.sleep(0.01)
    assert [use.requests for use in control.returned] == [0] and calls == failures + 1
    await book.aclose()


async def test_control_out_of_reach_drops_every_lease_until_it_authorizes_again() -> None:
    control = LeasingControl(lease(100))
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    assert book.admit(KEY, completion(), rid()) is not None
    book.drop_all()  # what the settler calls when a batch could not reach control
    assert book.admit(KEY, completion(), rid()) is None, "from now on requests are authorized (503 while it is down)"
    for _ in range(100):
        if control.returned:
            break
        await asyncio.sleep(0.005)
    assert [use.requests for use in control.returned] == [1], "given back once control answers"
    book.want(KEY, completion())  # control authorized a request again
    await settled(book, control, asked=2)
    assert book.admit(KEY, completion(), rid()) is not None
    await book.aclose()


async def test_a_grant_that_cannot_reach_control_drops_the_other_leases_too() -> None:
    control = LeasingControl(lease(100))
    book = LeaseBook(control, 1.0)
    book.want(KEY, completion())
    await settled(book, control)
    control.granted = UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    book.want(OTHER_KEY, completion())
    await settled(book, control, asked=2)
    assert book.admit(KEY, completion(), rid()) is None
    await book.aclose()
