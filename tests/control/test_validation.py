from __future__ import annotations

from datetime import UTC, datetime

import pytest

from claudeopus.control.domain import validation
from claudeopus.control.domain.errors import InvalidArgument
from claudeopus.control.domain.names import parse_id


@pytest.mark.parametrize("email", ["a\x00b@x.com", "a\x7fb@x.com", "a\x85b@x.com", "no-at.example.com", "a@b", ""])
def test_bad_emails_are_invalid_argument(email: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.email("account.email", email)
    assert caught.value.violations[0].field == "account.email"


def test_emails_are_normalised() -> None:
    assert validation.email("e", "  Ann@Example.COM ") == "ann@example.com"


@pytest.mark.parametrize("name", ["tab\there", "del\x7f", "c1\x9b"])
def test_display_names_refuse_control_characters(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validation.display_name("account.display_name", name)


@pytest.mark.parametrize(("seconds", "nanos"), [(10**12, 0), (-(10**12), 0), (0, -1), (0, 10**9)])
def test_out_of_range_timestamps_are_invalid_argument(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.timestamp("api_key.expire_time", seconds, nanos)
    assert caught.value.violations[0].field == "api_key.expire_time"


def test_timestamps_keep_microseconds() -> None:
    assert validation.timestamp("t", 1_800_000_000, 123_456_789) == datetime(2027, 1, 15, 8, 0, 0, 123_456, tzinfo=UTC)


@pytest.mark.parametrize("name", ["accounts/\u00b2", "accounts/\u0661\u0662", "accounts/-1", "accounts/", "keys/1"])
def test_resource_ids_are_ascii_digits_only(name: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_id("name", "accounts", name)
