"""The order of a model's deployments: priority first, then a weighted random share."""

from __future__ import annotations

import collections
import random

import pytest

from claudeopus.edge.router.choice import Deployment, attempt_order

A = Deployment("upstreams/a", "m-a", priority=0, weight=3)
B = Deployment("upstreams/b", "m-b", priority=0, weight=1)
C = Deployment("upstreams/c", "m-c", priority=1, weight=5)


def test_every_deployment_is_tried_once_lower_priority_numbers_first() -> None:
    rng = random.Random(1)
    for _ in range(200):
        order = list(attempt_order((C, B, A), rng.random))
        assert sorted(order, key=lambda d: d.upstream) == [A, B, C]
        assert order[-1] == C


def test_first_attempts_split_by_weight_among_equal_priorities() -> None:
    rng = random.Random(7)
    firsts = collections.Counter(next(attempt_order((A, B, C), rng.random)) for _ in range(20_000))
    assert firsts[C] == 0
    assert firsts[A] / 20_000 == pytest.approx(0.75, abs=0.02)


def test_the_second_attempt_is_the_other_one_of_the_tier() -> None:
    rng = random.Random(3)
    for _ in range(100):
        first, second, _ = attempt_order((A, B, C), rng.random)
        assert {first, second} == {A, B}


@pytest.mark.parametrize("draw", [0.0, 0.999999999])
def test_draws_at_the_edges_of_the_range_pick_a_deployment(draw: float) -> None:
    assert len(list(attempt_order((A, B, C), lambda: draw))) == 3


def test_a_weight_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="weight"):
        Deployment("upstreams/a", "m", weight=0)
