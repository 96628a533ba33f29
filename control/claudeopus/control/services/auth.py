"""Credentials from call metadata: management keys and the edge's service token."""

from __future__ import annotations

import hmac
import ipaddress
import urllib.parse
from datetime import datetime

import grpc

from claudeopus.control.domain.errors import Reason, Unauthenticated
from claudeopus.control.domain.principal import Principal, authenticate_management

_BEARER = "bearer "


def bearer(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    """The bearer token of the ``authorization`` metadata entry, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if text[: len(_BEARER)].lower() == _BEARER:
                return text[len(_BEARER) :].strip()
            return None
    return None


async def management_principal(context: grpc.aio.ServicerContext[object, object], now: datetime) -> Principal:
    return await authenticate_management(bearer(context), now)


def require_service(context: grpc.aio.ServicerContext[object, object], service_token: str) -> None:
    """Admit only the edge: its service token, compared in constant time."""
    presented = bearer(context) or ""
    if not hmac.compare_digest(presented.encode(), service_token.encode()):
        raise Unauthenticated(
            Reason.SERVICE_CREDENTIAL_INVALID, "The gateway service accepts only the edge's service credential."
        )


def _peer(context: grpc.aio.ServicerContext[object, object]) -> tuple[str, str]:
    """The peer's kind (``ipv4``, ``ipv6``, ``unix``, ...) and host, without its port."""
    peer = urllib.parse.unquote(context.peer() or "")
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return kind, rest.rpartition(":")[0].strip("[]")
    return kind, rest


def client_address(context: grpc.aio.ServicerContext[object, object]) -> str:
    """What login attempts are counted by: an IPv4 address, an IPv6 client's /64 (one host usually
    holds a whole /64, so counting single addresses would give it 2^64 allowances), else the kind."""
    kind, host = _peer(context)
    if kind == "ipv4":
        return host
    if kind == "ipv6":
        try:
            address = ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            return host
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return kind


def peer_is_local(context: grpc.aio.ServicerContext[object, object]) -> bool:
    """True for a loopback or Unix-socket peer (gRPC writes ``ipv6:%5B::1%5D:port``)."""
    kind, host = _peer(context)
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
