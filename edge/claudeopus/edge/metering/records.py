"""The edge's one durable record format: framed records, and the payloads of settles and reservations.

Both files the edge keeps in its spool directory hold frames of this module: the settle spool
(:mod:`claudeopus.edge.metering.spool`) appends them to segment files, the lease journal
(:mod:`claudeopus.edge.metering.journal`) stores one in each of its fixed slots. A frame,
little-endian::

    u32 length | u32 CRC-32 of (length field + payload) | payload

A frame is whole when its payload is all there and the checksum matches; a reader takes what
is whole and nothing else (a frame cut short by a crash, a flipped bit, a free journal slot).

Payloads hold ids and numbers only, never text, so no prompt, output or key can land in them::

    settlement, 47 bytes: u8 version (1) | 16 bytes request id (UUID) | u64 input tokens
        | u64 output tokens | u64 latency in ns | u16 status | u16 source | u16 HTTP status
    settlement of a request admitted from a lease, 96 bytes: the same with version 2,
        then its leased reservation
    leased reservation, 49 bytes: 16 bytes lease id (UUID) | u64 reserved input tokens
        | u64 reserved output tokens | u64 reserved cost | u8 stream
        | u64 reserve time in ns since 1970

Numbers are clamped to what control stores (u64 fields to 0..2**63-1, u16 fields to 0..65535);
an id that is not a UUID is refused with ``ValueError``.

Example::

    frame = encode_frame(encode_settlement(settle))
    payload, end = read_frame(frame)                 # None where no whole frame starts
    assert decode_settlement(payload) == settle      # None for a payload this edge does not know
"""

from __future__ import annotations

import mmap
import struct
import uuid
import zlib
from typing import TypeVar, cast

from claudeopus.edge.metering.types import LeasedReservation, Outcome, Settlement, UsageSource, UsageStatus

__all__ = [
    "FRAME_HEADER_BYTES",
    "LEASED_BYTES",
    "decode_leased",
    "decode_settlement",
    "encode_frame",
    "encode_leased",
    "encode_settlement",
    "erase_frame",
    "read_frame",
    "store_frame",
]

SETTLEMENT_VERSION = 1
LEASED_SETTLEMENT_VERSION = 2
_LENGTH = struct.Struct("<I")
_CHECKSUM = struct.Struct("<I")
_SETTLEMENT = struct.Struct("<B16sQQQHHH")
_LEASED = struct.Struct("<16sQQQBQ")
FRAME_HEADER_BYTES = _LENGTH.size + _CHECKSUM.size
LEASED_BYTES = _LEASED.size
_NO_FRAME = b"\0" * FRAME_HEADER_BYTES  # length 0 with checksum 0: never whole (crc32 of four zero bytes is not 0)
_INT64_MAX = 2**63 - 1
_U16_MAX = 2**16 - 1
_Enum = TypeVar("_Enum", UsageStatus, UsageSource)
_Writable = bytearray | memoryview | mmap.mmap  # a file mapped into memory, or a buffer in tests


def encode_frame(payload: bytes) -> bytes:
    """``payload`` framed: length, checksum, payload."""
    length = _LENGTH.pack(len(payload))
    return length + _CHECKSUM.pack(zlib.crc32(length + payload)) + payload


def read_frame(data: bytes, offset: int = 0) -> tuple[bytes, int] | None:
    """The payload of the whole frame at ``offset`` and where the frame ends; None if no whole frame starts there."""
    if offset + FRAME_HEADER_BYTES > len(data):
        return None
    (length,) = _LENGTH.unpack_from(data, offset)
    (checksum,) = _CHECKSUM.unpack_from(data, offset + _LENGTH.size)
    start = offset + FRAME_HEADER_BYTES
    end = start + length
    if end > len(data):
        return None
    payload = data[start:end]
    if zlib.crc32(data[offset : offset + _LENGTH.size] + payload) != checksum:
        return None
    return payload, end


