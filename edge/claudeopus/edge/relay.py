"""Relaying an upstream SSE stream to the client, event by event, and settling at the end.

The client gets only what the relay understood: every event is rebuilt as
``data: <payload>\n\n`` from the event's parsed JSON data (the upstream's payload
bytes as they came when the data is one line, so the common chunk is never
re-serialised). The upstream's comments and its ``event:``, ``id:`` and ``retry:``
fields are never relayed: an event without data becomes the gateway's own fixed
keep-alive comment, and data that is not a JSON object (nor ``[DONE]``) ends the stream.

The upstream was asked for usage (``include_usage``); its extra usage-only
chunk is dropped again unless the client asked for it. An error event the upstream
sends mid-stream (any payload with an ``error`` member, or ``"object": "error"``)
reaches the client redacted, as an error answer would (redaction.py): its message,
type, param and code, with nothing key- or account-like. Whatever ends the
stream (the upstream finishing, failing, or the client going away), the
upstream response is closed and the request's ticket is settled, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from claudeopus.edge import errors
from claudeopus.edge.completions import CompletionRequest
from claudeopus.edge.disconnect import DisconnectWatcher
from claudeopus.edge.metering.meter import Ticket
from claudeopus.edge.metering.types import Outcome, UsageSource, UsageStatus
from claudeopus.edge.redaction import Redactor, error_object
from claudeopus.edge.sse import DONE, EventBuffer, Usage, event_data, parse_usage, text_length
from claudeopus.edge.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout


class ClientGone(Exception):
    """The HTTP client disconnected before the stream ended."""


class MalformedEvent(Exception):
    """The upstream sent an event whose data is not a JSON object (nor ``[DONE]``)."""


class Overtime(Exception):
    """The stream outlasted the longest upstream exchange the edge allows (however busy it was)."""


CHARS_PER_TOKEN = 4
# What the client gets for an upstream event without data (a comment, a lone event: or id: field).
KEEP_ALIVE = b": keep-alive\n\n"
DONE_EVENT = b"data: " + DONE + b"\n\n"


class StreamRelay:
    """One relayed stream; pass :meth:`events` to the HTTP layer as the body generator."""

    def __init__(
        self,
        *,
        response: UpstreamResponse,
        completion: CompletionRequest,
        ticket: Ticket,
        watcher: DisconnectWatcher,
        deadline: float = float("inf"),
        redactor: Redactor | None = None,
    ) -> None:
        """``ticket``: the request's admission, settled once the stream ends; ``deadline``: the
        ``time.perf_counter()`` value by which the stream must have ended."""
        self._response = response
        self._completion = completion
        self._ticket = ticket
        self._watcher = watcher
        self._deadline = deadline
        self._redactor = redactor or Redactor("")
        self._usage: Usage | None = None
        self._relayed_events = 0
        self._relayed_chars = 0
        self._done = False
        self._status: UsageStatus = UsageStatus.SUCCEEDED

    async def events(self) -> AsyncIterator[bytes]:
        self._watcher.start()
        buffer = EventBuffer()
        try:
            async with contextlib.aclosing(self._chunks()) as chunks:
                async for chunk in chunks:
                    for event in buffer.feed(chunk):
                        relayed = self._relayed(event)
                        if relayed is not None:
                            yield relayed
            tail = buffer.rest().rstrip(b"\r\n")
            relayed = self._relayed(tail + b"\n\n") if tail.strip() else None
            if relayed is not None:
                yield relayed
            if not self._done and self._usage is None:
                # Neither [DONE] nor the usage chunk (always asked for, always last): the upstream
                # ended the stream early, perhaps cleanly closing mid-answer. Say so; do not bill it as whole.
                self._status = UsageStatus.UPSTREAM_ERROR
                yield _error_event(errors.upstream_broken("ended the stream before it was complete"))
        except ClientGone:
            self._status = UsageStatus.CLIENT_DISCONNECTED
        except MalformedEvent:
            # Not relayed: the SDK would fail on it without ever reaching the error event.
            self._status = UsageStatus.UPSTREAM_ERROR
            yield _error_event(errors.upstream_broken("sent an event that is not JSON"))
        except Overtime:
            self._status = UsageStatus.UPSTREAM_ERROR
            yield _error_event(
                errors.UpstreamTimeout(
                    "The upstream provider's answer took longer than the gateway allows.", code="upstream_timeout"
                )
            )
        except UpstreamTimeout:
            self._status = UsageStatus.UPSTREAM_ERROR
            yield _error_event(
                errors.UpstreamTimeout("The upstream provider stopped responding.", code="upstream_timeout")
            )
        except UpstreamError:
            self._status = UsageStatus.UPSTREAM_ERROR
            yield _error_event(errors.upstream_broken("dropped the connection mid-stream"))
        except asyncio.CancelledError:
            # The gateway is shutting down under this stream: settle it as failed.
            self._status = UsageStatus.UPSTREAM_ERROR
            raise
        finally:
            await self._finish()

    def _relayed(self, event: bytes) -> bytes | None:
        """What of ``event`` the client gets, rebuilt from its data alone: the chunk, its redacted
        error, the fixed keep-alive, or None (dropped)."""
        data = event_data(event)
        if not data:
            return KEEP_ALIVE  # comments and data-less fields: nothing generated, none of it relayed
        if b"[DONE]" in data and data.strip() == DONE:
            self._done = True
            return DONE_EVENT
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedEvent from None
        if not isinstance(payload, dict):
            raise MalformedEvent
        usage = parse_usage(payload.get("usage")) if "usage" in payload else None
        if usage is not None:
            self._usage = usage
        upstream_error = error_object(payload)
        if upstream_error is not None:
            return b"data: " + self._redactor.error_body(upstream_error) + b"\n\n"
        if usage is not None and not payload.get("choices"):
            if not self._completion.include_usage:
                return None  # the usage-only chunk the gateway asked for, not the client
        else:
            self._relayed_events += 1
            self._relayed_chars += text_length(payload)
        # One data line: its bytes are the payload as parsed. Several: joined by newlines that
        # would break the framing, so the parsed object is written again on one line.
        return b"data: " + (data if b"\n" not in data else orjson.dumps(payload)) + b"\n\n"

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        """Upstream chunks, raced against the client disconnecting."""
        iterator = self._response.aiter_bytes().__aiter__()
        gone = self._watcher.gone
        while True:
            if gone.done():
                raise ClientGone
            left = self._deadline - time.perf_counter()
            if left <= 0:
                raise Overtime
            next_chunk = asyncio.ensure_future(iterator.__anext__())
            try:
                await asyncio.wait((next_chunk, gone), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                await _discard(next_chunk)
                raise
            if not next_chunk.done():
                await _discard(next_chunk)
                if gone.done():
                    raise ClientGone
                raise Overtime
            try:
                chunk = next_chunk.result()
            except StopAsyncIteration:
                return
            yield chunk

    async def _finish(self) -> None:
        await self._watcher.aclose()
        with contextlib.suppress(UpstreamError):
            await self._response.aclose()
        self._ticket.settle(self._outcome())

    def _outcome(self) -> Outcome:
        if self._usage is not None:
            return Outcome(
                input_tokens=self._usage.input_tokens,
                output_tokens=self._usage.output_tokens,
                status=self._status,
                source=UsageSource.REPORTED,
                http_status=200,
            )
        # No usage arrived (client left, upstream broke): estimate from the text relayed,
        # about four characters per token, never less than one token per chunk that
        # carried text, never zero for produced output, never above the request's cap.
        produced = self._relayed_events > 0
        estimate = max(-(-self._relayed_chars // CHARS_PER_TOKEN), self._relayed_events if produced else 0)
        cap = self._completion.reserved_output_tokens
        return Outcome(
            input_tokens=self._completion.estimated_input_tokens if produced else 0,
            output_tokens=min(estimate, cap) if cap else estimate,
            status=self._status,
            source=UsageSource.ESTIMATED,
            http_status=200,
        )


async def _discard(pending: asyncio.Future[bytes]) -> None:
    """Cancel a pending upstream read and collect its outcome, so nothing is left unretrieved."""
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError, UpstreamError, StopAsyncIteration):
        await pending


def _error_event(error: errors.OpenAIError) -> bytes:
    return b"data: " + error.json() + b"\n\n"
