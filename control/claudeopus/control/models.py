"""Tortoise ORM models of the control plane.

No column anywhere can hold request or response content: usage rows carry only
metadata (who, which model, how many tokens, how long, how it ended). Money and
token counters are integers. API keys are stored as a SHA-256 hex digest plus a
short display prefix; the secret itself is never stored.

Tortoise sets the id of each foreign key as an attribute (``account_id``); an annotation
(``account_id: int``) tells the type checker about it and adds no column.
"""

from __future__ import annotations

from enum import IntEnum

from tortoise import fields
from tortoise.indexes import Index, PartialIndex
from tortoise.models import Model


class Role(IntEnum):
    """Mirrors ``claudeopus.v1.Role``."""

    ADMIN = 1
    RESELLER = 2
    USER = 3


class AccountState(IntEnum):
    """Mirrors ``claudeopus.v1.AccountState``."""

    ACTIVE = 1
    SUSPENDED = 2


class Scope(IntEnum):
    """Bit flags of ``ApiKey.scopes``; values mirror ``claudeopus.v1.Scope``."""

    INFERENCE = 1
    MANAGEMENT = 2


class UsageStatus(IntEnum):
    """Mirrors ``claudeopus.v1.UsageStatus``."""

    RESERVED = 1
    SUCCEEDED = 2
    UPSTREAM_ERROR = 3
    CLIENT_DISCONNECTED = 4
    EXPIRED = 5


class UsageSource(IntEnum):
    """Mirrors ``claudeopus.v1.UsageSource``; 0 while a record is reserved."""

    NONE = 0
    REPORTED = 1
    ESTIMATED = 2
    RESERVED = 3


class BudgetMetric(IntEnum):
    """Mirrors ``claudeopus.v1.BudgetMetric``."""

    INPUT_TOKENS = 1
    OUTPUT_TOKENS = 2
    TOTAL_TOKENS = 3
    COST_MICROS = 4


class BudgetPeriod(IntEnum):
    """Mirrors ``claudeopus.v1.BudgetPeriod``."""

    TOTAL = 1
    DAILY = 2
    MONTHLY = 3


class Account(Model):
    """A node of the reseller hierarchy.

    ``path`` is the materialised chain of ids from the root, ``/1/7/42/``, so a
    subtree is one indexed prefix match and the ancestors are the ids in it.
    """

    id = fields.BigIntField(primary_key=True)
    email = fields.CharField(max_length=320, unique=True)
    display_name = fields.CharField(max_length=200, default="")
    role = fields.IntEnumField(Role)
    parent: fields.ForeignKeyNullableRelation[Account] = fields.ForeignKeyField(
        "control.Account", related_name="children", null=True, on_delete=fields.RESTRICT
    )
    parent_id: int | None
    path = fields.CharField(max_length=1000, db_index=True, default="")
    state = fields.IntEnumField(AccountState, default=AccountState.ACTIVE)
    password_hash = fields.CharField(max_length=200, null=True)
    create_request_id = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    # Set when deleted: the row stays for the usage history, invisible to every call.
    deleted_at = fields.DatetimeField(null=True)
    # Who suspended the account: only that account or one above it may lift the suspension.
    suspended_by = fields.BigIntField(null=True)
    # The policy an account above sets on this one; it bounds every key created in this subtree
    # (the policies of the whole chain apply together). ``policy_set_by`` is the account that set it
    # last: only that account or one above it may widen it. Null everywhere means no policy.
    policy_allowed_models: fields.Field[list[str] | None] = fields.JSONField(null=True)
    policy_management_keys = fields.BooleanField(default=True, db_default=True)
    policy_max_key_lifetime_seconds = fields.BigIntField(null=True)
    policy_set_by = fields.BigIntField(null=True)

    class Meta:
        table = "account"
        unique_together = (("parent_id", "create_request_id"),)

    def ancestor_ids(self) -> list[int]:
        """Ids from the root down to and including this account."""
        return ids_on_path(self.path)


