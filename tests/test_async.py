"""The async Python API (``llmcli.get_async_model``): the same prompts, checks, normalizer,
errors and log as the synchronous path, over each provider's real async SDK client against
the local fakes (tests/fakes/) on 127.0.0.1; cancellation of the task mid-stream; an async
chain; and the point of it all: many requests in flight to a remote provider hold no thread
each."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import llmcli
from llmcli.contract import has_native_async
from llmcli.errors import PartialResponseError, ProviderStatusError
from llmcli.record import ToolCall
from tests.fakes.silent import SilentUpstream
from tests.hardening import test_provider_faults
from tests.providers.conftest import PROVIDERS, Provider, serving

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Each provider in turn, its fake serving (the fault matrix's fixture).
backend = test_provider_faults.backend

#: The providers whose plugin implements execute_async natively.
NATIVE = ("anthropic", "mistral", "openai")


def logged(user_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(user_dir / "logs.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from responses order by datetime_utc")]


def ask_async(provider: Provider, **kwargs: Any) -> llmcli.AsyncResponse:
    kwargs.setdefault("log", False)
    kwargs.setdefault("prefill", provider.prefill)
    return llmcli.get_async_model(provider.model).prompt(provider.prompt, **kwargs)


@pytest.mark.parametrize("stream", [True, False])
def test_async_prompt_begins_with_the_prefill_once(backend: tuple[Provider, Any],
                                                   stream: bool) -> None:
    provider, fake = backend
    provider.script(fake, 'a", "b"]')
    model = llmcli.get_async_model(provider.model)
    assert has_native_async(model.model) is (provider.name in NATIVE)

    async def main() -> tuple[list[str], str, llmcli.Usage]:
        response = ask_async(provider, stream=stream)
        chunks = [chunk async for chunk in response]
        return chunks, await response.text(), await response.usage()

    chunks, text, usage = asyncio.run(main())
    assert text == provider.prefill + 'a", "b"]'
    assert "".join(chunks) == text
    assert usage.stop_reason is not None
    # The same words as the synchronous path, through the same normalizer.
    assert provider.ask(stream=stream).text() == text


@pytest.mark.parametrize(("model", "capability"), [
    ("claude-sonnet-4-5", "eats"),      # the API continues the assistant turn
    ("claude-sonnet-4-6", "emulated"),  # 4.6 refuses prefill: asked for in the prompt
])
def test_each_prefill_capability_on_the_async_path(
        model: str, capability: str, load_plugins: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    provider = PROVIDERS["anthropic"]
    with serving(provider, monkeypatch, load_plugins) as fake:
        fake.reply = 'x", "y"]'

        async def main() -> llmcli.AsyncResponse:
            return await llmcli.get_async_model(model).prompt(
                "Two letters as JSON.", prefill='["', log=False)

        response = asyncio.run(main())
    assert response.prefill_support.value == capability
    assert response.text_so_far().startswith('["')
    assert response.text_so_far().count('["') == 1


def test_an_echoing_server_on_the_async_path(test_models: type) -> None:
    """A backend that echoes the prefill back (here through the default execute_async, on
    one worker thread): the text still begins with it once."""
    async def main() -> str:
        model = llmcli.get_async_model("test-echoes")
        return await model.prompt("Q", prefill="Start:", reply=" the rest", log=False).text()

    assert asyncio.run(main()) == "Start: the rest"


@pytest.mark.parametrize("status", [401, 429, 500])
def test_async_errors_are_the_sync_path_s(backend: tuple[Provider, Any], status: int) -> None:
    """The same typed, scrubbed one-line error (and retries) as the synchronous template."""
    provider, fake = backend
    # Every request fails (Mistral's SDK bounds its retries by time, not count).
    fake.enqueue(*[provider.error(status, "the fake says no", {}) for _ in range(200)])
    with pytest.raises(ProviderStatusError) as sync_error:
        provider.ask(max_retries=1).text()

    async def main() -> None:
        await ask_async(provider, max_retries=1)

    with pytest.raises(ProviderStatusError) as async_error:
        asyncio.run(main())
    assert str(async_error.value) == str(sync_error.value)
    assert async_error.value.status == status
    assert provider.key not in str(async_error.value)


@pytest.mark.parametrize("name", NATIVE)
def test_a_broken_stream_is_logged_as_partial(name: str, load_plugins: Callable[..., None],
                                              monkeypatch: pytest.MonkeyPatch,
                                              user_dir: Path) -> None:
    provider = PROVIDERS[name]
    with serving(provider, monkeypatch, load_plugins) as fake:
        provider.script(fake, "one two three four five six seven eight nine ten")
        fake.cut_after = 4  # the connection closes after a few events

        async def main() -> llmcli.AsyncResponse:
            response = ask_async(provider, log=True)
            with pytest.raises(PartialResponseError):
                await response
            return response

        response = asyncio.run(main())
    assert response.status == "partial"
    [row] = logged(user_dir)
    assert row["status"] == "partial"
    assert row["text"] == response.text_so_far() and row["text"].startswith(provider.prefill)


def test_the_log_row_is_the_sync_path_s(backend: tuple[Provider, Any], user_dir: Path) -> None:
    provider, fake = backend
    provider.script(fake, 'q"]')

    async def main() -> llmcli.AsyncResponse:
        return await ask_async(provider, log=True)

    response = asyncio.run(main())
    provider.ask(log=True).text()
    async_row, sync_row = logged(user_dir)
    assert async_row["id"] == response.id
    for column in ("model", "prompt", "prefill", "prefill_support", "text", "status",
                   "input_tokens", "output_tokens", "stop_reason"):
        assert async_row[column] == sync_row[column], column
    assert async_row["status"] == "complete"


@pytest.mark.parametrize("name", NATIVE)
def test_cancelling_the_task_mid_stream_keeps_what_arrived(
        name: str, load_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
        user_dir: Path) -> None:
    provider = PROVIDERS[name]
    with SilentUpstream() as upstream:
        for key, value in provider.env(upstream.url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv(provider.key_env, provider.key)
        load_plugins(provider.plugin)

        async def main() -> llmcli.AsyncResponse:
            response = llmcli.get_async_model(provider.model).prompt("Hi", prefill="Hi")
            task = asyncio.ensure_future(response.text())
            while not upstream.requests:  # the request is out; no reply will come
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return response

        started = time.monotonic()
        response = asyncio.run(main())
        assert time.monotonic() - started < 10
        upstream.wait(lambda: upstream.open == 0, timeout=5)  # the connection let go
    assert (response.status, response.error) == ("partial", "interrupted")
    [row] = logged(user_dir)  # logged once
    assert (row["status"], row["error"], row["text"]) == ("partial", "interrupted", "Hi")


def test_response_cancel_ends_the_iteration_quietly(test_models: type,
                                                   user_dir: Path) -> None:
    async def main() -> tuple[str, llmcli.AsyncResponse]:
        response = llmcli.get_async_model("test-eats").prompt(
            "Q", prefill="A", reply=" b c d e f g h i j", chunk_size=2, delay=0.05)
        seen = ""
        async for chunk in response:
            seen += chunk
            if len(seen) > 3:
                response.cancel()
        return seen, response

    seen, response = asyncio.run(main())
    assert (response.status, response.error) == ("partial", "interrupted")
    assert seen == response.text_so_far() and seen.startswith("A")
    [row] = logged(user_dir)
    assert (row["status"], row["text"]) == ("partial", seen)


def test_twenty_requests_in_flight_hold_no_thread_each(load_plugins: Callable[..., None],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the async API: requests to a remote provider waiting on their upstream
    are coroutines, not threads. The default execute_async (a thread per request) fails
    this."""
    provider = PROVIDERS["anthropic"]
    with SilentUpstream() as upstream:
        for key, value in provider.env(upstream.url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv(provider.key_env, provider.key)
        load_plugins(provider.plugin)

        def ours() -> int:  # the client side's threads (the upstream's serve each socket)
            return len([t for t in threading.enumerate() if not t.name.endswith("(_serve)")])

        async def main() -> tuple[int, int, list[llmcli.AsyncResponse]]:
            # Name resolution runs on the loop's executor: two threads at most, shared.
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
            before = ours()
            model = llmcli.get_async_model(provider.model)
            responses = [model.prompt(f"Question {n}", prefill="A", log=False)
                         for n in range(20)]
            tasks = [asyncio.ensure_future(r.text()) for r in responses]
            while len(upstream.requests) < 20:
                await asyncio.sleep(0.01)
            during = ours()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return before, during, responses

        before, during, responses = asyncio.run(main())
        upstream.wait(lambda: upstream.open == 0, timeout=5)
    assert len(upstream.requests) == 20
    assert during - before <= 2, f"{during - before} threads for 20 requests in flight"
    assert {(r.status, r.error) for r in responses} == {("partial", "interrupted")}


def weather(city: str) -> dict[str, str]:
    """The weather in a city."""
    return {"city": city, "sky": "clear"}


async def forecast(city: str, days: int = 1) -> dict[str, Any]:
    """The forecast, from an async service."""
    await asyncio.sleep(0)
    return {"city": city, "days": days}


def test_async_chain_runs_built_in_plain_and_async_tools(test_models: type,
                                                         user_dir: Path) -> None:
    from llmcli.tools import builtin_tools

    version = next(t for t in builtin_tools() if t.name == "llmcli_version")
    test_models.queue.append([ToolCall("c1", "llmcli_version", {}),
                              ToolCall("c2", "weather", {"city": "Oslo"}),
                              ToolCall("c3", "forecast", {"city": "Oslo", "days": 2})])
    seen: list[str] = []

    async def main() -> llmcli.AsyncChainResponse:
        chain = llmcli.get_async_model("test-tools").chain(
            "Weather?", tools=[version, weather, forecast], prefill="Let me check.",
            after_call=lambda tool, call, result: seen.append(result.output))
        return await chain

    chain = asyncio.run(main())
    assert len(chain.responses) == 2
    from importlib.metadata import version as installed

    assert seen == [installed("llmcli"), '{"city": "Oslo", "sky": "clear"}',
                    '{"city": "Oslo", "days": 2}']
    assert chain.responses[0].text_so_far().startswith("Let me check.")
    assert chain.responses[-1].text_so_far() == "results: " + "; ".join(seen)
    rows = logged(user_dir)
    assert [r["status"] for r in rows] == ["complete", "complete"]


def test_an_async_tool_that_raises_ends_the_chain_with_its_error(test_models: type) -> None:
    async def broken(city: str) -> str:
        """Always fails."""
        raise RuntimeError("service down")

    test_models.queue.append([ToolCall("c1", "broken", {"city": "Oslo"})])

    async def main() -> None:
        await llmcli.get_async_model("test-tools").chain("Weather?", tools=[broken])

    with pytest.raises(llmcli.ToolError, match="service down"):
        asyncio.run(main())


def test_async_conversation_carries_the_earlier_turns(test_models: type) -> None:
    async def main() -> None:
        conversation = llmcli.get_async_model("test-eats").conversation()
        first = await conversation.prompt("One", reply="first answer")
        await conversation.prompt("Two", reply="second")
        assert first.status == "complete"
        unawaited = conversation.prompt("Three")
        with pytest.raises(llmcli.ConversationError, match="await it"):
            conversation.prompt("Four")
        await unawaited

    asyncio.run(main())
    sent = test_models.requests[1].messages()
    assert [(m.role, m.content) for m in sent] == [
        ("user", "One"), ("assistant", "first answer"), ("user", "Two")]


def test_a_logged_conversation_continues_asynchronously(test_models: type) -> None:
    """``-c`` from Python: a conversation read back from the log, continued on the loop."""
    llmcli.get_model("test-eats").prompt("Remember 7", reply="Noted").text()

    async def main() -> str:
        model = llmcli.get_async_model("test-eats")
        conversation = model.conversation(llmcli.load_conversation())
        return await conversation.prompt("What was it?", reply="7").text()

    assert asyncio.run(main()) == "7"
    assert [m.content for m in test_models.requests[-1].messages()] == [
        "Remember 7", "Noted", "What was it?"]


def test_refused_before_any_request(test_models: type) -> None:
    """The checks of model.prompt, made when the response is prepared, before any I/O."""
    with pytest.raises(llmcli.PrefillUnsupportedError):
        llmcli.get_async_model("test-unsupported").prompt("Q", prefill="A")
    with pytest.raises(llmcli.OptionsError):
        llmcli.get_async_model("test-eats").prompt("Q", no_such_option=1)
    assert test_models.requests == []


def test_schema_retries_run_on_the_async_path(test_models: type) -> None:
    test_models.queue.extend([["not json"], ['{"n": 2}']])

    async def main() -> Any:
        response = llmcli.get_async_model("test-eats").prompt(
            "Number?", schema={"type": "object", "properties": {"n": {"type": "integer"}},
                               "required": ["n"]})
        return await response.json(), await response.usage()

    data, usage = asyncio.run(main())
    assert data == {"n": 2}
    assert usage.details["schema_attempts"] == 2
