"""ApiKeyService end to end: list, update, rotate (and the rest of the key life cycle).

Served in-process by the real ``ControlServer`` with an injected clock, so the
rotation grace period is checked to the second without sleeping. Errors are
checked on the wire: status code and ``google.rpc.ErrorInfo`` reason (plus the
``google.rpc.BadRequest`` field for INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from claudeopus import keys
from claudeopus.control.domain import api_key_rotation, api_key_updates
from claudeopus.control.domain import api_keys as api_keys_domain
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, ApiKey
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from tests.support.clock import FakeClock
from tests.support.control_server import in_process_control
from tests.support.rpc import assert_error, bearer, rpc_error, stamp
from tests.support.rpc import resource_id as ident

INFERENCE = api_keys_pb2.SCOPE_INFERENCE
MANAGEMENT = api_keys_pb2.SCOPE_MANAGEMENT
UNKNOWN_SCOPE = api_keys_pb2.Scope.ValueType(7)


@dataclass
class Control:
    clock: FakeClock
    service_token: str
    admin: accounts_pb2.Account
    admin_secret: str
    accounts: accounts_pb2_grpc.AccountServiceAsyncStub
    keys: api_keys_pb2_grpc.ApiKeyServiceAsyncStub
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub

    async def new_account(
        self, caller: str, role: accounts_pb2.Role.ValueType = accounts_pb2.ROLE_USER, parent: str = ""
    ) -> accounts_pb2.Account:
        spec = accounts_pb2.Account(email=f"a-{secrets.token_hex(4)}@example.com", role=role)
        request = accounts_pb2.CreateAccountRequest(parent=parent, account=spec)
        return await self.accounts.CreateAccount(request, metadata=bearer(caller))

    async def new_key(
        self, caller: str, parent: str = "", *scopes: api_keys_pb2.Scope.ValueType, display_name: str = ""
    ) -> api_keys_pb2.CreateApiKeyResponse:
        spec = api_keys_pb2.ApiKey(display_name=display_name, scopes=scopes or (INFERENCE,))
        request = api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=spec)
        return await self.keys.CreateApiKey(request, metadata=bearer(caller))

    async def get(self, name: str) -> api_keys_pb2.ApiKey:
        return await self.keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=name), metadata=bearer(self.admin_secret))

    async def rotate(
        self, name: str, grace_seconds: int | None = None, caller: str | None = None
    ) -> api_keys_pb2.RotateApiKeyResponse:
        request = api_keys_pb2.RotateApiKeyRequest(name=name)
        if grace_seconds is not None:
            request.grace_period.CopyFrom(duration_pb2.Duration(seconds=grace_seconds))
        return await self.keys.RotateApiKey(request, metadata=bearer(caller or self.admin_secret))

    async def update(self, api_key: api_keys_pb2.ApiKey, *paths: str, caller: str | None = None) -> api_keys_pb2.ApiKey:
        request = api_keys_pb2.UpdateApiKeyRequest(api_key=api_key, update_mask=field_mask_pb2.FieldMask(paths=paths))
        return await self.keys.UpdateApiKey(request, metadata=bearer(caller or self.admin_secret))

    async def list(self, caller: str | None = None, **fields: object) -> api_keys_pb2.ListApiKeysResponse:
        request = api_keys_pb2.ListApiKeysRequest(**fields)  # type: ignore[arg-type]
        return await self.keys.ListApiKeys(request, metadata=bearer(caller or self.admin_secret))

    async def verify(self, secret: str) -> gateway_pb2.VerifyApiKeyResponse:
        request = gateway_pb2.VerifyApiKeyRequest(key_hash=keys.hash_secret_bytes(secret))
        return await self.gateway.VerifyApiKey(request, metadata=bearer(self.service_token))

    async def as_manager(self, secret: str, account: str = "") -> accounts_pb2.Account:
        """Use ``secret`` as a management credential: read ``account`` (default the admin's)."""
        request = accounts_pb2.GetAccountRequest(name=account or self.admin.name)
        return await self.accounts.GetAccount(request, metadata=bearer(secret))


@pytest.fixture
async def control(database_url: str) -> AsyncIterator[Control]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with in_process_control(database_url, clock=clock, free_models=()) as running:
        yield Control(
            clock=clock,
            service_token=running.service_token,
            admin=running.admin,
            admin_secret=running.admin_secret,
            accounts=running.accounts,
            keys=running.api_keys,
            gateway=running.gateway,
        )


def when(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


# -- ListApiKeys ---------------------------------------------------------------


async def test_list_returns_live_keys_newest_first(control: Control) -> None:
    user = await control.new_account(control.admin_secret)
    made = [await control.new_key(control.admin_secret, user.name, display_name=f"k{i}") for i in range(3)]
    revoked = made[1].api_key.name
    await control.keys.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(name=revoked), metadata=bearer(control.admin_secret)
    )

    live = await control.list(parent=user.name)
    assert [k.name for k in live.api_keys] == [made[2].api_key.name, made[0].api_key.name]
    assert live.next_page_token == ""
    assert all(k.account == user.name for k in live.api_keys)

    everything = await control.list(parent=user.name, show_revoked=True)
    assert [k.name for k in everything.api_keys] == [k.api_key.name for k in reversed(made)]
    assert everything.api_keys[1].HasField("revoke_time")

    # Without a parent: the caller's own keys (here the bootstrap key).
    own = await control.list()
    assert [k.account for k in own.api_keys] == [control.admin.name]
    assert own.api_keys[0].scopes == [MANAGEMENT]


async def test_list_pages_with_tokens_bound_to_caller_and_filters(control: Control) -> None:
    user = await control.new_account(control.admin_secret)
    made = [(await control.new_key(control.admin_secret, user.name)).api_key.name for _ in range(5)]

    names: list[str] = []
    tokens: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await control.list(parent=user.name, page_size=2, page_token=token)
        pages += 1
        names += [k.name for k in page.api_keys]
        assert len(page.api_keys) == (2 if page.next_page_token else 1)
        if not page.next_page_token:
            break
        token = page.next_page_token
        tokens.append(token)
    assert pages == 3
    assert names == list(reversed(made))

    # 0 means the default size; everything fits.
    assert len((await control.list(parent=user.name)).api_keys) == 5

    first = tokens[0]
    # The same token with show_revoked changed, for another parent, or from another caller is refused.
    error = await rpc_error(control.list(parent=user.name, page_size=2, page_token=first, show_revoked=True))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")
    error = await rpc_error(control.list(parent=control.admin.name, page_size=2, page_token=first))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")
    other = await control.new_key(control.admin_secret, "", MANAGEMENT)
    error = await rpc_error(control.list(other.secret, parent=user.name, page_size=2, page_token=first))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")
    error = await rpc_error(control.list(parent=user.name, page_token=first[:-2] + "xx"))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")
    error = await rpc_error(control.list(parent=user.name, page_token="garbage"))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")

    # The page size may change between pages; the token still works for the same query.
    rest = await control.list(parent=user.name, page_size=10, page_token=first)
    assert [k.name for k in rest.api_keys] == names[2:]


async def test_list_refuses_bad_arguments(control: Control) -> None:
    error = await rpc_error(control.list(page_size=-1))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "page_size")
    error = await rpc_error(control.list(parent="users/1"))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "parent")
    error = await rpc_error(control.list(parent="accounts/999999"))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


