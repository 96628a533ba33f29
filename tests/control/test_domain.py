"""Domain rules of the control plane against a real database (SQLite or PostgreSQL, see tests/conftest.py).

No gRPC here: these tests call ``claudeopus.control.domain`` directly inside
``open_database`` and inspect the rows it leaves behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from claudeopus import keys
from claudeopus.control.domain import accounts, api_keys, gateway, usage
from claudeopus.control.domain.api_keys import IssuedKey, issue_key
from claudeopus.control.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Unauthenticated,
)
from claudeopus.control.domain.instance import PAGE_TOKEN_KEY, load_or_create_secret
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.domain.principal import Principal, authenticate_management
from claudeopus.control.models import Account, AccountState, ApiKey, Role, Scope, UsageRecord, UsageSource, UsageStatus
from tests.support.world import NOW, Root, fails, new_account, new_key, settle_input

# -- fixtures and helpers ------------------------------------------------------


def violated_fields(error: DomainError) -> list[str]:
    assert isinstance(error, InvalidArgument)
    return [v.field for v in error.violations]


async def manager(account: Account) -> Principal:
    """A management principal for ``account``, through a real management key."""
    issued = await issue_key(account, display_name="mgmt", scopes=Scope.MANAGEMENT)
    return await authenticate_management(issued.secret, NOW)


async def authorize(
    secret: str, *, model: str = "m-1", now: datetime = NOW, request_id: str | None = None
) -> UsageRecord:
    authorized = await gateway.authorize(
        request_id=request_id or str(uuid.uuid4()),
        key_hash=keys.hash_secret_bytes(secret),
        model=model,
        estimated_input_tokens=11,
        max_output_tokens=22,
        stream=True,
        now=now,
        policy=gateway.OutputPolicy(),
    )
    return authorized.record


# -- bootstrap -----------------------------------------------------------------


async def test_bootstrap_admin_succeeds_once(db: None) -> None:
    boot = await accounts.bootstrap_admin(" Root@Example.com ", "Root", peer_is_local=True)
    admin = await Account.get(id=boot.account.id)
    assert (admin.email, admin.role, admin.parent_id, admin.path) == (  # type: ignore[attr-defined]
        "root@example.com",
        Role.ADMIN,
        None,
        f"/{admin.id}/",
    )
    assert keys.looks_like_secret(boot.key.secret)
    assert boot.key.key.scopes == Scope.MANAGEMENT
    principal = await authenticate_management(boot.key.secret, NOW)
    assert (principal.account_id, principal.role) == (admin.id, Role.ADMIN)

    await fails(
        AlreadyExists, Reason.ADMIN_EXISTS, accounts.bootstrap_admin("other@example.com", "", peer_is_local=True)
    )
    assert await Account.all().count() == 1
    assert await ApiKey.all().count() == 1


async def test_bootstrap_admin_refuses_a_remote_peer(db: None) -> None:
    await fails(
        PermissionDenied,
        Reason.BOOTSTRAP_NOT_LOCAL,
        accounts.bootstrap_admin("root@example.com", "", peer_is_local=False),
    )
    assert await Account.all().count() == 0
    # The refusal used up nothing: a local bootstrap still works.
    boot = await accounts.bootstrap_admin("root@example.com", "", peer_is_local=True)
    assert boot.account.role == Role.ADMIN


# -- accounts ------------------------------------------------------------------


async def test_create_account_sets_parent_and_path(root: Root) -> None:
    reseller = await new_account(root.principal, "Reseller@Example.com ", Role.RESELLER)
    assert reseller.email == "reseller@example.com"
    assert reseller.parent_id == root.account.id  # type: ignore[attr-defined]
    assert reseller.path == f"/{root.account.id}/{reseller.id}/"

    # A reseller creates below itself by default...
    user = await new_account(await manager(reseller), "user@example.com")
    assert user.parent_id == reseller.id  # type: ignore[attr-defined]
    assert user.path == f"/{root.account.id}/{reseller.id}/{user.id}/"
    # ...and the admin may name any parent in its subtree.
    other = await new_account(root.principal, "other@example.com", parent=reseller)
    assert other.parent_id == reseller.id  # type: ignore[attr-defined]
    assert other.path == f"{reseller.path}{other.id}/"

    stored = await Account.get(id=user.id)
    assert (stored.path, stored.role, stored.state) == (user.path, Role.USER, AccountState.ACTIVE)
    assert stored.ancestor_ids() == [root.account.id, reseller.id, user.id]


async def test_create_account_is_idempotent_by_request_id(root: Root) -> None:
    async def create(email: str, role: Role = Role.USER) -> Account:
        return await accounts.create_account(
            root.principal, parent_id=None, email=email, display_name="", role=role, request_id="req-1"
        )

    first = await create("ann@example.com")
    again = await create("ANN@example.com")
    assert again.id == first.id
    assert await Account.filter(email="ann@example.com").count() == 1

    await fails(AlreadyExists, Reason.REQUEST_ID_CONFLICT, create("bob@example.com"))
    await fails(AlreadyExists, Reason.REQUEST_ID_CONFLICT, create("ann@example.com", Role.RESELLER))
    assert not await Account.filter(email="bob@example.com").exists()
    assert await Account.all().count() == 2


async def test_create_account_with_a_taken_email_is_refused(root: Root) -> None:
    reseller = await new_account(root.principal, "taken@example.com", Role.RESELLER)
    await fails(AlreadyExists, Reason.RESOURCE_EXISTS, new_account(root.principal, "Taken@Example.com"))
    # Also below another parent, and with a fresh request id.
    await fails(
        AlreadyExists,
        Reason.RESOURCE_EXISTS,
        accounts.create_account(
            root.principal,
            parent_id=reseller.id,
            email="taken@example.com",
            display_name="",
            role=Role.USER,
            request_id="fresh",
        ),
    )
    assert await Account.filter(email="taken@example.com").count() == 1


async def test_a_user_cannot_create_accounts(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    await fails(PermissionDenied, Reason.ROLE_DENIED, new_account(await manager(user), "child@example.com"))
    # Nor can anyone hang an account below a user.
    await fails(FailedPrecondition, Reason.ROLE_DENIED, new_account(root.principal, "child@example.com", parent=user))
    assert not await Account.filter(email="child@example.com").exists()


@pytest.mark.parametrize("role", [Role.ADMIN, None])
async def test_created_role_must_be_reseller_or_user(root: Root, role: Role | None) -> None:
    error = await fails(
        InvalidArgument,
        Reason.FIELD_INVALID,
        accounts.create_account(
            root.principal, parent_id=None, email="x@example.com", display_name="", role=role, request_id=""
        ),
    )
    assert violated_fields(error) == ["account.role"]
    assert await Account.all().count() == 1


async def test_create_account_rejects_a_bad_email(root: Root) -> None:
    error = await fails(InvalidArgument, Reason.FIELD_INVALID, new_account(root.principal, "not-an-email"))
    assert violated_fields(error) == ["account.email"]


async def test_a_reseller_sees_only_its_subtree(root: Root) -> None:
    mine = await new_account(root.principal, "mine@example.com", Role.RESELLER)
    theirs = await new_account(root.principal, "theirs@example.com", Role.RESELLER)
    reseller = await manager(mine)
    child = await new_account(reseller, "child@example.com")

    assert (await accounts.get_account(reseller, child.id)).id == child.id
    assert (await accounts.get_account(reseller, mine.id)).id == mine.id
    for hidden in (theirs.id, root.account.id, 10**12):
        await fails(NotFound, Reason.RESOURCE_NOT_FOUND, accounts.get_account(reseller, hidden))
    await fails(NotFound, Reason.RESOURCE_NOT_FOUND, new_account(reseller, "x@example.com", parent=theirs))
    assert not await Account.filter(email="x@example.com").exists()


async def test_subtree_check_is_not_fooled_by_a_shared_id_prefix(root: Root) -> None:
    """``/1/2/`` must not own ``/1/23/``: the path prefix ends with a slash."""
    mine = await new_account(root.principal, "mine@example.com", Role.RESELLER)
    lookalike = None
    for i in range(300):
        sibling = await new_account(root.principal, f"sibling{i}@example.com")
        if str(sibling.id).startswith(str(mine.id)):
            lookalike = sibling
            break
    assert lookalike is not None
    await fails(NotFound, Reason.RESOURCE_NOT_FOUND, accounts.get_account(await manager(mine), lookalike.id))


# -- API keys ------------------------------------------------------------------


async def test_create_api_key_returns_the_secret_once(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    first = await new_key(root.principal, user, request_id="key-1")
    assert keys.looks_like_secret(first.secret)
    again = await new_key(root.principal, user, request_id="key-1")
    assert again.key.id == first.key.id
    assert again.secret == ""
    assert await ApiKey.filter(account_id=user.id).count() == 1
    other = await new_key(root.principal, user, request_id="key-2")
    assert other.key.id != first.key.id and keys.looks_like_secret(other.secret)


async def test_create_api_key_retry_with_other_arguments_is_a_conflict(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    expiry = NOW + timedelta(days=3)
    first = await new_key(root.principal, user, request_id="key-1", expires_at=expiry, allowed_models=["m-1"])
    again = await new_key(root.principal, user, request_id="key-1", expires_at=expiry, allowed_models=["m-1"])
    assert (again.key.id, again.secret) == (first.key.id, "")
    await fails(
        AlreadyExists,
        Reason.REQUEST_ID_CONFLICT,
        new_key(root.principal, user, request_id="key-1", expires_at=expiry, allowed_models=["m-2"]),
    )


async def test_only_hash_and_prefix_of_a_key_are_stored(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    issued = await new_key(root.principal, user, allowed_models=["m-1"])
    secret = issued.secret
    [row] = await ApiKey.filter(id=issued.key.id).values()
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["prefix"] == secret[:10]
    stored = repr(sorted(row.items()))
    assert secret not in stored
    assert secret[10:] not in stored, "the random part of the secret must not be stored"
    # The hash is what finds the key again.
    assert (await gateway.verify_key(hashlib.sha256(secret.encode()).digest(), NOW)).id == issued.key.id


async def test_create_api_key_validates_its_fields(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    error = await fails(
        InvalidArgument, Reason.FIELD_INVALID, new_key(root.principal, user, expires_at=NOW - timedelta(seconds=1))
    )
    assert violated_fields(error) == ["api_key.expire_time"]
    error = await fails(
        InvalidArgument, Reason.FIELD_INVALID, new_key(root.principal, user, scopes=[Scope.INFERENCE, 99])
    )
    assert violated_fields(error) == ["api_key.scopes[1]"]
    assert not await ApiKey.filter(account_id=user.id).exists()


async def test_revoke_is_idempotent_and_confined_to_the_subtree(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    issued = await new_key(root.principal, user)
    stranger = await manager(await new_account(root.principal, "stranger@example.com", Role.RESELLER))
    await fails(NotFound, Reason.RESOURCE_NOT_FOUND, api_keys.revoke_api_key(stranger, issued.key.id, NOW))
    assert (await ApiKey.get(id=issued.key.id)).revoked_at is None

    revoked = await api_keys.revoke_api_key(root.principal, issued.key.id, NOW)
    assert revoked.revoked_at == NOW
    again = await api_keys.revoke_api_key(root.principal, issued.key.id, NOW + timedelta(hours=1))
    assert again.revoked_at == NOW
    assert (await ApiKey.get(id=issued.key.id)).revoked_at == NOW
    await fails(Unauthenticated, Reason.KEY_REVOKED, authorize(issued.secret))


# -- gateway -------------------------------------------------------------------


async def test_authorize_refuses_unknown_expired_and_management_keys(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    await fails(Unauthenticated, Reason.KEY_INVALID, authorize(keys.new_secret()))
    error = await fails(
        InvalidArgument,
        Reason.FIELD_INVALID,
        gateway.authorize(
            request_id=str(uuid.uuid4()),
            key_hash=b"short",
            model="m",
            estimated_input_tokens=0,
            max_output_tokens=0,
            stream=False,
            now=NOW,
            policy=gateway.OutputPolicy(),
        ),
    )
    assert violated_fields(error) == ["key_hash"]

    expiring = await new_key(root.principal, user, expires_at=NOW + timedelta(hours=1))
    await authorize(expiring.secret, now=NOW + timedelta(minutes=59))
    await fails(Unauthenticated, Reason.KEY_EXPIRED, authorize(expiring.secret, now=NOW + timedelta(hours=1)))
    await fails(Unauthenticated, Reason.KEY_EXPIRED, authorize(expiring.secret, now=NOW + timedelta(days=1)))

    await fails(PermissionDenied, Reason.KEY_SCOPE_DENIED, authorize(root.boot.key.secret))
    assert await UsageRecord.all().count() == 1


async def test_authorize_honours_the_model_allow_list(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    limited = await new_key(root.principal, user, allowed_models=["m-a", "m-b"])
    unlimited = await new_key(root.principal, user)
    await authorize(limited.secret, model="m-a")
    await authorize(limited.secret, model="m-b")
    await fails(PermissionDenied, Reason.MODEL_NOT_ALLOWED, authorize(limited.secret, model="m-c"))
    await authorize(unlimited.secret, model="anything")
    assert sorted(await UsageRecord.all().values_list("model", flat=True)) == ["anything", "m-a", "m-b"]


async def test_authorize_opens_a_reserved_usage_record(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    issued = await new_key(root.principal, user)
    request_id = str(uuid.uuid4())
    record = await authorize(issued.secret, model="m-1", request_id=request_id)

    stored = await UsageRecord.get(id=record.id)
    assert str(stored.request_id) == request_id
    assert stored.api_key_id == issued.key.id  # type: ignore[attr-defined]
    assert stored.account_id == user.id  # type: ignore[attr-defined]
    assert (stored.model, stored.estimated_input_tokens, stored.max_output_tokens, stored.stream) == (
        "m-1",
        11,
        22,
        True,
    )
    assert (stored.status, stored.source) == (UsageStatus.RESERVED, UsageSource.NONE)
    assert (stored.input_tokens, stored.output_tokens, stored.latency_us, stored.http_status) == (0, 0, 0, 0)
    assert stored.created_at == NOW
    assert stored.settled_at is None

    # A retried authorize by the same key finds the same reservation; another key may not reuse the id.
    assert (await authorize(issued.secret, request_id=request_id)).id == record.id
    other = await new_key(root.principal, user)
    await fails(AlreadyExists, Reason.REQUEST_ID_CONFLICT, authorize(other.secret, request_id=request_id))
    assert await UsageRecord.all().count() == 1


async def test_settle_is_idempotent(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    issued = await new_key(root.principal, user)
    record = await authorize(issued.secret)
    later = NOW + timedelta(seconds=3)

    first = await gateway.settle(settle_input(record.request_id, input_tokens=5, output_tokens=7), later)
    assert first.already_settled is False
    assert (first.record.input_tokens, first.record.output_tokens) == (5, 7)
    assert (first.record.status, first.record.source) == (UsageStatus.SUCCEEDED, UsageSource.REPORTED)
    assert (first.record.latency_us, first.record.http_status, first.record.settled_at) == (1234, 200, later)

    second = await gateway.settle(
        settle_input(record.request_id, input_tokens=500, output_tokens=700, status=UsageStatus.UPSTREAM_ERROR),
        later + timedelta(seconds=1),
    )
    assert second.already_settled is True
    assert (second.record.input_tokens, second.record.output_tokens) == (5, 7)
    stored = await UsageRecord.get(id=record.id)
    assert (stored.input_tokens, stored.output_tokens, stored.status, stored.settled_at) == (
        5,
        7,
        UsageStatus.SUCCEEDED,
        later,
    )
    # A settled request id cannot be authorized again.
    await fails(
        FailedPrecondition, Reason.REQUEST_ID_CONFLICT, authorize(issued.secret, request_id=str(record.request_id))
    )


async def test_settle_of_an_unknown_request_is_not_found(root: Root) -> None:
    await fails(NotFound, Reason.RESERVATION_NOT_FOUND, gateway.settle(settle_input(uuid.uuid4()), NOW))


async def test_settle_validates_status_and_source(root: Root) -> None:
    user = await new_account(root.principal, "user@example.com")
    record = await authorize((await new_key(root.principal, user)).secret)
    for changes, field in (
        ({"status": UsageStatus.RESERVED}, "status"),
        ({"status": UsageStatus.EXPIRED}, "status"),
        ({"source": UsageSource.NONE}, "source"),
        ({"source": UsageSource.RESERVED}, "source"),
        ({"input_tokens": -1}, "input_tokens"),
    ):
        error = await fails(
            InvalidArgument, Reason.FIELD_INVALID, gateway.settle(settle_input(record.request_id, **changes), NOW)
        )
        assert violated_fields(error) == [field]
    assert (await UsageRecord.get(id=record.id)).status == UsageStatus.RESERVED


async def test_a_suspended_ancestor_blocks_the_subtree(root: Root) -> None:
    reseller = await new_account(root.principal, "reseller@example.com", Role.RESELLER)
    reseller_manager = await issue_key(reseller, display_name="m", scopes=Scope.MANAGEMENT)
    user = await new_account(await manager(reseller), "user@example.com")
    user_key = await new_key(root.principal, user)
    sibling = await new_account(root.principal, "sibling@example.com")
    sibling_key = await new_key(root.principal, sibling)
    await authorize(user_key.secret)

    await Account.filter(id=reseller.id).update(state=AccountState.SUSPENDED)
    await fails(PermissionDenied, Reason.ACCOUNT_SUSPENDED, authorize(user_key.secret))
    await fails(
        PermissionDenied, Reason.ACCOUNT_SUSPENDED, gateway.verify_key(keys.hash_secret_bytes(user_key.secret), NOW)
    )
    await fails(PermissionDenied, Reason.ACCOUNT_SUSPENDED, authenticate_management(reseller_manager.secret, NOW))
    await authorize(sibling_key.secret)

    await Account.filter(id=reseller.id).update(state=AccountState.ACTIVE)
    await authorize(user_key.secret)
    assert await UsageRecord.all().count() == 3


# -- usage listing -------------------------------------------------------------


@dataclass
class UsageWorld:
    root: Root
    reseller: Account
    user_key: IssuedKey
    codec: PageTokenCodec
    under_reseller: list[int]  # record ids, oldest first
    everything: list[int]


@pytest.fixture
async def world(root: Root) -> UsageWorld:
    reseller = await new_account(root.principal, "reseller@example.com", Role.RESELLER)
    user = await new_account(root.principal, "user@example.com", parent=reseller)
    direct = await new_account(root.principal, "direct@example.com")
    user_key, direct_key = await new_key(root.principal, user), await new_key(root.principal, direct)
    everything, under_reseller = [], []
    for i in range(7):
        secret = direct_key.secret if i in (1, 4) else user_key.secret
        record = await authorize(secret, now=NOW + timedelta(seconds=i))
        everything.append(record.id)
        if secret == user_key.secret:
            under_reseller.append(record.id)
    codec = PageTokenCodec(await load_or_create_secret(PAGE_TOKEN_KEY))
    return UsageWorld(root, reseller, user_key, codec, under_reseller, everything)


async def list_all(world: UsageWorld, principal: Principal, parent: Account, size: int) -> tuple[list[int], int]:
    """Every page of a listing: (record ids in order, number of pages)."""
    ids: list[int] = []
    token, pages = "", 0
    while True:
        page = await usage.list_usage_records(
            principal, world.codec, parent=parent, api_key_id=None, size=size, token=token
        )
        pages += 1
        assert len(page.records) <= size
        ids.extend(r.id for r in page.records)
        token = page.next_page_token
        if not token:
            return ids, pages
        assert pages < 20, "paging does not terminate"


async def test_usage_pages_newest_first(world: UsageWorld) -> None:
    admin = world.root.principal
    ids, pages = await list_all(world, admin, world.root.account, size=2)
    assert ids == sorted(world.everything, reverse=True)
    assert pages == 4

    ids, pages = await list_all(world, admin, world.reseller, size=2)
    assert ids == sorted(world.under_reseller, reverse=True)
    assert pages == 3

    # An exact multiple of the page size ends without an extra empty page.
    ids, pages = await list_all(world, admin, world.root.account, size=7)
    assert (len(ids), pages) == (7, 1)

    page = await usage.list_usage_records(
        admin, world.codec, parent=world.root.account, api_key_id=world.user_key.key.id, size=0, token=""
    )
    assert [r.id for r in page.records] == sorted(world.under_reseller, reverse=True)
    assert page.next_page_token == ""


async def test_usage_rejects_a_negative_page_size(world: UsageWorld) -> None:
    error = await fails(
        InvalidArgument,
        Reason.FIELD_INVALID,
        usage.list_usage_records(
            world.root.principal, world.codec, parent=world.root.account, api_key_id=None, size=-1, token=""
        ),
    )
    assert violated_fields(error) == ["page_size"]


async def _first_token(world: UsageWorld) -> str:
    page = await usage.list_usage_records(
        world.root.principal, world.codec, parent=world.root.account, api_key_id=None, size=2, token=""
    )
    assert page.next_page_token
    return page.next_page_token


async def test_a_page_token_is_bound_to_caller_and_query(world: UsageWorld) -> None:
    token = await _first_token(world)
    admin = world.root.principal
    second_admin_key = await manager(world.root.account)  # same account, another key
    reseller = await manager(world.reseller)

    for principal, parent, api_key_id in (
        (second_admin_key, world.root.account, None),
        (reseller, world.reseller, None),
        (admin, world.reseller, None),
        (admin, world.root.account, world.user_key.key.id),
    ):
        error = await fails(
            InvalidArgument,
            Reason.PAGE_TOKEN_INVALID,
            usage.list_usage_records(principal, world.codec, parent=parent, api_key_id=api_key_id, size=2, token=token),
        )
        assert violated_fields(error) == ["page_token"]

    # The token still works for its own caller and query.
    page = await usage.list_usage_records(
        admin, world.codec, parent=world.root.account, api_key_id=None, size=2, token=token
    )
    assert len(page.records) == 2


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_tampered_page_token_is_rejected(world: UsageWorld) -> None:
    token = await _first_token(world)
    body, signature = token.split(".")
    forged_body = _b64(json.dumps({"before_id": 10**12}, separators=(",", ":")).encode())
    foreign = PageTokenCodec(b"another installation's key").encode(
        f"usage|caller={world.root.principal.credential}|parent={world.root.account.id}|key=None", {"before_id": 10**12}
    )
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for bad in (f"{forged_body}.{signature}", f"{body}.{flipped}", foreign, body, f"{token}.x", "garbage", "é.é"):
        error = await fails(
            InvalidArgument,
            Reason.PAGE_TOKEN_INVALID,
            usage.list_usage_records(
                world.root.principal, world.codec, parent=world.root.account, api_key_id=None, size=2, token=bad
            ),
        )
        assert violated_fields(error) == ["page_token"], bad
