"""The abuse matrix: each way around a tenant's limits that a review found, tried by the principal
who would try it, against real control and edge processes.

The tree: admin → reseller A → sub-reseller A → {user, kiosk, shop → spender}, and admin → reseller B.
Reseller A prices the model on sub-reseller A's account (its margin) and sets the kiosk's policy
(models, key lifetime); sub-reseller A issued the user's key with limits, and forbade the kiosk
management keys. Every case asserts the refusal
(code, reason, or the edge's error) and that what it aimed at did not change.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from claudeopus.client import ClaudeOpusError, Client
from claudeopus.tls import PlainTextRefused
from tests.support.fake_upstream import UNPRICED_MODEL
from tests.support.processes import Gateway

MODEL = "fake-1"
OTHER_MODEL = "fake-slow"  # priced on the root like MODEL, but not in the user's policy
MARKUP = (2_000_000, 3_000_000)  # what reseller A charges sub-reseller A for MODEL, per million tokens
PASSWORD = "kiosk password 0123"


@dataclass
class World:
    gateway: Gateway
    admin: str  # management secrets, by principal
    reseller_a: str
    reseller_b: str
    sub_a: str
    user: str
    accounts: dict[str, str]  # resource names, by principal
    markup_price: str  # the price reseller A set on sub-reseller A's account
    user_key: str  # the user's inference key (resource name), issued by sub-reseller A, limits held from above
    user_secret: str
    free_secret: str  # an inference key of reseller B with no model list
    spender_secret: str  # a key under a budget of 1 token that reseller A set on the account above it
    kiosk_email: str
    user_email: str

    def client(self, secret: str | None) -> Client:
        return Client(self.gateway.control_target, key=secret)

    def openai(self, secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.edge_url, api_key=secret, max_retries=0)


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> World:
    tag = secrets.token_hex(3)
    with Client(gateway.control_target, key=gateway.admin_key) as admin:
        reseller_a = admin.create_account(email=f"ra-{tag}@example.com", role="reseller")
        reseller_b = admin.create_account(email=f"rb-{tag}@example.com", role="reseller")
        ra_secret = admin.create_api_key(parent=reseller_a.name, scopes=["management"]).secret
        rb_secret = admin.create_api_key(parent=reseller_b.name, scopes=["management"]).secret
        free_secret = admin.create_api_key(parent=reseller_b.name).secret
    with Client(gateway.control_target, key=ra_secret) as ra:
        sub_a = ra.create_account(email=f"sa-{tag}@example.com", role="reseller", parent=reseller_a.name)
        sa_secret = ra.create_api_key(parent=sub_a.name, scopes=["management"]).secret
        markup = ra.create_price(model=MODEL, input_micros=MARKUP[0], output_micros=MARKUP[1], parent=sub_a.name)
        shop = ra.create_account(email=f"shop-{tag}@example.com", role="reseller", parent=sub_a.name)
        spender = ra.create_account(email=f"sp-{tag}@example.com", role="user", parent=shop.name)
        spender_secret = ra.create_api_key(parent=spender.name).secret
        ra.create_budget(shop.name, metric="total_tokens", period="total", limit=1)
    user_email, kiosk_email = f"u-{tag}@example.com", f"k-{tag}@example.com"
    with Client(gateway.control_target, key=sa_secret) as sa:
        user = sa.create_account(email=user_email, role="user", parent=sub_a.name)
        kiosk = sa.create_account(email=kiosk_email, role="user", parent=sub_a.name)
        user_mgmt = sa.create_api_key(parent=user.name, scopes=["management"]).secret
        created = sa.create_api_key(
            parent=user.name, allowed_models=[MODEL], expire_time=datetime.now(UTC) + timedelta(days=20)
        )
        sa.set_password(PASSWORD, name=kiosk.name)
        sa.set_account_policy(kiosk.name, deny_management_keys=True)
    with Client(gateway.control_target, key=ra_secret) as ra:
        # Set from reseller A: sub-reseller A may narrow it, never widen it.
        ra.set_account_policy(kiosk.name, allowed_models=[MODEL], max_key_lifetime=timedelta(days=30))
    return World(
        gateway=gateway,
        admin=gateway.admin_key,
        reseller_a=ra_secret,
        reseller_b=rb_secret,
        sub_a=sa_secret,
        user=user_mgmt,
        accounts={
            "reseller_a": reseller_a.name,
            "reseller_b": reseller_b.name,
            "sub_a": sub_a.name,
            "user": user.name,
            "kiosk": kiosk.name,
            "shop": shop.name,
        },
        markup_price=markup.name,
        user_key=created.api_key.name,
        user_secret=created.secret,
        free_secret=free_secret,
        spender_secret=spender_secret,
        kiosk_email=kiosk_email,
        user_email=user_email,
    )


def refused(call: Callable[[], Any]) -> tuple[str, str, str]:
    """(code, reason, message) of a refused call; fails the test if the call went through."""
    try:
        call()
    except ClaudeOpusError as error:
        return error.code.name, error.reason, error.message
    pytest.fail("the call went through")


def edge_error(call: Callable[[], Any]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def chat(client: openai.OpenAI, model: str = MODEL, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **extra
    )


# -- 1. prices: a sub-reseller cannot remove or lower what its parent set on it ----------


def price_delete_by_sub_reseller(w: World) -> None:
    with w.client(w.sub_a) as sa, w.client(w.reseller_a) as ra:
        before = ra.get_price(w.markup_price)
        code, reason, _ = refused(lambda: sa.delete_price(w.markup_price))
        assert (code, reason) == ("PERMISSION_DENIED", "PRICE_SET_ABOVE")
        assert ra.get_price(w.markup_price) == before


def price_lowered_by_sub_reseller(w: World) -> None:
    with w.client(w.sub_a) as sa, w.client(w.reseller_a) as ra:
        before = ra.get_price(w.markup_price)
        code, reason, _ = refused(lambda: sa.update_price(w.markup_price, input_micros=1, output_micros=1))
        assert (code, reason) == ("PERMISSION_DENIED", "PRICE_SET_ABOVE")
        assert ra.get_price(w.markup_price) == before


def price_undercut_below_by_sub_reseller(w: World) -> None:
    """A lower price on an account below is refused, and the price in force there stays."""
    with w.client(w.sub_a) as sa:
        refused(lambda: sa.create_price(model=MODEL, input_micros=1, output_micros=1, parent=w.accounts["user"]))
        in_force = sa.resolve_price(model=MODEL, account=w.accounts["user"])
        assert (in_force.input_micros_per_million, in_force.output_micros_per_million) == MARKUP


# -- 2. key limits and account policies -----------------------------------------------------


def key_models_cleared_by_owner(w: World) -> None:
    with w.client(w.user) as user:
        code, reason, _ = refused(lambda: user.update_api_key(w.user_key, allowed_models=[]))
        assert (code, reason) == ("PERMISSION_DENIED", "KEY_LIMIT_SET_ABOVE")
        assert list(user.get_api_key(w.user_key).allowed_models) == [MODEL]


def key_expiry_cleared_by_owner(w: World) -> None:
    with w.client(w.user) as user:
        before = user.get_api_key(w.user_key).expire_time
        code, reason, _ = refused(lambda: user.update_api_key(w.user_key, clear_expiry=True))
        assert (code, reason) == ("PERMISSION_DENIED", "KEY_LIMIT_SET_ABOVE")
        assert user.get_api_key(w.user_key).expire_time == before


def key_management_scope_added_by_owner(w: World) -> None:
    with w.client(w.user) as user:
        code, reason, _ = refused(lambda: user.update_api_key(w.user_key, scopes=["inference", "management"]))
        assert (code, reason) == ("PERMISSION_DENIED", "KEY_LIMIT_SET_ABOVE")
        assert len(user.get_api_key(w.user_key).scopes) == 1


def key_minted_wider_than_policy(w: World) -> None:
    with w.client(None) as anonymous:
        session = anonymous.login(w.kiosk_email, PASSWORD).session_token
    with w.client(session) as user:
        expiry = datetime.now(UTC) + timedelta(days=5)
        code, reason, _ = refused(
            lambda: user.create_api_key(allowed_models=[OTHER_MODEL], expire_time=expiry, display_name="wide")
        )
        assert (code, reason) == ("PERMISSION_DENIED", "ACCOUNT_POLICY_DENIED")
        code, reason, _ = refused(lambda: user.create_api_key(display_name="forever"))  # no expiry under a lifetime
        assert (code, reason) == ("PERMISSION_DENIED", "ACCOUNT_POLICY_DENIED")
        # A key naming no models gets the policy's list, never every model.
        made = user.create_api_key(expire_time=expiry, display_name="narrowed")
        assert list(made.api_key.allowed_models) == [MODEL]
        user.revoke_api_key(made.api_key.name)
        names = {k.display_name for k in user.iter_api_keys(parent=w.accounts["kiosk"], show_revoked=True)}
        assert not {"wide", "forever"} & names


def policy_widened_by_sub_reseller(w: World) -> None:
    with w.client(w.sub_a) as sa:
        before = sa.get_account(w.accounts["kiosk"]).policy
        code, reason, _ = refused(
            lambda: sa.set_account_policy(w.accounts["kiosk"], allowed_models=[MODEL, OTHER_MODEL])
        )
        assert (code, reason) == ("PERMISSION_DENIED", "POLICY_SET_ABOVE")
        assert sa.get_account(w.accounts["kiosk"]).policy == before


def policy_set_on_itself(w: World) -> None:
    with w.client(None) as anonymous:
        session = anonymous.login(w.kiosk_email, PASSWORD).session_token
    with w.client(session) as kiosk:
        before = kiosk.get_account(w.accounts["kiosk"]).policy
        code, reason, _ = refused(lambda: kiosk.set_account_policy(w.accounts["kiosk"], allowed_models=[]))
        assert (code, reason) == ("PERMISSION_DENIED", "SELF_CHANGE_DENIED")
        assert kiosk.get_account(w.accounts["kiosk"]).policy == before


def management_key_minted_through_a_session(w: World) -> None:
    with w.client(None) as anonymous:
        session = anonymous.login(w.kiosk_email, PASSWORD).session_token
    with w.client(session) as kiosk:
        code, reason, _ = refused(lambda: kiosk.create_api_key(scopes=["management"]))
        assert (code, reason) == ("PERMISSION_DENIED", "ACCOUNT_POLICY_DENIED")
        assert all("management" not in str(k.scopes) for k in kiosk.iter_api_keys(parent=w.accounts["kiosk"]))


# -- 3-5. what the edge serves, and what refusals tell ---------------------------------------


def unpriced_model_called(w: World) -> None:
    seen = len(w.gateway.upstream.received)
    error = edge_error(lambda: chat(w.openai(w.free_secret), UNPRICED_MODEL))
    assert (error.status_code, error.code) == (403, "model_not_available")
    assert len(w.gateway.upstream.received) == seen, "nothing reaches the upstream"


def price_sources_read_by_customer(w: World) -> None:
    with w.client(w.user) as user:
        resolved = user.resolve_price(model=MODEL)
    assert (resolved.inherited.input_micros_per_million, resolved.inherited.output_micros_per_million) == MARKUP
    assert not resolved.sources, "every price in force was set above the user"
    text = str(resolved)
    for above in ("reseller_a", "sub_a"):
        assert w.accounts[above] not in text


def ancestor_budget_told_by_refusal(w: World) -> None:
    error = edge_error(lambda: chat(w.openai(w.spender_secret)))
    assert error.status_code == 429
    message = str(error.body)
    assert not any(ch.isdigit() for ch in message), message
    assert w.accounts["shop"] not in message


# -- 6. emails of other resellers' customers --------------------------------------------------


def email_probed_by_other_reseller(w: World) -> None:
    with w.client(w.reseller_b) as rb:
        own = rb.create_account(email=f"own-{secrets.token_hex(3)}@example.com", parent=w.accounts["reseller_b"])
        theirs = refused(lambda: rb.create_account(email=w.user_email, parent=w.accounts["reseller_b"]))
        mine = refused(lambda: rb.create_account(email=own.email, parent=w.accounts["reseller_b"]))
        assert theirs == mine, "another reseller's customer answers like one's own"
        outcomes = [refused(lambda: rb.create_account(email=w.user_email))[:2] for _ in range(30)]
        assert ("RESOURCE_EXHAUSTED", "RATE_LIMITED") in outcomes, "probing is throttled"


# -- 7-10. what reaches the upstream is what was authorized -----------------------------------


def _last_upstream_raw(w: World) -> bytes:
    return w.gateway.upstream.received[-1].raw


def escaped_duplicate_model(w: World) -> None:
    body = b'{"model":"' + OTHER_MODEL.encode() + b'","messages":[{"role":"user","content":"hi"}],"mod\\u0065l":"'
    body += MODEL.encode() + b'","max_tokens":3}'
    response = httpx.post(
        f"{w.gateway.edge_url}/chat/completions", content=body, headers={"authorization": f"Bearer {w.user_secret}"}
    )
    assert response.status_code == 200, response.text
    raw = _last_upstream_raw(w)
    assert raw.count(b'"model"') == 1 and OTHER_MODEL.encode() not in raw
    assert orjson.loads(raw)["model"] == MODEL


def escaped_duplicate_output_cap(w: World) -> None:
    body = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"hi"}],'
    body += b'"max_completion_tokens":2,"max_completion_t\\u006fkens":3}'
    response = httpx.post(
        f"{w.gateway.edge_url}/chat/completions", content=body, headers={"authorization": f"Bearer {w.user_secret}"}
    )
    assert response.status_code == 200, response.text
    raw = _last_upstream_raw(w)
    assert raw.count(b"max_completion_tokens") == 1 and orjson.loads(raw)["max_completion_tokens"] == 3


def too_many_choices(w: World) -> None:
    seen = len(w.gateway.upstream.received)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 128}
    response = httpx.post(
        f"{w.gateway.edge_url}/chat/completions", json=body, headers={"authorization": f"Bearer {w.user_secret}"}
    )
    assert (response.status_code, response.json()["error"]["param"]) == (400, "n")
    assert len(w.gateway.upstream.received) == seen


def choices_reserved_together(w: World) -> None:
    """n choices reserve n times the output cap: a budget that holds one choice refuses three."""
    with w.client(w.sub_a) as sa:
        key = sa.create_api_key(parent=w.accounts["user"], display_name="choices")
        sa.create_budget(key.api_key.name, metric="output_tokens", period="total", limit=10)
    client = w.openai(key.secret)
    seen = len(w.gateway.upstream.received)
    error = edge_error(lambda: chat(client, n=3))  # 3 x 4 output tokens reserved
    assert error.status_code == 429
    assert len(w.gateway.upstream.received) == seen
    chat(client, n=2)  # 2 x 4 fits in 10


def unauthenticated_large_body(w: World) -> None:
    seen = len(w.gateway.upstream.received)
    body = b'{"model":"' + MODEL.encode() + b'",' + b'"x":1,' * 100_000 + b'"messages":[]}'
    made_up = "sk-co-" + secrets.token_urlsafe(32)
    response = httpx.post(
        f"{w.gateway.edge_url}/chat/completions", content=body, headers={"authorization": f"Bearer {made_up}"}
    )
    assert response.status_code == 401
    assert response.headers.get("connection") == "close", "the body is not read"
    assert len(w.gateway.upstream.received) == seen


def upstream_model_objects_listed(w: World) -> None:
    response = httpx.get(f"{w.gateway.edge_url}/models", headers={"authorization": f"Bearer {w.free_secret}"})
    assert response.status_code == 200
    assert b"org-operator-secret" not in response.content
    listed = response.json()["data"]
    assert listed and all(set(m) == {"id", "object", "created", "owned_by"} for m in listed)
    assert {m["owned_by"] for m in listed} == {"claudeopus"}
    assert UNPRICED_MODEL not in {m["id"] for m in listed}, "an unpriced model is not offered"


# -- 11-15. credentials, sessions, logs ------------------------------------------------------


def login_flood(w: World) -> None:
    with w.client(None) as anonymous:
        # 21 failures for one email pass its hourly limit; with the module's other logins, still under
        # the per-address limit (30 a minute).
        outcomes = [refused(lambda: anonymous.login(w.user_email, "wrong password 123"))[:2] for _ in range(22)]
    assert ("RESOURCE_EXHAUSTED", "RATE_LIMITED") in outcomes
    chat(w.openai(w.user_secret))  # the hot path still serves


def bootstrap_without_token(w: World) -> None:
    with w.client(None) as anonymous:
        code, _, _ = refused(lambda: anonymous.bootstrap_admin("thief@example.com"))
    assert code in ("PERMISSION_DENIED", "FAILED_PRECONDITION", "ALREADY_EXISTS")
    with w.client(w.admin) as admin:
        assert all(a.email != "thief@example.com" for a in admin.iter_accounts())


def own_password_changed_without_current(w: World) -> None:
    with w.client(None) as anonymous:
        session = anonymous.login(w.kiosk_email, PASSWORD).session_token
    with w.client(session) as kiosk:
        refused(lambda: kiosk.set_password("a brand new password 1"))
        refused(lambda: kiosk.set_password("a brand new password 1", current_password="not the password"))
        kiosk.logout()
        code, _, _ = refused(lambda: kiosk.get_account(w.accounts["kiosk"]))
        assert code == "UNAUTHENTICATED", "a session ends with Logout"
    with w.client(None) as anonymous:
        anonymous.login(w.kiosk_email, PASSWORD)  # the password did not change


def session_outlives_reset(w: World) -> None:
    with w.client(None) as anonymous:
        session = anonymous.login(w.kiosk_email, PASSWORD).session_token
    with w.client(w.sub_a) as sa:
        sa.set_password(PASSWORD, name=w.accounts["kiosk"])  # a reset from above, same password
    with w.client(session) as kiosk:
        code, _, _ = refused(lambda: kiosk.get_account(w.accounts["kiosk"]))
        assert code == "UNAUTHENTICATED"


def plain_text_to_another_host(w: World) -> None:
    with pytest.raises(PlainTextRefused):
        Client("control.example.invalid:50051", key=w.user)


def url_kept_by_access_log(w: World) -> None:
    canary = "canary-" + secrets.token_hex(8)
    response = httpx.get(f"{w.gateway.edge_url}/{canary}/x?token={canary}")
    assert response.status_code == 404
    edge = next(p for p in w.gateway.processes if "edge" in p.stdout_path.name)
    deadline = time.monotonic() + 5
    while True:  # the line is written after the answer
        text = "".join(log.read_text() for log in Path(edge.stdout_path.parent).rglob("access*.log*"))
        if " 404 " in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert " 404 " in text, "the edge logged the request"
    assert canary not in text


@dataclass(frozen=True)
class Case:
    item: int
    principal: str
    run: Callable[[World], None]


CASES = [
    Case(1, "sub-reseller", price_delete_by_sub_reseller),
    Case(1, "sub-reseller", price_lowered_by_sub_reseller),
    Case(1, "sub-reseller", price_undercut_below_by_sub_reseller),
    Case(2, "user", key_models_cleared_by_owner),
    Case(2, "user", key_expiry_cleared_by_owner),
    Case(2, "user", key_management_scope_added_by_owner),
    Case(2, "user (session)", key_minted_wider_than_policy),
    Case(2, "sub-reseller", policy_widened_by_sub_reseller),
    Case(2, "user (session)", policy_set_on_itself),
    Case(2, "user (session)", management_key_minted_through_a_session),
    Case(3, "other reseller's key", unpriced_model_called),
    Case(4, "user", price_sources_read_by_customer),
    Case(5, "user", ancestor_budget_told_by_refusal),
    Case(6, "other reseller", email_probed_by_other_reseller),
    Case(7, "user", escaped_duplicate_model),
    Case(7, "user", escaped_duplicate_output_cap),
    Case(8, "user", too_many_choices),
    Case(8, "user", choices_reserved_together),
    Case(9, "unauthenticated", unauthenticated_large_body),
    Case(10, "other reseller's key", upstream_model_objects_listed),
    Case(12, "unauthenticated", bootstrap_without_token),
    Case(13, "user (session)", own_password_changed_without_current),
    Case(13, "user (session)", session_outlives_reset),
    Case(14, "user", plain_text_to_another_host),
    Case(15, "unauthenticated", url_kept_by_access_log),
    Case(11, "unauthenticated", login_flood),  # last: it spends the address's login allowance
]


def _ids() -> Iterator[str]:
    for case in CASES:
        yield f"{case.item:02d}-{case.principal}-{case.run.__name__}"


@pytest.mark.parametrize("case", CASES, ids=list(_ids()))
def test_abuse(world: World, case: Case) -> None:
    case.run(world)


def test_every_item_of_the_review_has_a_case() -> None:
    assert {case.item for case in CASES} == set(range(1, 16))