# -- UpdateApiKey --------------------------------------------------------------


async def test_update_changes_only_the_masked_fields(control: Control) -> None:
    user = await control.new_account(control.admin_secret)
    created = await control.new_key(control.admin_secret, user.name, display_name="before")
    name = created.api_key.name
    expiry = control.clock.now + timedelta(days=1)

    changed = await control.update(
        api_keys_pb2.ApiKey(name=name, display_name="after", allowed_models=["m-9"], expire_time=stamp(expiry)),
        "display_name",
    )
    assert (changed.display_name, list(changed.allowed_models), changed.HasField("expire_time")) == (
        "after",
        [],
        False,
    )

    changed = await control.update(
        api_keys_pb2.ApiKey(name=name, allowed_models=["m-1", "m-2"], expire_time=stamp(expiry)),
        "allowed_models",
        "expire_time",
    )
    assert changed.display_name == "after"
    assert list(changed.allowed_models) == ["m-1", "m-2"]
    assert when(changed.expire_time) == expiry
    assert changed == await control.get(name)
    assert list((await control.verify(created.secret)).allowed_models) == ["m-1", "m-2"]

    # expire_time in the mask but unset clears the expiry.
    cleared = await control.update(api_keys_pb2.ApiKey(name=name), "expire_time")
    assert not cleared.HasField("expire_time")
    assert list(cleared.allowed_models) == ["m-1", "m-2"]

    # Scopes: the key becomes a management credential.
    error = await rpc_error(control.as_manager(created.secret, user.name))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_SCOPE_DENIED")
    widened = await control.update(api_keys_pb2.ApiKey(name=name, scopes=[INFERENCE, MANAGEMENT]), "scopes")
    assert list(widened.scopes) == [INFERENCE, MANAGEMENT]
    assert (await control.as_manager(created.secret, user.name)).name == user.name

    # No mask: only the populated fields change (AIP-134); restrictions are never wiped by omission.
    everything = await control.update(api_keys_pb2.ApiKey(name=name, display_name="all", expire_time=stamp(expiry)))
    assert everything.display_name == "all"
    assert list(everything.scopes) == [INFERENCE, MANAGEMENT]
    assert list(everything.allowed_models) == ["m-1", "m-2"]
    assert when(everything.expire_time) == expiry
    starred = await control.update(api_keys_pb2.ApiKey(name=name, display_name="star", scopes=[MANAGEMENT]), "*")
    assert (starred.display_name, list(starred.scopes), starred.HasField("expire_time")) == (
        "star",
        [MANAGEMENT],
        False,
    )
    assert starred.prefix == created.api_key.prefix


