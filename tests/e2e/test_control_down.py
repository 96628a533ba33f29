"""With the control plane unreachable the edge fails closed: a quick 503, nothing forwarded."""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, ThreadedServer
from tests.support.processes import free_port, start_edge


def test_unreachable_control_is_503_and_nothing_reaches_the_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = FakeUpstream()
    monkeypatch.setenv("CLAUDEOPUS_CONTROL_TIMEOUT", "1")
    with ThreadedServer(upstream) as server:
        edge, port = start_edge(free_port(), server.url, secrets.token_urlsafe(32), tmp_path)
        try:
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-co-" + "B" * 43, max_retries=0, timeout=30
            )
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="fake-1", messages=[{"role": "user", "content": "x"}])
            assert time.monotonic() - started < 5
            assert caught.value.status_code == 503
            assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "control_unavailable"
            assert upstream.received == []
        finally:
            edge.stop()


def test_a_control_that_never_answers_is_503_within_the_control_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control that accepts the connection and then says nothing (hung, or a black hole): the same, in time."""
    upstream = FakeUpstream()
    monkeypatch.setenv("CLAUDEOPUS_CONTROL_TIMEOUT", "1")
    with socket.socket() as silent, ThreadedServer(upstream) as server:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the kernel; nobody ever reads or answers
        edge, port = start_edge(silent.getsockname()[1], server.url, secrets.token_urlsafe(32), tmp_path)
        try:
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-co-" + "B" * 43, max_retries=0, timeout=30
            )
            for stream in (False, True):
                started = time.monotonic()
                with pytest.raises(openai.InternalServerError) as caught:
                    client.chat.completions.create(
                        model="fake-1", messages=[{"role": "user", "content": "x"}], stream=stream
                    )
                elapsed = time.monotonic() - started
                assert 0.9 <= elapsed < 3, f"answered after {elapsed:.2f}s with a 1s control timeout"
                assert caught.value.status_code == 503
                assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "control_unavailable"
            assert upstream.received == []
        finally:
            edge.stop()
