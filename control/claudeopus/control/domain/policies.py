"""Account policies: the bounds an account above sets on every key created below it.

A policy lives on an account and is set by one of its ancestors, never by the account itself
(``SELF_CHANGE_DENIED``). It says which models keys may be allowed, whether management keys may
be minted, and the longest lifetime of a key. The policy **in force** for a key of account A is
the intersection of the policies of A and all its ancestors (:func:`chain_policy`).

- Creating or changing a key checks the fields it sets against the policy in force
  (``ACCOUNT_POLICY_DENIED``): allowed models must be a subset of the policy's (a key that
  names no models gets the policy's list: it is never wider than the policy, and its holder
  can read what it may use); an expiry is required and at most the longest lifetime after the
  key's creation; the management scope is refused when any policy on the chain forbids it.
- At request time the same policy holds for keys made before it (:mod:`auth_cache` reads it
  with the key): a model outside it is ``MODEL_NOT_ALLOWED``, a key older than the longest
  lifetime is ``KEY_EXPIRED``, and a management key under a chain that forbids them does not
  authenticate for management (:mod:`principal`).
- The policy set by account P can be widened only by P or an account above it
  (``POLICY_SET_ABOVE``); any ancestor may narrow it, and narrowing keeps the higher setter.

Example::

    account = await set_policy(principal, account, paths=["allowed_models"],
                               policy=Policy(allowed_models=frozenset({"gpt-x"})), now=now)
    in_force = await policy_in_force(account)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import InvalidArgument, NotFound, PermissionDenied, Reason
from claudeopus.control.ledger.leases.fence import outlive_leases
from claudeopus.control.models import Account, ApiKey, Scope

if TYPE_CHECKING:  # principal reads the policy of a management key's chain
    from claudeopus.control.domain.principal import Principal

POLICY_FIELDS = ("allowed_models", "deny_management_keys", "max_key_lifetime")  # as on the wire
MAX_LIFETIME = timedelta(days=36_500)
MAX_ALLOWED_MODELS = 256
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Policy:
    """One account's policy, or the intersection of a chain's. ``None`` bounds nothing."""

    allowed_models: frozenset[str] | None = None
    management_keys: bool = True
    max_key_lifetime: timedelta | None = None

    @classmethod
    def of(cls, account: Account) -> Policy:
        models = account.policy_allowed_models
        seconds = account.policy_max_key_lifetime_seconds
        return cls(
            allowed_models=None if models is None else frozenset(models),
            management_keys=bool(account.policy_management_keys),
            max_key_lifetime=None if seconds is None else timedelta(seconds=seconds),
        )

    def __and__(self, other: Policy) -> Policy:
        return Policy(
            allowed_models=_narrower(self.allowed_models, other.allowed_models, lambda a, b: a & b),
            management_keys=self.management_keys and other.management_keys,
            max_key_lifetime=_narrower(self.max_key_lifetime, other.max_key_lifetime, min),
        )

    def widened_by(self, new: Policy) -> bool:
        """Whether ``new`` allows anything this policy does not."""
        return (
            _wider_models(self.allowed_models, new.allowed_models)
            or (new.management_keys and not self.management_keys)
            or _later(self.max_key_lifetime, new.max_key_lifetime)
        )

    def models_for(self, key_models: Sequence[str] | None) -> frozenset[str] | None:
        """The models a key with ``key_models`` may use under this policy (None: any)."""
        mine = None if not key_models else frozenset(key_models)
        return _narrower(mine, self.allowed_models, lambda a, b: a & b)

    def key_end(self, key: ApiKey) -> datetime | None:
        """When the key outlives the longest lifetime (None: never)."""
        return None if self.max_key_lifetime is None else key.created_at + self.max_key_lifetime

    def outlived(self, key: ApiKey, now: datetime) -> bool:
        """Whether the key is older than the longest lifetime (a key made before the policy was set)."""
        end = self.key_end(key)
        return end is not None and end <= now


UNBOUNDED = Policy()


def _narrower(a: T | None, b: T | None, both: Callable[[T, T], T]) -> T | None:
    if a is None:
        return b
    if b is None:
        return a
    return both(a, b)


def _wider_models(old: frozenset[str] | None, new: frozenset[str] | None) -> bool:
    return old is not None and (new is None or not new <= old)


def wider_models(old: Sequence[str] | None, new: Sequence[str] | None) -> bool:
    """Whether a model list (None or empty: every model) allows a model the old one did not."""
    return _wider_models(frozenset(old) if old else None, frozenset(new) if new else None)


def _later(old: timedelta | None, new: timedelta | None) -> bool:
    return old is not None and (new is None or new > old)


def chain_policy(chain: Iterable[Account]) -> Policy:
    """The policy in force below the last of ``chain`` (an account and its ancestors, any order)."""
    policy = UNBOUNDED
    for account in chain:
        policy = policy & Policy.of(account)
    return policy


async def policy_in_force(account: Account) -> Policy:
    """The policy every key of ``account`` must fit: its own and every ancestor's, together."""
    return chain_policy(await Account.filter(id__in=account.ancestor_ids()))


def _denied(field: str, why: str) -> PermissionDenied:
    return PermissionDenied(Reason.ACCOUNT_POLICY_DENIED, f"{field}: {why}")


def fit_scopes(policy: Policy, scopes: int) -> None:
    if scopes & Scope.MANAGEMENT and not policy.management_keys:
        raise _denied("api_key.scopes", "the account's policy does not allow management keys.")


def fit_models(policy: Policy, models: list[str]) -> list[str]:
    """``models`` if the policy allows them all; none (every model) becomes the policy's own list."""
    allowed = policy.allowed_models
    if allowed is None:
        return models
    if not models:
        if not allowed:
            raise _denied("api_key.allowed_models", "the account's policy allows no model.")
        return sorted(allowed)
    outside = sorted(set(models) - allowed)
    if outside:
        raise _denied("api_key.allowed_models", f"the account's policy does not allow {', '.join(outside)}.")
    return models


