"""The order in which one request tries a model's deployments.

Lowest priority number first; among deployments of equal priority, a weighted random order
(each next one drawn with probability proportional to its weight among those left), so that over
many requests each gets its weight's share of the first attempts and the rest serve as failover.

Example::

    deployments = (Deployment("upstreams/anthropic-a", "claude-sonnet-4-5", priority=0, weight=3),
                   Deployment("upstreams/anthropic-b", "claude-sonnet-4-5", priority=0, weight=1),
                   Deployment("upstreams/bedrock", "anthropic.claude-sonnet-4-5", priority=1, weight=1))
    for deployment in attempt_order(deployments, random.random):
        ...  # a-or-b, then the other, then bedrock
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Deployment", "attempt_order"]


@dataclass(frozen=True, slots=True)
class Deployment:
    """One way to serve a public model: an upstream and the upstream's own name for the model."""

    upstream: str  # the upstream's resource name, e.g. "upstreams/anthropic-a"
    model: str  # the model id the upstream expects
    priority: int = 0  # lower is tried first
    weight: int = 1  # share of first attempts among deployments of equal priority

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError("a deployment's weight is at least 1")


def attempt_order(deployments: Sequence[Deployment], random: Callable[[], float]) -> Iterator[Deployment]:
    """Every deployment once, in the order one request tries them; ``random()`` is in [0, 1)."""
    ordered = sorted(deployments, key=lambda deployment: deployment.priority)
    for _, tier in itertools.groupby(ordered, key=lambda deployment: deployment.priority):
        yield from _weighted_order(list(tier), random)


def _weighted_order(tier: list[Deployment], random: Callable[[], float]) -> Iterator[Deployment]:
    if len(tier) == 1:
        yield tier[0]
        return
    left = tier
    total = sum(deployment.weight for deployment in left)
    while left:
        point = random() * total
        for index, deployment in enumerate(left):
            point -= deployment.weight
            if point < 0 or index == len(left) - 1:
                break
        yield left[index]
        total -= left[index].weight
        left = left[:index] + left[index + 1 :]