class ApiKey(Model):
    """An API key. Only the SHA-256 of its secret is stored."""

    id = fields.BigIntField(primary_key=True)
    account: fields.ForeignKeyRelation[Account] = fields.ForeignKeyField(
        "control.Account", related_name="api_keys", on_delete=fields.RESTRICT
    )
    account_id: int
    key_hash = fields.CharField(max_length=64, unique=True)
    prefix = fields.CharField(max_length=16)
    display_name = fields.CharField(max_length=200, default="")
    scopes = fields.SmallIntField(default=Scope.INFERENCE)
    allowed_models: fields.Field[list[str] | None] = fields.JSONField(null=True)
    create_request_id = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    revoked_at = fields.DatetimeField(null=True)
    expires_at = fields.DatetimeField(null=True)
    # Rotation: the replaced secret's hash keeps working until previous_expires_at.
    rotated_at = fields.DatetimeField(null=True)
    previous_key_hash = fields.CharField(max_length=64, null=True, unique=True)
    previous_expires_at = fields.DatetimeField(null=True)
    # Who created the key, and who last set each of its limits: a limit set by an account above the
    # key's own can only be widened by that account or one above it (the owner may narrow it).
    issued_by = fields.BigIntField(null=True)
    models_set_by = fields.BigIntField(null=True)
    expiry_set_by = fields.BigIntField(null=True)
    scopes_set_by = fields.BigIntField(null=True)
    # The dashboard session a management key was minted through: ending the session's rights
    # (a password reset, a suspension) revokes it too.
    minted_by_session = fields.BigIntField(null=True)

    class Meta:
        table = "api_key"
        unique_together = (("account_id", "create_request_id"),)

    def has_scope(self, scope: Scope) -> bool:
        return bool(self.scopes & scope)


class UsageRecord(Model):
    """Usage metadata of one authorized completion, never any content."""

    id = fields.BigIntField(primary_key=True)
    request_id = fields.UUIDField(unique=True)
    api_key: fields.ForeignKeyRelation[ApiKey] = fields.ForeignKeyField(
        "control.ApiKey", related_name="usage_records", on_delete=fields.RESTRICT
    )
    account: fields.ForeignKeyRelation[Account] = fields.ForeignKeyField(
        "control.Account", related_name="usage_records", on_delete=fields.RESTRICT
    )
    model = fields.CharField(max_length=200)
    input_tokens = fields.BigIntField(default=0)
    output_tokens = fields.BigIntField(default=0)
    estimated_input_tokens = fields.BigIntField(default=0)
    max_output_tokens = fields.BigIntField(default=0)
    latency_us = fields.BigIntField(default=0)
    status = fields.IntEnumField(UsageStatus, default=UsageStatus.RESERVED)
    source = fields.IntEnumField(UsageSource, default=UsageSource.NONE)
    http_status = fields.SmallIntField(default=0)
    stream = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)
    settled_at = fields.DatetimeField(null=True)
    # Micro-units at the price in force when settled (0 for an unpriced model); the database default
    # fills the rows that existed before the column.
    cost_micros = fields.BigIntField(default=0, db_default=0)
    # The reservation: its worst-case cost and the budget counters it holds amounts in
    # (comma-separated ids), so settling releases exactly what authorizing reserved.
    reserved_cost_micros = fields.BigIntField(default=0, db_default=0)
    reserved_counters = fields.CharField(max_length=1000, default="", db_default="")

    class Meta:
        table = "usage_record"
        # Only columns fixed at insert: settling a row changes none of them, so it can stay a HOT update.
        # (.., created_at, id): summaries and time-filtered listings of an account, a key, everything;
        # (.., id): listings of one account or one key newest first, however long ago its last request.
        indexes = (
            Index(fields=("account_id", "created_at", "id")),
            Index(fields=("api_key_id", "created_at", "id")),
            Index(fields=("created_at", "id")),
            Index(fields=("account_id", "id")),
            Index(fields=("api_key_id", "id")),
            # The sweeper's scan of open reservations stays as small as the number open.
            PartialIndex(fields=("created_at",), name="usage_record_open_idx", condition={"status": 1}),
        )


class BudgetLease(Model):
    """A slice of a key's budgets held by one edge, which admits requests of one model from it alone.

    ``granted_*`` were taken from every budget counter in ``reserved_counters`` when the lease
    was made; ``open_*`` is what the lease still holds in them. A request the edge admitted
    from the lease moves its reservation from the lease to its own usage row when its settle
    arrives (``requests_opened`` counts those); when the edge returns the lease, what it did not
    use is released and ``requests_admitted`` says how many rows are still to come. A lease
    whose edge vanished is closed by the sweeper: what it still holds is charged, like an
    expired reservation, as one usage row with the lease's id as its request id.
    """

    id = fields.BigIntField(primary_key=True)
    lease_id = fields.UUIDField(unique=True)
    api_key: fields.ForeignKeyRelation[ApiKey] = fields.ForeignKeyField(
        "control.ApiKey", related_name="leases", on_delete=fields.RESTRICT
    )
    account: fields.ForeignKeyRelation[Account] = fields.ForeignKeyField(
        "control.Account", related_name="leases", on_delete=fields.RESTRICT
    )
    model = fields.CharField(max_length=200)
    unlimited = fields.BooleanField(default=False)
    reserved_counters = fields.CharField(max_length=1000, default="")
    granted_input_tokens = fields.BigIntField(default=0)
    granted_output_tokens = fields.BigIntField(default=0)
    granted_cost_micros = fields.BigIntField(default=0)
    open_input_tokens = fields.BigIntField(default=0)
    open_output_tokens = fields.BigIntField(default=0)
    open_cost_micros = fields.BigIntField(default=0)
    requests_opened = fields.BigIntField(default=0)
    requests_admitted = fields.BigIntField(null=True)
    created_at = fields.DatetimeField()
    # The edge admits from the lease until then; requests it admitted may run a reservation timeout longer.
    expires_at = fields.DatetimeField()

    class Meta:
        table = "budget_lease"
        indexes = (Index(fields=("expires_at",)),)


