"""BudgetService: spending limits on accounts and keys."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from claudeopus.control.domain import budget_owners, budgets
from claudeopus.control.domain.clock import Clock
from claudeopus.control.domain.names import BUDGETS, parse_id
from claudeopus.control.domain.paging import PageTokenCodec
from claudeopus.control.services import convert
from claudeopus.control.services.auth import management_principal
from claudeopus.control.services.errors import rpc
from claudeopus.control.services.masks import update_paths
from claudeopus.v1 import budgets_pb2, budgets_pb2_grpc

Ctx = grpc.aio.ServicerContext


class BudgetServicer(budgets_pb2_grpc.BudgetServiceServicer):
    def __init__(self, codec: PageTokenCodec, clock: Clock) -> None:
        self._codec = codec
        self._clock = clock

    @rpc
    async def CreateBudget(
        self, request: budgets_pb2.CreateBudgetRequest, context: Ctx[object, object]
    ) -> budgets_pb2.Budget:
        now = self._clock()
        principal = await management_principal(context, now)
        view = await budgets.create_budget(
            principal,
            owner=await budget_owners.resolve_owner(principal, "parent", request.parent),
            metric=request.budget.metric,
            period=request.budget.period,
            limit=request.budget.limit,
            request_id=request.request_id,
            now=now,
        )
        return convert.budget(view, principal)

    @rpc
    async def GetBudget(
        self, request: budgets_pb2.GetBudgetRequest, context: Ctx[object, object]
    ) -> budgets_pb2.Budget:
        now = self._clock()
        principal = await management_principal(context, now)
        view = await budgets.get_budget(principal, parse_id("name", BUDGETS, request.name), now)
        return convert.budget(view, principal)

    @rpc
    async def ListBudgets(
        self, request: budgets_pb2.ListBudgetsRequest, context: Ctx[object, object]
    ) -> budgets_pb2.ListBudgetsResponse:
        now = self._clock()
        principal = await management_principal(context, now)
        page = await budgets.list_budgets(
            principal,
            self._codec,
            owner=await budget_owners.resolve_owner(principal, "parent", request.parent),
            size=request.page_size,
            token=request.page_token,
            now=now,
        )
        return budgets_pb2.ListBudgetsResponse(
            budgets=[convert.budget(view, principal) for view in page.budgets], next_page_token=page.next_page_token
        )

    @rpc
    async def UpdateBudget(
        self, request: budgets_pb2.UpdateBudgetRequest, context: Ctx[object, object]
    ) -> budgets_pb2.Budget:
        now = self._clock()
        principal = await management_principal(context, now)
        view = await budgets.update_budget(
            principal,
            parse_id("budget.name", BUDGETS, request.budget.name),
            paths=update_paths(request.update_mask, request.budget, budgets.UPDATABLE_FIELDS),
            limit=request.budget.limit,
            now=now,
        )
        return convert.budget(view, principal)

    @rpc
    async def DeleteBudget(
        self, request: budgets_pb2.DeleteBudgetRequest, context: Ctx[object, object]
    ) -> empty_pb2.Empty:
        principal = await management_principal(context, self._clock())
        await budgets.delete_budget(principal, parse_id("name", BUDGETS, request.name))
        return empty_pb2.Empty()
