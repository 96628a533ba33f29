"""AccountService end to end: list, update, delete, suspend, resume, passwords and logins.

Every call goes through a real in-process ``ControlServer`` with the generated
stubs; errors are checked on the wire (status code and ``ErrorInfo.reason``).
A few rules that cannot be reached over the wire (rehashing, the dummy hash)
are checked against the domain directly at the end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from argon2 import PasswordHasher
from google.protobuf import empty_pb2, field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from claudeopus import keys
from claudeopus.control.db import open_database
from claudeopus.control.domain import account_lifecycle, logins, passwords, validation
from claudeopus.control.domain import accounts as accounts_domain
from claudeopus.control.domain.errors import InvalidArgument, Reason, Throttled, Unauthenticated
from claudeopus.control.domain.logins import LoginPolicy
from claudeopus.control.domain.principal import authenticate_management
from claudeopus.control.domain.throttle import Throttle, Throttles
from claudeopus.control.models import Account
from claudeopus.control.server import throttles
from claudeopus.control.settings import ControlSettings
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.support.clock import FakeClock
from tests.support.control_server import in_process_control
from tests.support.databases import dump_text
from tests.support.rpc import Metadata, assert_error, bearer, error_info, field_violations, rpc_error

PASSWORD = "correct horse battery"
START = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)

ROLE_RESELLER = accounts_pb2.ROLE_RESELLER
ROLE_USER = accounts_pb2.ROLE_USER
ACTIVE = accounts_pb2.ACCOUNT_STATE_ACTIVE
SUSPENDED = accounts_pb2.ACCOUNT_STATE_SUSPENDED


@dataclass
class World:
    database_url: str
    service_token: str
    clock: FakeClock
    channel: grpc.aio.Channel
    admin: accounts_pb2.Account
    admin_md: Metadata
    accounts: accounts_pb2_grpc.AccountServiceAsyncStub
    api_keys: api_keys_pb2_grpc.ApiKeyServiceAsyncStub
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub
    usage: usage_pb2_grpc.UsageServiceAsyncStub

    async def create(
        self, md: Metadata, role: int = ROLE_USER, parent: str = "", email: str = ""
    ) -> accounts_pb2.Account:
        account = accounts_pb2.Account(email=email or f"a-{secrets.token_hex(4)}@example.com", role=role)  # type: ignore[arg-type]
        return await self.accounts.CreateAccount(
            accounts_pb2.CreateAccountRequest(parent=parent, account=account), metadata=md
        )

    async def key(
        self, md: Metadata, parent: str, scope: int = api_keys_pb2.SCOPE_MANAGEMENT, expire: datetime | None = None
    ) -> api_keys_pb2.CreateApiKeyResponse:
        spec = api_keys_pb2.ApiKey(scopes=[scope])  # type: ignore[list-item]
        if expire is not None:
            spec.expire_time.FromDatetime(expire)
        return await self.api_keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=spec), metadata=md
        )

    async def manager(
        self, md: Metadata, role: int = ROLE_RESELLER, parent: str = ""
    ) -> tuple[accounts_pb2.Account, Metadata]:
        """A new account below ``parent`` and metadata carrying its management key."""
        account = await self.create(md, role, parent)
        created = await self.key(md, account.name)
        return account, bearer(created.secret)

    async def get(self, md: Metadata, name: str) -> accounts_pb2.Account:
        return await self.accounts.GetAccount(accounts_pb2.GetAccountRequest(name=name), metadata=md)

    async def children(self, md: Metadata, parent: str = "", **filters: int) -> list[str]:
        """Names of every child of ``parent``, following page tokens."""
        names: list[str] = []
        token = ""
        while True:
            page = await self.accounts.ListAccounts(
                accounts_pb2.ListAccountsRequest(parent=parent, page_size=2, page_token=token, **filters),  # type: ignore[arg-type]
                metadata=md,
            )
            names.extend(a.name for a in page.accounts)
            token = page.next_page_token
            if not token:
                return names

    def update(
        self, md: Metadata, name: str, paths: tuple[str, ...] = (), **values: object
    ) -> Awaitable[accounts_pb2.Account]:
        request = accounts_pb2.UpdateAccountRequest(
            account=accounts_pb2.Account(name=name, **values),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
        return self.accounts.UpdateAccount(request, metadata=md)

    def delete(self, md: Metadata, name: str) -> Awaitable[object]:
        return self.accounts.DeleteAccount(accounts_pb2.DeleteAccountRequest(name=name), metadata=md)

    def suspend(self, md: Metadata, name: str) -> Awaitable[accounts_pb2.Account]:
        return self.accounts.SuspendAccount(accounts_pb2.SuspendAccountRequest(name=name), metadata=md)

    def resume(self, md: Metadata, name: str) -> Awaitable[accounts_pb2.Account]:
        return self.accounts.ResumeAccount(accounts_pb2.ResumeAccountRequest(name=name), metadata=md)

    def set_password(self, md: Metadata, name: str, password: str = PASSWORD, current: str = "") -> Awaitable[object]:
        request = accounts_pb2.SetPasswordRequest(name=name, password=password, current_password=current)
        return self.accounts.SetPassword(request, metadata=md)

    def login(self, email: str, password: str = PASSWORD) -> Awaitable[accounts_pb2.LoginResponse]:
        return self.accounts.Login(accounts_pb2.LoginRequest(email=email, password=password))

    def authorize(self, secret: str) -> Awaitable[gateway_pb2.AuthorizeResponse]:
        request = gateway_pb2.AuthorizeRequest(
            request_id=str(uuid.uuid4()), key_hash=keys.hash_secret_bytes(secret), model="m-1", max_output_tokens=8
        )
        return self.gateway.Authorize(request, metadata=bearer(self.service_token))


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    clock = FakeClock(START)
    async with in_process_control(database_url, clock=clock) as control:
        yield World(
            database_url=database_url,
            service_token=control.service_token,
            clock=clock,
            channel=control.channel,
            admin=control.admin,
            admin_md=bearer(control.admin_secret),
            accounts=control.accounts,
            api_keys=control.api_keys,
            gateway=control.gateway,
            usage=control.usage,
        )


async def expect(
    call: Awaitable[object], code: grpc.StatusCode, reason: str, fields: list[str] | None = None
) -> grpc.aio.AioRpcError:
    error = await rpc_error(call)
    assert_error(error, code, reason)
    if fields is not None:
        assert list(field_violations(error)) == fields
    return error


NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
SELF_DENIED = (grpc.StatusCode.PERMISSION_DENIED, "SELF_CHANGE_DENIED")
NOT_EMPTY = (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_EMPTY")
SUSPENDED_ERROR = (grpc.StatusCode.PERMISSION_DENIED, "ACCOUNT_SUSPENDED")
LOGIN_FAILED = (grpc.StatusCode.UNAUTHENTICATED, "LOGIN_FAILED")
SESSION_INVALID = (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")
TAKEN = (grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")


# -- ListAccounts --------------------------------------------------------------


async def test_list_accounts_pages_direct_children_oldest_first(world: World) -> None:
    md = world.admin_md
    made = [await world.create(md, role) for role in (ROLE_RESELLER, ROLE_USER, ROLE_USER, ROLE_RESELLER, ROLE_USER)]
    names = [a.name for a in made]
    await world.create(md, ROLE_USER, parent=made[0].name)  # a grandchild is not a direct child
    await world.suspend(md, names[2])
    await world.delete(md, names[4])

    assert await world.children(md) == names[:4]
    assert await world.children(md, parent=world.admin.name) == names[:4]
    assert await world.children(md, role=ROLE_RESELLER) == [names[0], names[3]]
    assert await world.children(md, role=ROLE_USER) == names[1:3]
    assert await world.children(md, state=SUSPENDED) == [names[2]]
    assert await world.children(md, state=ACTIVE, role=ROLE_USER) == [names[1]]
    assert await world.children(md, role=accounts_pb2.ROLE_ADMIN) == []
    assert len(await world.children(md, parent=names[0])) == 1

    page = await world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(page_size=3), metadata=md)
    assert [a.name for a in page.accounts] == names[:3] and page.next_page_token
    page = await world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(page_size=4), metadata=md)
    assert [a.name for a in page.accounts] == names[:4] and page.next_page_token == ""
    page = await world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(), metadata=md)  # 0 means 50
    assert [a.name for a in page.accounts] == names[:4] and page.next_page_token == ""
    assert page.accounts[0] == await world.get(md, names[0])


async def test_list_accounts_rejects_bad_arguments_and_foreign_page_tokens(world: World) -> None:
    md = world.admin_md
    for _ in range(3):
        await world.create(md, ROLE_USER)
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")

    def list_call(metadata: Metadata = md, **fields: object) -> Awaitable[accounts_pb2.ListAccountsResponse]:
        return world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(**fields), metadata=metadata)  # type: ignore[arg-type]

    await expect(list_call(page_size=-1), *invalid, ["page_size"])
    await expect(list_call(role=42), *invalid, ["role"])
    await expect(list_call(state=42), *invalid, ["state"])
    await expect(list_call(parent="users/1"), *invalid, ["parent"])
    await expect(list_call(parent="accounts/987654"), *NOT_FOUND)

    first = await list_call(page_size=1, role=ROLE_USER)
    token = first.next_page_token
    second = await list_call(page_size=1, role=ROLE_USER, page_token=token)
    assert second.accounts[0].name != first.accounts[0].name

    bad_token = (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")
    # Bound to every filter ...
    await expect(list_call(page_size=1, page_token=token), *bad_token, ["page_token"])
    await expect(list_call(page_size=1, role=ROLE_USER, state=ACTIVE, page_token=token), *bad_token)
    await expect(list_call(page_size=1, role=ROLE_USER, parent="", page_token=token + "x"), *bad_token)
    await expect(list_call(page_size=1, role=ROLE_USER, page_token="garbage"), *bad_token)
    # ... and to the credential: another key of the same admin cannot use it.
    other = await world.key(md, world.admin.name)
    await expect(list_call(bearer(other.secret), page_size=1, role=ROLE_USER, page_token=token), *bad_token)


async def test_a_user_lists_no_children_and_creates_none(world: World) -> None:
    user, user_md = await world.manager(world.admin_md, ROLE_USER)
    page = await world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(), metadata=user_md)
    assert list(page.accounts) == [] and page.next_page_token == ""
    await expect(
        world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(parent=world.admin.name), metadata=user_md),
        *NOT_FOUND,
    )
    await expect(world.create(user_md, ROLE_USER), grpc.StatusCode.PERMISSION_DENIED, "ROLE_DENIED")
    await expect(
        world.create(world.admin_md, ROLE_USER, parent=user.name), grpc.StatusCode.FAILED_PRECONDITION, "ROLE_DENIED"
    )


# -- UpdateAccount -------------------------------------------------------------


async def test_update_account_applies_only_the_masked_fields(world: World) -> None:
    md = world.admin_md
    user = await world.create(md, ROLE_USER, email="before@example.com")

    renamed = await world.update(md, user.name, ("display_name",), display_name="  Alice  ", email="x@example.com")
    assert (renamed.display_name, renamed.email, renamed.role) == ("Alice", "before@example.com", ROLE_USER)

    moved = await world.update(md, user.name, ("email",), email="After@Example.COM", display_name="ignored")
    assert (moved.display_name, moved.email) == ("Alice", "after@example.com")

    promoted = await world.update(md, user.name, ("role",), role=ROLE_RESELLER)
    assert promoted.role == ROLE_RESELLER
    demoted = await world.update(md, user.name, ("role",), role=ROLE_USER)
    assert demoted.role == ROLE_USER

    # An empty mask (or "*") replaces all three.
    replaced = await world.update(md, user.name, email="all@example.com", display_name="All", role=ROLE_RESELLER)
    assert (replaced.display_name, replaced.email, replaced.role) == ("All", "all@example.com", ROLE_RESELLER)
    starred = await world.update(md, user.name, ("*",), email="star@example.com", display_name="", role=ROLE_USER)
    assert (starred.display_name, starred.email, starred.role) == ("", "star@example.com", ROLE_USER)
    assert await world.get(md, user.name) == starred

    # The old address is free again, the new one is taken.
    await world.create(md, ROLE_USER, email="before@example.com")
    await expect(
        world.update(md, user.name, ("email",), email="root@example.com"),
        grpc.StatusCode.ALREADY_EXISTS,
        "RESOURCE_EXISTS",
    )


async def test_update_account_validates_mask_and_values(world: World) -> None:
    md = world.admin_md
    user = await world.create(md, ROLE_USER)
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    for paths in (("state",), ("display_name", "parent"), ("account.display_name",), ("name",), ("*", "email")):
        await expect(world.update(md, user.name, paths, display_name="x"), *invalid, ["update_mask"])
    await expect(world.update(md, user.name, ("email",), email="not-an-email"), *invalid, ["account.email"])
    await expect(
        world.update(md, user.name, ("display_name",), display_name="x" * 201), *invalid, ["account.display_name"]
    )
    await expect(world.update(md, user.name, ("role",), role=0), *invalid, ["account.role"])
    await expect(world.update(md, user.name, ("role",), role=77), *invalid, ["account.role"])
    await expect(world.update(md, user.name, ("role",), role=accounts_pb2.ROLE_ADMIN), *invalid, ["account.role"])
    # Without a mask only the populated fields change (AIP-134): the role stays.
    changed = await world.update(md, user.name, email=f"ok-{secrets.token_hex(3)}@example.com")
    assert changed.role == ROLE_USER
    # "*" replaces every field, so a missing role is an error.
    await expect(world.update(md, user.name, ("*",), email="ok2@example.com"), *invalid, ["account.role"])
    await expect(world.update(md, "", ("display_name",)), *invalid, ["account.name"])
    await expect(world.update(md, "accounts/987654", ("display_name",)), *NOT_FOUND)
    assert (await world.get(md, user.name)).display_name == ""


async def test_update_account_self_may_rename_but_not_change_role(world: World) -> None:
    reseller, reseller_md = await world.manager(world.admin_md, ROLE_RESELLER)
    mine = await world.update(
        reseller_md, reseller.name, ("display_name", "email"), display_name="Me", email="me@example.com"
    )
    assert (mine.display_name, mine.email, mine.role) == ("Me", "me@example.com", ROLE_RESELLER)
    await expect(world.update(reseller_md, reseller.name, ("role",), role=ROLE_USER), *SELF_DENIED)
    # Naming the current role is no change, so a full update of oneself works.
    same = await world.update(
        reseller_md, reseller.name, email="me2@example.com", display_name="Me", role=ROLE_RESELLER
    )
    assert same.email == "me2@example.com"
    admin = await world.update(
        world.admin_md, world.admin.name, display_name="Root 2", email="root@example.com", role=accounts_pb2.ROLE_ADMIN
    )
    assert (admin.display_name, admin.role) == ("Root 2", accounts_pb2.ROLE_ADMIN)
    await expect(world.update(world.admin_md, world.admin.name, ("role",), role=ROLE_RESELLER), *SELF_DENIED)


async def test_a_reseller_with_children_cannot_become_a_user(world: World) -> None:
    md = world.admin_md
    reseller = await world.create(md, ROLE_RESELLER)
    child = await world.create(md, ROLE_USER, parent=reseller.name)
    await expect(world.update(md, reseller.name, ("role",), role=ROLE_USER), *NOT_EMPTY)
    assert (await world.get(md, reseller.name)).role == ROLE_RESELLER
    await world.delete(md, child.name)
    assert (await world.update(md, reseller.name, ("role",), role=ROLE_USER)).role == ROLE_USER


# -- DeleteAccount -------------------------------------------------------------


async def test_delete_account_refuses_self_children_and_live_keys(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md, ROLE_RESELLER)
    child = await world.create(md, ROLE_USER, parent=reseller.name)

    await expect(world.delete(md, world.admin.name), *SELF_DENIED)
    await expect(world.delete(reseller_md, reseller.name), *SELF_DENIED)
    await expect(world.delete(md, reseller.name), *NOT_EMPTY)  # a child and a live key

    key = await world.key(md, child.name, api_keys_pb2.SCOPE_INFERENCE)
    await expect(world.delete(md, child.name), *NOT_EMPTY)
    await world.api_keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=key.api_key.name), metadata=md)
    await world.key(md, child.name, api_keys_pb2.SCOPE_INFERENCE, expire=START + timedelta(hours=1))
    await expect(world.delete(md, child.name), *NOT_EMPTY)
    world.clock.now = START + timedelta(hours=1)  # an expired key is not live
    await world.delete(reseller_md, child.name)

    await expect(world.delete(md, reseller.name), *NOT_EMPTY)  # still its management key
    world.clock.now = START
    await expect(world.delete(md, "accounts/987654"), *NOT_FOUND)
    await expect(world.delete(md, "accounts/x"), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", ["name"])


async def test_a_deleted_account_is_gone_but_its_usage_stays(world: World) -> None:
    md = world.admin_md
    reseller = await world.create(md, ROLE_RESELLER)
    user = await world.create(md, ROLE_USER, parent=reseller.name, email="gone@example.com")
    await world.update(md, user.name, ("display_name",), display_name="Gone")
    await world.set_password(md, user.name)
    session = (await world.login("gone@example.com")).session_token
    key = await world.key(md, user.name, api_keys_pb2.SCOPE_INFERENCE)
    authorized = await world.authorize(key.secret)
    await world.api_keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=key.api_key.name), metadata=md)

    assert await world.delete(md, user.name) == empty_pb2.Empty()

    # Invisible to every call, for every caller.
    await expect(world.get(md, user.name), *NOT_FOUND)
    await expect(world.update(md, user.name, ("display_name",), display_name="x"), *NOT_FOUND)
    await expect(world.delete(md, user.name), *NOT_FOUND)
    await expect(world.suspend(md, user.name), *NOT_FOUND)
    await expect(world.resume(md, user.name), *NOT_FOUND)
    await expect(world.set_password(md, user.name), *NOT_FOUND)
    await expect(
        world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(parent=user.name), metadata=md), *NOT_FOUND
    )
    await expect(world.create(md, ROLE_USER, parent=user.name), *NOT_FOUND)
    assert await world.children(md, parent=reseller.name) == []
    await expect(world.key(md, user.name), *NOT_FOUND)
    # Its sessions ended and its login is gone.
    await expect(world.get(bearer(session), user.name), *SESSION_INVALID)
    await expect(world.login("gone@example.com"), *LOGIN_FAILED)

    # The address can be used again; the old account stays a different, deleted one.
    again = await world.create(md, ROLE_USER, parent=reseller.name, email="gone@example.com")
    assert again.name != user.name and await world.children(md, parent=reseller.name) == [again.name]

    # The usage history still names the deleted account.
    records = await world.usage.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(), metadata=md)
    assert [(r.account, r.api_key) for r in records.usage_records] == [(authorized.account, key.api_key.name)]
    assert authorized.account == user.name

    # Now the reseller is empty and can go too.
    await world.delete(md, again.name)
    await world.delete(md, reseller.name)
    assert await world.children(md) == []


# -- SuspendAccount / ResumeAccount --------------------------------------------


async def test_suspend_and_resume_are_idempotent_and_never_self(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md, ROLE_RESELLER)
    user = await world.create(reseller_md, ROLE_USER)

    first = await world.suspend(reseller_md, user.name)
    again = await world.suspend(reseller_md, user.name)
    assert first.state == again.state == SUSPENDED and first.name == user.name
    assert (await world.get(md, user.name)).state == SUSPENDED
    assert (await world.resume(reseller_md, user.name)).state == ACTIVE
    assert (await world.resume(reseller_md, user.name)).state == ACTIVE

    for call in (world.suspend, world.resume):
        await expect(call(reseller_md, reseller.name), *SELF_DENIED)
        await expect(call(md, world.admin.name), *SELF_DENIED)
        await expect(call(reseller_md, world.admin.name), *NOT_FOUND)
        await expect(call(md, "accounts/987654"), *NOT_FOUND)
        await expect(call(md, ""), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", ["name"])


async def test_suspending_a_reseller_stops_every_key_of_its_subtree(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md, ROLE_RESELLER)
    sub_reseller = await world.create(reseller_md, ROLE_RESELLER)
    user = await world.create(reseller_md, ROLE_USER, parent=sub_reseller.name)
    key = await world.key(reseller_md, user.name, api_keys_pb2.SCOPE_INFERENCE)
    await world.set_password(reseller_md, user.name)
    session = bearer((await world.login(user.email)).session_token)
    assert (await world.authorize(key.secret)).account == user.name

    assert (await world.suspend(md, reseller.name)).state == SUSPENDED
    await expect(world.authorize(key.secret), *SUSPENDED_ERROR)
    await expect(world.get(reseller_md, reseller.name), *SUSPENDED_ERROR)
    await expect(world.get(session, user.name), *SESSION_INVALID)  # every session of the subtree ended
    await expect(world.login(user.email), *SUSPENDED_ERROR)
    # The user itself was never suspended: its own state is unchanged.
    assert (await world.get(md, user.name)).state == ACTIVE

    assert (await world.resume(md, reseller.name)).state == ACTIVE
    assert (await world.authorize(key.secret)).account == user.name
    await expect(world.get(session, user.name), *SESSION_INVALID)  # a resume brings no session back
    assert (await world.get(bearer((await world.login(user.email)).session_token), user.name)).name == user.name
    assert (await world.get(reseller_md, user.name)).name == user.name


# -- SetPassword and Login -----------------------------------------------------


async def test_set_password_checks_length_and_subtree(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md, ROLE_RESELLER)
    user = await world.create(reseller_md, ROLE_USER)
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    await expect(world.set_password(md, user.name, "x" * 11), *invalid, ["password"])
    await expect(world.set_password(md, user.name, "x" * 1025), *invalid, ["password"])
    await expect(world.set_password(md, user.name, ""), *invalid, ["password"])
    await expect(world.set_password(reseller_md, world.admin.name), *NOT_FOUND)
    await expect(world.set_password(md, "accounts/987654"), *NOT_FOUND)
    await expect(world.set_password(md, "nope"), *invalid, ["name"])

    assert await world.set_password(reseller_md, user.name, "y" * 12) == empty_pb2.Empty()
    assert (await world.login(user.email, "y" * 12)).account.name == user.name
    await world.set_password(md, user.name, "é" * 1024)  # characters, not bytes
    assert (await world.login(user.email, "é" * 1024)).account.name == user.name
    await world.set_password(reseller_md, "")  # empty name: the caller's own account
    assert (await world.login(reseller.email)).account.name == reseller.name


async def test_login_opens_a_session_that_works_for_management(world: World) -> None:
    md = world.admin_md
    reseller = await world.create(md, ROLE_RESELLER, email="shop@example.com")
    await world.update(md, reseller.name, ("display_name",), display_name="Shop")
    await world.set_password(md, reseller.name)

    login = await world.login("  SHOP@example.com ")
    assert login.account == await world.get(md, reseller.name)
    assert login.session_token.startswith("co-session-")
    assert login.expire_time.ToDatetime(tzinfo=UTC) == START + timedelta(hours=12)
    session = bearer(login.session_token)

    # The session is a full management credential, confined to the subtree.
    assert (await world.get(session, reseller.name)).display_name == "Shop"
    child = await world.create(session, ROLE_USER)
    assert child.parent == reseller.name
    assert await world.children(session) == [child.name]
    key = await world.key(session, child.name, api_keys_pb2.SCOPE_INFERENCE)
    assert (await world.authorize(key.secret)).account == child.name
    assert (await world.suspend(session, child.name)).state == SUSPENDED
    assert (await world.resume(session, child.name)).state == ACTIVE
    await world.usage.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(), metadata=session)
    await expect(world.get(session, world.admin.name), *NOT_FOUND)
    await expect(world.suspend(session, reseller.name), *SELF_DENIED)

    # A page token is bound to the session that got it.
    page = await world.accounts.ListAccounts(accounts_pb2.ListAccountsRequest(page_size=1), metadata=md)
    await expect(
        world.accounts.ListAccounts(
            accounts_pb2.ListAccountsRequest(page_size=1, page_token=page.next_page_token or "x"), metadata=session
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAGE_TOKEN_INVALID",
    )

    # It ends after twelve hours, and when the password changes.
    world.clock.now = START + timedelta(hours=12)
    await expect(world.get(session, reseller.name), *SESSION_INVALID)
    world.clock.now = START
    assert (await world.get(session, reseller.name)).name == reseller.name
    other = bearer((await world.login("shop@example.com")).session_token)
    # Changing one's own password needs the current one: a stolen session cannot lock its owner out.
    await expect(
        world.set_password(session, "", PASSWORD + "!"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        ["current_password"],
    )
    await expect(
        world.set_password(session, reseller.name, PASSWORD + "!", current="not the password"),
        grpc.StatusCode.PERMISSION_DENIED,
        "CURRENT_PASSWORD_INVALID",
    )
    assert (await world.get(other, reseller.name)).name == reseller.name  # nothing changed
    assert (await world.login("shop@example.com")).account.name == reseller.name
    await world.set_password(session, "", PASSWORD + "!", current=PASSWORD)
    await expect(world.get(session, reseller.name), *SESSION_INVALID)
    await expect(world.get(other, reseller.name), *SESSION_INVALID)
    await expect(world.login("shop@example.com"), *LOGIN_FAILED)
    assert (await world.login("shop@example.com", PASSWORD + "!")).account.name == reseller.name


async def test_every_failed_login_looks_the_same(world: World, caplog: pytest.LogCaptureFixture) -> None:
    # ClaudeOpus's own loggers at their most verbose (library debug output, which
    # carries SQL values, is kept at INFO or above by configure_logging).
    caplog.set_level(logging.DEBUG, logger="claudeopus")
    md = world.admin_md
    with_password = await world.create(md, ROLE_USER, email="has@example.com")
    await world.set_password(md, with_password.name)
    await world.create(md, ROLE_USER, email="nopass@example.com")
    deleted = await world.create(md, ROLE_USER, email="deleted@example.com")
    await world.set_password(md, deleted.name)
    await world.delete(md, deleted.name)

    messages = set()
    for email, password in (
        ("has@example.com", "wrong password here"),
        ("has@example.com", ""),
        ("has@example.com", PASSWORD + "x" * 2000),
        ("nobody@example.com", PASSWORD),
        ("nopass@example.com", PASSWORD),
        ("deleted@example.com", PASSWORD),
        ("not an email", PASSWORD),
        ("", ""),
        ("has@example.com\x00", PASSWORD),
        ("x" * 400 + "@example.com", PASSWORD),
    ):
        error = await expect(world.login(email, password), *LOGIN_FAILED)
        messages.add(error.details())
    assert messages == {"Incorrect email or password."}

    # A suspended account learns it is suspended only with the right password.
    await world.suspend(md, with_password.name)
    await expect(world.login("has@example.com", "wrong password here"), *LOGIN_FAILED)
    await expect(world.login("has@example.com"), *SUSPENDED_ERROR)
    await world.resume(md, with_password.name)
    assert (await world.login("has@example.com")).account.name == with_password.name

    # Neither the password nor its hash is logged or stored in the clear.
    assert PASSWORD not in caplog.text and "argon2" not in caplog.text
    stored = await asyncio.to_thread(dump_text, world.database_url)
    assert PASSWORD not in stored and "$argon2id$" in stored


RATE_LIMITED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay (seconds) a throttled call carries."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return float(retry.retry_delay.ToNanoseconds() / 1e9)
    raise AssertionError(f"no RetryInfo in {status}")


async def test_a_login_flood_is_throttled_before_any_hash_is_computed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real_verify = passwords._verify

    def spy(stored: str, password: str) -> bool:
        checked.append(stored)
        return real_verify(stored, password)

    monkeypatch.setattr(passwords, "_verify", spy)
    limit = ControlSettings(service_token="t" * 32).login_attempts_per_minute
    for attempt in range(limit):
        await expect(world.login(f"guess-{attempt}@example.com", f"guess number {attempt}"), *LOGIN_FAILED)
    assert len(checked) == limit
    # From this address, every further attempt is refused at once (right or wrong, any email),
    # and costs no argon2 work.
    for email in ("guess-x@example.com", "root@example.com"):
        error = await expect(world.login(email, "another guess here"), *RATE_LIMITED)
        assert 0 < retry_delay(error) <= 60
    assert len(checked) == limit


async def test_failed_logins_are_throttled_per_email_whatever_the_address(database_url: str) -> None:
    """Domain level: the email's budget of failures, then the same refusal for a known and an unknown email."""
    moments = [0.0]
    throttles = Throttles(
        login_per_address=Throttle(1000, 60.0, clock=lambda: moments[0]),
        login_per_email=Throttle(3, 3600.0, clock=lambda: moments[0]),
        email_probes=Throttle(1, 3600.0),
    )
    async with open_database(database_url):
        with passwords.PasswordPool(1) as pool:
            policy = LoginPolicy(pool, throttles, timedelta(hours=12))
            boot = await accounts_domain.bootstrap_admin("root@example.com", "", peer_is_local=True)
            principal = await authenticate_management(boot.key.secret, START)
            await logins.set_password(principal, None, PASSWORD, "", START, policy=policy)
            for email in ("root@example.com", "nobody@example.com"):
                for attempt in range(3):
                    with pytest.raises(Unauthenticated):
                        await logins.login(email, "wrong password!", START, policy=policy, client=f"10.0.0.{attempt}")
                with pytest.raises(Throttled) as caught:
                    await logins.login(email, PASSWORD, START, policy=policy, client="10.0.0.9")
                assert caught.value.message == logins.TOO_MANY_LOGINS and caught.value.retry_after == 1200.0
            moments[0] = 1200.0  # one attempt regained
            done = await logins.login("root@example.com", PASSWORD, START, policy=policy, client="10.0.0.9")
            assert done.account.id == boot.account.id


