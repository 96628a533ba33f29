"""Management changes take effect at the edge at once (real processes, the sync client, the openai SDK)."""

from __future__ import annotations

import secrets

import openai
import pytest

from claudeopus.client import Client
from tests.support.processes import Gateway


def _ask(gateway: Gateway, secret: str) -> str:
    client = openai.OpenAI(base_url=gateway.edge_url, api_key=secret, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    return reply.choices[0].message.content or ""


def test_suspending_a_reseller_stops_its_sub_users_keys_at_the_edge(gateway: Gateway) -> None:
    with Client(gateway.control_target, key=gateway.admin_key) as admin:
        reseller = admin.create_account(email=f"r-{secrets.token_hex(4)}@example.com", role="reseller")
        user = admin.create_account(email=f"u-{secrets.token_hex(4)}@example.com", parent=reseller.name)
        secret = admin.create_api_key(parent=user.name).secret
        assert _ask(gateway, secret)

        admin.suspend_account(reseller.name)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            _ask(gateway, secret)
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "account_suspended"

        admin.resume_account(reseller.name)
        assert _ask(gateway, secret)


def test_a_rotated_key_keeps_working_during_its_grace_period_only(gateway: Gateway) -> None:
    from datetime import timedelta

    with Client(gateway.control_target, key=gateway.admin_key) as admin:
        user = admin.create_account(email=f"u-{secrets.token_hex(4)}@example.com")
        created = admin.create_api_key(parent=user.name)
        rotated = admin.rotate_api_key(created.api_key.name, grace_period=timedelta(hours=1))
        assert rotated.secret != created.secret
        assert _ask(gateway, created.secret) and _ask(gateway, rotated.secret)

        again = admin.rotate_api_key(created.api_key.name)  # no grace: every earlier secret dies now
        for dead in (created.secret, rotated.secret):
            with pytest.raises(openai.AuthenticationError):
                _ask(gateway, dead)
        assert _ask(gateway, again.secret)
