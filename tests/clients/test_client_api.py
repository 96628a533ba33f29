"""The sync and async clients offer the same calls, and build the requests the contract expects."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest

from claudeopus.client import AsyncClient, Client
from claudeopus.client import _requests as build
from claudeopus.v1 import accounts_pb2, api_keys_pb2, prices_pb2, usage_pb2


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_sync_and_async_clients_have_the_same_methods_and_parameters() -> None:
    sync, asynchronous = _public(Client), _public(AsyncClient)
    assert set(sync) == set(asynchronous)
    for name in sync:
        assert list(sync[name].parameters) == list(asynchronous[name].parameters), name


def test_every_rpc_of_the_management_services_has_a_client_method() -> None:
    methods = set(_public(Client))
    rpcs = [
        *accounts_pb2.DESCRIPTOR.services_by_name["AccountService"].methods,
        *api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].methods,
        *usage_pb2.DESCRIPTOR.services_by_name["UsageService"].methods,
        *prices_pb2.DESCRIPTOR.services_by_name["PriceService"].methods,
    ]
    snake = {"".join("_" + c.lower() if c.isupper() else c for c in rpc.name).lstrip("_") for rpc in rpcs}
    assert snake <= methods, snake - methods


def test_update_masks_name_only_the_fields_given() -> None:
    request = build.update_account("accounts/2", None, "new@example.com", None)
    assert list(request.update_mask.paths) == ["email"]
    assert request.account.email == "new@example.com" and request.account.name == "accounts/2"
    request = build.update_api_key("apiKeys/3", None, None, [], None, True)
    assert list(request.update_mask.paths) == ["allowed_models", "expire_time"]
    assert not request.api_key.HasField("expire_time")


def test_an_empty_update_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="nothing to update"):
        build.update_account("accounts/2", None, None, None)
    with pytest.raises(ValueError, match="nothing to update"):
        build.update_api_key("apiKeys/2", None, None, None, None, False)


def test_times_and_durations_are_converted_exactly() -> None:
    moment = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
    request = build.summarize_usage(moment, None, ["model", "api_key"], "day", "", "", "")
    assert request.start_time.ToDatetime(tzinfo=UTC) == moment
    assert list(request.group_by) == [usage_pb2.USAGE_GROUP_MODEL, usage_pb2.USAGE_GROUP_API_KEY]
    assert request.interval == usage_pb2.USAGE_INTERVAL_DAY
    assert not request.HasField("end_time")
    rotate = build.rotate_api_key("apiKeys/1", timedelta(seconds=90))
    assert rotate.grace_period.seconds == 90


@pytest.mark.parametrize(
    "call",
    [
        lambda: build.list_accounts("", 0, "", "Reseller", None),
        lambda: build.list_accounts("", 0, "", None, "Suspended"),
        lambda: build.create_account("a@b.co", "superuser", "", "", ""),
        lambda: build.create_api_key("", "", ["everything"], [], None, ""),
        lambda: build.summarize_usage(datetime.now(UTC), None, ["models"], None, "", "", ""),
        lambda: build.summarize_usage(datetime.now(UTC), None, [], "days", "", "", ""),
    ],
)
def test_unknown_enum_names_are_refused_not_widened(call: object) -> None:
    with pytest.raises(ValueError, match="unknown"):
        call()  # type: ignore[operator]
