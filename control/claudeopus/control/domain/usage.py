"""Listing usage records of a subtree, newest first, with signed page tokens."""

from __future__ import annotations

from dataclasses import dataclass

from claudeopus.control.domain.errors import InvalidArgument
from claudeopus.control.domain.paging import PageTokenCodec, page_size
from claudeopus.control.domain.principal import Principal
from claudeopus.control.models import Account, UsageRecord


@dataclass(frozen=True, slots=True)
class UsagePage:
    records: list[UsageRecord]
    next_page_token: str


async def list_usage_records(
    principal: Principal,
    codec: PageTokenCodec,
    *,
    parent: Account,
    api_key_id: int | None,
    size: int,
    token: str,
) -> UsagePage:
    """Records of ``parent``'s subtree (already checked to be the caller's), newest first."""
    limit = page_size(size)
    scope = f"usage|caller={principal.api_key_id}|parent={parent.id}|key={api_key_id}"
    query = UsageRecord.filter(account__path__startswith=parent.path)
    if api_key_id is not None:
        query = query.filter(api_key_id=api_key_id)
    if token:
        before = codec.decode(scope, token).get("before_id")
        if not isinstance(before, int):
            raise InvalidArgument.field("page_token", "is malformed")
        query = query.filter(id__lt=before)
    rows = await query.order_by("-id").limit(limit + 1)
    next_token = codec.encode(scope, {"before_id": rows[limit - 1].id}) if len(rows) > limit else ""
    return UsagePage(records=rows[:limit], next_page_token=next_token)