class Price(Model):
    """A price for one model set on one account, in micro-units per million tokens.

    The price in force on an account is, per component, the highest price for
    the model on the account and its ancestors.
    """

    id = fields.BigIntField(primary_key=True)
    account: fields.ForeignKeyRelation[Account] = fields.ForeignKeyField(
        "control.Account", related_name="prices", on_delete=fields.RESTRICT
    )
    account_id: int
    model = fields.CharField(max_length=200)
    input_micros_per_million = fields.BigIntField()
    output_micros_per_million = fields.BigIntField()
    # The account that set the price (its own account or one above): only that account or one
    # above it may change or delete it.
    set_by = fields.BigIntField(null=True)
    create_request_id = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "price"
        unique_together = (("account_id", "model"), ("account_id", "create_request_id"))


class Budget(Model):
    """A limit on one metric over one period, on an account or (``api_key`` set) on one of its keys.

    ``account`` is always set, for a key budget to the key's account, so the
    budgets that apply to a request are one indexed lookup over the key's chain.
    """

    id = fields.BigIntField(primary_key=True)
    account: fields.ForeignKeyRelation[Account] = fields.ForeignKeyField(
        "control.Account", related_name="budgets", on_delete=fields.RESTRICT
    )
    api_key: fields.ForeignKeyNullableRelation[ApiKey] = fields.ForeignKeyField(
        "control.ApiKey", related_name="budgets", null=True, on_delete=fields.RESTRICT
    )
    # ``accounts/7`` or ``apiKeys/9``: one budget per owner, metric and period.
    owner = fields.CharField(max_length=64)
    metric = fields.IntEnumField(BudgetMetric)
    period = fields.IntEnumField(BudgetPeriod)
    limit_amount = fields.BigIntField()
    set_by = fields.BigIntField()
    create_request_id = fields.CharField(max_length=64, null=True)
    # Both from the control plane's clock (never the database's), equal until the first update.
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "budget"
        unique_together = (("owner", "metric", "period"), ("owner", "create_request_id"))
        indexes = (Index(fields=("account_id", "api_key_id")),)


class BudgetCounter(Model):
    """What one budget has spent and holds reserved in one period.

    ``period_index`` is 0 for TOTAL, days since 1970-01-01 for DAILY and
    ``year * 12 + month - 1`` for MONTHLY, all UTC. ``metric`` is copied from the
    budget so a settle can move every counter of a request in one statement.
    """

    id = fields.BigIntField(primary_key=True)
    budget: fields.ForeignKeyRelation[Budget] = fields.ForeignKeyField(
        "control.Budget", related_name="counters", on_delete=fields.CASCADE
    )
    budget_id: int
    period_index = fields.BigIntField()
    metric = fields.IntEnumField(BudgetMetric)
    spent = fields.BigIntField(default=0)
    reserved = fields.BigIntField(default=0)

    class Meta:
        table = "budget_counter"
        unique_together = (("budget_id", "period_index"),)


class Session(Model):
    """A dashboard login: only the SHA-256 of the bearer token is stored."""

    id = fields.BigIntField(primary_key=True)
    token_hash = fields.CharField(max_length=64, unique=True)
    account: fields.ForeignKeyRelation[Account] = fields.ForeignKeyField(
        "control.Account", related_name="sessions", on_delete=fields.CASCADE
    )
    account_id: int
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField(db_index=True)

    class Meta:
        table = "session"


class InstanceValue(Model):
    """Installation-wide values shared by every control replica (page-token key, bootstrap marker)."""

    name = fields.CharField(max_length=64, primary_key=True)
    value = fields.BinaryField()

    class Meta:
        table = "instance_value"


class AuthEpoch(Model):
    """One row whose ``value`` grows with every committed change to what Authorize reads.

    Database triggers on ``account``, ``api_key``, ``budget`` and ``price`` bump it in the
    changing transaction itself (at commit, on PostgreSQL), whichever control replica (or
    administrator's SQL) made the change. A control process caches what it read about a key
    under the epoch it saw first; a different epoch empties its cache.
    """

    id = fields.IntField(primary_key=True)
    value = fields.BigIntField(default=0)

    class Meta:
        table = "auth_epoch"


def ids_on_path(path: str) -> list[int]:
    """The account ids of a materialized ``Account.path`` (``/1/4/9/``), root first."""
    return [int(part) for part in path.strip("/").split("/") if part]
