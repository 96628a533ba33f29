"""The routing table: ids and aliases to deployments, pass-through to the default upstream."""

from __future__ import annotations

import pytest

from claudeopus.edge.router.choice import Deployment
from claudeopus.edge.router.table import Route, RoutingTable

SONNET = Route("claude-sonnet", (Deployment("upstreams/anthropic", "claude-sonnet-4-5"),), aliases=("sonnet",))
MINI = Route("gpt-mini", (Deployment("upstreams/openai", "gpt-4o-mini"), Deployment("upstreams/local", "qwen")))


def test_ids_and_aliases_route_to_their_model() -> None:
    table = RoutingTable(3, [SONNET, MINI])
    assert table.version == 3
    assert table.route("claude-sonnet") is SONNET and table.route("sonnet") is SONNET
    assert table.route("gpt-mini") is MINI
    assert table.models == (SONNET, MINI), "aliases are not listed as models"


def test_an_unknown_name_is_unknown_without_a_default_upstream_and_passes_through_with_one() -> None:
    assert RoutingTable(1, [SONNET]).route("gpt-4o") is None
    passed = RoutingTable(1, [SONNET], default_upstream="upstreams/default").route("gpt-4o")
    assert passed == Route("gpt-4o", (Deployment("upstreams/default", "gpt-4o"),))
    assert RoutingTable(1, [SONNET], default_upstream="upstreams/default").route("sonnet") is SONNET


def test_a_name_claimed_twice_or_a_model_without_deployments_is_refused() -> None:
    with pytest.raises(ValueError, match="'sonnet' is claimed by 'claude-sonnet' and 'other'"):
        RoutingTable(1, [SONNET, Route("other", MINI.deployments, aliases=("sonnet",))])
    with pytest.raises(ValueError, match="no deployment"):
        Route("empty", ())
