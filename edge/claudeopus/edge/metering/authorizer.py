"""Authorizing completions with control in batches (:mod:`~claudeopus.edge.metering.batcher`).

Each request waits in the authorize batcher's queue; its owned task sends whatever is queued
in one BatchAuthorize, then the next. Control decides every entry exactly as it would alone,
in queue order.

Each request waits at most ``timeout`` (``CLAUDEOPUS_CONTROL_TIMEOUT``) in all. A request
that gives up while still queued is never sent (503, nothing reserved); one that gives up
while its batch is on its way raises :class:`~claudeopus.edge.metering.refusals.AuthorizeTimedOut`,
so that what control may have reserved is released. The task is awaited on shutdown;
requests still queued then get 503.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from claudeopus.client import ClaudeOpusError
from claudeopus.edge import errors
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.metering.batcher import MAX_BATCH, Batcher
from claudeopus.edge.metering.port import AuthorizeCall, ControlPort
from claudeopus.edge.metering.refusals import openai_error, timed_out, unavailable

_log = logging.getLogger(__name__)
LEASES_END_KEY = "leases_end_in_ms"
# Refused while leases hold what a budget has left: asked again after 10, 20, 40 ms... until they end.
FIRST_RECHECK_SECONDS = 0.01
MAX_LEASE_WAIT_SECONDS = 62.0  # a lease lives at most 60 s, and its return takes a moment


@dataclass(slots=True)
class _Waiting:
    call: AuthorizeCall
    answer: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    sent: bool = False


class Authorizer:
    """Authorize requests through one owned batcher; :meth:`aclose` stops it.

    Example::

        authorizer = Authorizer(control, timeout=5.0)
        cap = await authorizer.authorize(request_id, key_hash, completion)  # or an OpenAIError
        await authorizer.aclose()
    """

    def __init__(self, control: ControlPort, timeout: float, *, max_batch: int = MAX_BATCH) -> None:
        self._control = control
        self._timeout = timeout
        self._batcher = Batcher(self._send, name="authorize", max_batch=max_batch, stale=_gave_up)

    async def authorize(self, request_id: str, key_hash: bytes, completion: CompletionRequest) -> int:
        """Reserve the request; returns the output cap the upstream must get (0: none needed).

        Refused because leases (see leases.py) hold what the budget has left, it asks again as
        those leases end and are returned, until the last one has: near a limit, a request is
        refused only when the budget cannot hold it, as without leases.
        """
        call = AuthorizeCall(request_id, key_hash, completion)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        pause = FIRST_RECHECK_SECONDS
        while True:
            try:
                return await self._authorize_once(call)
            except _HeldByLeases as held:
                now = loop.time()
                if deadline is None:
                    deadline = now + min(held.seconds, MAX_LEASE_WAIT_SECONDS)
                if now >= deadline:
                    raise held.refusal from None
                await asyncio.sleep(min(pause, deadline - now))
                pause *= 2

    async def _authorize_once(self, call: AuthorizeCall) -> int:
        if self._batcher.closing:
            raise unavailable()
        waiting = _Waiting(call)
        self._batcher.submit(waiting)
        # A timer on the answer rather than asyncio.timeout: a fifth of the cost on every request.
        timer = asyncio.get_running_loop().call_later(self._timeout, _time_out, waiting)
        try:
            return await waiting.answer
        finally:
            timer.cancel()

    async def _send(self, batch: list[_Waiting]) -> None:
        for waiting in batch:
            waiting.sent = True
        try:
            answers = await self._control.authorize_batch([waiting.call for waiting in batch])
        except ClaudeOpusError as error:
            answers = [error] * len(batch)
        except Exception as error:  # no caller may be left waiting for an answer that never comes
            _log.error("batch of %d authorizes failed: %s", len(batch), type(error).__name__)
            answers = [ClaudeOpusError(grpc.StatusCode.INTERNAL, "authorize failed")] * len(batch)
        for waiting, answer in zip(batch, answers, strict=True):
            if waiting.answer.done():
                continue
            if isinstance(answer, ClaudeOpusError):
                waiting.answer.set_exception(_held_by_leases(answer) or _refusal(answer))
            else:
                waiting.answer.set_result(answer)

    async def aclose(self) -> None:
        """Let the batch on its way finish (up to the grace period); requests still queued get 503."""
        for waiting in await self._batcher.aclose():
            if not waiting.answer.done():
                waiting.answer.set_exception(unavailable())


class _HeldByLeases(Exception):
    """Refused while live leases hold part of the budget: ask again within ``seconds``."""

    def __init__(self, refusal: errors.OpenAIError, seconds: float) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.seconds = seconds


def _held_by_leases(error: ClaudeOpusError) -> _HeldByLeases | None:
    hint = error.metadata.get(LEASES_END_KEY, "")
    if error.reason != "BUDGET_EXHAUSTED" or not hint.isdigit():
        return None
    return _HeldByLeases(_refusal(error), int(hint) / 1000)


def _refusal(error: ClaudeOpusError) -> errors.OpenAIError:
    """A fresh error per request (the forwarder adds its own headers to it)."""
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return timed_out()
    return openai_error(error)


def _time_out(waiting: _Waiting) -> None:
    """No answer in time. Still queued: it is never sent. On its way: control may reserve it yet."""
    if not waiting.answer.done():
        waiting.answer.set_exception(timed_out() if waiting.sent else unavailable())


def _gave_up(waiting: _Waiting) -> bool:
    """Its caller gave up while it was queued: it is never sent."""
    return waiting.answer.done()