async def test_an_updated_expiry_is_enforced_with_the_clock(control: Control) -> None:
    created = await control.new_key(control.admin_secret)
    expiry = control.clock.now + timedelta(seconds=10)
    await control.update(api_keys_pb2.ApiKey(name=created.api_key.name, expire_time=stamp(expiry)), "expire_time")
    control.clock.advance(9)
    await control.verify(created.secret)
    control.clock.advance(1)
    error = await rpc_error(control.verify(created.secret))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_EXPIRED")
    # An expired (not revoked) key can be given a new expiry.
    later = control.clock.now + timedelta(hours=1)
    await control.update(api_keys_pb2.ApiKey(name=created.api_key.name, expire_time=stamp(later)), "expire_time")
    await control.verify(created.secret)


async def test_update_refuses_bad_arguments(control: Control) -> None:
    created = await control.new_key(control.admin_secret)
    name = created.api_key.name
    cases: list[tuple[api_keys_pb2.ApiKey, tuple[str, ...], str]] = [
        (api_keys_pb2.ApiKey(name=name), ("display_name", "prefix"), "update_mask"),
        (api_keys_pb2.ApiKey(name=name), ("name",), "update_mask"),
        (api_keys_pb2.ApiKey(name=name), ("api_key.display_name",), "update_mask"),
        (api_keys_pb2.ApiKey(name="keys/1"), ("display_name",), "api_key.name"),
        (api_keys_pb2.ApiKey(), ("display_name",), "api_key.name"),
        (api_keys_pb2.ApiKey(name=name, display_name="x" * 201), ("display_name",), "api_key.display_name"),
        (api_keys_pb2.ApiKey(name=name, display_name="a\nb"), ("display_name",), "api_key.display_name"),
        (api_keys_pb2.ApiKey(name=name, scopes=[INFERENCE, UNKNOWN_SCOPE]), ("scopes",), "api_key.scopes[1]"),
        (api_keys_pb2.ApiKey(name=name, allowed_models=[""]), ("allowed_models",), "api_key.allowed_models[0]"),
        (
            api_keys_pb2.ApiKey(name=name, expire_time=stamp(control.clock.now)),
            ("expire_time",),
            "api_key.expire_time",
        ),
        (
            api_keys_pb2.ApiKey(name=name, expire_time=timestamp_pb2.Timestamp(seconds=10**12)),
            ("expire_time",),
            "api_key.expire_time",
        ),
    ]
    for spec, paths, field in cases:
        error = await rpc_error(control.update(spec, *paths))
        assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", field)
    # Nothing was changed by the refused calls.
    assert await control.get(name) == created.api_key

    error = await rpc_error(control.update(api_keys_pb2.ApiKey(name="apiKeys/999999"), "display_name"))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")

    await control.keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=name), metadata=bearer(control.admin_secret))
    error = await rpc_error(control.update(api_keys_pb2.ApiKey(name=name, display_name="z"), "display_name"))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "KEY_NOT_LIVE")
    assert (await control.get(name)).display_name == ""


async def test_update_does_not_undo_a_concurrent_revoke(control: Control, monkeypatch: pytest.MonkeyPatch) -> None:
    created = await control.new_key(control.admin_secret)
    original = api_key_updates.key_in_subtree

    async def revoked_meanwhile(principal: Principal, key_id: int) -> ApiKey:
        key = await original(principal, key_id)  # read while live ...
        await ApiKey.filter(id=key_id).update(revoked_at=control.clock.now)  # ... revoked before the write
        return key

    monkeypatch.setattr(api_key_updates, "key_in_subtree", revoked_meanwhile)
    error = await rpc_error(control.update(api_keys_pb2.ApiKey(name=created.api_key.name, scopes=[MANAGEMENT])))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "KEY_NOT_LIVE")
    monkeypatch.undo()
    after = await control.get(created.api_key.name)
    assert after.HasField("revoke_time")
    assert list(after.scopes) == [INFERENCE]


# -- RotateApiKey --------------------------------------------------------------


