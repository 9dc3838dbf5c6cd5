"""``Response.cancel()`` from another thread, through each provider's real SDK, against an
upstream that never answers (tests/fakes/silent.py): the thread reading the response is
released at once (not after the SDK's timeout), what arrived is logged as partial, and the
upstream connection is closed."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llmcli
from llmcli.cancel import Cancellation
from tests.fakes.silent import SilentUpstream, openai_chunk

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: provider → (plugin, model, its environment given the upstream's URL)
PROVIDERS: dict[str, tuple[str, str, Callable[[str], dict[str, str]]]] = {
    "openai": ("llmcli-openai", "gpt-4o",
               lambda url: {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": "sk-test-0000"}),
    "anthropic": ("llmcli-anthropic", "claude-sonnet-4-5",
                  lambda url: {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-0000"}),
    "mistral": ("llmcli-mistral", "mistral-small-latest",
                lambda url: {"MISTRAL_BASE_URL": url, "MISTRAL_API_KEY": "m" * 32}),
}


def logged(user_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(user_dir / "logs.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from responses")]


def read_in_thread(response: llmcli.Response) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def read() -> None:
        try:
            out.append(response.text())
        except Exception as exc:  # reported to the test through ``out``
            out.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_cancel_releases_a_thread_waiting_on_a_silent_upstream(
        name: str, load_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
        user_dir: Path) -> None:
    plugin, model, env = PROVIDERS[name]
    with SilentUpstream() as upstream:
        for key, value in env(upstream.url).items():
            monkeypatch.setenv(key, value)
        load_plugins(plugin)
        response = llmcli.get_model(model).prompt("Say hi", prefill="Hi")
        thread, out = read_in_thread(response)
        upstream.wait(lambda: upstream.requests)  # the request is out; no reply will come
        time.sleep(0.2)
        assert thread.is_alive()
        started = time.monotonic()
        response.cancel()
        thread.join(5)
        assert not thread.is_alive()
        # Shut down at once; at most one SDK retry pause (about half a second) on top.
        assert time.monotonic() - started < 1.5
        assert out == ["Hi"]
        assert (response.status, response.error) == ("partial", "interrupted")
        upstream.wait(lambda: upstream.open == 0, timeout=5)  # no connection left
        assert upstream.accepted == 1  # and none made after the cancel
    [row] = logged(user_dir)
    assert (row["status"], row["error"], row["text"]) == ("partial", "interrupted", "Hi")


def test_cancel_mid_stream_keeps_what_arrived(load_plugins: Callable[..., None],
                                              monkeypatch: pytest.MonkeyPatch,
                                              user_dir: Path) -> None:
    with SilentUpstream(prefix=[openai_chunk("Hi there,")]) as upstream:
        monkeypatch.setenv("OPENAI_BASE_URL", upstream.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000")
        load_plugins("llmcli-openai")
        # No prefill: an emulated one holds text back until it knows how the reply began.
        response = llmcli.get_model("gpt-4o").prompt("Say hi")
        seen: list[str] = []
        thread = threading.Thread(target=lambda: seen.extend(response), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while "".join(seen) != "Hi there," and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "".join(seen) == "Hi there,"
        response.cancel()
        thread.join(3)
        assert not thread.is_alive()
        upstream.wait(lambda: upstream.open == 0, timeout=5)
    [row] = logged(user_dir)
    assert (row["status"], row["error"], row["text"]) == ("partial", "interrupted",
                                                          "Hi there,")


def test_a_response_cancelled_before_it_starts_never_connects(
        load_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    with SilentUpstream() as upstream:
        monkeypatch.setenv("OPENAI_BASE_URL", upstream.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000")
        load_plugins("llmcli-openai")
        response = llmcli.get_model("gpt-4o").prompt("Say hi", prefill="Hi", log=False)
        response.cancel()
        assert response.text() == "Hi"
        assert (response.status, response.error) == ("partial", "interrupted")
        time.sleep(0.2)
        assert upstream.accepted == 0


def test_a_descriptor_reused_by_another_connection_is_left_alone() -> None:
    """A connection made under a cancellation and closed since: its descriptor number may
    now belong to another connection, which cancel() must not shut down."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()
        cancellation = Cancellation()
        with cancellation.running():
            first = socket.create_connection(address)
        number = first.fileno()
        server.accept()[0].close()
        first.close()
        second = socket.create_connection(address)  # the lowest free descriptor: the same
        peer, _ = server.accept()
        with second, peer:
            assert second.fileno() == number
            cancellation.cancel()
            second.sendall(b"still here")
            assert peer.recv(64) == b"still here"
