"""The control plane's gRPC surface, served in-process by the real ``ControlServer``.

Errors are checked on the wire: status code, ``google.rpc.ErrorInfo`` (domain
``claudeopus``) and, for INVALID_ARGUMENT, ``google.rpc.BadRequest``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from claudeopus import keys
from claudeopus.client import (
    ClaudeOpusClient,
    ClaudeOpusError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from claudeopus.control.domain import passwords
from claudeopus.control.server import ControlServer
from claudeopus.control.settings import ControlSettings
from claudeopus.edge.completions import parse_completion
from claudeopus.edge.metering.grpc_control import GrpcControl
from claudeopus.edge.metering.port import AuthorizeCall
from claudeopus.edge.metering.refusals import openai_error
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    error_reason_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.support.control_server import InProcessControl, in_process_control
from tests.support.rpc import Metadata, assert_error, bearer, error_info, field_violations, rpc_error


@pytest.fixture
async def control(database_url: str) -> AsyncIterator[InProcessControl]:
    async with in_process_control(database_url) as running:
        yield running


async def new_user_key(
    control: InProcessControl, *scopes: str, allowed_models: tuple[str, ...] = ()
) -> tuple[str, str, str]:
    """A fresh user with one key: (account name, key name, secret)."""
    async with control.admin_client() as client:
        account = await client.create_account(email=f"u-{secrets.token_hex(4)}@example.com", role="user")
        created = await client.create_api_key(
            parent=account.name, scopes=scopes or ("inference",), allowed_models=allowed_models
        )
    return account.name, created.api_key.name, created.secret


# -- errors --------------------------------------------------------------------


async def test_invalid_argument_carries_error_info_and_bad_request(control: InProcessControl) -> None:
    stub = accounts_pb2_grpc.AccountServiceStub(control.channel)
    request = accounts_pb2.CreateAccountRequest(
        account=accounts_pb2.Account(email="not-an-email", role=accounts_pb2.ROLE_USER)
    )
    error = await rpc_error(stub.CreateAccount(request, metadata=bearer(control.admin_secret)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert list(field_violations(error)) == ["account.email"]

    # The thin client surfaces the same reason and violations.
    async with control.admin_client() as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.create_account(email="not-an-email", role="user")
    assert caught.value.reason == "FIELD_INVALID"
    assert list(caught.value.field_violations) == ["account.email"]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_domain_errors_map_to_codes_and_reasons(control: InProcessControl) -> None:
    accounts = accounts_pb2_grpc.AccountServiceStub(control.channel)
    admin = bearer(control.admin_secret)

    error = await rpc_error(accounts.GetAccount(accounts_pb2.GetAccountRequest(name="accounts/999999"), metadata=admin))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")

    error = await rpc_error(accounts.GetAccount(accounts_pb2.GetAccountRequest(name="users/1"), metadata=admin))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert list(field_violations(error)) == ["name"]

    taken = accounts_pb2.CreateAccountRequest(
        account=accounts_pb2.Account(email="root@example.com", role=accounts_pb2.ROLE_USER)
    )
    error = await rpc_error(accounts.CreateAccount(taken, metadata=admin))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "RESOURCE_EXISTS")

    error = await rpc_error(accounts.BootstrapAdmin(accounts_pb2.BootstrapAdminRequest(email="again@example.com")))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "ADMIN_EXISTS")

    async with control.admin_client() as client:
        with pytest.raises(NotFoundError) as caught:
            await client.get_api_key("apiKeys/424242")
    assert caught.value.reason == "RESOURCE_NOT_FOUND"


async def test_gateway_requires_the_service_token(control: InProcessControl) -> None:
    gateway = gateway_pb2_grpc.GatewayServiceStub(control.channel)
    _, _, secret = await new_user_key(control)
    request = gateway_pb2.VerifyApiKeyRequest(key_hash=keys.hash_secret_bytes(secret))

    for metadata in (
        (),
        bearer(control.admin_secret),
        bearer(secret),
        bearer(control.service_token + "x"),
        (("authorization", control.service_token),),
    ):
        error = await rpc_error(gateway.VerifyApiKey(request, metadata=metadata))
        assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "SERVICE_CREDENTIAL_INVALID")

    authorize = gateway_pb2.AuthorizeRequest(
        request_id=str(uuid.uuid4()), key_hash=keys.hash_secret_bytes(secret), model="m-1"
    )
    error = await rpc_error(gateway.Authorize(authorize, metadata=bearer(control.admin_secret)))
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "SERVICE_CREDENTIAL_INVALID")

    reply = await gateway.VerifyApiKey(request, metadata=bearer(control.service_token))
    assert reply.api_key.startswith("apiKeys/")


async def test_management_calls_need_a_management_key(control: InProcessControl) -> None:
    accounts = accounts_pb2_grpc.AccountServiceStub(control.channel)
    api_keys = api_keys_pb2_grpc.ApiKeyServiceStub(control.channel)
    usage = usage_pb2_grpc.UsageServiceStub(control.channel)
    _, key_name, inference_secret = await new_user_key(control)

    def calls(metadata: Metadata) -> list[Awaitable[object]]:
        return [
            accounts.GetAccount(accounts_pb2.GetAccountRequest(name=control.admin.name), metadata=metadata),
            api_keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=key_name), metadata=metadata),
            usage.ListUsageRecords(usage_pb2.ListUsageRecordsRequest(), metadata=metadata),
        ]

    for call in calls(()):
        assert_error(await rpc_error(call), grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_MISSING")
    for call in calls(bearer(keys.new_secret())):
        assert_error(await rpc_error(call), grpc.StatusCode.UNAUTHENTICATED, "KEY_INVALID")
    for call in calls(bearer(control.service_token)):
        assert_error(await rpc_error(call), grpc.StatusCode.UNAUTHENTICATED, "KEY_INVALID")
    for call in calls(bearer(inference_secret)):
        assert_error(await rpc_error(call), grpc.StatusCode.PERMISSION_DENIED, "KEY_SCOPE_DENIED")

    # A revoked management key stops working at once.
    async with control.admin_client() as client:
        created = await client.create_api_key(scopes=("management",))
        async with ClaudeOpusClient(control.target, key=created.secret) as second:
            assert (await second.get_account(control.admin.name)).name == control.admin.name
        await client.revoke_api_key(created.api_key.name)
    for call in calls(bearer(created.secret)):
        assert_error(await rpc_error(call), grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")


# -- health and reflection -----------------------------------------------------


async def test_health_reports_serving(control: InProcessControl) -> None:
    health = health_pb2_grpc.HealthStub(control.channel)
    for service in ("", "claudeopus.v1.GatewayService", "claudeopus.v1.AccountService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    error = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(control: InProcessControl) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(control.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    responses = [response async for response in call]
    assert len(responses) == 1
    names = {service.name for service in responses[0].list_services_response.service}
    assert {name for name in names if name.startswith("claudeopus.")} == {
        "claudeopus.v1.AccountService",
        "claudeopus.v1.ApiKeyService",
        "claudeopus.v1.BudgetService",
        "claudeopus.v1.GatewayService",
        "claudeopus.v1.PriceService",
        "claudeopus.v1.UsageService",
    }
    assert "grpc.health.v1.Health" in names


async def test_a_resource_name_with_a_unicode_digit_is_invalid_argument(control: InProcessControl) -> None:
    accounts = accounts_pb2_grpc.AccountServiceStub(control.channel)
    request = accounts_pb2.GetAccountRequest(name="accounts/\u00b2")  # SUPERSCRIPT TWO: isdigit() but not int()
    error = await rpc_error(accounts.GetAccount(request, metadata=bearer(control.admin_secret)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert list(field_violations(error)) == ["name"]


# -- the edge's round trip -----------------------------------------------------


async def test_authorize_settle_then_list_usage(control: InProcessControl) -> None:
    account_name, key_name, secret = await new_user_key(control, allowed_models=("m-1",))
    gateway = gateway_pb2_grpc.GatewayServiceStub(control.channel)
    service = bearer(control.service_token)
    request_id = str(uuid.uuid4())

    refused = await rpc_error(
        gateway.Authorize(
            gateway_pb2.AuthorizeRequest(
                request_id=str(uuid.uuid4()), key_hash=keys.hash_secret_bytes(secret), model="m-2"
            ),
            metadata=service,
        )
    )
    assert_error(refused, grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_ALLOWED")

    authorized = await gateway.Authorize(
        gateway_pb2.AuthorizeRequest(
            request_id=request_id,
            key_hash=keys.hash_secret_bytes(secret),
            model="m-1",
            estimated_input_tokens=12,
            max_output_tokens=34,
            stream=True,
        ),
        metadata=service,
    )
    assert (authorized.api_key, authorized.account) == (key_name, account_name)
    assert authorized.HasField("reserve_time")

    settle = gateway_pb2.SettleRequest(
        request_id=request_id,
        input_tokens=15,
        output_tokens=27,
        latency=duration_pb2.Duration(seconds=1, nanos=250_000_000),
        status=usage_pb2.USAGE_STATUS_SUCCEEDED,
        source=usage_pb2.USAGE_SOURCE_REPORTED,
        http_status=200,
    )
    settled = await gateway.Settle(settle, metadata=service)
    assert settled.already_settled is False
    assert (settled.usage_record.input_tokens, settled.usage_record.output_tokens) == (15, 27)

    settle.input_tokens, settle.output_tokens = 999, 999
    repeated = await gateway.Settle(settle, metadata=service)
    assert repeated.already_settled is True
    assert (repeated.usage_record.input_tokens, repeated.usage_record.output_tokens) == (15, 27)

    unknown = gateway_pb2.SettleRequest()
    unknown.CopyFrom(settle)
    unknown.request_id = str(uuid.uuid4())
    error = await rpc_error(gateway.Settle(unknown, metadata=service))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")

    async with control.admin_client() as client:
        page = await client.list_usage_records(api_key=key_name)
    [record] = page.usage_records
    assert page.next_page_token == ""
    assert record.name == f"usageRecords/{request_id}"
    assert (record.request_id, record.api_key, record.account, record.model) == (
        request_id,
        key_name,
        account_name,
        "m-1",
    )
    assert (record.input_tokens, record.output_tokens, record.http_status) == (15, 27, 200)
    assert record.status == usage_pb2.USAGE_STATUS_SUCCEEDED
    assert record.source == usage_pb2.USAGE_SOURCE_REPORTED
    assert record.latency.ToMicroseconds() == 1_250_000
    assert record.HasField("settle_time")
    assert record.settle_time.ToDatetime() >= record.create_time.ToDatetime()


# -- bootstrap from loopback ---------------------------------------------------


async def test_a_fresh_control_bootstraps_only_with_the_token_from_its_0600_file(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A local process racing the operator to BootstrapAdmin gets nothing without the token file's content."""
    caplog.set_level(logging.DEBUG, logger="claudeopus")
    token_file = tmp_path / "private" / "bootstrap.token"
    old_umask = os.umask(0o000)  # the file is owner-only whatever the umask
    try:
        settings = ControlSettings(
            grpc_address="127.0.0.1:0",
            database_url=database_url,
            service_token=secrets.token_urlsafe(32),
            bootstrap_token_file=str(token_file),
        )
        server = ControlServer(settings)
        await server.__aenter__()
    finally:
        os.umask(old_umask)
    try:
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.parent.stat().st_mode & 0o777 == 0o700
        token = token_file.read_text().strip()
        assert token == server.bootstrap_token and token.startswith("co-bootstrap-")
        assert str(token_file) in caplog.text and token not in caplog.text  # the path is logged, never the token
        async with ClaudeOpusClient(f"127.0.0.1:{server.port}") as racer:
            for guess in ("", "co-bootstrap-" + "A" * 43, token + "x"):
                with pytest.raises(ClaudeOpusError) as caught:
                    await racer.bootstrap_admin("attacker@example.com", "Me", token=guess)
                assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
                assert caught.value.reason == "BOOTSTRAP_TOKEN_INVALID"
            boot = await racer.bootstrap_admin("root@example.com", "Root", token=token)
            assert boot.account.email == "root@example.com"
            assert not token_file.exists(), "the token is used up: its file is gone"
            with pytest.raises(ClaudeOpusError) as caught:
                await racer.bootstrap_admin("attacker@example.com", "Me", token=token)
            assert caught.value.reason == "ADMIN_EXISTS"
    finally:
        await server.__aexit__(None, None, None)
    # A restart with an admin writes no token file.
    async with ControlServer(settings) as again:
        assert again.bootstrap_token is None and not token_file.exists()


async def test_a_busy_method_is_refused_while_the_gateway_keeps_serving(database_url: str) -> None:
    """Login calls beyond CLAUDEOPUS_LOGIN_CONCURRENCY are refused at once; Authorize is never bounded."""
    entered, release = threading.Event(), threading.Event()
    real_verify = passwords._verify

    def slow_verify(stored: str, password: str) -> bool:
        entered.set()
        release.wait(30)
        return real_verify(stored, password)

    token = secrets.token_urlsafe(32)
    settings = ControlSettings(
        grpc_address="127.0.0.1:0", database_url=database_url, service_token=token, login_concurrency=1
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "_verify", slow_verify)
        async with ControlServer(settings) as server:
            target = f"127.0.0.1:{server.port}"
            async with ClaudeOpusClient(target) as anonymous:
                boot = await anonymous.bootstrap_admin("root@example.com", token=server.bootstrap_token or "")
                first = asyncio.ensure_future(anonymous.login("root@example.com", "x" * 12))
                await asyncio.to_thread(entered.wait, 30)
                with pytest.raises(ClaudeOpusError) as caught:
                    await anonymous.login("root@example.com", "y" * 12)
                assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert caught.value.reason == "RATE_LIMITED"
                assert isinstance(caught.value, ResourceExhaustedError) and caught.value.retry_after
                # Management and the gateway still answer while Login is saturated.
                async with ClaudeOpusClient(target, key=boot.secret) as admin:
                    account = await admin.create_account(email="u@example.com", role="user")
                    created = await admin.create_api_key(parent=account.name)
                    await admin.create_price(model="m-1", input_micros=0, output_micros=0)  # only priced models
                async with grpc.aio.insecure_channel(target) as channel:
                    request = gateway_pb2.VerifyApiKeyRequest(key_hash=keys.hash_secret_bytes(created.secret))
                    reply = await gateway_pb2_grpc.GatewayServiceStub(channel).VerifyApiKey(
                        request, metadata=bearer(token)
                    )
                    assert reply.account == account.name
                release.set()
                with pytest.raises(ClaudeOpusError) as caught:
                    await first
                assert caught.value.reason == "LOGIN_FAILED"


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_bootstrap_is_accepted_over_ipv6_loopback(database_url: str) -> None:
    settings = ControlSettings(
        grpc_address="[::1]:0", database_url=database_url, service_token=secrets.token_urlsafe(32)
    )
    async with ControlServer(settings) as server, ClaudeOpusClient(f"[::1]:{server.port}") as client:
        boot = await client.bootstrap_admin("root@example.com", token=server.bootstrap_token or "")
    assert boot.account.role == accounts_pb2.ROLE_ADMIN


