"""UsageService end to end: ListUsageRecords filters and SummarizeUsage, on the wire.

A real in-process ``ControlServer`` with an injected clock; records are opened and
closed through GatewayService.Authorize/Settle at chosen times, so ``created_at``
is exactly what the test says. Expected summaries are computed here, in Python,
from the records the test wrote.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from claudeopus import keys
from claudeopus.control.domain import usage as usage_domain
from claudeopus.v1 import (
    accounts_pb2,
    api_keys_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.support.clock import FakeClock
from tests.support.control_server import InProcessControl, in_process_control
from tests.support.rpc import assert_error, bearer, rpc_error
from tests.support.rpc import resource_id as ident
from tests.support.rpc import stamp as ts

T0 = datetime(2030, 1, 10, tzinfo=UTC)
API_KEY, ACCOUNT, MODEL = usage_pb2.USAGE_GROUP_API_KEY, usage_pb2.USAGE_GROUP_ACCOUNT, usage_pb2.USAGE_GROUP_MODEL
HOUR, DAY, MONTH = usage_pb2.USAGE_INTERVAL_HOUR, usage_pb2.USAGE_INTERVAL_DAY, usage_pb2.USAGE_INTERVAL_MONTH
NO_INTERVAL = usage_pb2.USAGE_INTERVAL_UNSPECIFIED


# -- harness -------------------------------------------------------------------


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@dataclass
class Record:
    """What the test wrote for one request."""

    request_id: str
    api_key: str
    account: str
    model: str
    at: datetime
    latency_us: int
    input_tokens: int
    output_tokens: int
    settled: bool


@dataclass
class Control:
    clock: FakeClock
    service_token: str
    admin_secret: str
    admin: str
    channel: grpc.aio.Channel
    running: InProcessControl
    records: list[Record] = field(default_factory=list)

    @property
    def usage(self) -> usage_pb2_grpc.UsageServiceStub:
        return usage_pb2_grpc.UsageServiceStub(self.channel)

    async def new_account(self, parent: str, role: int = accounts_pb2.ROLE_USER) -> str:
        return await self.running.new_account(parent, role)  # type: ignore[arg-type]

    async def new_key(self, parent: str, scope: int = api_keys_pb2.SCOPE_INFERENCE) -> tuple[str, str]:
        """(key name, secret)."""
        return await self.running.new_key(parent, scope)  # type: ignore[arg-type]

    async def record(
        self,
        secret: str,
        *,
        model: str,
        at: datetime,
        latency_us: int = 1000,
        input_tokens: int = 1,
        output_tokens: int = 1,
        status: int = usage_pb2.USAGE_STATUS_SUCCEEDED,
        settle: bool = True,
    ) -> Record:
        """Authorize at ``at`` (the record's create time) and, unless told not to, settle."""
        gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        service = bearer(self.service_token)
        request_id = str(uuid.uuid4())
        self.clock.now = at
        authorized = await gateway.Authorize(
            gateway_pb2.AuthorizeRequest(request_id=request_id, key_hash=keys.hash_secret_bytes(secret), model=model),
            metadata=service,
        )
        if settle:
            latency = duration_pb2.Duration(seconds=latency_us // 1_000_000, nanos=latency_us % 1_000_000 * 1000)
            await gateway.Settle(
                gateway_pb2.SettleRequest(
                    request_id=request_id,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    latency=latency,
                    status=status,
                    source=usage_pb2.USAGE_SOURCE_REPORTED,
                    http_status=200,
                ),
                metadata=service,
            )
        row = Record(
            request_id=request_id,
            api_key=authorized.api_key,
            account=authorized.account,
            model=model,
            at=at,
            latency_us=latency_us,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            settled=settle,
        )
        self.records.append(row)
        return row


@pytest.fixture
async def control(database_url: str) -> AsyncIterator[Control]:
    clock = FakeClock(T0)
    async with in_process_control(database_url, clock=clock) as running:
        admin = running.admin.name
        yield Control(clock, running.service_token, running.admin_secret, admin, running.channel, running)


# -- the world -----------------------------------------------------------------


@dataclass
class World:
    control: Control
    reseller_a: str
    a1: str
    a2: str
    ka1: str
    ka1b: str
    ka2: str
    a_secret: str  # reseller A's management key
    reseller_b: str
    b1: str
    kb1: str
    b_secret: str  # reseller B's management key

    @property
    def a_records(self) -> list[Record]:
        return [r for r in self.control.records if r.account in (self.a1, self.a2)]


@pytest.fixture
async def world(control: Control) -> World:
    """Reseller A (users a1 with two keys, a2 with one) and reseller B (user b1), records around month ends."""
    reseller_a = await control.new_account(control.admin, accounts_pb2.ROLE_RESELLER)
    a1, a2 = await control.new_account(reseller_a), await control.new_account(reseller_a)
    reseller_b = await control.new_account(control.admin, accounts_pb2.ROLE_RESELLER)
    b1 = await control.new_account(reseller_b)
    (ka1, s_ka1), (ka1b, s_ka1b), (ka2, s_ka2) = [await control.new_key(a) for a in (a1, a1, a2)]
    kb1, s_kb1 = await control.new_key(b1)
    _, a_secret = await control.new_key(reseller_a, api_keys_pb2.SCOPE_MANAGEMENT)
    _, b_secret = await control.new_key(reseller_b, api_keys_pb2.SCOPE_MANAGEMENT)

    rec = control.record
    await rec(s_ka1, model="m-1", at=utc(2030, 1, 31, 23, 59, 59, 999999), latency_us=10_000, input_tokens=10)
    await rec(s_ka1, model="m-2", at=utc(2030, 2, 1), latency_us=20_000, input_tokens=20, output_tokens=2)
    await rec(s_ka1b, model="m-1", at=utc(2030, 2, 1, 0, 59, 59), latency_us=30_000, input_tokens=30, output_tokens=3)
    await rec(
        s_ka2,
        model="m-1",
        at=utc(2030, 2, 1, 1),
        latency_us=40_000,
        input_tokens=40,
        output_tokens=4,
        status=usage_pb2.USAGE_STATUS_UPSTREAM_ERROR,
    )
    await rec(s_kb1, model="m-1", at=utc(2030, 2, 1, 0, 30), latency_us=70_000, input_tokens=70, output_tokens=7)
    await rec(
        s_ka2,
        model="m-2",
        at=utc(2030, 2, 28, 23, 59, 59),
        latency_us=50_000,
        input_tokens=50,
        output_tokens=5,
        status=usage_pb2.USAGE_STATUS_CLIENT_DISCONNECTED,
    )
    await rec(s_ka1, model="m-1", at=utc(2030, 3, 1), latency_us=60_000, input_tokens=60, output_tokens=6)
    await rec(s_kb1, model="m-2", at=utc(2030, 2, 15, 12), latency_us=80_000, input_tokens=80, output_tokens=8)
    # Open reservations: listed, never summarized.
    await rec(s_ka2, model="m-1", at=utc(2030, 2, 10), settle=False)
    await rec(s_kb1, model="m-1", at=utc(2030, 2, 10), settle=False)
    control.clock.now = utc(2030, 6, 1)
    return World(control, reseller_a, a1, a2, ka1, ka1b, ka2, a_secret, reseller_b, b1, kb1, b_secret)


# -- ListUsageRecords ----------------------------------------------------------


async def list_ids(
    control: Control, secret: str, *, page_size: int = 0, **filters: Any
) -> tuple[list[str], list[usage_pb2.ListUsageRecordsResponse]]:
    """Every page of a listing: (request ids in order, the responses)."""
    ids: list[str] = []
    pages: list[usage_pb2.ListUsageRecordsResponse] = []
    token = ""
    while True:
        request = usage_pb2.ListUsageRecordsRequest(page_size=page_size, page_token=token, **filters)
        page = await control.usage.ListUsageRecords(request, metadata=bearer(secret))
        pages.append(page)
        ids.extend(r.request_id for r in page.usage_records)
        token = page.next_page_token
        if not token:
            return ids, pages
        assert len(pages) < 50, "paging does not terminate"


def newest_first(records: Sequence[Record]) -> list[str]:
    # Records were written in list order, so ids grow along it.
    return [r.request_id for r in reversed(records)]


async def test_list_filters_by_account_model_key_and_time(world: World) -> None:
    control, admin = world.control, world.control.admin_secret
    everything = control.records

    async def check(expected: list[Record], secret: str = admin, **filters: Any) -> None:
        want = newest_first(expected)
        assert (await list_ids(control, secret, **filters))[0] == want, filters
        assert (await list_ids(control, secret, page_size=1, **filters))[0] == want, filters

    await check(everything)
    await check([r for r in everything if r.account == world.a1], account=world.a1)
    await check([r for r in everything if r.account == world.a1], account=world.a1, parent=world.reseller_a)
    await check([r for r in everything if r.account == world.a2], world.a_secret, account=world.a2)
    await check([r for r in everything if r.model == "m-2"], model="m-2")
    await check([r for r in everything if r.api_key == world.ka1], api_key=world.ka1)
    await check([], model="no-such-model")

    # start_time is inclusive, end_time exclusive, both to the microsecond.
    start, end = utc(2030, 2, 1), utc(2030, 2, 28, 23, 59, 59)
    await check([r for r in everything if r.at >= start], start_time=ts(start))
    await check([r for r in everything if r.at < end], end_time=ts(end))
    await check([r for r in everything if start <= r.at < end], start_time=ts(start), end_time=ts(end))
    late = utc(2030, 1, 31, 23, 59, 59, 999999)
    await check([r for r in everything if r.at >= late], start_time=ts(late))
    await check([r for r in everything if r.at >= late + timedelta(microseconds=1)], start_time=ts(utc(2030, 2, 1)))

    # Every filter at once.
    await check(
        [r for r in everything if r.account == world.a1 and r.model == "m-1" and start <= r.at],
        world.a_secret,
        parent=world.reseller_a,
        account=world.a1,
        model="m-1",
        start_time=ts(start),
        end_time=ts(utc(2030, 4, 1)),
    )


async def test_list_account_outside_the_subtree_is_not_found(world: World) -> None:
    control = world.control
    cases: list[tuple[str, dict[str, str]]] = [
        (world.a_secret, {"account": world.b1}),  # another reseller's user
        (world.a_secret, {"account": world.reseller_b}),
        (world.a_secret, {"account": control.admin}),  # an ancestor
        (control.admin_secret, {"account": "accounts/999999"}),
        (control.admin_secret, {"parent": world.a2, "account": world.a1}),  # the caller's, but not under parent
        (control.admin_secret, {"parent": world.reseller_b, "account": world.a1}),
    ]
    for secret, filters in cases:
        request = usage_pb2.ListUsageRecordsRequest(**filters)
        error = await rpc_error(control.usage.ListUsageRecords(request, metadata=bearer(secret)))
        assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_list_page_token_is_bound_to_every_filter(world: World) -> None:
    control = world.control
    filters: dict[str, Any] = {
        "parent": world.reseller_a,
        "account": world.a1,
        "api_key": world.ka1,
        "model": "m-1",
        "start_time": ts(utc(2030, 1, 1)),
        "end_time": ts(utc(2030, 12, 1)),
    }
    first = await control.usage.ListUsageRecords(
        usage_pb2.ListUsageRecordsRequest(page_size=1, **filters), metadata=bearer(control.admin_secret)
    )
    token = first.next_page_token
    assert token

    changes: list[dict[str, Any]] = [
        {"parent": world.a1},
        {"parent": ""},
        {"account": world.a2},
        {"account": ""},
        {"api_key": world.ka1b},
        {"api_key": ""},
        {"model": "m-2"},
        {"model": ""},
        {"start_time": ts(utc(2030, 1, 1, 0, 0, 1))},
        {"start_time": None},
        {"end_time": ts(utc(2030, 12, 2))},
        {"end_time": None},
    ]
    for change in changes:
        changed = {k: v for k, v in {**filters, **change}.items() if v is not None}
        request = usage_pb2.ListUsageRecordsRequest(page_size=1, page_token=token, **changed)
        error = await rpc_error(control.usage.ListUsageRecords(request, metadata=bearer(control.admin_secret)))
        assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")

    # Another caller with the same filters cannot use it either.
    request = usage_pb2.ListUsageRecordsRequest(page_size=1, page_token=token, **filters)
    error = await rpc_error(control.usage.ListUsageRecords(request, metadata=bearer(world.a_secret)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")

    # The same caller and filters continue where the first page ended.
    second = await control.usage.ListUsageRecords(request, metadata=bearer(control.admin_secret))
    matching = [r for r in control.records if r.api_key == world.ka1 and r.model == "m-1"]
    assert [r.request_id for r in (*first.usage_records, *second.usage_records)] == newest_first(matching)
    assert second.next_page_token == ""


async def test_list_rejects_bad_filters(world: World) -> None:
    control = world.control
    bad_nanos = timestamp_pb2.Timestamp(seconds=0, nanos=-1)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"start_time": ts(utc(2030, 2, 1)), "end_time": ts(utc(2030, 2, 1))}, ["end_time"]),
        ({"start_time": ts(utc(2030, 2, 2)), "end_time": ts(utc(2030, 2, 1))}, ["end_time"]),
        ({"start_time": bad_nanos}, ["start_time"]),
        ({"end_time": bad_nanos}, ["end_time"]),
        ({"model": "x" * 201}, ["model"]),
        ({"account": "users/1"}, ["account"]),
        ({"account": "accounts/abc"}, ["account"]),
    ]
    for filters, fields in cases:
        request = usage_pb2.ListUsageRecordsRequest(**filters)
        error = await rpc_error(control.usage.ListUsageRecords(request, metadata=bearer(control.admin_secret)))
        assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", *fields)


# -- SummarizeUsage: a reference in Python -------------------------------------

Row = tuple[datetime | None, str, str, str, int, int, int, int, int]


def percentile_cont(ordered: Sequence[int], fraction: float) -> float:
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bucket(at: datetime, interval: int) -> datetime | None:
    if interval == HOUR:
        return at.replace(minute=0, second=0, microsecond=0)
    if interval == DAY:
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == MONTH:
        return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


def expected_rows(
    records: Sequence[Record],
    *,
    group_by: Sequence[int],
    interval: int,
    start: datetime,
    end: datetime,
    keep: Callable[[Record], bool] = lambda r: True,
) -> list[Row]:
    groups: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
    unique = list(dict.fromkeys(group_by))
    for r in records:
        if r.settled and start <= r.at < end and keep(r):
            dims = {API_KEY: r.api_key, ACCOUNT: r.account, MODEL: r.model}
            groups[(bucket(r.at, interval), *(dims[g] for g in unique))].append(r)

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        dims = [ident(value) if g in (API_KEY, ACCOUNT) else value for g, value in zip(unique, key[1:], strict=True)]
        return (key[0] or datetime.min.replace(tzinfo=UTC), *dims)

    rows: list[Row] = []
    for key in sorted(groups, key=order):
        members = groups[key]
        dims = dict(zip(unique, key[1:], strict=True))
        latencies = sorted(r.latency_us for r in members)
        rows.append(
            (
                key[0],
                dims.get(API_KEY, ""),
                dims.get(ACCOUNT, ""),
                dims.get(MODEL, ""),
                len(members),
                sum(r.input_tokens for r in members),
                sum(r.output_tokens for r in members),
                round(percentile_cont(latencies, 0.5) * 1000),
                round(percentile_cont(latencies, 0.95) * 1000),
            )
        )
    return rows


def nanos(value: duration_pb2.Duration) -> int:
    return value.seconds * 1_000_000_000 + value.nanos


def actual_rows(response: usage_pb2.SummarizeUsageResponse) -> list[Row]:
    return [
        (
            s.interval_start.ToDatetime(UTC) if s.HasField("interval_start") else None,
            s.api_key,
            s.account,
            s.model,
            s.requests,
            s.input_tokens,
            s.output_tokens,
            nanos(s.latency_p50),
            nanos(s.latency_p95),
        )
        for s in response.summaries
    ]


async def summarize(control: Control, secret: str, **fields: Any) -> list[Row]:
    response = await control.usage.SummarizeUsage(usage_pb2.SummarizeUsageRequest(**fields), metadata=bearer(secret))
    return actual_rows(response)


# -- SummarizeUsage --------------------------------------------------------------


async def test_summaries_match_the_reference_for_every_grouping_and_interval(world: World) -> None:
    control = world.control
    start, end = utc(2030, 1, 1), utc(2030, 4, 1)
    groupings = [list(p) for n in range(4) for p in itertools.permutations((API_KEY, ACCOUNT, MODEL), n)]
    for group_by, interval in itertools.product(groupings, (NO_INTERVAL, HOUR, DAY, MONTH)):
        for secret, parent, records in (
            (control.admin_secret, "", control.records),
            (control.admin_secret, world.reseller_a, world.a_records),
            (world.a_secret, "", world.a_records),
            (world.a_secret, world.a1, [r for r in control.records if r.account == world.a1]),
        ):
            got = await summarize(
                control,
                secret,
                parent=parent,
                group_by=group_by,
                interval=interval,
                start_time=ts(start),
                end_time=ts(end),
            )
            want = expected_rows(records, group_by=group_by, interval=interval, start=start, end=end)
            assert got == want, (group_by, interval, parent)


async def test_buckets_start_exactly_at_utc_hour_day_and_month(world: World) -> None:
    a_secret = world.a_secret
    start, end = utc(2030, 1, 1), utc(2030, 4, 1)

    async def buckets(interval: int) -> list[tuple[datetime | None, int]]:
        rows = await summarize(world.control, a_secret, interval=interval, start_time=ts(start), end_time=ts(end))
        return [(row[0], row[4]) for row in rows]

    # A's settled records: Jan 31 23:59:59.999999, Feb 1 00:00:00, Feb 1 00:59:59, Feb 1 01:00,
    # Feb 28 23:59:59, Mar 1 00:00 (the Feb 10 reservation is not counted).
    assert await buckets(HOUR) == [
        (utc(2030, 1, 31, 23), 1),
        (utc(2030, 2, 1, 0), 2),
        (utc(2030, 2, 1, 1), 1),
        (utc(2030, 2, 28, 23), 1),
        (utc(2030, 3, 1, 0), 1),
    ]
    assert await buckets(DAY) == [
        (utc(2030, 1, 31), 1),
        (utc(2030, 2, 1), 3),
        (utc(2030, 2, 28), 1),
        (utc(2030, 3, 1), 1),
    ]
    assert await buckets(MONTH) == [(utc(2030, 1, 1), 1), (utc(2030, 2, 1), 4), (utc(2030, 3, 1), 1)]
    assert await buckets(NO_INTERVAL) == [(None, 6)]

    # The range is [start, end): a record exactly at end_time is left out, one at start_time is in.
    rows = await summarize(
        world.control, a_secret, interval=MONTH, start_time=ts(utc(2030, 2, 1)), end_time=ts(utc(2030, 3, 1))
    )
    assert [(row[0], row[4]) for row in rows] == [(utc(2030, 2, 1), 4)]


async def test_reserved_records_are_not_counted(control: Control) -> None:
    account = await control.new_account(control.admin)
    key, secret = await control.new_key(account)
    await control.record(secret, model="m", at=utc(2030, 5, 1), input_tokens=3, output_tokens=4, latency_us=5)
    await control.record(secret, model="m", at=utc(2030, 5, 1, 1), settle=False)
    await control.record(secret, model="m", at=utc(2030, 5, 1, 2), settle=False)
    control.clock.now = utc(2030, 5, 2)
    rows = await summarize(control, control.admin_secret, api_key=key, start_time=ts(utc(2030, 5, 1)))
    assert rows == [(None, "", "", "", 1, 3, 4, 5000, 5000)]
    # ... while the listing shows all three.
    listed, _ = await list_ids(control, control.admin_secret, api_key=key)
    assert len(listed) == 3


async def test_latency_percentiles_interpolate_like_percentile_cont(control: Control) -> None:
    account = await control.new_account(control.admin)
    key, secret = await control.new_key(account)
    milliseconds = list(range(1, 101))
    random.Random(7).shuffle(milliseconds)
    for i, ms in enumerate(milliseconds):
        await control.record(secret, model="m-100", at=utc(2030, 5, 1) + timedelta(seconds=i), latency_us=ms * 1000)
    for ms in (10, 20):
        await control.record(secret, model="m-2", at=utc(2030, 5, 1, 1), latency_us=ms * 1000)
    await control.record(secret, model="m-one", at=utc(2030, 5, 1, 1), latency_us=1234)
    control.clock.now = utc(2030, 5, 2)

    response = await control.usage.SummarizeUsage(
        usage_pb2.SummarizeUsageRequest(api_key=key, group_by=[MODEL], start_time=ts(utc(2030, 5, 1))),
        metadata=bearer(control.admin_secret),
    )
    by_model = {s.model: s for s in response.summaries}
    assert list(by_model) == ["m-100", "m-2", "m-one"]
    # 1..100 ms: the median lies between 50 and 51 ms, the 95th percentile at 95 + 0.05 ms.
    assert by_model["m-100"].latency_p50 == duration_pb2.Duration(nanos=50_500_000)
    assert by_model["m-100"].latency_p95 == duration_pb2.Duration(nanos=95_050_000)
    assert by_model["m-100"].requests == 100
    assert by_model["m-2"].latency_p50 == duration_pb2.Duration(nanos=15_000_000)
    assert by_model["m-2"].latency_p95 == duration_pb2.Duration(nanos=19_500_000)
    assert by_model["m-one"].latency_p50 == by_model["m-one"].latency_p95 == duration_pb2.Duration(nanos=1_234_000)

    # Durations of a second and more carry seconds.
    await control.record(secret, model="slow", at=utc(2030, 5, 1, 2), latency_us=2_500_000)
    control.clock.now = utc(2030, 5, 2)
    rows = await summarize(control, control.admin_secret, model="slow", start_time=ts(utc(2030, 5, 1)))
    assert rows == [(None, "", "", "", 1, 1, 1, 2_500_000_000, 2_500_000_000)]


async def test_summaries_are_isolated_between_resellers(world: World) -> None:
    control = world.control
    start = ts(utc(2030, 1, 1))
    rows = await summarize(control, world.a_secret, group_by=[API_KEY, ACCOUNT], start_time=start)
    assert {row[1] for row in rows} == {world.ka1, world.ka1b, world.ka2}
    assert {row[2] for row in rows} == {world.a1, world.a2}
    assert sum(row[4] for row in rows) == 6

    # B's key as a filter narrows A's summary to nothing; B's accounts are not found.
    assert await summarize(control, world.a_secret, api_key=world.kb1, start_time=start) == []
    for parent in (world.reseller_b, world.b1, control.admin, "accounts/999999"):
        error = await rpc_error(
            control.usage.SummarizeUsage(
                usage_pb2.SummarizeUsageRequest(parent=parent, start_time=start), metadata=bearer(world.a_secret)
            )
        )
        assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")

    b_rows = await summarize(control, world.b_secret, group_by=[ACCOUNT], start_time=start)
    assert b_rows == [(None, "", world.b1, "", 2, 150, 15, 75_000_000, 79_500_000)]
    admin_rows = await summarize(control, control.admin_secret, group_by=[ACCOUNT], start_time=start)
    assert [row[2] for row in admin_rows] == sorted([world.a1, world.a2, world.b1], key=ident)


async def test_summary_filters_by_key_and_model(world: World) -> None:
    control = world.control
    start, end = utc(2030, 1, 1), utc(2030, 6, 1)
    for filters, keep in (
        ({"api_key": world.ka1}, lambda r: r.api_key == world.ka1),
        ({"model": "m-2"}, lambda r: r.model == "m-2"),
        ({"api_key": world.ka2, "model": "m-1"}, lambda r: r.api_key == world.ka2 and r.model == "m-1"),
        ({"model": "none"}, lambda r: False),
    ):
        got = await summarize(
            control, control.admin_secret, group_by=[MODEL], interval=DAY, start_time=ts(start), **filters
        )
        want = expected_rows(control.records, group_by=[MODEL], interval=DAY, start=start, end=end, keep=keep)
        assert got == want, filters


async def test_end_time_defaults_to_now(world: World) -> None:
    control = world.control
    start = ts(utc(2030, 1, 1))
    control.clock.now = utc(2030, 2, 1)  # the Jan 31 record is before now, Feb 1 00:00 is not
    assert [row[4] for row in await summarize(control, world.a_secret, start_time=start)] == [1]
    control.clock.now = utc(2030, 3, 1, 0, 0, 1)
    assert [row[4] for row in await summarize(control, world.a_secret, start_time=start)] == [6]


async def test_group_by_duplicates_are_ignored(world: World) -> None:
    start = ts(utc(2030, 1, 1))
    once = await summarize(world.control, world.a_secret, group_by=[MODEL, API_KEY], start_time=start)
    twice = await summarize(world.control, world.a_secret, group_by=[MODEL, API_KEY, MODEL, API_KEY], start_time=start)
    assert once == twice
    assert len(once) == 5
    # Rows are ordered by the dimensions in the order asked for.
    assert [row[3] for row in once] == sorted(row[3] for row in once)


async def test_summary_rejects_bad_requests(world: World) -> None:
    control = world.control
    control.clock.now = utc(2030, 6, 1)
    start = ts(utc(2030, 1, 1))
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, ["start_time"]),
        ({"end_time": ts(utc(2030, 2, 1))}, ["start_time"]),
        ({"start_time": start, "end_time": start}, ["end_time"]),
        ({"start_time": start, "end_time": ts(utc(2029, 12, 31))}, ["end_time"]),
        ({"start_time": ts(utc(2030, 6, 1))}, ["start_time"]),  # end_time unset means now: empty range
        ({"start_time": ts(utc(2030, 7, 1))}, ["start_time"]),
        ({"start_time": timestamp_pb2.Timestamp(nanos=1_000_000_000)}, ["start_time"]),
        ({"start_time": start, "group_by": [usage_pb2.USAGE_GROUP_UNSPECIFIED]}, ["group_by"]),
        ({"start_time": start, "group_by": [MODEL, 99]}, ["group_by"]),
        ({"start_time": start, "interval": 42}, ["interval"]),
        ({"start_time": start, "model": "bad\nmodel"}, ["model"]),
        ({"start_time": start, "api_key": "keys/1"}, ["api_key"]),
        ({"start_time": start, "parent": "accounts/x"}, ["parent"]),
    ]
    for fields, violations in cases:
        error = await rpc_error(
            control.usage.SummarizeUsage(
                usage_pb2.SummarizeUsageRequest(**fields), metadata=bearer(control.admin_secret)
            )
        )
        assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", *violations)


async def test_a_summary_with_too_many_rows_asks_to_narrow_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_domain, "MAX_SUMMARY_ROWS", 3)
    control = world.control
    start = ts(utc(2030, 1, 1))
    # Exactly at the cap is fine: A has three months with usage.
    assert len(await summarize(control, world.a_secret, interval=MONTH, start_time=start)) == 3
    request = usage_pb2.SummarizeUsageRequest(interval=DAY, start_time=start)
    error = await rpc_error(control.usage.SummarizeUsage(request, metadata=bearer(world.a_secret)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "start_time")
    assert "more than 3 rows" in (error.details() or "")


async def test_summaries_need_a_management_key(world: World) -> None:
    control = world.control
    _, inference_secret = await control.new_key(world.a1)
    request = usage_pb2.SummarizeUsageRequest(start_time=ts(utc(2030, 1, 1)))
    error = await rpc_error(control.usage.SummarizeUsage(request))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_MISSING")
    error = await rpc_error(control.usage.SummarizeUsage(request, metadata=bearer(inference_secret)))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_SCOPE_DENIED")
