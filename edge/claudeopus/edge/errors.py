"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Hierarchy::

    OpenAIError                    any error the edge answers itself
    ├── BadRequest           400   invalid_request_error (malformed body, missing field)
    ├── AuthenticationFailed 401   invalid_request_error / invalid_api_key, api_key_revoked, api_key_expired
    ├── PermissionDenied     403   model_not_allowed, model_not_available (no price in force), account_suspended,
    │                              key_scope_denied
    ├── RouteNotFound        404   unknown path
    ├── MethodNotAllowed     405   another method on a known path (with an Allow header)
    ├── PayloadTooLarge      413   body over the configured limit
    ├── UnsupportedMediaType 415   a body sent with a Content-Type other than JSON
    ├── QuotaExceeded        429   insufficient_quota (a budget ran out)
    ├── UpstreamRateLimited  429   rate_limit_error (the upstream is throttling)
    ├── UpstreamFailed       502   the upstream failed or answered nonsense
    ├── ControlUnavailable   503   authorization could not be checked (fail closed), upstream out of credit,
    │                              the usage spool is full
    └── UpstreamTimeout      504   the upstream did not answer in time

Messages never quote the request body, a key, or the upstream's answer.
"""

from __future__ import annotations

from typing import Any

import orjson


class OpenAIError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        # Extra response headers, e.g. x-request-id once a request was authorized.
        self.headers: list[tuple[bytes, bytes]] = []

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())


class BadRequest(OpenAIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(OpenAIError):
    status = 401
    type = "invalid_request_error"


class PermissionDenied(OpenAIError):
    status = 403
    type = "invalid_request_error"


class RouteNotFound(OpenAIError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(OpenAIError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(OpenAIError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(OpenAIError):
    status = 415
    type = "invalid_request_error"


class QuotaExceeded(OpenAIError):
    status = 429
    type = "insufficient_quota"


class UpstreamRateLimited(OpenAIError):
    status = 429
    type = "rate_limit_error"


class UpstreamFailed(OpenAIError):
    status = 502
    type = "server_error"


class ControlUnavailable(OpenAIError):
    status = 503
    type = "server_error"


class UpstreamTimeout(OpenAIError):
    status = 504
    type = "server_error"


def missing_key() -> AuthenticationFailed:
    return AuthenticationFailed(
        "You didn't provide an API key. Send it as 'Authorization: Bearer sk-co-...'.", code="missing_api_key"
    )


def upstream_timeout() -> UpstreamTimeout:
    return UpstreamTimeout("The upstream provider did not answer in time.", code="upstream_timeout")


def upstream_unreachable() -> UpstreamFailed:
    return UpstreamFailed("The upstream provider could not be reached.", code="upstream_error")


def upstream_broken(detail: str) -> UpstreamFailed:
    return UpstreamFailed(f"The upstream provider {detail}.", code="upstream_error")


def usage_spool_full() -> ControlUnavailable:
    return ControlUnavailable(
        "The gateway cannot record usage right now; nothing was forwarded. Please retry later.",
        code="usage_spool_full",
    )
