"""The local runtime behind ``llmcli serve``: concurrent requests to one local model run
together in its scheduler (the text each gets is the text it gets alone), a local request in
flight never holds up a remote one, and a client that goes away stops its sequence.

The server is the real application on uvicorn, in this process (so that the tests can look at
the model's scheduler); the model is a tiny random Llama whose head never picks an end of turn,
so a request with a large ``max_tokens`` stays in flight until its client leaves.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.mistral import FakeMistral
from tests.serve.conftest import logged_rows as rows
from tests.serve.conftest import make_endless_model, register_local_model, serving, wait_for

#: The local model on a loaded 2-core machine: a minute's deadline, polled often.
SLOW: dict[str, float] = {"timeout": 60, "interval": 0.05}

pytest.importorskip("llmcli_local")
pytest.importorskip("transformers")

MISTRAL_KEY = "mistral-test-0123456789abcdef"
MODEL = "tiny-endless"
#: Prompt, prefill, options: each request's own greedy (or seeded) text.
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("Hi", "def quicksor", {"max_tokens": 12}),
    ("Give me a URL", "The URL is http:", {"max_tokens": 16}),
    ("Héllo", "naïve caf", {"max_tokens": 10}),
    ("Seeded", "The", {"max_tokens": 14, "temperature": 1.0, "seed": 7}),
]


@pytest.fixture(scope="module")
def endless_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_endless_model(tmp_path_factory.mktemp("tiny-endless"))


@pytest.fixture
def mistral() -> Iterator[FakeMistral]:
    fake = FakeMistral(api_key=MISTRAL_KEY)
    with fake:
        yield fake


@pytest.fixture
def server(endless_dir: Path, user_dir: Path, mistral: FakeMistral,
           load_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[str]:
    """``llmcli serve`` on a free port in this process, over the tiny model and Mistral."""
    register_local_model(user_dir, MODEL, endless_dir)
    monkeypatch.setenv("MISTRAL_BASE_URL", mistral.url)
    monkeypatch.setenv("MISTRAL_API_KEY", MISTRAL_KEY)
    # No speculation: the tiny model's text repeats, so prompt-lookup drafting (on by default
    # since speculation became a scheduler decision) can write its 5000 tokens within the
    # whole-reply client's 1.5 s, and the request would end before its client leaves. These
    # tests are about batching and cancellation, not speed.
    monkeypatch.setenv("LLMCLI_LOCAL_DRAFT", "none")
    load_plugins("llmcli-local", "llmcli-mistral")
    with serving() as url:
        yield url


def body(prompt: str, prefill: str, options: dict[str, Any], *, model: str = MODEL,
         stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, **options,
            "messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": prefill, "prefix": True}]}


def ask(url: str, prompt: str, prefill: str, options: dict[str, Any]) -> str:
    reply = httpx.post(url + "/v1/chat/completions", json=body(prompt, prefill, options),
                       timeout=120)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "length"  # the test model never ends a turn
    content: str = choice["message"]["content"]
    return content


def scheduler_of(directory: Path) -> Any:
    """The scheduler of the loaded tiny model in this process."""
    from llmcli_local import loader, scheduler

    [backend] = [b for key, b in loader.loaded_models().items() if key[0] == str(directory)]
    return scheduler.shared(backend)


class Endless:
    """A streamed request that runs until its client closes it, read delta by delta."""

    def __init__(self, url: str, prompt: str = "Keep going", prefill: str = "def ") -> None:
        self._client = httpx.Client(timeout=120)
        self._context = self._client.stream(
            "POST", url + "/v1/chat/completions",
            json=body(prompt, prefill, {"max_tokens": 5000}, stream=True))
        response = self._context.__enter__()
        assert response.status_code == 200
        self._lines = response.iter_lines()
        self.text = ""

    def read(self) -> str:
        """The next non-empty delta (the request is generating)."""
        for line in self._lines:
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            assert "error" not in payload, payload
            delta = payload["choices"][0]["delta"].get("content") or ""
            if delta:
                self.text += delta
                return delta
        raise AssertionError("the stream ended")

    def close(self) -> None:
        """Go away mid-stream, as a client that gave up."""
        self._context.__exit__(None, None, None)
        self._client.close()


@contextmanager
def endless(url: str, prompt: str = "Keep going") -> Iterator[Endless]:
    stream = Endless(url, prompt)
    try:
        stream.read()
        yield stream
    finally:
        stream.close()


def test_concurrent_local_requests_run_together_with_the_text_each_gets_alone(
        server: str, endless_dir: Path, user_dir: Path) -> None:
    alone = [ask(server, *request) for request in REQUESTS]
    assert len(set(alone)) == len(alone)  # four different texts to tell apart

    with endless(server) as long:
        scheduler = scheduler_of(endless_dir)
        stepped = scheduler.batched_steps
        together: dict[int, str] = {}

        def one(index: int) -> None:
            together[index] = ask(server, *REQUESTS[index])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(REQUESTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        # The long request is still in flight: every other one ran while it did, so each
        # decode step of theirs took two rows or more.
        long.read()
        assert scheduler.batched_steps > stepped
        assert scheduler.peak_batch >= 2
    assert [together[i] for i in range(len(REQUESTS))] == alone

    long_row = wait_for(lambda: [r for r in rows(user_dir) if r["prompt"] == "Keep going"],
                        **SLOW)[0]
    assert (long_row["status"], long_row["error"]) == ("partial", "interrupted")


def test_a_local_request_in_flight_never_holds_up_a_remote_one(
        server: str, endless_dir: Path, user_dir: Path) -> None:
    with endless(server) as long:
        reply = httpx.post(server + "/v1/chat/completions", timeout=60, json=body(
            "Say something", "The answer is", {"max_tokens": 20},
            model="mistral-small-latest"))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "Bonjour from Mistral."
        # The local one was generating before the remote one started and still is after it
        # ended: it held up nothing.
        long.read()
        assert scheduler_of(endless_dir).reserved > 0
    logged = wait_for(lambda: len(rows(user_dir)) == 2 and rows(user_dir), **SLOW)
    assert [(r["model"], r["status"]) for r in logged] == [
        ("mistral-small-latest", "complete"), (MODEL, "partial")]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_client_that_goes_away_stops_its_local_sequence(
        server: str, endless_dir: Path, user_dir: Path, stream: bool) -> None:
    ask(server, *REQUESTS[0])  # the model is loaded: the request below starts at once
    scheduler = scheduler_of(endless_dir)  # held here, so every request goes to this one
    if stream:
        with endless(server):
            assert scheduler.reserved > 0
    else:
        # A whole reply: the client gives up waiting for it.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server + "/v1/chat/completions", timeout=1.5, json=body(
                "Keep going", "def ", {"max_tokens": 5000}))
    # The sequence left the batch (its KV positions are free) long before its 5000 tokens.
    wait_for(lambda: scheduler.reserved == 0 and scheduler.waiting == 0, **SLOW)
    row = wait_for(lambda: [r for r in rows(user_dir) if r["prompt"] == "Keep going"],
                   **SLOW)[0]
    assert (row["status"], row["error"]) == ("partial", "interrupted")
    # Nothing of it runs any more: a new request steps alone, never batched with it.
    stepped = scheduler.batched_steps
    ask(server, *REQUESTS[0])
    assert scheduler.batched_steps == stepped
