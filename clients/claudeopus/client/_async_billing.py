"""The async client's usage, price and budget calls (the rest are in :mod:`._client`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime

from claudeopus.client import _requests as build
from claudeopus.client._async_calls import AsyncCalls, pages
from claudeopus.v1 import budgets_pb2, prices_pb2, usage_pb2


class BillingCalls(AsyncCalls):
    """Usage, prices and budgets: part of :class:`~claudeopus.client.AsyncClient`."""

    # -- usage ----------------------------------------------------------------

    async def list_usage_records(
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
        return await self._call(self.usage.ListUsageRecords(request, timeout=self._timeout))

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
    ) -> AsyncIterator[usage_pb2.UsageRecord]:
        """Every matching usage record of the subtree, newest first, fetching pages as needed."""

        async def page(token: str) -> tuple[Iterable[usage_pb2.UsageRecord], str]:
            request = build.list_usage_records(parent, api_key, account, model, start_time, end_time, page_size, token)
            reply = await self._call(self.usage.ListUsageRecords(request, timeout=self._timeout))
            return reply.usage_records, reply.next_page_token

        return pages(page)

    async def summarize_usage(
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
        """Totals by ``group_by`` (any of "api_key", "account", "model") per ``interval`` ("hour", "day", "month")."""
        request = build.summarize_usage(start_time, end_time, group_by, interval, parent, api_key, model)
        return await self._call(self.usage.SummarizeUsage(request, timeout=self._timeout))

    # -- prices ---------------------------------------------------------------

    async def create_price(
        self, *, model: str, input_micros: int, output_micros: int, parent: str = "", request_id: str = ""
    ) -> prices_pb2.Price:
        """Set a price (micro-units per million tokens) for ``model`` on ``parent`` (default: your account)."""
        request = build.create_price(parent, model, input_micros, output_micros, request_id)
        return await self._call(self.prices.CreatePrice(request, timeout=self._timeout))

    async def get_price(self, name: str) -> prices_pb2.Price:
        request = prices_pb2.GetPriceRequest(name=name)
        return await self._call(self.prices.GetPrice(request, timeout=self._timeout))

    async def list_prices(
        self, *, parent: str = "", page_size: int = 0, page_token: str = ""
    ) -> prices_pb2.ListPricesResponse:
        request = prices_pb2.ListPricesRequest(parent=parent, page_size=page_size, page_token=page_token)
        return await self._call(self.prices.ListPrices(request, timeout=self._timeout))

    def iter_prices(self, *, parent: str = "", page_size: int = 0) -> AsyncIterator[prices_pb2.Price]:
        """Every price set on ``parent``, by model, fetching pages as needed."""

        async def page(token: str) -> tuple[Iterable[prices_pb2.Price], str]:
            reply = await self.list_prices(parent=parent, page_size=page_size, page_token=token)
            return reply.prices, reply.next_page_token

        return pages(page)

    async def update_price(
        self, name: str, *, input_micros: int | None = None, output_micros: int | None = None
    ) -> prices_pb2.Price:
        request = build.update_price(name, input_micros, output_micros)
        return await self._call(self.prices.UpdatePrice(request, timeout=self._timeout))

    async def delete_price(self, name: str) -> None:
        request = prices_pb2.DeletePriceRequest(name=name)
        await self._call(self.prices.DeletePrice(request, timeout=self._timeout))

    async def resolve_price(self, *, model: str, account: str = "") -> prices_pb2.ResolvePriceResponse:
        """The price in force for ``model`` on ``account`` (default: yours): the prices set by you or
        below you as ``sources``, everything set above you as one ``inherited`` figure."""
        request = prices_pb2.ResolvePriceRequest(account=account, model=model)
        return await self._call(self.prices.ResolvePrice(request, timeout=self._timeout))

    # -- budgets --------------------------------------------------------------

    async def create_budget(
        self, parent: str, *, metric: str | int, period: str | int, limit: int, request_id: str = ""
    ) -> budgets_pb2.Budget:
        """Set a budget on ``parent``: an account below yours (``accounts/N``) or a key (``apiKeys/N``).

        Keys of your whole subtree may have budgets, your own included. ``metric`` is
        ``input_tokens``, ``output_tokens``, ``total_tokens`` or ``cost_micros``, ``period`` is
        ``total``, ``daily`` or ``monthly`` (upper case and enum numbers work too).
        A budget created mid-period starts with what was already spent in it.

        Example::

            budget = await client.create_budget("accounts/7", metric="cost_micros", period="monthly", limit=50_000_000)
            print(budget.spent, budget.remaining, budget.period_end_time.ToJsonString())
        """
        request = build.create_budget(parent, metric, period, limit, request_id)
        return await self._call(self.budgets.CreateBudget(request, timeout=self._timeout))

    async def get_budget(self, name: str) -> budgets_pb2.Budget:
        """A budget with what is spent and reserved in its current period."""
        request = budgets_pb2.GetBudgetRequest(name=name)
        return await self._call(self.budgets.GetBudget(request, timeout=self._timeout))

    async def list_budgets(
        self, parent: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> budgets_pb2.ListBudgetsResponse:
        """One page of the budgets set on ``parent`` (an account or a key; default: your account)."""
        request = budgets_pb2.ListBudgetsRequest(parent=parent, page_size=page_size, page_token=page_token)
        return await self._call(self.budgets.ListBudgets(request, timeout=self._timeout))

    def iter_budgets(self, parent: str = "", *, page_size: int = 0) -> AsyncIterator[budgets_pb2.Budget]:
        """Every budget set on ``parent``, oldest first, fetching pages as needed.

        Example::

            async for budget in client.iter_budgets("apiKeys/9"):
                print(budget.name, budget.limit, budget.remaining)
        """

        async def page(token: str) -> tuple[Iterable[budgets_pb2.Budget], str]:
            reply = await self.list_budgets(parent, page_size=page_size, page_token=token)
            return reply.budgets, reply.next_page_token

        return pages(page)

    async def update_budget(self, name: str, *, limit: int) -> budgets_pb2.Budget:
        """Change a budget's limit; 0 refuses every further request (the update mask always names ``limit``).

        Example::

            await client.update_budget("budgets/3", limit=0)
        """
        request = build.update_budget(name, limit)
        return await self._call(self.budgets.UpdateBudget(request, timeout=self._timeout))

    async def delete_budget(self, name: str) -> None:
        """Remove a budget; requests already admitted settle normally."""
        request = budgets_pb2.DeleteBudgetRequest(name=name)
        await self._call(self.budgets.DeleteBudget(request, timeout=self._timeout))