def fit_expiry(policy: Policy, expires_at: datetime | None, created_at: datetime) -> None:
    lifetime = policy.max_key_lifetime
    if lifetime is None:
        return
    latest = created_at + lifetime
    if expires_at is None or expires_at > latest:
        raise _denied(
            "api_key.expire_time",
            f"the account's policy requires an expiry no later than {latest.isoformat()} "
            f"(keys live at most {_days(lifetime)}).",
        )


def _days(lifetime: timedelta) -> str:
    if lifetime % timedelta(days=1):
        return f"{int(lifetime.total_seconds())} seconds"
    return f"{lifetime.days} days"


# -- who set a limit -------------------------------------------------------------


def higher(chain: Sequence[int], first: int | None, second: int | None) -> int | None:
    """Of two setters on ``chain`` (root first; None = the row's own account), the one nearer the root."""
    if first is None:
        return second
    if second is None:
        return first
    return first if _depth(chain, first) <= _depth(chain, second) else second


def may_widen(chain: Sequence[int], caller: int, set_by: int | None) -> bool:
    """Whether ``caller`` (on ``chain``) is the setter or above it; anyone may widen what nobody above set."""
    return set_by is None or _depth(chain, caller) <= _depth(chain, set_by)


def setter_is(column: str, set_by: int | None) -> dict[str, object]:
    """A filter for rows whose setter column still holds ``set_by`` (a conditional UPDATE's guard)."""
    return {f"{column}__isnull": True} if set_by is None else {column: set_by}


def _depth(chain: Sequence[int], account_id: int) -> int:
    # A setter off the chain cannot happen (setters are ancestors); count it as the root, the safe side.
    return chain.index(account_id) if account_id in chain else -1


# -- setting a policy ------------------------------------------------------------------------


def policy_paths(paths: Sequence[str]) -> frozenset[str]:
    """The policy fields an update mask names; empty or ``*`` means the whole policy."""
    if not paths or list(paths) == ["*"]:
        return frozenset(POLICY_FIELDS)
    unknown = sorted({p for p in paths if p not in POLICY_FIELDS})
    if unknown:
        raise InvalidArgument.field(
            "update_mask", f"cannot update {', '.join(unknown)}; updatable: {', '.join(POLICY_FIELDS)}"
        )
    return frozenset(paths)


def valid_models(values: Sequence[str], field: str) -> list[str]:
    """A list of model names (a key's or a policy's), each checked."""
    if len(values) > MAX_ALLOWED_MODELS:
        raise InvalidArgument.field(field, f"at most {MAX_ALLOWED_MODELS} models")
    return [validation.model_name(f"{field}[{i}]", v) for i, v in enumerate(values)]


def check_policy(policy: Policy) -> Policy:
    models = policy.allowed_models
    if models is not None:
        models = frozenset(valid_models(sorted(models), "policy.allowed_models"))
    lifetime = policy.max_key_lifetime
    if lifetime is not None and not timedelta(seconds=1) <= lifetime <= MAX_LIFETIME:
        raise InvalidArgument.field("policy.max_key_lifetime", f"must be between 1 second and {MAX_LIFETIME.days} days")
    return replace(policy, allowed_models=models)


async def set_policy(
    principal: Principal, target: Account, *, paths: Sequence[str], policy: Policy, now: datetime
) -> Account:
    """Set the fields ``paths`` names of the policy on ``target``, an account strictly below the caller
    (already checked to be in its subtree)."""
    fields = policy_paths(paths)
    policy = check_policy(policy)
    old = Policy.of(target)
    new = Policy(
        allowed_models=policy.allowed_models if "allowed_models" in fields else old.allowed_models,
        management_keys=policy.management_keys if "deny_management_keys" in fields else old.management_keys,
        max_key_lifetime=policy.max_key_lifetime if "max_key_lifetime" in fields else old.max_key_lifetime,
    )
    if new == old:
        return target
    if target.id == principal.account_id:
        raise PermissionDenied(
            Reason.SELF_CHANGE_DENIED, "name: an account's policy is set by an account above it, never by itself."
        )
    chain = target.ancestor_ids()
    widened = old.widened_by(new)
    if widened and not may_widen(chain, principal.account_id, target.policy_set_by):
        raise PermissionDenied(
            Reason.POLICY_SET_ABOVE, "policy: this policy was set above you; you may narrow it, not widen it."
        )
    set_by = None if new == UNBOUNDED else higher(chain, target.policy_set_by, principal.account_id)
    changes = {
        "policy_allowed_models": None if new.allowed_models is None else sorted(new.allowed_models),
        "policy_management_keys": new.management_keys,
        "policy_max_key_lifetime_seconds": (
            None if new.max_key_lifetime is None else int(new.max_key_lifetime.total_seconds())
        ),
        "policy_set_by": set_by,
    }
    # Conditional on the setter the check read: a concurrent change from above is never overwritten.
    same_setter = setter_is("policy_set_by", target.policy_set_by)
    updated = await Account.filter(id=target.id, deleted_at__isnull=True, **same_setter).update(
        **changes, updated_at=now
    )
    if not updated:
        if not await Account.filter(id=target.id, deleted_at__isnull=True).exists():
            raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: account not found.")
        raise PermissionDenied(
            Reason.POLICY_SET_ABOVE, "policy: the policy was changed above you meanwhile; read it and retry."
        )
    await target.refresh_from_db()
    if new.widened_by(old):  # narrower: no edge admits from a lease sized before it, once this returns
        await outlive_leases(account=target, now=now)
    return target
