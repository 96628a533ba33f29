"""AccountService: the account hierarchy, dashboard passwords, logins and logouts."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf import empty_pb2

from claudeopus.control.bootstrap_token import BootstrapGate
from claudeopus.control.domain import account_lifecycle, accounts, logins, policies
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.errors import AlreadyExists, InvalidArgument
from claudeopus.control.domain.logins import LoginPolicy
from claudeopus.control.domain.names import ACCOUNTS, parse_id, parse_optional_id
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.domain.throttle import email_probe
from claudeopus.control.models import Role
from claudeopus.control.services import convert
from claudeopus.control.services.auth import client_address, management_principal, peer_is_local
from claudeopus.control.services.errors import rpc
from claudeopus.control.services.masks import update_paths
from claudeopus.v1 import accounts_pb2, accounts_pb2_grpc

Ctx = grpc.aio.ServicerContext


def _role(value: int) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    def __init__(self, codec: PageTokenCodec, clock: Clock, policy: LoginPolicy, gate: BootstrapGate) -> None:
        self._codec = codec
        self._clock = clock
        self._policy = policy
        self._gate = gate

    @rpc
    async def BootstrapAdmin(
        self, request: accounts_pb2.BootstrapAdminRequest, context: Ctx[object, object]
    ) -> accounts_pb2.BootstrapAdminResponse:
        local = peer_is_local(context)
        if local:
            self._gate.check(request.bootstrap_token)
        try:
            done = await accounts.bootstrap_admin(request.email, request.display_name, peer_is_local=local)
        except AlreadyExists:
            self._gate.consume()  # bootstrapped through another replica
            raise
        self._gate.consume()
        return accounts_pb2.BootstrapAdminResponse(
            account=convert.account(done.account), api_key=convert.api_key(done.key.key), secret=done.key.secret
        )

    @rpc
    async def CreateAccount(
        self, request: accounts_pb2.CreateAccountRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        principal = await management_principal(context, self._clock())
        row = await email_probe(
            self._policy.throttles.email_probes,
            principal.tenant_id,
            lambda: accounts.create_account(
                principal,
                parent_id=parse_optional_id("parent", ACCOUNTS, request.parent),
                email=request.account.email,
                display_name=request.account.display_name,
                role=_role(request.account.role),
                request_id=request.request_id,
            ),
        )
        return convert.account(row)

    @rpc
    async def GetAccount(
        self, request: accounts_pb2.GetAccountRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        principal = await management_principal(context, self._clock())
        row = await accounts.get_account(principal, parse_id("name", ACCOUNTS, request.name))
        return convert.account(row)

    @rpc
    async def ListAccounts(
        self, request: accounts_pb2.ListAccountsRequest, context: Ctx[object, object]
    ) -> accounts_pb2.ListAccountsResponse:
        principal = await management_principal(context, self._clock())
        page = await accounts.list_accounts(
            principal,
            self._codec,
            parent_id=parse_optional_id("parent", ACCOUNTS, request.parent),
            role=request.role,
            state=request.state,
            size=request.page_size,
            token=request.page_token,
        )
        return accounts_pb2.ListAccountsResponse(
            accounts=[convert.account(row) for row in page.accounts], next_page_token=page.next_page_token
        )

    @rpc
    async def UpdateAccount(
        self, request: accounts_pb2.UpdateAccountRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        now = self._clock()
        principal = await management_principal(context, now)
        row = await email_probe(
            self._policy.throttles.email_probes,
            principal.tenant_id,
            lambda: accounts.update_account(
                principal,
                parse_id("account.name", ACCOUNTS, request.account.name),
                paths=update_paths(request.update_mask, request.account, accounts.UPDATABLE_FIELDS),
                display_name=request.account.display_name,
                email=request.account.email,
                role=request.account.role,
                now=now,
            ),
        )
        return convert.account(row)

    @rpc
    async def DeleteAccount(
        self, request: accounts_pb2.DeleteAccountRequest, context: Ctx[object, object]
    ) -> empty_pb2.Empty:
        now = self._clock()
        principal = await management_principal(context, now)
        await account_lifecycle.delete_account(principal, parse_id("name", ACCOUNTS, request.name), now)
        return empty_pb2.Empty()

    @rpc
    async def SuspendAccount(
        self, request: accounts_pb2.SuspendAccountRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        now = self._clock()
        principal = await management_principal(context, now)
        row = await account_lifecycle.suspend_account(principal, parse_id("name", ACCOUNTS, request.name), now)
        return convert.account(row)

    @rpc
    async def ResumeAccount(
        self, request: accounts_pb2.ResumeAccountRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        now = self._clock()
        principal = await management_principal(context, now)
        row = await account_lifecycle.resume_account(principal, parse_id("name", ACCOUNTS, request.name), now)
        return convert.account(row)

    @rpc
    async def SetPassword(
        self, request: accounts_pb2.SetPasswordRequest, context: Ctx[object, object]
    ) -> empty_pb2.Empty:
        now = self._clock()
        principal = await management_principal(context, now)
        await logins.set_password(
            principal,
            parse_optional_id("name", ACCOUNTS, request.name),
            request.password,
            request.current_password,
            now,
            policy=self._policy,
        )
        return empty_pb2.Empty()

    @rpc
    async def Login(
        self, request: accounts_pb2.LoginRequest, context: Ctx[object, object]
    ) -> accounts_pb2.LoginResponse:
        done = await logins.login(
            request.email, request.password, self._clock(), policy=self._policy, client=client_address(context)
        )
        return accounts_pb2.LoginResponse(
            session_token=done.token,
            expire_time=convert.timestamp(done.session.expires_at),
            account=convert.account(done.account),
        )

    @rpc
    async def Logout(self, request: accounts_pb2.LogoutRequest, context: Ctx[object, object]) -> empty_pb2.Empty:
        principal = await management_principal(context, self._clock())
        await logins.logout(principal)
        return empty_pb2.Empty()

    @rpc
    async def SetAccountPolicy(
        self, request: accounts_pb2.SetAccountPolicyRequest, context: Ctx[object, object]
    ) -> accounts_pb2.Account:
        now = self._clock()
        principal = await management_principal(context, now)
        target = await accounts.account_in_subtree(principal, parse_id("name", ACCOUNTS, request.name), "name")
        row = await policies.set_policy(
            principal, target, paths=list(request.update_mask.paths), policy=_policy(request.policy), now=now
        )
        return convert.account(row)


def _policy(message: accounts_pb2.AccountPolicy) -> policies.Policy:
    lifetime = message.max_key_lifetime
    if lifetime.nanos or lifetime.seconds < 0:
        raise InvalidArgument.field("policy.max_key_lifetime", "must be a whole, positive number of seconds")
    return policies.Policy(
        # Checked in the caller's order, so a bad name's index is the one it sent.
        allowed_models=frozenset(policies.valid_models(message.allowed_models, "policy.allowed_models")) or None,
        management_keys=not message.deny_management_keys,
        max_key_lifetime=timedelta(seconds=lifetime.seconds) if message.HasField("max_key_lifetime") else None,
    )
