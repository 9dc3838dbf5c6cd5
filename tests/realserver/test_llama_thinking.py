"""llmcli against a real llama-server (commit 0c1e570) whose chat template thinks (#28): SmolLM2's
GGUF served with ``--jinja --chat-template-file`` a Qwen3-style template written here (the
generation prompt opens ``<think>\\n``; ``enable_thinking`` false closes it empty) and
``--reasoning-format deepseek``, reached as a user reaches it (``openai-servers add``).

What this build does, observed with curl and encoded here (docs/reasoning.md cites it):
- thinking on, no prefill: SmolLM2 never writes ``</think>``, so the server returns the whole
  reply as ``reasoning_content`` and an empty ``content``;
- a trailing assistant message (a prefill), thinking on or off: no 400; the server itself
  closes the thinking (``/apply-template`` renders ``<think></think>`` + prefill) and the
  continuation comes back as ``content``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import llmcli
from tests.realserver.conftest import serve_llama

PROMPT = "Implement quicksort in Python."
PREFILL = "```python\ndef quacksort("
MAX_TOKENS = 12
GREEDY = ["-o", "temperature", "0", "-o", "max_tokens", str(MAX_TOKENS)]

#: Qwen3-style: ChatML; the generation prompt opens <think>; enable_thinking=false renders the
#: empty block Qwen3 documents as "no think"; earlier answers lose their thinking.
TEMPLATE = """\
{%- for message in messages -%}
{%- set content = message.content -%}
{%- if message.role == 'assistant' and '</think>' in content -%}
{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}
{%- endif -%}
{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}
{{- '<think>\\n\\n</think>\\n\\n' -}}
{%- else -%}
{{- '<think>\\n' -}}
{%- endif -%}
{%- endif -%}
"""


@pytest.fixture(scope="module")
def thinking_server(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory,
                    ) -> Iterator[str]:
    template = tmp_path_factory.mktemp("template") / "qwen3-style.jinja"
    template.write_text(TEMPLATE)
    yield from serve_llama(llama_server_binary, tmp_path_factory, "--jinja",
                           "--chat-template-file", str(template),
                           "--reasoning-format", "deepseek")


def root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def render(base_url: str, messages: list[dict[str, str]], **extra: Any) -> str:
    reply = httpx.post(f"{root(base_url)}/apply-template", json={"messages": messages, **extra},
                       timeout=60)
    reply.raise_for_status()
    return str(reply.json()["prompt"])


USER = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def expected(thinking_server: str) -> str:
    """prefill + the server's own continuation of the prompt it renders for a prefill."""
    prompt = render(thinking_server, [*USER, {"role": "assistant", "content": PREFILL}])
    reply = httpx.post(f"{root(thinking_server)}/completion", timeout=120, json={
        "prompt": prompt, "n_predict": MAX_TOKENS, "temperature": 0})
    reply.raise_for_status()
    assert reply.json()["content"]
    return PREFILL + str(reply.json()["content"])


