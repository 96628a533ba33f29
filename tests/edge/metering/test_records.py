"""The one framed-record format under the spool and the lease journal, and its payloads."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest

from claudeopus.edge.metering.records import (
    FRAME_HEADER_BYTES,
    LEASED_BYTES,
    decode_leased,
    decode_settlement,
    encode_frame,
    encode_leased,
    encode_settlement,
    erase_frame,
    read_frame,
    store_frame,
)
from claudeopus.edge.metering.types import LeasedReservation, Outcome, Settlement, UsageSource, UsageStatus

LEASED = LeasedReservation(str(uuid.uuid4()), 120, 64, 99, True, 1_800_000_000_123_456_789)


def test_a_frame_is_length_then_checksum_of_length_and_payload_then_payload() -> None:
    frame = encode_frame(b"abc")
    length = struct.pack("<I", 3)
    assert frame == length + struct.pack("<I", zlib.crc32(length + b"abc")) + b"abc"
    assert read_frame(frame) == (b"abc", len(frame))
    assert read_frame(b"xx" + frame, 2) == (b"abc", len(frame) + 2)


@pytest.mark.parametrize("cut", range(FRAME_HEADER_BYTES + 3))
def test_a_frame_cut_short_is_no_frame(cut: int) -> None:
    assert read_frame(encode_frame(b"abc")[:cut]) is None


@pytest.mark.parametrize("offset", range(FRAME_HEADER_BYTES + 3))
def test_a_flipped_bit_anywhere_makes_it_no_frame(offset: int) -> None:
    frame = bytearray(encode_frame(b"abc"))
    frame[offset] ^= 0x01
    assert read_frame(bytes(frame)) is None


def test_a_frame_stored_in_place_is_padded_checksummed_last_and_erased_to_nothing() -> None:
    buffer = bytearray(b"\xff" * 64)
    store_frame(buffer, 16, 32, b"payload")
    assert buffer[:16] == b"\xff" * 16 and buffer[48:] == b"\xff" * 16, "only its own bytes"
    assert bytes(buffer[16:48]) == encode_frame(b"payload").ljust(32, b"\0")
    assert read_frame(bytes(buffer[16:48])) == (b"payload", FRAME_HEADER_BYTES + 7)

    class CutBeforeChecksum(bytearray):
        """A process killed before its last store: the checksum never lands."""

        def __setitem__(self, index: object, value: object) -> None:
            super().__setitem__(index, value)  # type: ignore[index]
            if isinstance(index, slice) and index.stop == 32:
                raise KeyboardInterrupt

    torn = CutBeforeChecksum(32)
    with pytest.raises(KeyboardInterrupt):
        store_frame(torn, 0, 32, b"payload")
    assert torn[8:15] == b"payload" and read_frame(bytes(torn)) is None, "payload written, checksum not: no frame"

    erase_frame(buffer, 16)
    assert read_frame(bytes(buffer[16:48])) is None
    assert read_frame(bytes(FRAME_HEADER_BYTES)) is None, "a zeroed header is never a whole frame"
    with pytest.raises(ValueError, match="does not fit"):
        store_frame(buffer, 0, FRAME_HEADER_BYTES + 2, b"abc")


def test_settlement_payloads_round_trip_with_and_without_a_lease() -> None:
    outcome = Outcome(5, 7, UsageStatus.SUCCEEDED, UsageSource.REPORTED, 200)
    plain = Settlement(str(uuid.uuid4()), outcome, 42)
    leased = Settlement(str(uuid.uuid4()), outcome, 42, LEASED)
    assert len(encode_settlement(plain)) == 47
    unleased = encode_settlement(Settlement(leased.request_id, outcome, 42))
    assert encode_settlement(leased) == b"\x02" + unleased[1:] + encode_leased(LEASED), (
        "version 2, then the reservation as the lease journal stores it"
    )
    assert decode_settlement(encode_settlement(plain)) == plain
    assert decode_settlement(encode_settlement(leased)) == leased
    assert decode_settlement(encode_settlement(plain) + b"\0") is None, "a length this edge does not know"
    assert decode_settlement(b"\x02" + encode_settlement(plain)[1:]) is None, "version and length disagree"


def test_a_leased_reservation_round_trips_clamped_and_refuses_a_non_uuid_id() -> None:
    assert len(encode_leased(LEASED)) == LEASED_BYTES == 49
    assert decode_leased(b"pad" + encode_leased(LEASED), 3) == LEASED
    huge = LeasedReservation(LEASED.lease_id, 2**70, -1, 5, False, 2**64)
    assert decode_leased(encode_leased(huge)) == LeasedReservation(LEASED.lease_id, 2**63 - 1, 0, 5, False, 2**63 - 1)
    with pytest.raises(ValueError, match="UUID"):
        encode_leased(LeasedReservation("a prompt", 1, 1, 1, False, 1))
