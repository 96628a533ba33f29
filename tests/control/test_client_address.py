"""What login attempts are counted by (control/services/auth.py ``client_address``)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from claudeopus.control.services.auth import client_address


class Peer:
    """The one thing ``client_address`` reads of a servicer context."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("peer", "counted_as"),
    [
        ("ipv4:203.0.113.7:50123", "203.0.113.7"),
        # One host usually holds a whole /64: its addresses share one allowance.
        ("ipv6:%5B2001:db8:1:2:aaaa::1%5D:50123", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2:ffff:ffff:ffff:fffe%5D:40000", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:3::1%5D:40000", "2001:db8:1:3::/64"),
        ("ipv6:%5B::ffff:203.0.113.7%5D:50123", "203.0.113.7"),
        ("unix:/run/claudeopus.sock", "unix"),
    ],
)
def test_attempts_are_counted_per_ipv4_address_and_per_ipv6_64(peer: str, counted_as: str) -> None:
    assert client_address(cast(Any, Peer(peer))) == counted_as
