"""The key is checked before the body is read: an unknown key never costs a body read or a parse."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from claudeopus.client import UnavailableError, error_of
from claudeopus.edge import errors
from claudeopus.edge.app import build_app
from claudeopus.edge.key_check import KeyCheck
from claudeopus.edge.metering.refusals import key_hash
from claudeopus.edge.metering.types import KeyInfo
from claudeopus.edge.server import HttpServer
from claudeopus.edge.settings import EdgeSettings
from tests.support.fake_control import FakeControl
from tests.support.fake_upstream import FakeUpstream, ThreadedServer

GOOD = "sk-co-" + "G" * 43
BAD = "sk-co-" + "B" * 43
REVOKED = "sk-co-" + "R" * 43


class Verifying(FakeControl):
    """Knows GOOD; refuses BAD (unknown) and REVOKED; counts what it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True

    async def verify(self, key_hash: bytes) -> KeyInfo:
        self.verified.append(key_hash)
        if not self.up:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        if key_hash == HASHES[BAD]:
            raise error_of(grpc.StatusCode.UNAUTHENTICATED, "This API key does not exist.", "KEY_INVALID")
        if key_hash == HASHES[REVOKED]:
            raise error_of(grpc.StatusCode.UNAUTHENTICATED, "This API key was revoked.", "KEY_REVOKED")
        return KeyInfo(allowed_models=())


HASHES = {secret: key_hash(secret) for secret in (GOOD, BAD, REVOKED)}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_known_key_is_asked_about_once_per_window_and_a_refusal_is_remembered_too() -> None:
    control, clock = Verifying(), Clock()
    check = KeyCheck(control, 5.0, clock=clock)
    for _ in range(3):
        await check.check(GOOD)
    for _ in range(3):
        with pytest.raises(errors.AuthenticationFailed) as caught:
            await check.check(REVOKED)
        assert caught.value.code == "api_key_revoked" and caught.value.headers == []
    assert control.verified == [HASHES[GOOD], HASHES[REVOKED]]
    clock.now += 5.0
    await check.check(GOOD)
    assert control.verified == [HASHES[GOOD], HASHES[REVOKED], HASHES[GOOD]], "asked again once the window is over"
    check.remember(HASHES[REVOKED])  # control authorized it after all
    await check.check(REVOKED)
    assert control.verified == [HASHES[GOOD], HASHES[REVOKED], HASHES[GOOD]]


async def test_control_unreachable_is_503_and_not_remembered() -> None:
    control = Verifying()
    control.up = False
    check = KeyCheck(control, 5.0)
    for _ in range(2):
        with pytest.raises(errors.ControlUnavailable):
            await check.check(GOOD)
    assert control.verified == [HASHES[GOOD], HASHES[GOOD]]
    with pytest.raises(errors.AuthenticationFailed):
        await check.check("not a key")  # refused from its form alone
    assert control.verified == [HASHES[GOOD], HASHES[GOOD]]


async def test_what_is_remembered_stays_bounded_and_keeps_the_newest() -> None:
    control, clock = Verifying(), Clock()
    check = KeyCheck(control, 5.0, clock=clock, max_known=2, max_refused=2)
    keys = ["sk-co-" + secrets.token_urlsafe(32) for _ in range(3)]
    for key in keys:
        await check.check(key)
    await check.check(keys[2])
    assert len(control.verified) == 3, "the newest is still known"
    await check.check(keys[0])
    assert len(control.verified) == 4, "the oldest was forgotten"


@pytest.fixture
def upstream_url() -> Iterator[str]:
    with ThreadedServer(FakeUpstream()) as server:
        yield server.url


async def test_the_edge_refuses_an_unknown_key_before_reading_its_body(
    tmp_path: Path, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    control = Verifying()
    settings = EdgeSettings(upstream_url=upstream_url, service_token="t" * 40, lease_seconds=0)
    app = build_app(settings, control_factory=lambda channel, settings: control)
    garbage = b"{" * 100_000  # would be a 400 if it were parsed
    async with (
        HttpServer(app, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client,
    ):
        answers = [
            await client.post("/v1/chat/completions", content=garbage, headers={"authorization": f"Bearer {key}"})
            for key in (BAD, BAD, REVOKED, GOOD)
        ]
        good = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        served = [
            await client.post("/v1/chat/completions", json=good, headers={"authorization": f"Bearer {GOOD}"})
            for _ in range(3)
        ]
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [
        (401, "invalid_api_key"),
        (401, "invalid_api_key"),
        (401, "api_key_revoked"),
        (400, "invalid_json"),  # a known key's body is read and parsed
    ]
    assert [a.headers.get("connection") for a in answers] == ["close"] * 3 + [None], "an unread body is not drained"
    assert [s.status_code for s in served] == [200, 200, 200]
    assert control.verified == [HASHES[BAD], HASHES[REVOKED], HASHES[GOOD]], (
        "each key asked about once; authorized keys stay known"
    )
    assert len(control.authorized) == 3
