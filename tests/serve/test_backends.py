"""The provider plugins behind the server, against the fake provider servers: the same
content from every backend on both wires, the seed's call shape, upstream failures mapped
(and scrubbed), concurrency, a client that goes away, and a clean stop."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import Reply
from tests.fakes.mistral import FakeMistral
from tests.fakes.openai import FakeOpenAI, error_reply
from tests.serve.conftest import Server, start_server, wait_for

PLUGINS = "llmcli-anthropic,llmcli-mistral,llmcli-openai"
MISTRAL_KEY = "mistral-test-0123456789abcdef"
OPENAI_KEY = "sk-openai-test-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
PROMPT = "Say something"
PREFILL = "The answer is"

#: model → the content every wire must return for PROMPT and PREFILL.
EXPECTED = {
    "mistral-small-latest": "Bonjour from Mistral.",  # echoes
    "gpt-4o": " and the rest of the reply.",  # emulated
    "claude-sonnet-4-5": "Hello from Claude.",  # eats
    "claude-opus-4-7": "Hello from Claude.",  # emulated (Claude 4.6+)
}

ALIASES = {"claude-sonnet-4-5": "sonnet-4.5", "claude-opus-4-7": "opus-4.7"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Any]]:
    with FakeMistral(api_key=MISTRAL_KEY) as mistral, \
            FakeOpenAI(api_key=OPENAI_KEY) as oai, \
            FakeAnthropic(api_key=ANTHROPIC_KEY) as claude:
        yield {"mistral": mistral, "openai": oai, "anthropic": claude}


def backend_env(fakes: dict[str, Any]) -> dict[str, str]:
    return {"MISTRAL_BASE_URL": fakes["mistral"].url, "MISTRAL_API_KEY": MISTRAL_KEY,
            "OPENAI_BASE_URL": fakes["openai"].url + "/v1", "OPENAI_API_KEY": OPENAI_KEY,
            "ANTHROPIC_BASE_URL": fakes["anthropic"].url, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}


@pytest.fixture(scope="module")
def server(fakes: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve") / "user", plugins=PLUGINS,
                           **backend_env(fakes))
    yield running
    running.stop()


@pytest.fixture
def mistral(fakes: dict[str, Any]) -> Iterator[FakeMistral]:
    fake: FakeMistral = fakes["mistral"]
    yield fake
    fake.delay = 0.0
    fake.queued.clear()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_openai_sdk_over_every_backend(server: Server, model: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": PROMPT},
                     {"role": "assistant", "content": PREFILL, "prefix": True}]
    if stream:
        content = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=model, messages=messages, stream=True, max_tokens=50) if c.choices)
    else:
        content = client.chat.completions.create(model=model, messages=messages,
                                                 max_tokens=50).choices[0].message.content
    assert content == EXPECTED[model]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_anthropic_sdk_over_every_backend(server: Server, model: str, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    expected = EXPECTED[model]
    # The SDK warns about model ids it knows to be deprecated; the server takes aliases.
    model = ALIASES.get(model, model)
    messages: Any = [{"role": "user", "content": PROMPT},
                     {"role": "assistant", "content": PREFILL}]
    if stream:
        with client.messages.stream(model=model, max_tokens=50, messages=messages) as events:
            text = "".join(events.text_stream)
    else:
        block: Any = client.messages.create(model=model, max_tokens=50,
                                            messages=messages).content[0]
        text = block.text
    assert text == expected


def test_seed_call_shape_reaches_mistral(server: Server, mistral: FakeMistral) -> None:
    body = {"model": "mistral-small-latest", "seed": 0, "temperature": 0, "stop": ["\n\n"],
            "messages": [{"role": "user", "content": PROMPT},
                         {"role": "assistant", "content": PREFILL, "prefix": True}]}
    reply = httpx.post(server.v1 + "/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == EXPECTED["mistral-small-latest"]
    sent = mistral.last_body
    assert sent["random_seed"] == 0 and sent["temperature"] == 0 and sent["stop"] == ["\n\n"]
    assert sent["messages"][-1] == {"role": "assistant", "content": PREFILL, "prefix": True}


def test_a_field_the_backend_cannot_take_is_a_400(server: Server) -> None:
    # The Anthropic API rejects sampling parameters; llmcli says so before any request.
    reply = httpx.post(server.v1 + "/chat/completions", timeout=30, json={
        "model": "claude-sonnet-4-5", "temperature": 0.5,
        "messages": [{"role": "user", "content": PROMPT}]})
    assert reply.status_code == 400
    assert "temperature" in reply.json()["error"]["message"]


def test_upstream_failures_are_mapped_and_scrubbed(server: Server,
                                                   fakes: dict[str, Any]) -> None:
    oai: FakeOpenAI = fakes["openai"]
    # A careless upstream that repeats the key in its error message.
    oai.enqueue(error_reply(401, f"Incorrect API key provided: {OPENAI_KEY}.",
                            code="invalid_api_key"))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 10}
    reply = httpx.post(server.v1 + "/chat/completions", json=body, timeout=30)
    assert reply.status_code == 502
    assert OPENAI_KEY not in reply.text
    assert reply.json()["error"]["code"] == "upstream_authentication_failed"
    oai.enqueue(error_reply(400, "This model's maximum context length is 8192 tokens."))
    reply = httpx.post(server.v1 + "/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400
    assert "maximum context length" in reply.json()["error"]["message"]
    assert all(OPENAI_KEY not in str(row) for row in server.rows())
    assert "Traceback" not in reply.text


def test_concurrent_slow_streams_take_about_as_long_as_one(server: Server,
                                                           mistral: FakeMistral) -> None:
    mistral.delay = 1.5
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    results: list[str] = []

    def ask() -> None:
        chunks = client.chat.completions.create(
            model="mistral-small-latest", stream=True,
            messages=[{"role": "user", "content": PROMPT}])
        results.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    started = time.monotonic()
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert results == [EXPECTED["mistral-small-latest"]] * 4
    assert elapsed < 1.5 * 2.5, elapsed  # four in a row would take 6 s or more


def test_a_client_that_goes_away_cancels_generation(server: Server,
                                                    mistral: FakeMistral) -> None:
    mistral.delay = 1.5
    body = {"model": "mistral-small-latest", "stream": True,
            "messages": [{"role": "user", "content": "going away"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/chat/completions", json=body, timeout=0.4)
    row = wait_for(lambda: [r for r in server.rows() if r["prompt"] == "going away"])[0]
    assert row["status"] == "partial"
    assert row["error"] == "interrupted"


def test_sigterm_stops_cleanly_and_logs_the_request_in_flight(
        fakes: dict[str, Any], mistral: FakeMistral, tmp_path: Path) -> None:
    running = start_server(tmp_path / "user", "--grace", "0", plugins=PLUGINS,
                           **backend_env(fakes))
    mistral.delay = 2.0
    body = {"model": "mistral-small-latest", "stream": True,
            "messages": [{"role": "user", "content": "in flight"}]}
    errors: list[BaseException] = []

    def client() -> None:
        try:
            httpx.post(running.v1 + "/chat/completions", json=body, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    wait_for(lambda: mistral.requests and mistral.requests[-1].body["messages"][0]["content"]
             == "in flight")
    code, out, err = running.stop(signal.SIGTERM)
    thread.join(30)
    assert code == 0, err
    assert "llmcli serve: stopped" in out
    assert "cancelling 1 request(s) in flight" in err
    [row] = running.rows()
    assert (row["prompt"], row["status"], row["error"]) == ("in flight", "partial",
                                                            "interrupted")
    assert "Traceback" not in err


def test_queued_upstream_reply_is_not_blocked_by_others(server: Server,
                                                        mistral: FakeMistral) -> None:
    # One slow request does not hold up a fast one on another backend.
    mistral.delay = 2.0
    slow = threading.Thread(target=lambda: httpx.post(server.v1 + "/chat/completions", json={
        "model": "mistral-small-latest", "messages": [{"role": "user", "content": "slow"}]},
        timeout=30))
    slow.start()
    time.sleep(0.3)
    started = time.monotonic()
    reply = httpx.post(server.v1 + "/chat/completions", timeout=30, json={
        "model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "fast"}]})
    assert reply.status_code == 200
    assert time.monotonic() - started < 1.5
    slow.join(30)


_ = Reply  # re-exported for readers: queued replies are tests.fakes.base.Reply
