"""The routing table: public model ids and aliases to their deployments, one immutable version.

Control owns the configuration and pushes whole tables; the edge swaps its reference to the new
one, so a request sees one version from start to end and nothing is looked up per request. A
name no model claims goes to the default upstream under its own name (``CLAUDEOPUS_UPSTREAM_URL``,
pass-through) when there is one, and is unknown otherwise.

Example::

    table = RoutingTable(7, [Route("claude-sonnet", (Deployment("upstreams/anthropic", "claude-sonnet-4-5"),),
                                   aliases=("sonnet",))], default_upstream="upstreams/default")
    table.route("sonnet").deployments      # the Anthropic deployment
    table.route("gpt-4o").deployments      # (Deployment("upstreams/default", "gpt-4o"),)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from claudeopus.edge.router.choice import Deployment

__all__ = ["Route", "RoutingTable"]


@dataclass(frozen=True, slots=True)
class Route:
    """A public model: the id clients send and see, its deployments and its other names."""

    model: str
    deployments: tuple[Deployment, ...]
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.deployments:
            raise ValueError(f"model {self.model!r} has no deployment")


class RoutingTable:
    """One version of the routes; see the module docstring."""

    __slots__ = ("_by_name", "_default", "models", "version")

    def __init__(self, version: int, routes: Iterable[Route], *, default_upstream: str = "") -> None:
        by_name: dict[str, Route] = {}
        for route in routes:
            for name in (route.model, *route.aliases):
                if name in by_name:
                    raise ValueError(f"the name {name!r} is claimed by {by_name[name].model!r} and {route.model!r}")
                by_name[name] = route
        self.version = version
        self.models = tuple(route for name, route in by_name.items() if name == route.model)
        self._by_name = MappingProxyType(by_name)
        self._default = default_upstream

    def route(self, name: str) -> Route | None:
        """The model ``name`` (an id or an alias) routes to; None when it is unknown."""
        route = self._by_name.get(name)
        if route is None and self._default:
            return Route(name, (Deployment(self._default, name),))
        return route
