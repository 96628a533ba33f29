"""Framework-neutral replies; ``routes`` turns them into BlackSheep responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BodyReply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StreamReply:
    # An async generator function (BlackSheep's StreamedContent requires one).
    events: Callable[[], AsyncIterator[bytes]]
    status: int = 200
    content_type: bytes = b"text/event-stream"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Reply = BodyReply | StreamReply
