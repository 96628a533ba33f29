"""Outlier ejection: N failures in a row cool a deployment, growing; one probe after; 429 cools."""

from __future__ import annotations

import pytest

from claudeopus.edge.router.health import PROBE_WAIT_SECONDS, EjectionPolicy, Health

POLICY = EjectionPolicy(failures=3, first_cooldown=5.0, max_cooldown=60.0)
D, E = "upstreams/d", "upstreams/e"


def eject(health: Health, now: float) -> None:
    for _ in range(POLICY.failures):
        assert health.begin(D, now)
        health.failed(D, now)


def test_fewer_failures_than_the_limit_or_a_success_between_them_eject_nothing() -> None:
    health = Health(POLICY)
    for _ in range(5):
        health.failed(D, 0.0)
        health.failed(D, 0.0)
        health.succeeded(D)
    assert health.begin(D, 0.0)


def test_n_failures_in_a_row_cool_it_then_one_probe_at_a_time() -> None:
    health = Health(POLICY)
    eject(health, 100.0)
    assert not health.begin(D, 104.9)
    assert health.retry_after((D,), 104.0) == pytest.approx(1.0)
    assert health.begin(D, 105.0)  # the probe
    assert not health.begin(D, 105.0)  # everyone else waits for its verdict
    assert health.retry_after((D,), 105.5) == PROBE_WAIT_SECONDS
    health.succeeded(D)
    assert health.begin(D, 105.1) and health.begin(D, 105.1)


def test_a_failed_probe_doubles_the_cooldown_up_to_the_cap_and_a_success_resets_it() -> None:
    health = Health(POLICY)
    eject(health, 0.0)
    now, expected = 5.0, [10.0, 20.0, 40.0, 60.0, 60.0]
    for cooldown in expected:
        assert health.begin(D, now)
        health.failed(D, now)  # the probe failed: ejected again at once
        assert not health.begin(D, now + cooldown - 0.01)
        now += cooldown
    assert health.begin(D, now)
    health.succeeded(D)
    eject(health, now)
    assert health.begin(D, now + 5.0), "the growth starts again after a success"


def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    health = Health(POLICY)
    eject(health, 0.0)
    assert health.begin(D, 5.0)
    health.abandoned(D)
    assert health.begin(D, 5.0)


def test_a_429_cools_it_for_retry_after_capped_without_growing_the_ejection() -> None:
    health = Health(POLICY)
    health.rate_limited(D, 0.0, retry_after=30.0)
    assert not health.begin(D, 29.9)
    assert health.retry_after((D, E), 10.0) == 0.0, "another deployment is free"
    assert health.retry_after((D,), 10.0) == pytest.approx(20.0)
    assert health.begin(D, 30.0)
    health.succeeded(D)
    health.rate_limited(D, 0.0, retry_after=10_000.0)
    assert health.begin(D, 60.0)


def test_a_deployment_never_seen_is_free_and_policies_are_checked() -> None:
    assert Health(POLICY).begin(E, 0.0)
    assert Health(POLICY).retry_after((), 0.0) == 0.0
    with pytest.raises(ValueError, match="failures >= 1"):
        EjectionPolicy(failures=0)
    with pytest.raises(ValueError, match="first_cooldown <= max_cooldown"):
        EjectionPolicy(first_cooldown=10.0, max_cooldown=5.0)
