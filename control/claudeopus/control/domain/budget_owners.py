"""Who a budget is set on: an account, or one key of an account, named as in the API.

Example::

    owner = await resolve_owner(principal, "budget.owner", "apiKeys/9")
    owner.name   # 'apiKeys/9'
"""

from __future__ import annotations

from dataclasses import dataclass

from claudeopus.control.domain.accounts import account_in_subtree
from claudeopus.control.domain.api_keys import key_in_subtree
from claudeopus.control.domain.errors import InvalidArgument, NotFound, Reason
from claudeopus.control.domain.names import ACCOUNTS, API_KEYS, format_name
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account


@dataclass(frozen=True, slots=True)
class Owner:
    """What a budget is set on: an account, or a key (``api_key_id``) of ``account``."""

    account: Account
    api_key_id: int | None = None

    @property
    def name(self) -> str:
        if self.api_key_id is not None:
            return format_name(API_KEYS, self.api_key_id)
        return format_name(ACCOUNTS, self.account.id)


async def resolve_owner(principal: Principal, field: str, name: str) -> Owner:
    """``accounts/{id}`` or ``apiKeys/{id}`` in the caller's subtree; empty means the caller's account."""
    if not name:
        return Owner(await account_in_subtree(principal, None, field))
    collection, _, raw = name.partition("/")
    if collection not in (ACCOUNTS, API_KEYS) or not (raw.isascii() and raw.isdecimal()) or len(raw) > 18:
        raise InvalidArgument.field(field, "must be a resource name like 'accounts/123' or 'apiKeys/123'")
    if collection == ACCOUNTS:
        return Owner(await account_in_subtree(principal, int(raw), field))
    try:
        key = await key_in_subtree(principal, int(raw))
    except NotFound:
        raise NotFound(Reason.RESOURCE_NOT_FOUND, f"{field}: API key not found.") from None
    return Owner(key.account, key.id)
