"""Dashboard passwords, logins and logouts.

Password work (argon2) runs in the server's :class:`~claudeopus.control.domain.passwords.PasswordPool`;
attempts are counted by the server's :class:`~claudeopus.control.domain.throttle.Throttles`
before any hash is computed, so a flood of logins is refused cheaply. What a caller learns
never tells which emails exist: every mismatch fails alike, and a throttled email answers
the same whether or not it is an account's.

Example::

    policy = LoginPolicy(PasswordPool(1), throttles, session_ttl=timedelta(hours=12))
    done = await login("shop@example.com", "correct horse battery", now, policy=policy, client="ipv4:203.0.113.7")
    await logout(await authenticate_management(done.token, now))
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tortoise.transactions import in_transaction

from claudeopus.control.domain import passwords, sessions, validation
from claudeopus.control.domain.accounts import account_in_subtree
from claudeopus.control.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Unauthenticated,
)
from claudeopus.control.domain.passwords import PasswordPool
from claudeopus.control.domain.principal import Principal, ensure_not_suspended
from claudeopus.control.domain.throttle import Throttles
from claudeopus.control.models import Account, Session

TOO_MANY_LOGINS = "Too many login attempts; retry later."


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """What passwords and logins need from the server: its hashing pool, its throttles, the session lifetime."""

    passwords: PasswordPool
    throttles: Throttles
    session_ttl: timedelta


@dataclass(frozen=True, slots=True)
class LoggedIn:
    token: str
    session: Session
    account: Account


def _login_failed() -> Unauthenticated:
    return Unauthenticated(Reason.LOGIN_FAILED, "Incorrect email or password.")


async def login(email: str, password: str, now: datetime, *, policy: LoginPolicy, client: str) -> LoggedIn:
    """Exchange email and password for a session.

    Every mismatch (unknown email, deleted account, no password, wrong
    password) fails alike and costs one argon2 verification, so neither the
    answer nor its timing tells which emails exist. Suspension is reported only
    to a caller that knows the password. ``client`` (the peer's address) and the
    email are throttled before any hash is computed: every attempt counts for the
    address, failed ones for the email.
    """
    try:
        address: str | None = validation.email("email", email)
    except InvalidArgument:
        address = None
    throttles = policy.throttles
    throttles.login_per_address.take(client, TOO_MANY_LOGINS)
    email_key = address or "(invalid)"
    throttles.login_per_email.check(email_key, TOO_MANY_LOGINS)
    if len(password) > passwords.MAX_LENGTH:
        throttles.login_per_email.spend(email_key)
        raise _login_failed()
    account = None if address is None else await Account.get_or_none(email=address, deleted_at__isnull=True)
    stored = None if account is None else account.password_hash
    if not await policy.passwords.verify(stored, password) or account is None or stored is None:
        throttles.login_per_email.spend(email_key)
        raise _login_failed()
    await ensure_not_suspended(account)
    rehashed = await policy.passwords.hash(password) if passwords.needs_rehash(stored) else None
    async with in_transaction():
        # A concurrent SetPassword or delete either waits for this session (and
        # then ends it) or has already changed the row, and this login fails.
        current = await Account.filter(id=account.id, deleted_at__isnull=True, password_hash=stored).select_for_update()
        if not current:
            raise _login_failed()
        if rehashed is not None:
            await Account.filter(id=account.id).update(password_hash=rehashed, updated_at=now)
        token, session = await sessions.open_session(current[0], now, policy.session_ttl)
    return LoggedIn(token=token, session=session, account=current[0])


async def set_password(
    principal: Principal,
    account_id: int | None,
    password: str,
    current_password: str,
    now: datetime,
    *,
    policy: LoginPolicy,
) -> None:
    """Set the dashboard password of the caller's account (``None``) or of one below it.

    Changing one's own password needs the current one (when there is one): a stolen
    session cannot lock its owner out. An account above resets a password without it.
    Either way every session of the account ends and the management keys minted
    through them are revoked.
    """
    passwords.validate("password", password)
    target = await account_in_subtree(principal, account_id, "name")
    if target.id == principal.account_id and target.password_hash is not None:
        await _check_current(target, current_password, policy)
    hashed = await policy.passwords.hash(password)
    async with in_transaction():
        updated = await Account.filter(id=target.id, deleted_at__isnull=True).update(
            password_hash=hashed, updated_at=now
        )
        if not updated:
            raise NotFound(Reason.RESOURCE_NOT_FOUND, "name: account not found.")
        revoked = await sessions.end_sessions(Session.filter(account_id=target.id), now)
    await sessions.outlive_keys(revoked, now)


async def _check_current(account: Account, current_password: str, policy: LoginPolicy) -> None:
    """The caller's own current password, counted like a login attempt for its email."""
    per_email = policy.throttles.login_per_email
    per_email.check(account.email, TOO_MANY_LOGINS)
    if not current_password:
        raise InvalidArgument.field("current_password", "is required to change your own password")
    if len(current_password) > passwords.MAX_LENGTH or not await policy.passwords.verify(
        account.password_hash, current_password
    ):
        per_email.spend(account.email)
        raise PermissionDenied(Reason.CURRENT_PASSWORD_INVALID, "current_password: does not match.")


async def logout(principal: Principal) -> None:
    """End the session the caller authenticated with (its keys stay: logging out is not a reset)."""
    if principal.session_id is None:
        raise FailedPrecondition(Reason.NOT_A_SESSION, "Logout ends a session; this call used an API key.")
    await Session.filter(id=principal.session_id).delete()


__all__ = ["LoggedIn", "LoginPolicy", "login", "logout", "set_password"]