async def test_rotation_grace_period_is_honoured_to_the_second(control: Control) -> None:
    user = await control.new_account(control.admin_secret)
    created = await control.new_key(control.admin_secret, user.name)
    old = created.secret
    start = control.clock.now
    assert not created.api_key.HasField("rotate_time")

    rotated = await control.rotate(created.api_key.name, 60)
    new = rotated.secret
    assert keys.looks_like_secret(new)
    assert new != old
    assert rotated.api_key.name == created.api_key.name
    assert rotated.api_key.prefix == keys.display_prefix(new) != created.api_key.prefix
    assert when(rotated.api_key.rotate_time) == start
    assert when(rotated.api_key.previous_secret_expire_time) == start + timedelta(seconds=60)
    assert rotated.api_key.create_time == created.api_key.create_time

    for secret in (old, new):
        assert (await control.verify(secret)).api_key == created.api_key.name

    control.clock.advance(59)
    assert (await control.verify(old)).api_key == created.api_key.name
    assert (await control.verify(new)).api_key == created.api_key.name
    assert (await control.get(created.api_key.name)).HasField("previous_secret_expire_time")

    control.clock.advance(1)
    error = await rpc_error(control.verify(old))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_ROTATED")
    assert (await control.verify(new)).api_key == created.api_key.name
    after = await control.get(created.api_key.name)
    assert not after.HasField("previous_secret_expire_time")
    assert when(after.rotate_time) == start

    control.clock.advance(3600)
    assert (await control.verify(new)).api_key == created.api_key.name
    assert_error(await rpc_error(control.verify(old)), grpc.StatusCode.UNAUTHENTICATED, "KEY_ROTATED")


@pytest.mark.parametrize("grace", [None, 0])
async def test_rotation_without_grace_kills_the_old_secret_at_once(control: Control, grace: int | None) -> None:
    created = await control.new_key(control.admin_secret)
    rotated = await control.rotate(created.api_key.name, grace)
    assert when(rotated.api_key.rotate_time) == control.clock.now
    assert (
        not rotated.api_key.HasField("previous_secret_expire_time")
        or when(rotated.api_key.previous_secret_expire_time) <= control.clock.now
    )
    # No grace: the old secret dies at once, and says why.
    error = await rpc_error(control.verify(created.secret))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_ROTATED")
    assert (await control.verify(rotated.secret)).api_key == created.api_key.name


async def test_a_rotated_management_secret_stops_managing_at_once(control: Control) -> None:
    created = await control.new_key(control.admin_secret, "", MANAGEMENT)
    old = created.secret
    # The key rotates itself, with a grace period.
    rotated = await control.rotate(created.api_key.name, 30, caller=old)
    new = rotated.secret
    # A replaced secret never manages anything again, so a leaked one cannot take the key back.
    error = await rpc_error(control.as_manager(old))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_ROTATED")
    error = await rpc_error(control.rotate(created.api_key.name, 0, caller=old))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_ROTATED")
    assert (await control.as_manager(new)).name == control.admin.name


async def test_rotating_during_grace_replaces_the_older_secret(control: Control) -> None:
    created = await control.new_key(control.admin_secret)
    s0 = created.secret
    first = await control.rotate(created.api_key.name, 60)
    control.clock.advance(10)
    second = await control.rotate(created.api_key.name, 60)
    assert when(second.api_key.previous_secret_expire_time) == control.clock.now + timedelta(seconds=60)

    # Only one earlier secret is kept: s0 is forgotten at once.
    assert_error(await rpc_error(control.verify(s0)), grpc.StatusCode.UNAUTHENTICATED, "KEY_INVALID")
    control.clock.advance(59)
    await control.verify(first.secret)
    await control.verify(second.secret)
    control.clock.advance(1)
    assert_error(await rpc_error(control.verify(first.secret)), grpc.StatusCode.UNAUTHENTICATED, "KEY_ROTATED")
    await control.verify(second.secret)


