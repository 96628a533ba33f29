"""The thin hand-written ClaudeOpus client: channel, auth metadata, typed errors, paging.

``Client`` blocks, ``AsyncClient`` (also exported as ``ClaudeOpusClient``) is for
asyncio; both have the same methods. Example::

    import asyncio
    from claudeopus.client import AsyncClient

    async def main() -> None:
        async with AsyncClient("127.0.0.1:50051", key="sk-co-...") as client:
            account = await client.create_account(email="ann@example.com", role="user")
            created = await client.create_api_key(parent=account.name, display_name="laptop")
            print(created.secret)  # shown once
            async for record in client.iter_usage_records():
                print(record.model, record.input_tokens, record.output_tokens)

    asyncio.run(main())

Over TLS pass ``tls_ca="ca.pem"`` (plus ``tls_cert=`` / ``tls_key=`` when control requires
client certificates); a missing or unusable file raises :class:`TLSConfigError` at once.
"""

from claudeopus.client._client import AsyncClient, ClaudeOpusClient
from claudeopus.client._errors import (
    AlreadyExistsError,
    ClaudeOpusError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    error_of,
    from_rpc_error,
    from_status,
)
from claudeopus.client._sync import Client
from claudeopus.tls import TLSConfigError

__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "ClaudeOpusClient",
    "ClaudeOpusError",
    "Client",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TLSConfigError",
    "UnauthenticatedError",
    "UnavailableError",
    "error_of",
    "from_rpc_error",
    "from_status",
]
