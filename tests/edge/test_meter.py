"""Metering against a fake control: admit answers with a ticket (from a lease or an authorize), the ticket settles."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
import orjson
import pytest

from claudeopus.client import ClaudeOpusError, NotFoundError, UnavailableError
from claudeopus.edge import errors
from claudeopus.edge.completions import CompletionRequest, parse_completion
from claudeopus.edge.forward import Forwarder
from claudeopus.edge.metering.meter import Metering
from claudeopus.edge.metering.port import AuthorizeCall
from claudeopus.edge.metering.refusals import key_hash
from claudeopus.edge.metering.spool import Spool, read_spool
from claudeopus.edge.metering.types import Lease, Outcome, Settlement, UsageSource, UsageStatus
from claudeopus.edge.upstream import ConnectFailed, UpstreamResponse
from tests.support.fake_control import FakeControl

SECRET = "sk-co-" + "A" * 43
HASHED = key_hash(SECRET)
RAW = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})
COMPLETION = parse_completion(RAW)
USED = Outcome(3, 6, UsageStatus.SUCCEEDED, UsageSource.REPORTED, 200)


class NoUpstream:
    """An ``Upstream`` that records each call and fails the test's expectations by being called at all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def send(self, method: str, path: str, body: bytes | None = None) -> UpstreamResponse:
        self.calls.append(f"{method} {path}")
        raise ConnectFailed("never answers")

    async def aclose(self) -> None:
        pass


class LeasingControl(FakeControl):
    """Grants a lease of ten requests like COMPLETION to every key that asks."""

    def __init__(self) -> None:
        super().__init__()
        self.granted = asyncio.Event()

    async def grant_lease(self, key_hash: bytes, completion: CompletionRequest, ttl: float) -> Lease | None:
        self.granted.set()
        return Lease(
            lease_id=str(uuid.uuid4()),
            ttl=ttl,
            unlimited=False,
            input_tokens=10 * completion.input_token_bound,
            output_tokens=100,
            cost_micros=0,
            prices=None,
            default_output_tokens=64,
            caps_output=True,
        )


async def start(control: FakeControl, spool_dir: Path, **options: float) -> Metering:
    return await Metering.start(control, spool_dir=spool_dir, spool_max_bytes=1 << 20, control_timeout=5.0, **options)


async def test_an_authorized_request_settles_without_a_lease_and_its_key_stays_known(tmp_path: Path) -> None:
    control = FakeControl()
    metering = await start(control, tmp_path)
    started = time.perf_counter()
    ticket = await metering.admit(HASHED, COMPLETION, started)
    assert control.authorized == [ticket.request_id] and ticket.cap == 0
    assert await metering.authenticate(SECRET) == HASHED
    assert control.verified == [], "an authorized key needs no VerifyApiKey"
    ticket.settle(USED)
    await metering.aclose()
    [settled] = control.settles
    assert (settled.request_id, settled.outcome, settled.leased, settled.missing_ok) == (
        ticket.request_id,
        USED,
        None,
        False,
    )
    assert 0 < settled.latency_ns < (time.perf_counter() - started) * 1e9, "counted from when the request arrived"


async def test_after_an_authorize_the_next_requests_are_admitted_from_a_lease(tmp_path: Path) -> None:
    control = LeasingControl()
    metering = await start(control, tmp_path, lease_seconds=1.0)
    first = await metering.admit(HASHED, COMPLETION, time.perf_counter())
    await asyncio.wait_for(control.granted.wait(), 5)  # the lease is asked for in the background
    await asyncio.sleep(0.01)
    second = await metering.admit(HASHED, COMPLETION, time.perf_counter())
    assert control.authorized == [first.request_id], "admitted from the lease: control was not asked"
    first.settle(USED)
    second.settle(USED)
    await metering.aclose()
    leased = {settle.request_id: settle.leased for settle in control.settles}
    assert leased[first.request_id] is None
    reservation = leased[second.request_id]
    assert reservation is not None and reservation.max_output_tokens == 10, "its settle carries the reservation"
    assert [use.requests for use in control.returned] == [1], "the lease went back at shutdown"


async def test_a_string_that_cannot_be_a_key_is_refused_without_asking_control(tmp_path: Path) -> None:
    control = FakeControl()
    metering = await start(control, tmp_path)
    with pytest.raises(errors.AuthenticationFailed):
        await metering.authenticate("not-a-key")
    with pytest.raises(errors.AuthenticationFailed):
        await metering.key_info("not-a-key")
    assert control.verified == [] and control.authorized == []
    await metering.aclose()


class SettleDown(FakeControl):
    """Authorizes, but cannot be reached for settles."""

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")


async def test_a_full_spool_refuses_completions_before_authorize(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=100)
    for n in (1, 2):
        await spool.append(Settlement(str(uuid.UUID(int=n)), USED, 1000))
    await spool.aclose()
    control = SettleDown()
    metering = await Metering.start(control, spool_dir=tmp_path, spool_max_bytes=100, control_timeout=5.0)
    upstream = NoUpstream()
    forwarder = Forwarder(upstream=upstream, metering=metering, upstream_api_key="")
    with pytest.raises(errors.ControlUnavailable) as caught:
        await forwarder.chat_completions(HASHED, RAW, None)
    assert (caught.value.status, caught.value.code) == (503, "usage_spool_full")
    assert control.authorized == [] and upstream.calls == [], "nothing reserved, nothing forwarded"
    await metering.aclose()
    assert len(read_spool(tmp_path)) == 2


class TimingOutControl(FakeControl):
    """Authorize passes its deadline (control may have reserved); settles of unknown ids are NOT_FOUND."""

    def __init__(self, reserved: bool) -> None:
        super().__init__()
        self.reserved = reserved
        self.taken: list[str] = []

    async def authorize_batch(self, calls: Sequence[AuthorizeCall]) -> list[int | ClaudeOpusError]:
        self.authorized.extend(call.request_id for call in calls)
        raise ClaudeOpusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        self.settles.extend(settles)
        if self.reserved:
            self.taken.extend(settle.request_id for settle in settles)
            return [None] * len(settles)
        return [NotFoundError(grpc.StatusCode.NOT_FOUND, "no such", "RESERVATION_NOT_FOUND")] * len(settles)


@pytest.mark.parametrize("reserved", [True, False], ids=["reserved", "never-reserved"])
async def test_an_authorize_past_its_deadline_releases_what_control_may_have_reserved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reserved: bool
) -> None:
    control = TimingOutControl(reserved)
    metering = await start(control, tmp_path)
    upstream = NoUpstream()
    forwarder = Forwarder(upstream=upstream, metering=metering, upstream_api_key="")
    with caplog.at_level(logging.INFO), pytest.raises(errors.ControlUnavailable) as caught:
        await forwarder.chat_completions(HASHED, RAW, None)
    await metering.aclose()  # sends what is queued
    assert caught.value.status == 503 and upstream.calls == [], "nothing forwarded"
    [released] = control.settles
    assert released.request_id == control.authorized[0] and released.missing_ok
    assert control.taken == ([control.authorized[0]] if reserved else [])
    assert (released.outcome.input_tokens, released.outcome.output_tokens, released.outcome.http_status) == (0, 0, 503)
    assert read_spool(tmp_path) == [], "a release control never needed is not spooled either"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "an expected miss is no alarm"
