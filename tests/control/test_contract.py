"""The control plane stays in step with its contract: the proto enums and the committed migrations.

Also pins the columns of every table, so that a column able to hold request or
response content can only be added together with a conscious change here.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from tortoise.context import TortoiseContext
from tortoise.migrations.autodetector import MigrationAutodetector
from tortoise.models import Model

from claudeopus.control import models
from claudeopus.control.db import APP_LABEL, open_database, tortoise_config
from claudeopus.control.domain.errors import Reason
from claudeopus.v1 import accounts_pb2, api_keys_pb2, error_reason_pb2, usage_pb2

# -- enums ---------------------------------------------------------------------


def test_error_reasons_match_the_proto_enum() -> None:
    proto = set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    assert {reason.name for reason in Reason} == proto
    # The value is what goes on the wire as ErrorInfo.reason: it must be the proto name.
    assert all(reason.value == reason.name for reason in Reason)


@pytest.mark.parametrize(
    ("model_enum", "proto_enum", "prefix"),
    [
        (models.Role, accounts_pb2.Role, "ROLE_"),
        (models.AccountState, accounts_pb2.AccountState, "ACCOUNT_STATE_"),
        (models.UsageStatus, usage_pb2.UsageStatus, "USAGE_STATUS_"),
        (models.UsageSource, usage_pb2.UsageSource, "USAGE_SOURCE_"),
        (models.Scope, api_keys_pb2.Scope, "SCOPE_"),
    ],
)
def test_model_enums_match_the_proto_enums(model_enum: type[IntEnum], proto_enum: EnumTypeWrapper, prefix: str) -> None:
    # The model's NONE (only UsageSource has one) is the proto's UNSPECIFIED.
    from_model = {("UNSPECIFIED" if m.name == "NONE" else m.name): m.value for m in model_enum}
    from_proto = {
        name.removeprefix(prefix): value
        for name, value in proto_enum.items()
        if name.startswith(prefix) and name != f"{prefix}UNSPECIFIED"
    }
    assert len(from_proto) == len(proto_enum.keys()) - 1, "a proto value lacks the enum's prefix"
    if "UNSPECIFIED" in from_model:
        from_proto["UNSPECIFIED"] = proto_enum.Value(f"{prefix}UNSPECIFIED")
    assert from_model == from_proto


# -- migrations ----------------------------------------------------------------


@pytest.fixture
async def migrated(database_url: str) -> AsyncIterator[TortoiseContext]:
    async with open_database(database_url) as ctx:
        yield ctx


async def _pending_changes(config: dict[str, Any]) -> list[Any]:
    """What ``tortoise makemigrations`` would write for ``config`` (see tortoise/cli/cli.py)."""
    async with TortoiseContext() as ctx:
        await ctx.init(config=config)
        assert ctx.apps is not None
        return await MigrationAutodetector(ctx.apps, config["apps"]).changes()


async def test_committed_migrations_match_the_models(migrated: TortoiseContext, database_url: str) -> None:
    writers = await _pending_changes(tortoise_config(database_url))
    assert writers == [], "models changed without a migration: run `python -m tortoise makemigrations`"


async def test_the_migration_check_can_fail(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against an empty migrations package the same check reports every model as new."""
    package = f"co_no_migrations_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = copy.deepcopy(tortoise_config(database_url))
    config["apps"][APP_LABEL]["migrations"] = package
    [writer] = await _pending_changes(config)
    created = {getattr(op, "name", None) for op in writer.operations}
    assert {"Account", "ApiKey", "UsageRecord", "InstanceValue"} <= created


# -- columns -------------------------------------------------------------------

# Every column of every table. Usage rows are metadata only: who, which model,
# how many tokens, how long, how it ended. Never a prompt, a completion or a secret.
EXPECTED_COLUMNS: dict[type[Model], set[str]] = {
    models.UsageRecord: {
        "id",
        "request_id",
        "api_key_id",
        "account_id",
        "model",
        "input_tokens",
        "output_tokens",
        "estimated_input_tokens",
        "max_output_tokens",
        "latency_us",
        "status",
        "source",
        "http_status",
        "stream",
        "created_at",
        "settled_at",
        "cost_micros",
        "reserved_cost_micros",
        "reserved_counters",
    },
    # Amounts and counts only: a lease names a key, an account and a model, never content.
    models.BudgetLease: {
        "id",
        "lease_id",
        "api_key_id",
        "account_id",
        "model",
        "unlimited",
        "reserved_counters",
        "granted_input_tokens",
        "granted_output_tokens",
        "granted_cost_micros",
        "open_input_tokens",
        "open_output_tokens",
        "open_cost_micros",
        "requests_opened",
        "requests_admitted",
        "created_at",
        "expires_at",
    },
    models.Budget: {
        "id",
        "account_id",
        "api_key_id",
        "owner",
        "metric",
        "period",
        "limit_amount",
        "set_by",
        "create_request_id",
        "created_at",
        "updated_at",
    },
    models.BudgetCounter: {"id", "budget_id", "period_index", "metric", "spent", "reserved"},
    models.ApiKey: {
        "id",
        "account_id",
        "key_hash",
        "prefix",
        "display_name",
        "scopes",
        "allowed_models",
        "create_request_id",
        "created_at",
        "revoked_at",
        "expires_at",
        "rotated_at",
        "previous_key_hash",
        "previous_expires_at",
        "issued_by",
        "models_set_by",
        "expiry_set_by",
        "scopes_set_by",
        "minted_by_session",
    },
    models.Account: {
        "id",
        "email",
        "display_name",
        "role",
        "parent_id",
        "path",
        "state",
        "password_hash",
        "create_request_id",
        "created_at",
        "updated_at",
        "deleted_at",
        "suspended_by",
        "policy_allowed_models",
        "policy_management_keys",
        "policy_max_key_lifetime_seconds",
        "policy_set_by",
    },
    models.Price: {
        "id",
        "account_id",
        "model",
        "input_micros_per_million",
        "output_micros_per_million",
        "set_by",
        "create_request_id",
        "created_at",
        "updated_at",
    },
    models.Session: {"id", "token_hash", "account_id", "created_at", "expires_at"},
    models.InstanceValue: {"name", "value"},
    models.AuthEpoch: {"id", "value"},
}


def test_every_model_is_pinned() -> None:
    defined = {
        value
        for value in vars(models).values()
        if isinstance(value, type) and issubclass(value, Model) and value is not Model
    }
    assert defined == set(EXPECTED_COLUMNS)


@pytest.mark.parametrize("model", list(EXPECTED_COLUMNS), ids=lambda m: m.__name__)
def test_model_columns_are_exactly_the_expected_ones(model: type[Model]) -> None:
    assert set(model._meta.fields_db_projection.values()) == EXPECTED_COLUMNS[model]


@pytest.mark.parametrize("model", list(EXPECTED_COLUMNS), ids=lambda m: m.__name__)
async def test_migrated_tables_have_exactly_the_expected_columns(migrated: TortoiseContext, model: type[Model]) -> None:
    table = model._meta.db_table
    connection = migrated.db()
    if connection.capabilities.dialect == "sqlite":
        rows = await connection.execute_query_dict(f'PRAGMA table_info("{table}")')
        columns = {row["name"] for row in rows}
    else:
        rows = await connection.execute_query_dict(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = $1",
            [table],
        )
        columns = {row["column_name"] for row in rows}
    assert columns == EXPECTED_COLUMNS[model]
