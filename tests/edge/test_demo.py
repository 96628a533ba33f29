"""The demo upstream: a fixed reply, cut by max_tokens, never longer."""

from __future__ import annotations

from claudeopus.edge.demo import REPLY, reply_words


def test_the_reply_is_cut_at_the_limit_and_never_grows_past_the_fixed_text() -> None:
    assert reply_words(3) == list(REPLY[:3])
    assert reply_words(10**8) == list(REPLY), "a huge max_tokens must not build a huge reply"