async def test_revoking_a_rotated_key_kills_both_secrets(control: Control) -> None:
    created = await control.new_key(control.admin_secret)
    rotated = await control.rotate(created.api_key.name, 600)
    revoked = await control.keys.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(name=created.api_key.name), metadata=bearer(control.admin_secret)
    )
    assert not revoked.HasField("previous_secret_expire_time")
    for secret in (created.secret, rotated.secret):
        assert_error(await rpc_error(control.verify(secret)), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")


async def test_rotate_refuses_bad_arguments(control: Control) -> None:
    created = await control.new_key(control.admin_secret)
    name = created.api_key.name
    for grace in (
        duration_pb2.Duration(seconds=-1),
        duration_pb2.Duration(nanos=-1),
        duration_pb2.Duration(seconds=30 * 86_400 + 1),
        duration_pb2.Duration(seconds=2**62),
        duration_pb2.Duration(seconds=-(2**62)),
        duration_pb2.Duration(seconds=1, nanos=-1),
        duration_pb2.Duration(seconds=1, nanos=1_000_000_000),
    ):
        request = api_keys_pb2.RotateApiKeyRequest(name=name, grace_period=grace)
        error = await rpc_error(control.keys.RotateApiKey(request, metadata=bearer(control.admin_secret)))
        assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "grace_period")
    # Nothing rotated so far.
    assert (await control.verify(created.secret)).api_key == name
    assert not (await control.get(name)).HasField("rotate_time")

    error = await rpc_error(control.rotate("apiKeys/x"))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", "name")
    error = await rpc_error(control.rotate("apiKeys/999999"))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")

    # The largest grace period is accepted.
    longest = await control.rotate(name, 30 * 86_400)
    assert when(longest.api_key.previous_secret_expire_time) == control.clock.now + timedelta(days=30)

    await control.keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=name), metadata=bearer(control.admin_secret))
    error = await rpc_error(control.rotate(name, 60))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "KEY_NOT_LIVE")


async def test_a_rotation_that_lost_a_race_issues_no_secret(control: Control, monkeypatch: pytest.MonkeyPatch) -> None:
    created = await control.new_key(control.admin_secret)
    original = api_key_rotation.key_in_subtree
    winners: list[api_keys_domain.IssuedKey] = []

    async def rotated_meanwhile(principal: Principal, key_id: int) -> ApiKey:
        key = await original(principal, key_id)  # the loser reads the key ...
        monkeypatch.setattr(api_key_rotation, "key_in_subtree", original)
        # ... and another rotation wins before the loser writes.
        winners.append(
            await api_key_rotation.rotate_api_key(principal, key_id, grace=timedelta(0), now=control.clock.now)
        )
        return key

    monkeypatch.setattr(api_key_rotation, "key_in_subtree", rotated_meanwhile)
    error = await rpc_error(control.rotate(created.api_key.name, 60))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "KEY_ROTATED")
    [winner] = winners
    assert (await control.verify(winner.secret)).api_key == created.api_key.name
    assert_error(await rpc_error(control.verify(created.secret)), grpc.StatusCode.UNAUTHENTICATED, "KEY_ROTATED")
    assert (await control.get(created.api_key.name)).prefix == keys.display_prefix(winner.secret)


async def test_concurrent_rotations_leave_one_current_secret(control: Control) -> None:
    created = await control.new_key(control.admin_secret)
    outcomes = await asyncio.gather(
        *(control.rotate(created.api_key.name, 0) for _ in range(8)), return_exceptions=True
    )
    won = [o for o in outcomes if isinstance(o, api_keys_pb2.RotateApiKeyResponse)]
    lost = [o for o in outcomes if not isinstance(o, api_keys_pb2.RotateApiKeyResponse)]
    assert won
    for error in lost:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "KEY_ROTATED")
    # Grace 0: exactly one of the issued secrets works, the one the key now shows.
    working = []
    codes: list[grpc.StatusCode] = []
    for response in won:
        try:
            await control.verify(response.secret)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
        else:
            working.append(response.secret)
    assert len(working) == 1
    assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED}
    assert (await control.get(created.api_key.name)).prefix == keys.display_prefix(working[0])


# -- isolation -----------------------------------------------------------------


