"""The bare relay: the real edge app with a control client that authorizes everything and settles nothing.

Benchmark-only, never part of the product: it measures what the relay itself costs
(BlackSheep, body parsing, the upstream client, the SSE relay, the settle tasks)
with key checks, budget reservations and usage records taken out (requests still pass
through the edge's authorize queue, whose stub answers at once). It is served
exactly as ``claudeopus edge`` serves the real app (uvloop, uvicorn with httptools).

Run as ``python -m bench.bare_edge --http 127.0.0.1:8081 --upstream-url http://127.0.0.1:9000/json/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

import grpc

from claudeopus.cli.runtime import configure_logging, run
from claudeopus.client import ClaudeOpusError
from claudeopus.edge.app import build_app
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.metering.port import AuthorizeCall, ControlPort
from claudeopus.edge.metering.types import KeyInfo, Lease, LeaseUse, RecoveredLease, Settlement
from claudeopus.edge.server import HttpServer
from claudeopus.edge.settings import EdgeSettings

_log = logging.getLogger("bench.bare_edge")
# Never used to reach anything: the stub does not call control.
_UNUSED_TOKEN = "bench-bare-relay-" + "x" * 32
_UNUSED_CONTROL = "127.0.0.1:1"


class NoopControl:
    """A control port where every key is valid for every model, nothing is reserved, every settle
    is dropped and no lease is granted (so every request goes through the authorize batcher).

    Example::

        app = build_app(settings, control_factory=lambda channel, settings: NoopControl())
    """

    async def verify(self, key_hash: bytes) -> KeyInfo:
        return KeyInfo(allowed_models=())

    async def authorize_batch(self, calls: Sequence[AuthorizeCall]) -> list[int | ClaudeOpusError]:
        return [0] * len(calls)

    async def settle_batch(self, settles: Sequence[Settlement]) -> list[ClaudeOpusError | None]:
        return [None] * len(settles)

    async def grant_lease(self, key_hash: bytes, completion: CompletionRequest, ttl: float) -> Lease | None:
        return None

    async def return_leases(self, uses: Sequence[LeaseUse]) -> None:
        return None

    async def recover_leases(self, recovered: Sequence[RecoveredLease]) -> int:
        return 0


def _noop_control(channel: grpc.aio.Channel, settings: EdgeSettings) -> ControlPort:
    return NoopControl()


async def _serve(settings: EdgeSettings, stop: asyncio.Event) -> None:
    app = build_app(settings, control_factory=_noop_control)
    async with HttpServer(app, settings.http_host, settings.http_port):
        _log.info("bare relay ready on http://%s", settings.http_address)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_edge", description=__doc__)
    parser.add_argument("--http", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--upstream-url", required=True, help="OpenAI-compatible base URL")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    # The same CLAUDEOPUS_* settings as the real edges of the run; only control is replaced.
    settings = EdgeSettings.from_env(
        upstream_url=args.upstream_url,
        service_token=_UNUSED_TOKEN,
        http_address=args.http,
        control_target=_UNUSED_CONTROL,
    )
    run(lambda stop: _serve(settings, stop))


if __name__ == "__main__":
    main()
