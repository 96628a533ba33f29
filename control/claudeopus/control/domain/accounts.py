"""Accounts and the reseller hierarchy: bootstrap, create, get.

Every lookup is confined to the caller's subtree; anything outside it is
reported as not found, so callers cannot learn that it exists.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, InstanceValue, Role, Scope

CREATABLE_ROLES = (Role.RESELLER, Role.USER)


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


def _same_request(earlier: Account, *, email: str, role: Role) -> Account:
    if earlier.email != email or earlier.role != role:
        raise AlreadyExists(Reason.REQUEST_ID_CONFLICT, "request_id was already used for a different account.")
    return earlier


async def get_account(principal: Principal, account_id: int) -> Account:
    return await account_in_subtree(principal, account_id, "name")
