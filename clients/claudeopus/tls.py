"""TLS material from PEM files, checked before anything listens (shared by edge, control and clients).

Three places use TLS: the edge's HTTPS port, the control plane's gRPC port (optionally requiring
client certificates: mutual TLS), and every gRPC client of control (the edge, the thin client,
``claudeopus admin``). They all read their files through here, so a missing file, a file that is
not PEM, a CA file without a certificate or a key that does not belong to its certificate is one
:class:`TLSConfigError` line naming the setting — raised while settings are read, before any port
is opened or any connection made. Keys must be unencrypted PEM (the processes start unattended).

Example::

    check_server("control.pem", "control.key", "clients-ca.pem")
    server.add_secure_port("0.0.0.0:50051", server_credentials("control.pem", "control.key", "clients-ca.pem"))

    credentials = channel_credentials("ca.pem", "edge.pem", "edge.key")  # None when all three are empty
    channel = grpc.aio.secure_channel("control.internal:50051", credentials)
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

import grpc

PathLike = str | os.PathLike[str]


class TLSConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable; the message names the setting and the file."""


def read_pem(path: PathLike, setting: str) -> bytes:
    """The bytes of a PEM file, or a TLSConfigError naming ``setting`` and the path."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as error:
        raise TLSConfigError(f"{setting}: cannot read {name!r}: {error.strerror or error}") from None
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{setting}: {name!r} is not a PEM file")
    return data


def _no_password() -> bytes:
    return b""  # never prompt on a terminal: an encrypted key fails to load instead


def check_key_pair(cert: PathLike, key: PathLike, cert_setting: str, key_setting: str) -> None:
    """Both files are PEM, the certificate loads, and the key is its private key (unencrypted)."""
    read_pem(cert, cert_setting)
    read_pem(key, key_setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key), password=_no_password)
    except (ssl.SSLError, OSError):
        raise TLSConfigError(
            f"{cert_setting} / {key_setting}: {os.fspath(cert)!r} and {os.fspath(key)!r} are not a certificate "
            "and its unencrypted private key"
        ) from None


def check_ca(ca: PathLike, setting: str) -> None:
    """The file is PEM and holds at least one certificate to trust."""
    read_pem(ca, setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
    except (ssl.SSLError, OSError):
        raise TLSConfigError(f"{setting}: {os.fspath(ca)!r} holds no usable CA certificate") from None


def _pair(cert: PathLike | None, key: PathLike | None, cert_setting: str, key_setting: str) -> bool:
    if bool(cert) != bool(key):
        raise TLSConfigError(f"{cert_setting} and {key_setting} go together: set both or neither")
    if cert and key:
        check_key_pair(cert, key, cert_setting, key_setting)
        return True
    return False


def check_server(
    cert: PathLike | None,
    key: PathLike | None,
    client_ca: PathLike | None = None,
    *,
    names: tuple[str, str, str] = ("tls_cert", "tls_key", "client_ca"),
) -> bool:
    """Check a server's files; True when TLS is on. ``names`` are the settings named in errors."""
    on = _pair(cert, key, names[0], names[1])
    if client_ca:
        if not on:
            raise TLSConfigError(f"{names[2]} needs {names[0]} and {names[1]}: client certificates need TLS")
        check_ca(client_ca, names[2])
    return on


def check_client(
    ca: PathLike | None,
    cert: PathLike | None,
    key: PathLike | None,
    *,
    names: tuple[str, str, str] = ("tls_ca", "tls_cert", "tls_key"),
) -> bool:
    """Check a client's files; True when TLS is on (any of the three set). ``names`` as above."""
    if ca:
        check_ca(ca, names[0])
    return _pair(cert, key, names[1], names[2]) or bool(ca)


class PlainTextRefused(ValueError):
    """A client was asked for plain-text gRPC to a host that is not this machine."""


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC ``target`` can only reach this machine (loopback addresses, localhost, Unix sockets)."""
    text = target.strip()
    if text.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    return bool(text) and all(_loopback_host(_host(part)) for part in text.split(","))


def _host(address: str) -> str:
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address  # a bare IPv6 address, or a name without a port


def _loopback_host(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost":  # not *.localhost: a resolver may still send those names to DNS
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_plain_text(target: str, *, insecure: bool) -> None:
    """Refuse plain text to another machine unless the caller said ``insecure``: keys would cross in the clear."""
    if not insecure and not is_loopback_target(target):
        raise PlainTextRefused(
            f"refusing plain-text gRPC to {target!r}: management keys and passwords would cross the network "
            "unencrypted. Set a CA (tls_ca / CLAUDEOPUS_CONTROL_CA) for TLS, or pass insecure=True (--insecure) "
            "if this network is trusted."
        )


def server_credentials(cert: PathLike, key: PathLike, client_ca: PathLike | None = None) -> grpc.ServerCredentials:
    """gRPC server credentials; with ``client_ca`` every client must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(read_pem(key, "tls_key"), read_pem(cert, "tls_cert"))],
        root_certificates=read_pem(client_ca, "client_ca") if client_ca else None,
        require_client_auth=bool(client_ca),
    )


def channel_credentials(
    ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None
) -> grpc.ChannelCredentials | None:
    """gRPC channel credentials, or None (plain text) when all three are empty.

    ``ca`` is the bundle that signed the server's certificate (the system's roots when empty);
    ``cert`` and ``key`` are the client's own certificate, for servers that require one.
    """
    if not check_client(ca, cert, key):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "tls_ca") if ca else None,
        private_key=read_pem(key, "tls_key") if key else None,
        certificate_chain=read_pem(cert, "tls_cert") if cert else None,
    )


def aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel: TLS with ``credentials``, plain text without.

    Reconnect back-off is capped at 2 s (gRPC's default grows to 120 s), so an
    edge finds a restarted control, and replays its spool, within seconds.
    """
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=RECONNECT_OPTIONS, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=RECONNECT_OPTIONS, interceptors=interceptors)


# Only the cap: gRPC also reads min_reconnect_backoff_ms as the connect timeout, which must stay long.
RECONNECT_OPTIONS = (("grpc.max_reconnect_backoff_ms", 2000),)


__all__ = [
    "PlainTextRefused",
    "TLSConfigError",
    "aio_channel",
    "channel_credentials",
    "check_ca",
    "check_client",
    "check_key_pair",
    "check_plain_text",
    "check_server",
    "is_loopback_target",
    "read_pem",
    "server_credentials",
]