def store_frame(buffer: _Writable, offset: int, size: int, payload: bytes) -> None:
    """Write ``payload`` framed into ``buffer[offset : offset + size]`` (zero-padded), in place.

    The checksum is stored last, so a store cut short (a process killed mid-way) never reads
    back as a whole frame. ``ValueError`` if the frame does not fit in ``size`` bytes.
    """
    if FRAME_HEADER_BYTES + len(payload) > size:
        raise ValueError(f"a frame of {len(payload)} payload bytes does not fit in {size}")
    length = _LENGTH.pack(len(payload))
    buffer[offset : offset + _LENGTH.size] = length
    buffer[offset + FRAME_HEADER_BYTES : offset + size] = payload.ljust(size - FRAME_HEADER_BYTES, b"\0")
    _CHECKSUM.pack_into(buffer, offset + _LENGTH.size, zlib.crc32(length + payload))


def erase_frame(buffer: _Writable, offset: int) -> None:
    """Make the frame stored at ``offset`` read as no frame (its header zeroed)."""
    buffer[offset : offset + FRAME_HEADER_BYTES] = _NO_FRAME


def encode_settlement(settle: Settlement) -> bytes:
    """A settle's payload (47 bytes, or 96 with its leased reservation)."""
    outcome = settle.outcome
    payload = _SETTLEMENT.pack(
        SETTLEMENT_VERSION if settle.leased is None else LEASED_SETTLEMENT_VERSION,
        uuid.UUID(settle.request_id).bytes,
        _clamp(outcome.input_tokens, _INT64_MAX),
        _clamp(outcome.output_tokens, _INT64_MAX),
        _clamp(settle.latency_ns, _INT64_MAX),
        _clamp(outcome.status, _U16_MAX),
        _clamp(outcome.source, _U16_MAX),
        _clamp(outcome.http_status, _U16_MAX),
    )
    return payload if settle.leased is None else payload + encode_leased(settle.leased)


def decode_settlement(payload: bytes) -> Settlement | None:
    """The settle in ``payload``; None when it is not a settle payload of a version this edge knows."""
    if len(payload) not in (_SETTLEMENT.size, _SETTLEMENT.size + _LEASED.size):
        return None
    version, request_id, input_tokens, output_tokens, latency_ns, status, source, http_status = _SETTLEMENT.unpack_from(
        payload
    )
    if (version, len(payload)) == (SETTLEMENT_VERSION, _SETTLEMENT.size):
        leased = None
    elif (version, len(payload)) == (LEASED_SETTLEMENT_VERSION, _SETTLEMENT.size + _LEASED.size):
        leased = decode_leased(payload, _SETTLEMENT.size)
    else:
        return None
    outcome = Outcome(
        input_tokens, output_tokens, _member(UsageStatus, status), _member(UsageSource, source), http_status
    )
    return Settlement(str(uuid.UUID(bytes=request_id)), outcome, latency_ns, leased)


def encode_leased(leased: LeasedReservation) -> bytes:
    """A leased reservation's payload (49 bytes)."""
    return _LEASED.pack(
        uuid.UUID(leased.lease_id).bytes,
        _clamp(leased.estimated_input_tokens, _INT64_MAX),
        _clamp(leased.max_output_tokens, _INT64_MAX),
        _clamp(leased.reserved_cost_micros, _INT64_MAX),
        int(leased.stream),
        _clamp(leased.reserve_time_ns, _INT64_MAX),
    )


def decode_leased(payload: bytes, offset: int = 0) -> LeasedReservation:
    """The leased reservation encoded at ``offset`` of ``payload`` (``struct.error`` if it is cut short)."""
    lease_id, input_tokens, output_tokens, cost_micros, stream, reserve_time_ns = _LEASED.unpack_from(payload, offset)
    return LeasedReservation(
        str(uuid.UUID(bytes=lease_id)), input_tokens, output_tokens, cost_micros, bool(stream), reserve_time_ns
    )


def _member(kind: type[_Enum], value: int) -> _Enum:
    """The enum member for ``value``; a number this edge does not know stays a number, for control to judge."""
    try:
        return kind(value)
    except ValueError:
        return cast(_Enum, value)


def _clamp(value: int, top: int) -> int:
    return min(max(int(value), 0), top)