async def test_bytes_that_are_no_protobuf_message_are_invalid_argument(control: InProcessControl) -> None:
    call = control.channel.unary_unary(
        "/claudeopus.v1.AccountService/GetAccount",
        request_serializer=lambda raw: raw,
        response_deserializer=accounts_pb2.Account.FromString,
    )
    error = await rpc_error(call(b"\xff\xff\xff", metadata=bearer(control.admin_secret)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "FIELD_INVALID"
    assert "not a valid protobuf message" in (error.details() or "")
    # A well-formed call on the same channel still works.
    good = await accounts_pb2_grpc.AccountServiceStub(control.channel).GetAccount(
        accounts_pb2.GetAccountRequest(name=control.admin.name), metadata=bearer(control.admin_secret)
    )
    assert good.name == control.admin.name


async def test_batch_settle_answers_each_entry_and_wants_the_service_token(control: InProcessControl) -> None:
    _, key_name, secret = await new_user_key(control)
    gateway = gateway_pb2_grpc.GatewayServiceStub(control.channel)
    service = bearer(control.service_token)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for request_id in ids:
        await gateway.Authorize(
            gateway_pb2.AuthorizeRequest(request_id=request_id, key_hash=keys.hash_secret_bytes(secret), model="m-1"),
            metadata=service,
        )

    def settle(request_id: str, tokens: int) -> gateway_pb2.SettleRequest:
        return gateway_pb2.SettleRequest(
            request_id=request_id,
            input_tokens=tokens,
            output_tokens=2 * tokens,
            latency=duration_pb2.Duration(nanos=5_000_000),
            status=usage_pb2.USAGE_STATUS_SUCCEEDED,
            source=usage_pb2.USAGE_SOURCE_REPORTED,
            http_status=200,
        )

    batch = gateway_pb2.BatchSettleRequest(
        requests=[settle(ids[0], 3), settle(str(uuid.uuid4()), 1), settle(ids[1], 4)]
    )
    for metadata in ((), bearer(control.admin_secret), bearer(secret)):
        error = await rpc_error(gateway.BatchSettle(batch, metadata=metadata))
        assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "SERVICE_CREDENTIAL_INVALID")

    first, unknown, second = (await gateway.BatchSettle(batch, metadata=service)).results
    assert (first.request_id, first.already_settled, first.error_code) == (ids[0], False, 0)
    assert (second.request_id, second.already_settled, second.error_code) == (ids[1], False, 0)
    assert unknown.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert unknown.error_reason == error_reason_pb2.RESERVATION_NOT_FOUND
    assert unknown.error_message == "No authorized request has this request_id."
    repeated = (await gateway.BatchSettle(batch, metadata=service)).results
    assert [r.already_settled for r in repeated] == [True, False, True]

    too_many = gateway_pb2.BatchSettleRequest(requests=[settle(str(uuid.uuid4()), 1)] * 1001)
    error = await rpc_error(gateway.BatchSettle(too_many, metadata=service))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")

    async with control.admin_client() as client:
        page = await client.list_usage_records(api_key=key_name)
    assert sorted((r.input_tokens, r.output_tokens) for r in page.usage_records) == [(3, 6), (4, 8)]
    assert {r.latency.ToMicroseconds() for r in page.usage_records} == {5000}


async def test_batch_authorize_answers_each_entry_and_the_edge_reads_each_answer(control: InProcessControl) -> None:
    _, key_name, secret = await new_user_key(control, allowed_models=("m-1",))
    gateway = gateway_pb2_grpc.GatewayServiceStub(control.channel)
    service = bearer(control.service_token)
    key_hash = keys.hash_secret_bytes(secret)

    def authorize(model: str, request_id: str | None = None) -> gateway_pb2.AuthorizeRequest:
        return gateway_pb2.AuthorizeRequest(
            request_id=request_id or str(uuid.uuid4()), key_hash=key_hash, model=model, estimated_input_tokens=40
        )

    batch = gateway_pb2.BatchAuthorizeRequest(requests=[authorize("m-1"), authorize("m-2"), authorize("m" * 201)])
    for metadata in ((), bearer(control.admin_secret), bearer(secret)):
        error = await rpc_error(gateway.BatchAuthorize(batch, metadata=metadata))
        assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "SERVICE_CREDENTIAL_INVALID")

    ok, other_model, bad_model = (await gateway.BatchAuthorize(batch, metadata=service)).results
    assert (ok.request_id, ok.error_code, ok.response.api_key) == (batch.requests[0].request_id, 0, key_name)
    assert ok.response.max_output_tokens == 0, "no budget: no cap sent upstream"
    assert other_model.error_code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert other_model.error_reason == error_reason_pb2.MODEL_NOT_ALLOWED
    assert other_model.error_message == "This API key may not use the model 'm-2'."
    assert bad_model.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad_model.error_reason == error_reason_pb2.FIELD_INVALID
    assert list(bad_model.field_violations) == ["model"]

    too_many = gateway_pb2.BatchAuthorizeRequest(requests=[authorize("m-1") for _ in range(1001)])
    error = await rpc_error(gateway.BatchAuthorize(too_many, metadata=service))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")

    # The edge's client reads the same answers as the typed errors a single call would raise.
    edge = GrpcControl(control.channel, control.service_token, timeout=10)
    body = b'{"model": "m-2", "messages": [{"role": "user", "content": "hi"}]}'
    completion = parse_completion(body)
    calls = [AuthorizeCall(str(uuid.uuid4()), key_hash, completion), AuthorizeCall("bad-id", key_hash, completion)]
    refused, invalid = await edge.authorize_batch(calls)
    assert isinstance(refused, ClaudeOpusError) and isinstance(invalid, InvalidArgumentError)
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_ALLOWED")
    assert list(invalid.field_violations) == ["request_id"]
    openai = openai_error(refused)
    assert (openai.status, openai.code, openai.param) == (403, "model_not_allowed", "model")

    async with control.admin_client() as client:
        page = await client.list_usage_records(api_key=key_name)
    assert [r.request_id for r in page.usage_records] == [batch.requests[0].request_id]
