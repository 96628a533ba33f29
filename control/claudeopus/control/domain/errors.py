"""Errors raised by the domain layer, each carrying an ``ErrorReason`` name.

Hierarchy (the service layer maps each class to one gRPC status code)::

    DomainError
    ├── InvalidArgument      INVALID_ARGUMENT, with field violations
    ├── Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied     PERMISSION_DENIED
    ├── NotFound             NOT_FOUND (also for anything outside the caller's subtree)
    ├── AlreadyExists        ALREADY_EXISTS
    ├── FailedPrecondition   FAILED_PRECONDITION
    └── ResourceExhausted    RESOURCE_EXHAUSTED
        └── Throttled        RESOURCE_EXHAUSTED with RetryInfo (too many attempts)

Messages are written for the caller and never contain a secret or any content.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Names of ``claudeopus.v1.ErrorReason`` (a test keeps the two in step)."""

    CREDENTIAL_MISSING = "CREDENTIAL_MISSING"
    KEY_INVALID = "KEY_INVALID"
    KEY_REVOKED = "KEY_REVOKED"
    KEY_EXPIRED = "KEY_EXPIRED"
    KEY_SCOPE_DENIED = "KEY_SCOPE_DENIED"
    SERVICE_CREDENTIAL_INVALID = "SERVICE_CREDENTIAL_INVALID"
    ACCOUNT_SUSPENDED = "ACCOUNT_SUSPENDED"
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    FIELD_INVALID = "FIELD_INVALID"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    RESOURCE_EXISTS = "RESOURCE_EXISTS"
    ADMIN_EXISTS = "ADMIN_EXISTS"
    BOOTSTRAP_NOT_LOCAL = "BOOTSTRAP_NOT_LOCAL"
    PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"
    REQUEST_ID_CONFLICT = "REQUEST_ID_CONFLICT"
    ROLE_DENIED = "ROLE_DENIED"
    RESERVATION_NOT_FOUND = "RESERVATION_NOT_FOUND"
    ACCOUNT_NOT_EMPTY = "ACCOUNT_NOT_EMPTY"
    SELF_CHANGE_DENIED = "SELF_CHANGE_DENIED"
    LOGIN_FAILED = "LOGIN_FAILED"
    SESSION_INVALID = "SESSION_INVALID"
    KEY_NOT_LIVE = "KEY_NOT_LIVE"
    KEY_ROTATED = "KEY_ROTATED"
    PRICE_BELOW_PARENT = "PRICE_BELOW_PARENT"
    SUSPENSION_HELD_ABOVE = "SUSPENSION_HELD_ABOVE"
    BUDGET_ABOVE_PARENT = "BUDGET_ABOVE_PARENT"
    BUDGET_HELD_ABOVE = "BUDGET_HELD_ABOVE"
    PRICE_SET_ABOVE = "PRICE_SET_ABOVE"
    MODEL_NOT_AVAILABLE = "MODEL_NOT_AVAILABLE"
    KEY_LIMIT_SET_ABOVE = "KEY_LIMIT_SET_ABOVE"
    POLICY_SET_ABOVE = "POLICY_SET_ABOVE"
    ACCOUNT_POLICY_DENIED = "ACCOUNT_POLICY_DENIED"
    BOOTSTRAP_TOKEN_INVALID = "BOOTSTRAP_TOKEN_INVALID"
    RATE_LIMITED = "RATE_LIMITED"
    CURRENT_PASSWORD_INVALID = "CURRENT_PASSWORD_INVALID"
    NOT_A_SESSION = "NOT_A_SESSION"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: ``field`` is its path, e.g. ``account.email``."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, reason: Reason, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        # Sent as ``ErrorInfo.metadata``: machine-readable details, never a secret or content.
        self.metadata = metadata or {}


class InvalidArgument(DomainError):
    def __init__(self, violations: list[FieldViolation], reason: Reason = Reason.FIELD_INVALID) -> None:
        super().__init__(reason, "; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations

    @classmethod
    def field(cls, field: str, description: str, reason: Reason = Reason.FIELD_INVALID) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason)


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class ResourceExhausted(DomainError):
    def __init__(
        self, reason: Reason, message: str, metadata: dict[str, str] | None = None, *, budget_id: int | None = None
    ) -> None:
        super().__init__(reason, message, metadata)
        self.budget_id = budget_id  # BUDGET_EXHAUSTED: the budget that ran out (never sent: it may be a reseller's)


class Throttled(ResourceExhausted):
    """Too many attempts (logins, refused email probes): the caller may retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(Reason.RATE_LIMITED, message)
        self.retry_after = retry_after
