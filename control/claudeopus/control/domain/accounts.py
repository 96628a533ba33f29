"""Accounts and the reseller hierarchy: bootstrap, create, read, list, change.

Every lookup is confined to the caller's subtree; anything outside it is
reported as not found, so callers cannot learn that it exists. A deleted
account keeps its row (its usage history refers to it) but is invisible to
every call. Changes that depend on an account's children (a new child, a
reseller becoming a user, a delete) lock that account's row first, so on
PostgreSQL they cannot interleave. Deleting, suspending and resuming are in
:mod:`~claudeopus.control.domain.account_lifecycle`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from claudeopus.control.domain import validation
from claudeopus.control.domain.api_keys import IssuedKey, issue_key
from claudeopus.control.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from claudeopus.control.domain.instance import ADMIN_BOOTSTRAPPED
from claudeopus.control.domain.paging import PageTokenCodec, keyset_page, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, AccountState, InstanceValue, Role, Scope

CREATABLE_ROLES = (Role.RESELLER, Role.USER)
UPDATABLE_FIELDS = ("display_name", "email", "role")
MAX_EMAIL = 320


@dataclass(frozen=True, slots=True)
class Bootstrapped:
    account: Account
    key: IssuedKey


async def bootstrap_admin(email: str, display_name: str, *, peer_is_local: bool) -> Bootstrapped:
    """Create the root admin and its first management key, exactly once per installation."""
    if not peer_is_local:
        raise PermissionDenied(Reason.BOOTSTRAP_NOT_LOCAL, "Bootstrap is accepted only from the local machine.")
    email = validation.email("email", email)
    display_name = validation.display_name("display_name", display_name)
    try:
        async with in_transaction():
            # The primary key of this marker row makes bootstrap win exactly once,
            # even when two bootstraps race on separate replicas.
            await InstanceValue.create(name=ADMIN_BOOTSTRAPPED, value=b"1")
            admin = await Account.create(email=email, display_name=display_name, role=Role.ADMIN)
            admin.path = f"/{admin.id}/"
            await admin.save(update_fields=["path"])
            issued = await issue_key(admin, display_name="admin", scopes=Scope.MANAGEMENT)
    except IntegrityError:
        raise AlreadyExists(Reason.ADMIN_EXISTS, "The root admin already exists.") from None
    return Bootstrapped(account=admin, key=issued)


async def account_in_subtree(principal: Principal, account_id: int | None, field: str) -> Account:
    """The account ``account_id`` (or the caller's own) if the caller may see it."""
    target = principal.account_id if account_id is None else account_id
    account = await Account.get_or_none(id=target)
    if account is None or not principal.owns(account):
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: account not found.")
    return account


async def has_children(account_id: int) -> bool:
    return await Account.filter(parent_id=account_id, deleted_at__isnull=True).exists()


async def locked_account(account_id: int, field: str) -> Account:
    """The live account row, locked until the end of the transaction (PostgreSQL)."""
    account = await Account.filter(id=account_id, deleted_at__isnull=True).select_for_update().first()
    if account is None:
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: account not found.")
    return account


async def create_account(
    principal: Principal,
    *,
    parent_id: int | None,
    email: str,
    display_name: str,
    role: Role | None,
    request_id: str,
) -> Account:
    """Create a reseller or user below ``parent_id`` (default: the caller's own account)."""
    if principal.role not in (Role.ADMIN, Role.RESELLER):
        raise PermissionDenied(Reason.ROLE_DENIED, "Only admins and resellers can create accounts.")
    if role not in CREATABLE_ROLES:
        raise InvalidArgument.field("account.role", "must be ROLE_RESELLER or ROLE_USER")
    email = validation.email("account.email", email)
    display_name = validation.display_name("account.display_name", display_name)
    rid = validation.request_id("request_id", request_id)
    parent = await account_in_subtree(principal, parent_id, "parent")
    if parent.role not in (Role.ADMIN, Role.RESELLER):
        raise FailedPrecondition(Reason.ROLE_DENIED, "parent: a user account cannot have sub-accounts.")
    if rid is not None:
        earlier = await Account.get_or_none(parent_id=parent.id, create_request_id=rid)
        if earlier is not None:
            return _same_request(earlier, email=email, role=role)
    try:
        async with in_transaction():
            # Lock the parent: a concurrent delete or reseller-to-user change of it
            # waits for this insert, then sees the new child.
            await _locked_parent(parent.id)
            account = await Account.create(
                email=email,
                display_name=display_name,
                role=role,
                parent_id=parent.id,
                create_request_id=rid,
            )
            account.path = f"{parent.path}{account.id}/"
            await account.save(update_fields=["path"])
    except IntegrityError:
        if rid is not None:
            earlier = await Account.get_or_none(parent_id=parent.id, create_request_id=rid)
            if earlier is not None:
                return _same_request(earlier, email=email, role=role)
        raise AlreadyExists(Reason.RESOURCE_EXISTS, "account.email: an account with this email exists.") from None
    return account


async def _locked_parent(parent_id: int) -> None:
    parent = await locked_account(parent_id, "parent")
    if parent.role not in (Role.ADMIN, Role.RESELLER):
        raise FailedPrecondition(Reason.ROLE_DENIED, "parent: a user account cannot have sub-accounts.")


def _same_request(earlier: Account, *, email: str, role: Role) -> Account:
    if earlier.email != email or earlier.role != role:
        raise AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used for a different account.")
    return earlier


async def get_account(principal: Principal, account_id: int) -> Account:
    return await account_in_subtree(principal, account_id, "name")


# -- list ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountPage:
    accounts: list[Account]
    next_page_token: str


def _role_filter(value: int) -> Role | None:
    if value == 0:
        return None
    try:
        return Role(value)
    except ValueError:
        raise InvalidArgument.field("role", "must be a Role value or ROLE_UNSPECIFIED for all") from None


def _state_filter(value: int) -> AccountState | None:
    if value == 0:
        return None
    try:
        return AccountState(value)
    except ValueError:
        raise InvalidArgument.field(
            "state", "must be an AccountState value or ACCOUNT_STATE_UNSPECIFIED for all"
        ) from None


async def list_accounts(
    principal: Principal,
    codec: PageTokenCodec,
    *,
    parent_id: int | None,
    role: int,
    state: int,
    size: int,
    token: str,
) -> AccountPage:
    """The live direct children of ``parent_id`` (default: the caller's account), oldest first.

    ``role`` and ``state`` are proto enum values; 0 (UNSPECIFIED) means any.
    """
    limit = page_size(size)
    role_filter = _role_filter(role)
    state_filter = _state_filter(state)
    parent = await account_in_subtree(principal, parent_id, "parent")
    scope = f"accounts|caller={principal.credential}|parent={parent.id}|role={role}|state={state}"
    query = Account.filter(parent_id=parent.id, deleted_at__isnull=True)
    if role_filter is not None:
        query = query.filter(role=role_filter)
    if state_filter is not None:
        query = query.filter(state=state_filter)
    rows, next_token = await keyset_page(query, codec, scope, token, limit, key="id")
    return AccountPage(accounts=rows, next_page_token=next_token)


# -- update --------------------------------------------------------------------


def _update_paths(paths: Sequence[str]) -> set[str]:
    """The fields an update mask names; ``*`` means all of them, empty means none."""
    if list(paths) == ["*"]:
        return set(UPDATABLE_FIELDS)
    if not set(paths) <= set(UPDATABLE_FIELDS):
        raise InvalidArgument.field("update_mask", f"may name only {', '.join(UPDATABLE_FIELDS)} (or be empty for all)")
    return set(paths)


def _new_role(value: int) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidArgument.field("account.role", "must be ROLE_RESELLER or ROLE_USER") from None


async def update_account(
    principal: Principal,
    account_id: int,
    *,
    paths: Sequence[str],
    display_name: str,
    email: str,
    role: int,
    now: datetime,
) -> Account:
    """Change the fields named by ``paths`` of an account in the caller's subtree.

    The caller may rename itself or change its own email, never its own role.
    Role changes go between reseller and user only; a reseller with live
    sub-accounts stays a reseller.
    """
    fields = _update_paths(paths)
    wanted: dict[str, object] = {}
    if "display_name" in fields:
        wanted["display_name"] = validation.display_name("account.display_name", display_name)
    if "email" in fields:
        wanted["email"] = validation.email("account.email", email)
    if "role" in fields:
        wanted["role"] = _new_role(role)
    target = await account_in_subtree(principal, account_id, "account.name")
    changes = {name: value for name, value in wanted.items() if getattr(target, name) != value}
    new_role = changes.get("role")
    if new_role is not None:
        if target.id == principal.account_id:
            raise PermissionDenied(Reason.SELF_CHANGE_DENIED, "account.role: an account cannot change its own role.")
        if new_role not in CREATABLE_ROLES:
            raise InvalidArgument.field("account.role", "must be ROLE_RESELLER or ROLE_USER")
    if not changes:
        return target
    try:
        async with in_transaction():
            if new_role is Role.USER:
                await locked_account(target.id, "account.name")
                if await has_children(target.id):
                    raise FailedPrecondition(
                        Reason.ACCOUNT_NOT_EMPTY, "account.role: a reseller with sub-accounts cannot become a user."
                    )
            updated = await Account.filter(id=target.id, deleted_at__isnull=True).update(**changes, updated_at=now)
            if not updated:
                raise NotFound(Reason.RESOURCE_NOT_FOUND, "account.name: account not found.")
    except IntegrityError:
        raise AlreadyExists(Reason.RESOURCE_EXISTS, "account.email: an account with this email exists.") from None
    await target.refresh_from_db()
    return target
