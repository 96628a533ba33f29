"""Server-sent events from an upstream: split into whole events, read their data and usage.

The relay (relay.py) handles each event as soon as it is complete, from its data alone.

Example::

    buffer = EventBuffer()
    events = buffer.feed(b'data: {"choices": []}\\n\\ndata: [DO')
    assert events == [b'data: {"choices": []}\\n\\n']
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

_SEPARATORS = (b"\n\n", b"\r\n\r\n")
DONE = b"[DONE]"


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


class EventBuffer:
    """Accumulates bytes and hands back complete events (with their blank-line terminator)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end, width = _next_separator(data, start)
            if end < 0:
                break
            events.append(data[start : end + width])
            start = end + width
        self._pending = data[start:]
        return events

    def rest(self) -> bytes:
        """Bytes after the last complete event (an unterminated tail)."""
        pending, self._pending = self._pending, b""
        return pending


def _next_separator(data: bytes, start: int) -> tuple[int, int]:
    best, width = -1, 0
    for separator in _SEPARATORS:
        found = data.find(separator, start)
        if found >= 0 and (best < 0 or found < best):
            best, width = found, len(separator)
    return best, width


def event_data(event: bytes) -> bytes:
    """The joined ``data:`` lines of one event."""
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines)


def generated_text_length(event: bytes) -> int:
    """Characters of generated text in one chunk: content, reasoning and tool-call arguments.

    Used only to estimate output tokens when the upstream never reports usage;
    the text itself is measured and dropped, never kept.
    """
    try:
        payload = orjson.loads(event_data(event))
    except orjson.JSONDecodeError:
        return 0
    return text_length(payload)


def text_length(payload: object) -> int:
    """:func:`generated_text_length` of an event's already decoded ``data``."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    total = 0
    for choice in choices if isinstance(choices, list) else ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for name in ("content", "reasoning_content", "refusal"):
            value = delta.get(name)
            total += len(value) if isinstance(value, str) else 0
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            total += len(arguments) if isinstance(arguments, str) else 0
    return total


def parse_usage(usage: object) -> Usage | None:
    """OpenAI's ``usage`` object to token counts; None when absent or malformed."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not _count(prompt) or not _count(completion):
        return None
    return Usage(input_tokens=int(prompt), output_tokens=int(completion))  # type: ignore[arg-type]


MAX_COUNT = 2**53  # anything larger is not a token count, and would not fit the contract


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT
