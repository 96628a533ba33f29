"""Client: the blocking twin of AsyncClient, for scripts and shells."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc

from claudeopus import tls
from claudeopus.client import _requests as build
from claudeopus.client._errors import from_rpc_error
from claudeopus.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    budgets_pb2,
    budgets_pb2_grpc,
    prices_pb2,
    prices_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0


class Client:
    """A blocking client for the management API, with the same methods as :class:`AsyncClient`.

    Example::

        with Client("127.0.0.1:50051", key="sk-co-...") as client:
            user = client.create_account(email="ann@example.com", role="user")
            print(client.create_api_key(parent=user.name).secret)  # shown once
            for record in client.iter_usage_records(account=user.name):
                print(record.model, record.output_tokens)

        # over TLS: the CA that signed control's certificate, and a client certificate if required
        with Client("control.internal:50051", key="sk-co-...", tls_ca="ca.pem",
                    tls_cert="admin.pem", tls_key="admin.key") as client:
            print(client.get_account("accounts/1").email)
    """

    def __init__(
        self,
        target: str,
        *,
        key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls_ca: tls.PathLike | None = None,
        tls_cert: tls.PathLike | None = None,
        tls_key: tls.PathLike | None = None,
        insecure: bool = False,
    ) -> None:
        if tls_ca or tls_cert or tls_key:
            if credentials is not None:
                raise ValueError("pass either credentials or tls_ca / tls_cert / tls_key, not both")
            credentials = tls.channel_credentials(tls_ca, tls_cert, tls_key)
        if credentials is None:
            tls.check_plain_text(target, insecure=insecure)
        if credentials is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._timeout = timeout
        self.accounts = accounts_pb2_grpc.AccountServiceStub(self._channel)
        self.api_keys = api_keys_pb2_grpc.ApiKeyServiceStub(self._channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(self._channel)
        self.prices = prices_pb2_grpc.PriceServiceStub(self._channel)
        self.budgets = budgets_pb2_grpc.BudgetServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # -- accounts -------------------------------------------------------------

    def bootstrap_admin(
        self, email: str, display_name: str = "", *, token: str = ""
    ) -> accounts_pb2.BootstrapAdminResponse:
        return self._call(self.accounts.BootstrapAdmin, build.bootstrap_admin(email, display_name, token))

    def login(self, email: str, password: str) -> accounts_pb2.LoginResponse:
        return self._call(self.accounts.Login, accounts_pb2.LoginRequest(email=email, password=password))

    def create_account(
        self, *, email: str, role: str = "user", display_name: str = "", parent: str = "", request_id: str = ""
    ) -> accounts_pb2.Account:
        request = build.create_account(email, role, display_name, parent, request_id)
        return self._call(self.accounts.CreateAccount, request)

    def get_account(self, name: str) -> accounts_pb2.Account:
        return self._call(self.accounts.GetAccount, accounts_pb2.GetAccountRequest(name=name))

    def list_accounts(
        self,
        *,
        parent: str = "",
        role: str | None = None,
        state: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> accounts_pb2.ListAccountsResponse:
        request = build.list_accounts(parent, page_size, page_token, role, state)
        return self._call(self.accounts.ListAccounts, request)

    def iter_accounts(
        self, *, parent: str = "", role: str | None = None, state: str | None = None, page_size: int = 0
    ) -> Iterator[accounts_pb2.Account]:
        def page(token: str) -> tuple[Iterable[accounts_pb2.Account], str]:
            reply = self.list_accounts(parent=parent, role=role, state=state, page_size=page_size, page_token=token)
            return reply.accounts, reply.next_page_token

        return _pages(page)

    def update_account(
        self, name: str, *, display_name: str | None = None, email: str | None = None, role: str | None = None
    ) -> accounts_pb2.Account:
        return self._call(self.accounts.UpdateAccount, build.update_account(name, display_name, email, role))

    def delete_account(self, name: str) -> None:
        self._call(self.accounts.DeleteAccount, accounts_pb2.DeleteAccountRequest(name=name))

    def suspend_account(self, name: str) -> accounts_pb2.Account:
        return self._call(self.accounts.SuspendAccount, accounts_pb2.SuspendAccountRequest(name=name))

    def resume_account(self, name: str) -> accounts_pb2.Account:
        return self._call(self.accounts.ResumeAccount, accounts_pb2.ResumeAccountRequest(name=name))

    def set_password(self, password: str, *, name: str = "", current_password: str = "") -> None:
        request = accounts_pb2.SetPasswordRequest(name=name, password=password, current_password=current_password)
        self._call(self.accounts.SetPassword, request)

    def logout(self) -> None:
        self._call(self.accounts.Logout, accounts_pb2.LogoutRequest())

    def set_account_policy(
        self,
        name: str,
        *,
        allowed_models: Iterable[str] | None = None,
        deny_management_keys: bool | None = None,
        max_key_lifetime: timedelta | None = None,
        clear_max_key_lifetime: bool = False,
    ) -> accounts_pb2.Account:
        """Set the key policy of an account below the caller; only the fields given change."""
        request = build.set_account_policy(
            name, allowed_models, deny_management_keys, max_key_lifetime, clear_max_key_lifetime
        )
        return self._call(self.accounts.SetAccountPolicy, request)

    # -- API keys -------------------------------------------------------------

    def create_api_key(
        self,
        *,
        parent: str = "",
        display_name: str = "",
        scopes: Iterable[str] = ("inference",),
        allowed_models: Iterable[str] = (),
        expire_time: datetime | None = None,
        request_id: str = "",
    ) -> api_keys_pb2.CreateApiKeyResponse:
        request = build.create_api_key(parent, display_name, scopes, allowed_models, expire_time, request_id)
        return self._call(self.api_keys.CreateApiKey, request)

    def get_api_key(self, name: str) -> api_keys_pb2.ApiKey:
        return self._call(self.api_keys.GetApiKey, api_keys_pb2.GetApiKeyRequest(name=name))

    def list_api_keys(
        self, *, parent: str = "", show_revoked: bool = False, page_size: int = 0, page_token: str = ""
    ) -> api_keys_pb2.ListApiKeysResponse:
        request = api_keys_pb2.ListApiKeysRequest(
            parent=parent, show_revoked=show_revoked, page_size=page_size, page_token=page_token
        )
        return self._call(self.api_keys.ListApiKeys, request)

    def iter_api_keys(
        self, *, parent: str = "", show_revoked: bool = False, page_size: int = 0
    ) -> Iterator[api_keys_pb2.ApiKey]:
        def page(token: str) -> tuple[Iterable[api_keys_pb2.ApiKey], str]:
            reply = self.list_api_keys(parent=parent, show_revoked=show_revoked, page_size=page_size, page_token=token)
            return reply.api_keys, reply.next_page_token

        return _pages(page)

    def update_api_key(
        self,
        name: str,
        *,
        display_name: str | None = None,
        scopes: Iterable[str] | None = None,
        allowed_models: Iterable[str] | None = None,
        expire_time: datetime | None = None,
        clear_expiry: bool = False,
    ) -> api_keys_pb2.ApiKey:
        request = build.update_api_key(name, display_name, scopes, allowed_models, expire_time, clear_expiry)
        return self._call(self.api_keys.UpdateApiKey, request)

    def revoke_api_key(self, name: str) -> api_keys_pb2.ApiKey:
        return self._call(self.api_keys.RevokeApiKey, api_keys_pb2.RevokeApiKeyRequest(name=name))

    def rotate_api_key(self, name: str, *, grace_period: timedelta | None = None) -> api_keys_pb2.RotateApiKeyResponse:
        return self._call(self.api_keys.RotateApiKey, build.rotate_api_key(name, grace_period))

    # -- usage ----------------------------------------------------------------

    def list_usage_records(
        self,
        *,
        parent: str = "",
        api_key: str = "",
        account: str = "",
        model: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> usage_pb2.ListUsageRecordsResponse:
        request = build.list_usage_records(parent, api_key, account, model, start_time, end_time, page_size, page_token)
        return self._call(self.usage.ListUsageRecords, request)

    def iter_usage_records(
        self,
        *,
        parent: str = "",
        api_key: str = "",
        account: str = "",
        model: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
    ) -> Iterator[usage_pb2.UsageRecord]:
        def page(token: str) -> tuple[Iterable[usage_pb2.UsageRecord], str]:
            request = build.list_usage_records(parent, api_key, account, model, start_time, end_time, page_size, token)
            reply = self._call(self.usage.ListUsageRecords, request)
            return reply.usage_records, reply.next_page_token

        return _pages(page)

    def summarize_usage(
        self,
        *,
        start_time: datetime,
        end_time: datetime | None = None,
        group_by: Iterable[str] = (),
        interval: str | None = None,
        parent: str = "",
        api_key: str = "",
        model: str = "",
    ) -> usage_pb2.SummarizeUsageResponse:
        request = build.summarize_usage(start_time, end_time, group_by, interval, parent, api_key, model)
        return self._call(self.usage.SummarizeUsage, request)

    # -- prices ---------------------------------------------------------------

    def create_price(
        self, *, model: str, input_micros: int, output_micros: int, parent: str = "", request_id: str = ""
    ) -> prices_pb2.Price:
        request = build.create_price(parent, model, input_micros, output_micros, request_id)
        return self._call(self.prices.CreatePrice, request)

    def get_price(self, name: str) -> prices_pb2.Price:
        return self._call(self.prices.GetPrice, prices_pb2.GetPriceRequest(name=name))

    def list_prices(
        self, *, parent: str = "", page_size: int = 0, page_token: str = ""
    ) -> prices_pb2.ListPricesResponse:
        request = prices_pb2.ListPricesRequest(parent=parent, page_size=page_size, page_token=page_token)
        return self._call(self.prices.ListPrices, request)

    def iter_prices(self, *, parent: str = "", page_size: int = 0) -> Iterator[prices_pb2.Price]:
        def page(token: str) -> tuple[Iterable[prices_pb2.Price], str]:
            reply = self.list_prices(parent=parent, page_size=page_size, page_token=token)
            return reply.prices, reply.next_page_token

        return _pages(page)

    def update_price(
        self, name: str, *, input_micros: int | None = None, output_micros: int | None = None
    ) -> prices_pb2.Price:
        return self._call(self.prices.UpdatePrice, build.update_price(name, input_micros, output_micros))

    def delete_price(self, name: str) -> None:
        self._call(self.prices.DeletePrice, prices_pb2.DeletePriceRequest(name=name))

    def resolve_price(self, *, model: str, account: str = "") -> prices_pb2.ResolvePriceResponse:
        return self._call(self.prices.ResolvePrice, prices_pb2.ResolvePriceRequest(account=account, model=model))

    # -- budgets --------------------------------------------------------------

    def create_budget(
        self, parent: str, *, metric: str | int, period: str | int, limit: int, request_id: str = ""
    ) -> budgets_pb2.Budget:
        """Set a budget on an account below yours or a key of your subtree.

        Example::

            budget = client.create_budget("apiKeys/9", metric="total_tokens", period="daily", limit=100_000)
        """
        return self._call(self.budgets.CreateBudget, build.create_budget(parent, metric, period, limit, request_id))

    def get_budget(self, name: str) -> budgets_pb2.Budget:
        return self._call(self.budgets.GetBudget, budgets_pb2.GetBudgetRequest(name=name))

    def list_budgets(
        self, parent: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> budgets_pb2.ListBudgetsResponse:
        request = budgets_pb2.ListBudgetsRequest(parent=parent, page_size=page_size, page_token=page_token)
        return self._call(self.budgets.ListBudgets, request)

    def iter_budgets(self, parent: str = "", *, page_size: int = 0) -> Iterator[budgets_pb2.Budget]:
        """Every budget set on ``parent``, oldest first.

        Example::

            for budget in client.iter_budgets("accounts/7"):
                print(budget.name, budget.spent, budget.remaining)
        """

        def page(token: str) -> tuple[Iterable[budgets_pb2.Budget], str]:
            reply = self.list_budgets(parent, page_size=page_size, page_token=token)
            return reply.budgets, reply.next_page_token

        return _pages(page)

    def update_budget(self, name: str, *, limit: int) -> budgets_pb2.Budget:
        """Change a budget's limit; ``limit=0`` works (the update mask always names ``limit``)."""
        return self._call(self.budgets.UpdateBudget, build.update_budget(name, limit))

    def delete_budget(self, name: str) -> None:
        self._call(self.budgets.DeleteBudget, budgets_pb2.DeleteBudgetRequest(name=name))


def _pages(fetch: Callable[[str], tuple[Iterable[T], str]]) -> Iterator[T]:
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return
