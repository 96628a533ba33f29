"""The admin's side of an end-to-end test: accounts, keys, budgets and usage of a running control.

Example::

    manager = Manager(gateway.control_target, gateway.admin_key)
    key_name, secret = manager.user_key()
    budget = manager.create_budget(key_name, budgets_pb2.BUDGET_METRIC_OUTPUT_TOKENS, 100)
    ...
    records = manager.settled(key_name, count=3)
    manager.close()
"""

from __future__ import annotations

import secrets
import time

import grpc

from claudeopus.client import Client, from_rpc_error
from claudeopus.v1 import budgets_pb2, budgets_pb2_grpc, usage_pb2

TOTAL = budgets_pb2.BUDGET_PERIOD_TOTAL
RESERVED = usage_pb2.USAGE_STATUS_RESERVED


class Manager:
    """The admin's side: accounts, keys and usage through the client; budgets through the generated stub."""

    def __init__(self, target: str, admin_key: str) -> None:
        self.client = Client(target, key=admin_key)
        self._channel = grpc.insecure_channel(target)
        self._budgets = budgets_pb2_grpc.BudgetServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {admin_key}"),)

    def close(self) -> None:
        self.client.close()
        self._channel.close()

    def account(self, *, role: str = "user", parent: str = "") -> str:
        email = f"{role}-{secrets.token_hex(5)}@example.com"
        return self.client.create_account(email=email, role=role, parent=parent).name

    def key(self, account: str) -> tuple[str, str]:
        """A new inference key on ``account``: (resource name, secret)."""
        created = self.client.create_api_key(parent=account)
        return created.api_key.name, created.secret

    def user_key(self) -> tuple[str, str]:
        return self.key(self.account())

    def create_budget(self, parent: str, metric: budgets_pb2.BudgetMetric.ValueType, limit: int) -> str:
        request = budgets_pb2.CreateBudgetRequest(
            parent=parent, budget=budgets_pb2.Budget(metric=metric, period=TOTAL, limit=limit)
        )
        try:
            budget = self._budgets.CreateBudget(request, metadata=self._metadata, timeout=10)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        assert budget.remaining == max(0, limit - budget.spent - budget.reserved)
        return budget.name

    def budget(self, name: str) -> budgets_pb2.Budget:
        return self._budgets.GetBudget(budgets_pb2.GetBudgetRequest(name=name), metadata=self._metadata, timeout=10)

    def counters(self, name: str) -> tuple[int, int, int]:
        """(spent, reserved, remaining) of a budget now."""
        budget = self.budget(name)
        return budget.spent, budget.reserved, budget.remaining

    def released(self, name: str, timeout: float = 10.0) -> tuple[int, int, int]:
        """(spent, reserved, remaining) once nothing is reserved: the requests settled and the edges
        gave back their budget leases (each ends within CLAUDEOPUS_LEASE_SECONDS)."""
        deadline = time.monotonic() + timeout
        while (counters := self.counters(name))[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        return counters

    def records(self, api_key: str) -> list[usage_pb2.UsageRecord]:
        return list(self.client.iter_usage_records(api_key=api_key, page_size=1000))

    def settled(
        self, api_key: str, count: int, *, parent: str = "", timeout: float = 20.0
    ) -> list[usage_pb2.UsageRecord]:
        """Settles run after the response: wait until there are ``count`` records, none still RESERVED.

        Records of one key, or (``api_key`` empty) of an account's whole subtree (``parent``).
        """
        deadline = time.monotonic() + timeout
        while True:
            records = list(self.client.iter_usage_records(api_key=api_key, parent=parent, page_size=1000))
            if len(records) >= count and all(r.status != RESERVED for r in records):
                assert len(records) == count, f"expected {count} usage rows, found {len(records)}"
                return records
            if time.monotonic() > deadline:
                states = sorted(usage_pb2.UsageStatus.Name(r.status) for r in records)
                raise AssertionError(f"expected {count} settled rows, found {len(records)}: {states}")
            time.sleep(0.05)
