"""How ``llmcli serve`` runs a response (llmcli/serve/exchange.py): each in a task on the
event loop, so requests to a remote provider waiting on their upstream hold no thread each; a
model's slots, with the requests beyond them queued on the loop in arrival order; and the
shutdown's last resort, a response whose task did not end when cancelled logged from the
loop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.fakes.silent import SilentUpstream, openai_chunk
from tests.providers.conftest import PROVIDERS
from tests.serve.conftest import logged_rows as logged
from tests.serve.conftest import serving, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def open_stream(url: str, model: str, prompt: str) -> socket.socket:
    """A streamed chat completion from a plain socket (a client that adds no thread to this
    process), read until its first text has arrived: the request is under way."""
    address = httpx.URL(url)
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    client = socket.create_connection((address.host, address.port))
    client.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.host}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   .encode() + body)
    client.settimeout(60)
    seen = b""
    while b"Half a" not in seen:
        data = client.recv(65536)
        assert data, seen
        seen += data
    assert seen.startswith(b"HTTP/1.1 200"), seen
    return client


def test_streams_to_a_remote_model_waiting_on_their_upstream_hold_no_thread_each(
        user_dir: Path, load_plugins: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty streams to an OpenAI model whose upstream sent its first words and went
    silent, held open together: the server's threads do not grow with them (a thread per
    request, as serve had, adds one each). Each client that leaves then cancels its
    upstream call, and each response is logged once, as partial."""
    provider = PROVIDERS["openai"]
    with SilentUpstream(prefix=[openai_chunk("Half a")]) as upstream:
        for key, value in provider.env(upstream.url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv(provider.key_env, provider.key)
        load_plugins(provider.plugin)

        def ours() -> int:  # this process's threads but the fake upstream's (one a socket)
            return len([t for t in threading.enumerate() if not t.name.endswith("(_serve)")])

        with serving() as url:
            # One at a time, each under way before the next: the worker thread that
            # prepares a request (it may open the log) is the same one for all.
            clients = [open_stream(url, provider.model, "request 0")]
            before = ours()
            clients += [open_stream(url, provider.model, f"request {n}") for n in range(1, 20)]
            during = ours()
            assert len(upstream.requests) == 20
            for client in clients:
                client.close()
            upstream.wait(lambda: upstream.open == 0, timeout=10)
            rows = wait_for(lambda: len(logged(user_dir)) == 20 and logged(user_dir))
    assert during - before <= 2, f"{during - before} threads for 19 more requests in flight"
    assert sorted(r["prompt"] for r in rows) == sorted(f"request {n}" for n in range(20))
    assert {(r["status"], r["error"], r["text"]) for r in rows} == {
        ("partial", "interrupted", "Half a")}


def test_a_models_slots_are_its_declared_batch_concurrency() -> None:
    from llmcli_testmodels import TestModel

    from llmcli.capabilities import PrefillSupport
    from llmcli.serve.exchange import model_slots

    class Batched(TestModel):
        batch_concurrency = 2

    remote = TestModel("test-slots-remote", PrefillSupport.EATS_PREFIX)
    assert model_slots(remote) is None  # no declared limit: as many as arrive
    slots = model_slots(Batched("test-slots-batched", PrefillSupport.EATS_PREFIX))
    assert slots is not None
    # Shared by every request to the model, whichever object the request resolved to.
    assert model_slots(Batched("test-slots-batched", PrefillSupport.EATS_PREFIX)) is slots
    assert [slots.acquire(blocking=False) for _ in range(3)] == [True, True, False]
    slots.release()
    slots.release()


class _Held:
    """An AsyncResponse stand-in whose one chunk waits for ``go`` (what Exchange uses of
    one); ``stubborn``: its run ignores cancellation, as a backend no cancel reaches."""

    def __init__(self, name: str, stubborn: bool = False) -> None:
        self.id = name
        self.stubborn = stubborn
        self.go = asyncio.Event()
        self.started = self.cancelled = self.abandoned = False

    def cancel(self) -> None:
        self.cancelled = True
        if not self.stubborn:
            self.go.set()

    def abandon(self) -> None:
        self.abandoned = True

    async def aclose(self) -> None:
        pass

    async def parts(self) -> AsyncIterator[str]:
        self.started = True
        await self.go.wait()
        yield self.id


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_requests_beyond_a_models_slots_queue_in_arrival_order() -> None:
    """Beyond its declared slots, requests to a model wait on the event loop, first come
    first served, starting nothing (no thread) until a slot is free; one cancelled while
    queued never starts."""
    from llmcli.serve.exchange import Exchange

    async def scenario() -> None:
        threads = threading.active_count()
        slots = threading.BoundedSemaphore(2)
        held = [_Held(f"r{i}") for i in range(5)]
        exchanges = [Exchange(h, slots).start() for h in held]  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert [h.started for h in held] == [True, True] + [False] * 3
        assert threading.active_count() == threads
        exchanges[3].cancel()  # leaves the queue: never runs
        held[0].go.set()
        assert [c async for c in exchanges[0].chunks()] == ["r0"]
        await _until(lambda: held[2].started)
        await asyncio.sleep(0.1)
        assert not held[4].started  # r1 and r2 hold the two slots
        for h in held:
            h.go.set()
        for i in (1, 2, 4):
            assert [c async for c in exchanges[i].chunks()] == [f"r{i}"]
        assert [c async for c in exchanges[3].chunks()] == []
        assert not held[3].started  # never started
        assert not any(e.running for e in exchanges)
        assert [slots.acquire(blocking=False) for _ in range(3)] == [True, True, False]

    asyncio.run(scenario())


def test_stop_all_logs_what_did_not_end_when_cancelled() -> None:
    """At shutdown every exchange is cancelled; one whose run ignores it is abandoned (logged
    as partial from here) after the wait, and the others end by themselves."""
    from llmcli.serve.exchange import Exchange, stop_all

    async def scenario() -> None:
        done: list[str] = []
        held = [_Held("polite"), _Held("stubborn", stubborn=True)]
        def ended(exchange: Exchange) -> None:
            done.append(exchange.response.id)

        exchanges = [Exchange(h, on_done=ended).start() for h in held]  # type: ignore[arg-type]
        await _until(lambda: all(h.started for h in held))
        stuck = await stop_all(exchanges, wait=0.3)
        assert stuck == [exchanges[1]]
        assert [h.abandoned for h in held] == [False, True]
        assert done == ["polite"]
        held[1].go.set()  # the stubborn one ends at last
        await _until(lambda: not exchanges[1].running)

    asyncio.run(scenario())