async def test_a_reseller_cannot_touch_keys_outside_its_subtree(control: Control) -> None:
    r1 = await control.new_account(control.admin_secret, accounts_pb2.ROLE_RESELLER)
    r2 = await control.new_account(control.admin_secret, accounts_pb2.ROLE_RESELLER)
    r1_secret = (await control.new_key(control.admin_secret, r1.name, MANAGEMENT)).secret
    r2_secret = (await control.new_key(control.admin_secret, r2.name, MANAGEMENT)).secret
    u2 = await control.new_account(r2_secret, parent=r2.name)
    target = await control.new_key(r2_secret, u2.name)
    name = target.api_key.name
    r2_own_key = (await control.list(r2_secret)).api_keys[0].name

    denied: list[Awaitable[object]] = [
        control.list(r1_secret, parent=u2.name),
        control.list(r1_secret, parent=r2.name),
        control.list(r1_secret, parent=control.admin.name),
        control.keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=name), metadata=bearer(r1_secret)),
        control.keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=r2_own_key), metadata=bearer(r1_secret)),
        control.update(api_keys_pb2.ApiKey(name=name, display_name="mine"), "display_name", caller=r1_secret),
        control.keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=name), metadata=bearer(r1_secret)),
        control.rotate(name, 60, caller=r1_secret),
        control.rotate(r2_own_key, 0, caller=r1_secret),
        # Upwards is outside the subtree too: the admin's bootstrap key.
        control.rotate((await control.list()).api_keys[-1].name, 0, caller=r1_secret),
    ]
    for call in denied:
        assert_error(await rpc_error(call), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")

    # Nothing changed, and the owners still manage their keys.
    assert await control.get(name) == target.api_key
    await control.verify(target.secret)
    await control.as_manager(control.admin_secret)
    assert [k.name for k in (await control.list(r2_secret, parent=u2.name)).api_keys] == [name]
    rotated = await control.rotate(name, 0, caller=r2_secret)
    assert (await control.verify(rotated.secret)).api_key == name
    own = await control.new_key(r1_secret, r1.name)
    assert (
        await control.update(
            api_keys_pb2.ApiKey(name=own.api_key.name, display_name="ok"), "display_name", caller=r1_secret
        )
    ).display_name == "ok"


# -- limits set from above ---------------------------------------------------------------


async def key_row(name: str) -> ApiKey:
    return await ApiKey.get(id=ident(name))


@dataclass
class Tree:
    """admin → reseller → sub-reseller → user, each with a management key (the user's minted by the sub-reseller)."""

    reseller: accounts_pb2.Account
    reseller_secret: str
    sub: accounts_pb2.Account
    sub_secret: str
    user: accounts_pb2.Account
    user_secret: str


async def tree(control: Control) -> Tree:
    reseller = await control.new_account(control.admin_secret, accounts_pb2.ROLE_RESELLER)
    reseller_key = await control.new_key(control.admin_secret, reseller.name, MANAGEMENT)
    sub = await control.new_account(reseller_key.secret, accounts_pb2.ROLE_RESELLER)
    sub_key = await control.new_key(reseller_key.secret, sub.name, MANAGEMENT)
    user = await control.new_account(sub_key.secret)
    user_key = await control.new_key(sub_key.secret, user.name, MANAGEMENT, INFERENCE)
    return Tree(reseller, reseller_key.secret, sub, sub_key.secret, user, user_key.secret)


def limited(name: str = "", models: tuple[str, ...] = (), expires: datetime | None = None, **fields: object):  # type: ignore[no-untyped-def]
    key = api_keys_pb2.ApiKey(name=name, allowed_models=models, **fields)  # type: ignore[arg-type]
    if expires is not None:
        key.expire_time.CopyFrom(stamp(expires))
    return key


async def create(
    control: Control, caller: str, parent: str, key: api_keys_pb2.ApiKey
) -> api_keys_pb2.CreateApiKeyResponse:
    request = api_keys_pb2.CreateApiKeyRequest(parent=parent, api_key=key)
    return await control.keys.CreateApiKey(request, metadata=bearer(caller))


async def test_the_owner_narrows_but_never_widens_a_limit_set_above(control: Control) -> None:
    world = await tree(control)
    expires = control.clock.now + timedelta(days=7)
    made = await create(control, world.sub_secret, world.user.name, limited(models=("m-a", "m-b"), expires=expires))
    name = made.api_key.name
    row = await key_row(name)
    sub_id = ident(world.sub.name)
    assert (row.issued_by, row.models_set_by, row.expiry_set_by, row.scopes_set_by) == (sub_id,) * 4

    # The key's own account (its management key) tries every widening: each refused, nothing changed.
    widenings = [
        (limited(name), "allowed_models"),  # no list: every model
        (limited(name, ("m-a", "m-b", "m-c")), "allowed_models"),
        (limited(name), "expire_time"),  # no expiry
        (limited(name, expires=expires + timedelta(days=1)), "expire_time"),
        (limited(name, scopes=[INFERENCE, MANAGEMENT]), "scopes"),
        (limited(name, scopes=[INFERENCE], display_name="x"), "*"),  # a full replacement clears models and expiry
    ]
    for key, path in widenings:
        error = await rpc_error(control.update(key, path, caller=world.user_secret))
        assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_LIMIT_SET_ABOVE")
    after = await control.get(name)
    assert (list(after.allowed_models), when(after.expire_time), list(after.scopes)) == (
        ["m-a", "m-b"],
        expires,
        [INFERENCE],
    )

    # Narrowing is the owner's right, and keeps the setter above: it cannot widen back.
    narrowed = await control.update(limited(name, ("m-a",)), "allowed_models", caller=world.user_secret)
    assert list(narrowed.allowed_models) == ["m-a"]
    sooner = expires - timedelta(days=1)
    assert (
        when((await control.update(limited(name, expires=sooner), "expire_time", caller=world.user_secret)).expire_time)
        == sooner
    )
    row = await key_row(name)
    assert (row.models_set_by, row.expiry_set_by) == (sub_id, sub_id)
    error = await rpc_error(control.update(limited(name, ("m-a", "m-b")), "allowed_models", caller=world.user_secret))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_LIMIT_SET_ABOVE")

    # Rotating is no way around them: same limits, same setters, still no widening.
    await control.rotate(name, caller=world.user_secret)
    rotated = await key_row(name)
    assert (rotated.allowed_models, rotated.expires_at, rotated.models_set_by) == (["m-a"], sooner, sub_id)
    error = await rpc_error(control.update(limited(name), "expire_time", caller=world.user_secret))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_LIMIT_SET_ABOVE")

    # The setter widens; so may an account above it.
    assert list((await control.update(limited(name), "allowed_models", caller=world.sub_secret)).allowed_models) == []
    assert not (await control.update(limited(name), "expire_time", caller=world.reseller_secret)).HasField(
        "expire_time"
    )
    assert (await key_row(name)).expiry_set_by == ident(world.reseller.name)

    # A key the user made itself holds nothing from above: the user widens it at will.
    own = await create(control, world.user_secret, "", limited(models=("m-a",), expires=expires))
    own_row = await key_row(own.api_key.name)
    assert (own_row.issued_by, own_row.models_set_by, own_row.expiry_set_by) == (ident(world.user.name), None, None)
    assert (
        list(
            (await control.update(limited(own.api_key.name), "allowed_models", caller=world.user_secret)).allowed_models
        )
        == []
    )


async def test_a_sub_reseller_cannot_widen_what_its_parent_set(control: Control) -> None:
    world = await tree(control)
    made = await create(control, world.reseller_secret, world.user.name, limited(models=("m-a", "m-b")))
    name = made.api_key.name
    error = await rpc_error(control.update(limited(name, ("m-a", "m-c")), "allowed_models", caller=world.sub_secret))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_LIMIT_SET_ABOVE")
    error = await rpc_error(control.update(limited(name, scopes=[MANAGEMENT]), "scopes", caller=world.sub_secret))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_LIMIT_SET_ABOVE")
    # The sub-reseller narrows; the setter stays the reseller, who alone widens again.
    await control.update(limited(name, ("m-b",)), "allowed_models", caller=world.sub_secret)
    assert (await key_row(name)).models_set_by == ident(world.reseller.name)
    error = await rpc_error(control.update(limited(name, ("m-a", "m-b")), "allowed_models", caller=world.sub_secret))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "KEY_LIMIT_SET_ABOVE")
    widened = await control.update(limited(name, ("m-a", "m-b", "m-c")), "allowed_models", caller=world.reseller_secret)
    assert list(widened.allowed_models) == ["m-a", "m-b", "m-c"]


