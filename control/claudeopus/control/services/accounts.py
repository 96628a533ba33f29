"""AccountService: bootstrap, create and get accounts."""

from __future__ import annotations

import grpc

from claudeopus.control.domain import accounts
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import ACCOUNTS, parse_id, parse_optional_id
from claudeopus.control.models import Role
from claudeopus.control.services import convert
from claudeopus.control.services.auth import management_principal, peer_is_local
from claudeopus.control.services.errors import rpc
from claudeopus.v1 import accounts_pb2, accounts_pb2_grpc

Ctx = grpc.aio.ServicerContext


def _role(value: int) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @rpc
    async def BootstrapAdmin(
        self, request: accounts_pb2.BootstrapAdminRequest, context: Ctx[object, object]
    ) -> accounts_pb2.BootstrapAdminResponse:
        done = await accounts.bootstrap_admin(request.email, request.display_name, peer_is_local=peer_is_local(context))
        return accounts_pb2.BootstrapAdminResponse(
            account=convert.account(done.account), api_key=convert.api_key(done.key.key), secret=done.key.secret
        )

    @rpc
    async def CreateAccount(
        self, request: accounts_pb2.CreateAccountRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        principal = await management_principal(context, self._clock())
        row = await accounts.create_account(
            principal,
            parent_id=parse_optional_id("parent", ACCOUNTS, request.parent),
            email=request.account.email,
            display_name=request.account.display_name,
            role=_role(request.account.role),
            request_id=request.request_id,
        )
        return convert.account(row)

    @rpc
    async def GetAccount(
        self, request: accounts_pb2.GetAccountRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        principal = await management_principal(context, self._clock())
        row = await accounts.get_account(principal, parse_id("name", ACCOUNTS, request.name))
        return convert.account(row)