@pytest.fixture
def requests_sent(added: str, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The JSON bodies llmcli posts to /chat/completions after 'openai-servers add' (recorded
    on their way to the real server, which still answers them)."""
    from openai._base_client import SyncHttpxClientWrapper  # the SDK's HTTP client class

    sent: list[dict[str, Any]] = []
    send = SyncHttpxClientWrapper.send

    def recording(self: Any, request: Any, **kwargs: Any) -> Any:
        if request.url.path.endswith("/chat/completions"):
            sent.append(json.loads(request.content))
        return send(self, request, **kwargs)

    monkeypatch.setattr(SyncHttpxClientWrapper, "send", recording)
    return sent


@pytest.fixture
def added(thinking_server: str, load_plugins: Callable[..., None]) -> str:
    """'openai-servers add' as a user runs it: the probe meets the thinking template."""
    load_plugins("llmcli-openai")
    result = run_cli("openai-servers", "add", "lsrv", "--base-url", thinking_server,
                     "--model-name", "smollm2")
    assert result.exit_code == 0, result.output
    # A prefill closes the thinking on this build, so the probe sees what it sees without it.
    assert "prefill continue_final_message: stream eats, complete echoes" in result.output
    return "lsrv"


def run_cli(*args: str) -> Any:
    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_server_thinks_and_closes_the_thinking_for_a_prefill(thinking_server: str) -> None:
    """What the template and this build do, as the tests below rely on it."""
    assert render(thinking_server, USER).endswith("<|im_start|>assistant\n<think>\n")
    assert render(thinking_server, USER, chat_template_kwargs={"enable_thinking": False}
                  ).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    for kwargs in ({}, {"chat_template_kwargs": {"enable_thinking": False}}):
        prompt = render(thinking_server, [*USER, {"role": "assistant", "content": PREFILL}],
                        **kwargs)
        assert prompt.endswith("<|im_start|>assistant\n<think></think>" + PREFILL), kwargs


@pytest.mark.parametrize("stream_flag", [[], ["--no-stream"]])
def test_skip_sends_enable_thinking_false_and_prints_the_prefill_once(
        added: str, expected: str, requests_sent: list[dict[str, Any]],
        stream_flag: list[str]) -> None:
    result = run_cli("-m", added, "--prefill", PREFILL, PROMPT, *GREEDY, *stream_flag,
                     "-o", "reasoning_prefill", "skip", "--json")
    assert result.exit_code == 0, result.output
    (body,) = requests_sent
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"][-1] == {"role": "assistant", "content": PREFILL}
    data = json.loads(result.stdout)
    assert data["text"] == expected
    assert data["text"].startswith(PREFILL)
    assert not data["text"][len(PREFILL):].startswith(PREFILL)
    assert data["reasoning"] is None
    assert "<think>" not in data["text"] and "</think>" not in data["text"]
    # The plain output too: the answer alone on stdout, once.
    plain = run_cli("-m", added, "--prefill", PREFILL, PROMPT, *GREEDY, *stream_flag,
                    "-o", "reasoning_prefill", "skip", "--reasoning")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.rstrip("\n") == expected
    assert plain.stderr == ""


def server_reasoning(base_url: str) -> dict[str, Any]:
    reply = httpx.post(f"{base_url}/chat/completions", timeout=120, json={
        "model": "smollm2", "messages": USER, "temperature": 0, "max_tokens": MAX_TOKENS})
    reply.raise_for_status()
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    return dict(choice["message"])


@pytest.mark.parametrize("stream", [True, False])
def test_thinking_on_the_reasoning_is_shown_as_reasoning_not_as_the_answer(
        added: str, thinking_server: str, requests_sent: list[dict[str, Any]],
        stream: bool) -> None:
    # SmolLM2 never closes </think> in MAX_TOKENS: all of it is reasoning, no answer.
    message = server_reasoning(thinking_server)
    thought = message["reasoning_content"]
    assert thought.strip() and not message["content"]

    response = llmcli.get_model(added).prompt(PROMPT, stream=stream, log=False,
                                               temperature=0, max_tokens=MAX_TOKENS)
    assert response.text() == ""
    assert response.reasoning == thought
    assert response.stop_reason == "max_tokens"
    assert "chat_template_kwargs" not in requests_sent[-1]

    flags = [] if stream else ["--no-stream"]
    as_json = json.loads(run_cli("-m", added, PROMPT, *GREEDY, *flags, "--json").stdout)
    assert (as_json["text"], as_json["reasoning"]) == ("", thought)
    # In a pipe: not shown unless asked; asked, on stderr only, never on stdout.
    piped = run_cli("-m", added, PROMPT, *GREEDY, *flags)
    assert thought.strip() not in piped.stdout + piped.stderr
    shown = run_cli("-m", added, PROMPT, *GREEDY, *flags, "--reasoning")
    assert shown.exit_code == 0, shown.output
    assert shown.stderr.startswith(thought)
    assert shown.stdout.strip() == ""


@pytest.mark.parametrize("style", ["continue_final_message", "trailing_assistant", "prefix"])
@pytest.mark.parametrize("stream", [True, False])
def test_a_prefill_with_thinking_on_still_begins_the_answer_once(
        added: str, expected: str, requests_sent: list[dict[str, Any]], user_dir: Path,
        style: str, stream: bool) -> None:
    """No policy: the trailing assistant message goes with thinking on; this build takes it
    (no 400, so no retry) and the answer is the prefill once, then the continuation."""
    servers = user_dir / "openai-servers.json"
    config = json.loads(servers.read_text())
    config["servers"][0]["prefill_style"] = style
    servers.write_text(json.dumps(config))

    response = llmcli.get_model(added).prompt(PROMPT, prefill=PREFILL, stream=stream,
                                               temperature=0, max_tokens=MAX_TOKENS)
    assert response.text() == expected
    assert response.reasoning is None
    (body,) = requests_sent
    assert "chat_template_kwargs" not in body
    assert body["messages"][-1]["content"] == PREFILL
    assert "retried" not in response.usage().details
    assert json.loads(response.record().usage_json or "{}").get("retried") is None