# -- account policies --------------------------------------------------------------------


async def set_policy(
    control: Control, caller: str, account: str, *paths: str, lifetime: timedelta | None = None, **fields: object
) -> accounts_pb2.Account:
    policy = accounts_pb2.AccountPolicy(**fields)  # type: ignore[arg-type]
    if lifetime is not None:
        policy.max_key_lifetime.CopyFrom(duration_pb2.Duration(seconds=int(lifetime.total_seconds())))
    request = accounts_pb2.SetAccountPolicyRequest(
        name=account, policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    return await control.accounts.SetAccountPolicy(request, metadata=bearer(caller))


async def test_a_customer_mints_only_keys_that_fit_the_policy_above(control: Control) -> None:
    world = await tree(control)
    month = timedelta(days=30)
    updated = await set_policy(
        control, world.sub_secret, world.user.name, allowed_models=["m-a", "m-b"], lifetime=month
    )
    assert list(updated.policy.allowed_models) == ["m-a", "m-b"]
    assert updated.policy.max_key_lifetime.seconds == month.total_seconds()
    assert (await control.as_manager(world.user_secret, world.user.name)).policy == updated.policy  # readable by it
    soon = control.clock.now + timedelta(days=1)
    denied = grpc.StatusCode.PERMISSION_DENIED

    # Unrestricted keys: refused (no expiry, too long a life, a model outside the policy).
    for key in (
        limited(),
        limited(expires=control.clock.now + month + timedelta(seconds=1)),
        limited(models=("m-a", "m-c"), expires=soon),
    ):
        assert_error(await rpc_error(create(control, world.user_secret, "", key)), denied, "ACCOUNT_POLICY_DENIED")
    # A key naming no model gets the policy's list; a narrower one keeps its own.
    made = await create(control, world.user_secret, "", limited(expires=soon))
    assert list(made.api_key.allowed_models) == ["m-a", "m-b"]
    narrower = await create(control, world.user_secret, "", limited(models=("m-b",), expires=soon))
    assert list(narrower.api_key.allowed_models) == ["m-b"]
    # Changes are checked too.
    error = await rpc_error(
        control.update(limited(made.api_key.name, ("m-c",)), "allowed_models", caller=world.user_secret)
    )
    assert_error(error, denied, "ACCOUNT_POLICY_DENIED")
    error = await rpc_error(control.update(limited(made.api_key.name), "expire_time", caller=world.user_secret))
    assert_error(error, denied, "ACCOUNT_POLICY_DENIED")

    # No management keys: neither minted (by the user or from above) nor, for one made before, usable.
    assert (await create(control, world.user_secret, "", limited(expires=soon, scopes=[MANAGEMENT]))).secret
    await set_policy(control, world.reseller_secret, world.sub.name, "deny_management_keys", deny_management_keys=True)
    for caller in (world.user_secret, world.sub_secret):
        error = await rpc_error(create(control, caller, world.user.name, limited(expires=soon, scopes=[MANAGEMENT])))
        # The sub-reseller's own management key is under the same policy: it no longer manages at all.
        assert error.code() == denied
    error = await rpc_error(control.as_manager(world.user_secret, world.user.name))
    assert_error(error, denied, "ACCOUNT_POLICY_DENIED")
    error = await rpc_error(
        create(control, world.reseller_secret, world.user.name, limited(expires=soon, scopes=[MANAGEMENT]))
    )
    assert_error(error, denied, "ACCOUNT_POLICY_DENIED")
    # Inference keys are still minted there (from above, as the management keys below stopped).
    assert (await create(control, world.reseller_secret, world.user.name, limited(expires=soon))).secret


async def test_a_policy_is_set_from_above_and_widened_only_by_its_setter_or_above(control: Control) -> None:
    world = await tree(control)
    denied = grpc.StatusCode.PERMISSION_DENIED
    # Never by the account itself.
    error = await rpc_error(set_policy(control, world.sub_secret, world.sub.name, allowed_models=["m-a"]))
    assert_error(error, denied, "SELF_CHANGE_DENIED")
    # The reseller sets it on the sub-reseller's user; the sub-reseller may narrow, not widen it.
    await set_policy(control, world.reseller_secret, world.user.name, allowed_models=["m-a", "m-b"])
    for fields in ({"allowed_models": ["m-a", "m-c"]}, {}):
        error = await rpc_error(set_policy(control, world.sub_secret, world.user.name, **fields))
        assert_error(error, denied, "POLICY_SET_ABOVE")
    narrowed = await set_policy(control, world.sub_secret, world.user.name, allowed_models=["m-a"])
    assert list(narrowed.policy.allowed_models) == ["m-a"]
    assert (await accounts_row(world.user.name)).policy_set_by == ident(world.reseller.name)
    error = await rpc_error(set_policy(control, world.sub_secret, world.user.name, allowed_models=["m-a", "m-b"]))
    assert_error(error, denied, "POLICY_SET_ABOVE")
    # The setter (or the admin above it) widens it.
    assert list((await set_policy(control, control.admin_secret, world.user.name)).policy.allowed_models) == []
    # Bad values are refused clearly.
    error = await rpc_error(set_policy(control, world.sub_secret, world.user.name, allowed_models=[""]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await rpc_error(set_policy(control, world.sub_secret, world.user.name, "nothing"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def accounts_row(name: str) -> Account:
    return await Account.get(id=ident(name))


async def test_narrowing_a_policy_holds_for_the_existing_keys_of_the_subtree(control: Control) -> None:
    world = await tree(control)
    made = await create(control, world.sub_secret, world.user.name, limited())
    assert list((await control.verify(made.secret)).allowed_models) == []
    # A policy on the sub-reseller (set by the reseller) bounds the user's key below it, at once.
    await set_policy(control, world.reseller_secret, world.sub.name, allowed_models=["m-a", "m-b"])
    assert list((await control.verify(made.secret)).allowed_models) == ["m-a", "m-b"]
    request = gateway_pb2.AuthorizeRequest(
        request_id=str(uuid.uuid4()), key_hash=keys.hash_secret_bytes(made.secret), model="m-c", max_output_tokens=1
    )
    error = await rpc_error(control.gateway.Authorize(request, metadata=bearer(control.service_token)))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_ALLOWED")
    # Within the key's own list too: the intersection holds.
    own = await create(control, world.sub_secret, world.user.name, limited(models=("m-b",)))
    await set_policy(control, world.sub_secret, world.user.name, allowed_models=["m-a"])
    error = await rpc_error(control.verify(own.secret))
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_ALLOWED")
    # A lifetime set later ends the keys older than it.
    await set_policy(control, world.reseller_secret, world.sub.name, "max_key_lifetime", lifetime=timedelta(days=1))
    control.clock.advance(timedelta(days=2).total_seconds())
    error = await rpc_error(control.verify(made.secret))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "KEY_EXPIRED")