def test_a_throttle_refills_and_remembers_a_bounded_number_of_keys() -> None:
    moments = [0.0]
    throttle = Throttle(2, 10.0, max_keys=2, clock=lambda: moments[0])
    throttle.take("a", "slow down")
    throttle.take("a", "slow down")
    with pytest.raises(Throttled) as caught:
        throttle.take("a", "slow down")
    assert caught.value.retry_after == 5.0 and caught.value.reason is Reason.RATE_LIMITED
    moments[0] = 5.0
    throttle.take("a", "slow down")  # one attempt back after window / limit seconds
    throttle.spend("b")
    throttle.spend("c")  # a third key: the least recently used ("a") is forgotten
    assert throttle.retry_after("a") == 0.0 and throttle.retry_after("c") == 0.0


async def test_logout_ends_only_the_calling_session(world: World) -> None:
    md = world.admin_md
    user = await world.create(md, ROLE_USER)
    await world.set_password(md, user.name)
    first = bearer((await world.login(user.email)).session_token)
    second = bearer((await world.login(user.email)).session_token)
    assert await world.accounts.Logout(accounts_pb2.LogoutRequest(), metadata=first) == empty_pb2.Empty()
    await expect(world.get(first, user.name), *SESSION_INVALID)
    assert (await world.get(second, user.name)).name == user.name
    await expect(
        world.accounts.Logout(accounts_pb2.LogoutRequest(), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_A_SESSION",
    )
    await expect(world.accounts.Logout(accounts_pb2.LogoutRequest(), metadata=first), *SESSION_INVALID)


async def test_a_reset_from_above_ends_the_sessions_and_the_keys_they_minted(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md, ROLE_RESELLER)
    await world.set_password(md, reseller.name)
    session = bearer((await world.login(reseller.email)).session_token)
    minted = await world.key(session, reseller.name)  # a management key made through the session
    minted_inference = await world.key(session, reseller.name, api_keys_pb2.SCOPE_INFERENCE)
    minted_md = bearer(minted.secret)
    assert (await world.get(minted_md, reseller.name)).name == reseller.name

    # The account above resets the password: no current password is needed.
    await world.set_password(md, reseller.name, PASSWORD + "!")
    await expect(world.get(session, reseller.name), *SESSION_INVALID)
    await expect(world.get(minted_md, reseller.name), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    # Keys made with a key, and inference keys, stay.
    assert (await world.get(reseller_md, reseller.name)).name == reseller.name
    assert (await world.authorize(minted_inference.secret)).account == reseller.name


async def test_a_secret_rotated_enabled_or_made_through_a_session_is_revoked_with_it(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md, ROLE_RESELLER)
    await world.set_password(md, reseller.name)
    made_by_key = await world.key(reseller_md, reseller.name)
    widened = await world.key(reseller_md, reseller.name, api_keys_pb2.SCOPE_INFERENCE)
    session = bearer((await world.login(reseller.email)).session_token)
    # A key made through the session, and a key made with that key.
    first = await world.key(session, reseller.name)
    second = await world.key(bearer(first.secret), reseller.name)
    # Through the session: a new secret for a management key made with a key, and the management
    # scope added to an inference key.
    rotated = await world.api_keys.RotateApiKey(
        api_keys_pb2.RotateApiKeyRequest(name=made_by_key.api_key.name), metadata=session
    )
    spec = api_keys_pb2.ApiKey(
        name=widened.api_key.name, scopes=[api_keys_pb2.SCOPE_INFERENCE, api_keys_pb2.SCOPE_MANAGEMENT]
    )
    await world.api_keys.UpdateApiKey(
        api_keys_pb2.UpdateApiKeyRequest(api_key=spec, update_mask=field_mask_pb2.FieldMask(paths=["scopes"])),
        metadata=session,
    )
    assert (await world.get(bearer(rotated.secret), reseller.name)).name == reseller.name
    assert (await world.get(bearer(widened.secret), reseller.name)).name == reseller.name

    await world.set_password(md, reseller.name, PASSWORD + "!")
    await expect(world.get(bearer(rotated.secret), reseller.name), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    await expect(world.get(bearer(widened.secret), reseller.name), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    await expect(world.get(bearer(second.secret), reseller.name), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    assert (await world.get(reseller_md, reseller.name)).name == reseller.name


async def test_a_suspension_ends_the_subtree_sessions_and_their_management_keys_for_good(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md, ROLE_RESELLER)
    user = await world.create(reseller_md, ROLE_USER)
    await world.set_password(md, user.name)
    session = bearer((await world.login(user.email)).session_token)
    minted_md = bearer((await world.key(session, user.name)).secret)
    assert (await world.get(minted_md, user.name)).name == user.name

    await world.suspend(md, reseller.name)
    # Right after SuspendAccount returns, neither the session nor the key it minted is accepted...
    await expect(world.get(session, user.name), *SESSION_INVALID)
    await expect(world.get(minted_md, user.name), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    # ... and a resume gives neither back (whoever stole the session kept nothing).
    await world.resume(md, reseller.name)
    await expect(world.get(session, user.name), *SESSION_INVALID)
    await expect(world.get(minted_md, user.name), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    assert (await world.get(reseller_md, user.name)).name == user.name  # keys made with keys are untouched


async def test_a_taken_email_answers_alike_wherever_it_is_used_and_probing_is_throttled(world: World) -> None:
    md = world.admin_md
    reseller_a, a_md = await world.manager(md, ROLE_RESELLER)
    reseller_b, b_md = await world.manager(md, ROLE_RESELLER)
    await world.create(b_md, ROLE_USER, email="theirs@example.com")  # another reseller's customer
    mine = await world.create(a_md, ROLE_USER, email="mine@example.com")  # reseller A's own customer
    sub, sub_md = await world.manager(a_md, ROLE_RESELLER)  # an account A made to probe through

    def answer(error: grpc.aio.AioRpcError) -> tuple[object, ...]:
        return (error.code(), error.details(), error_info(error), field_violations(error))

    foreign = await expect(world.create(a_md, ROLE_USER, email="theirs@example.com"), *TAKEN)
    own = await expect(world.create(a_md, ROLE_USER, email="mine@example.com"), *TAKEN)
    assert answer(foreign) == answer(own)
    changed = await expect(world.update(a_md, mine.name, ("email",), email="theirs@example.com"), *TAKEN)
    assert (changed.code(), changed.details()) == (own.code(), own.details())

    limit = ControlSettings(service_token="t" * 32).email_probes_per_hour
    for attempt in range(limit - 3):
        await expect(
            world.create(a_md, ROLE_USER, email="theirs@example.com" if attempt % 2 else "mine@example.com"), *TAKEN
        )
    # Probes spent: every creation (and email change) by this caller now waits, whatever the address.
    for email in ("theirs@example.com", "mine@example.com", "fresh@example.com"):
        error = await expect(world.create(a_md, ROLE_USER, email=email), *RATE_LIMITED)
        assert retry_delay(error) > 0
    await expect(world.update(a_md, mine.name, ("email",), email="theirs@example.com"), *RATE_LIMITED)
    # Nor through the accounts A made: the allowance is the tenant's, not each account's.
    await expect(world.create(sub_md, ROLE_USER, email="theirs@example.com"), *RATE_LIMITED)
    assert sorted(await world.children(a_md)) == sorted([mine.name, sub.name])
    # Other callers are not held back by A's probing.
    assert (await world.create(b_md, ROLE_USER, email="fresh@example.com")).parent == reseller_b.name
    del reseller_a


# -- isolation -----------------------------------------------------------------


async def test_resellers_and_users_cannot_reach_outside_their_subtree(world: World) -> None:
    md = world.admin_md
    reseller_a, a_md = await world.manager(md, ROLE_RESELLER)
    reseller_b, b_md = await world.manager(md, ROLE_RESELLER)
    b_user = await world.create(b_md, ROLE_USER)
    sub, sub_md = await world.manager(a_md, ROLE_RESELLER)
    user, user_md = await world.manager(a_md, ROLE_USER)

    def every_call(caller: Metadata, name: str) -> list[Callable[[], Awaitable[object]]]:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: world.get(caller, name),
            lambda: world.children(caller, parent=name),
            lambda: world.update(caller, name, ("display_name",), display_name="taken over"),
            lambda: world.delete(caller, name),
            lambda: world.suspend(caller, name),
            lambda: world.resume(caller, name),
            lambda: world.set_password(caller, name),
        ]
        if caller != user_md:  # a user may create nothing anywhere (ROLE_DENIED, below)
            calls.append(lambda: world.create(caller, ROLE_USER, parent=name))
        return calls

    for caller, targets in (
        (a_md, (reseller_b.name, b_user.name, world.admin.name)),
        (b_md, (reseller_a.name, sub.name, user.name)),
        (sub_md, (reseller_a.name, user.name, world.admin.name)),
        (user_md, (reseller_a.name, sub.name)),
    ):
        for target in targets:
            for call in every_call(caller, target):
                await expect(call(), *NOT_FOUND)

    # Nothing changed, and each still sees its own part of the tree.
    assert (await world.get(md, reseller_b.name)).display_name == ""
    assert (await world.get(md, b_user.name)).state == ACTIVE
    assert await world.children(a_md) == [sub.name, user.name]
    assert await world.children(b_md) == [b_user.name]
    assert await world.children(sub_md) == []
    assert await world.children(md) == [reseller_a.name, reseller_b.name]
    # A user may change its own name and email, nothing else.
    assert (await world.update(user_md, user.name, ("display_name",), display_name="U")).display_name == "U"
    await expect(world.create(user_md, ROLE_USER), grpc.StatusCode.PERMISSION_DENIED, "ROLE_DENIED")


# -- races (row locks on PostgreSQL; SQLite runs one transaction at a time) -----


async def test_no_user_and_no_deleted_account_ever_gets_a_child(world: World) -> None:
    md = world.admin_md

    async def race(change: Callable[[str], Awaitable[object]]) -> tuple[bool, bool, accounts_pb2.Account]:
        reseller = await world.create(md, ROLE_RESELLER)
        changed, created = await asyncio.gather(
            change(reseller.name), world.create(md, ROLE_USER, parent=reseller.name), return_exceptions=True
        )
        for result in (changed, created):
            assert not isinstance(result, BaseException) or isinstance(result, grpc.aio.AioRpcError), result
        assert isinstance(changed, BaseException) != isinstance(created, BaseException), (changed, created)
        return not isinstance(changed, BaseException), not isinstance(created, BaseException), reseller

    for _ in range(8):
        demoted, created, reseller = await race(lambda name: world.update(md, name, ("role",), role=ROLE_USER))
        children = await world.children(md, parent=reseller.name)
        assert (await world.get(md, reseller.name)).role == (ROLE_USER if demoted else ROLE_RESELLER)
        assert len(children) == (1 if created else 0)

        deleted, created, reseller = await race(lambda name: world.delete(md, name))
        if deleted:
            await expect(world.get(md, reseller.name), *NOT_FOUND)
        else:
            assert len(await world.children(md, parent=reseller.name)) == 1


# -- domain details ------------------------------------------------------------


def _policy(pool: passwords.PasswordPool) -> LoginPolicy:
    return LoginPolicy(pool, throttles(ControlSettings(service_token="t" * 32)), timedelta(hours=12))


async def test_a_login_for_an_unknown_email_still_verifies_a_hash(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real_verify = passwords._verify

    def spy(stored: str, password: str) -> bool:
        checked.append(stored)
        return real_verify(stored, password)

    monkeypatch.setattr(passwords, "_verify", spy)
    async with open_database(database_url):
        with passwords.PasswordPool(1) as pool:
            policy = _policy(pool)
            boot = await accounts_domain.bootstrap_admin("root@example.com", "", peer_is_local=True)
            for email in ("nobody@example.com", "root@example.com", "not an email"):  # the root has no password
                with pytest.raises(Unauthenticated) as caught:
                    await logins.login(email, PASSWORD, START, policy=policy, client="127.0.0.1")
                assert caught.value.reason is Reason.LOGIN_FAILED
            assert checked == [passwords.DUMMY_HASH] * 3
            principal = await authenticate_management(boot.key.secret, START)
            await logins.set_password(principal, None, PASSWORD, "", START, policy=policy)
            await logins.login("root@example.com", PASSWORD, START, policy=policy, client="127.0.0.1")
            assert checked[-1].startswith("$argon2id$") and checked[-1] != passwords.DUMMY_HASH


def test_the_dummy_hash_uses_the_current_parameters() -> None:
    assert not PasswordHasher().check_needs_rehash(passwords.DUMMY_HASH)
    assert not passwords.needs_rehash(passwords.DUMMY_HASH)
    assert passwords.needs_rehash("not a hash")


async def test_login_rehashes_an_outdated_hash(database_url: str) -> None:
    async with open_database(database_url):
        with passwords.PasswordPool(1) as pool:
            policy = _policy(pool)
            boot = await accounts_domain.bootstrap_admin("root@example.com", "", peer_is_local=True)
            weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
            await Account.filter(id=boot.account.id).update(password_hash=weak)
            assert await pool.verify(weak, PASSWORD) and passwords.needs_rehash(weak)

            done = await logins.login("root@example.com", PASSWORD, START, policy=policy, client="127.0.0.1")
            assert done.account.id == boot.account.id and done.session.expires_at == START + timedelta(hours=12)
            stored = (await Account.get(id=boot.account.id)).password_hash
            assert stored is not None and stored != weak and not passwords.needs_rehash(stored)
            assert await pool.verify(stored, PASSWORD)

            # A stored hash that is not an argon2 hash never matches.
            await Account.filter(id=boot.account.id).update(password_hash="garbage")
            with pytest.raises(Unauthenticated) as caught:
                await logins.login("root@example.com", PASSWORD, START, policy=policy, client="127.0.0.1")
            assert caught.value.reason is Reason.LOGIN_FAILED


def test_a_tombstone_is_never_a_valid_email() -> None:
    long_email = "a" * 300 + "@example.com"
    account = Account(id=123456, email=long_email)
    tombstone = account_lifecycle.tombstone_email(account)
    assert len(tombstone) == 320 and tombstone.startswith("deleted-123456 ")
    with pytest.raises(InvalidArgument):
        validation.email("e", tombstone)


async def test_a_suspension_can_only_be_lifted_from_where_it_was_imposed_or_above(world: World) -> None:
    md = world.admin_md
    reseller, reseller_md = await world.manager(md)
    customer = await world.create(reseller_md, ROLE_USER, reseller.name)
    held_above = (grpc.StatusCode.FAILED_PRECONDITION, "SUSPENSION_HELD_ABOVE")

    # The admin suspends the reseller's customer: the reseller cannot undo it, the admin can.
    await world.suspend(md, customer.name)
    await expect(world.resume(reseller_md, customer.name), *held_above)
    # A weaker suspension on top changes nothing, and does not take the hold over.
    assert (await world.suspend(reseller_md, customer.name)).state == SUSPENDED
    await expect(world.resume(reseller_md, customer.name), *held_above)
    assert (await world.resume(md, customer.name)).state == ACTIVE

    # The reseller's own suspension is its own to lift, and the admin's too.
    await world.suspend(reseller_md, customer.name)
    assert (await world.resume(reseller_md, customer.name)).state == ACTIVE
    await world.suspend(reseller_md, customer.name)
    assert (await world.resume(md, customer.name)).state == ACTIVE
