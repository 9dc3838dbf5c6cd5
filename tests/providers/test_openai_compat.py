"""OpenAI-compatible servers: every prefill style x stream x API/CLI through the real SDK, the
servers file and the ``openai-servers`` commands."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli
from llmcli import PrefillSupport
from llmcli.errors import ConfigError, KeyNeededError, ProviderError
from llmcli.models import Message, Request
from tests.fakes.openai import FRESH_TURN, FakeOpenAI

CONTINUATION = " and the rest of the reply."
PREFILL = '{"answer": '

# style -> (fake mode, base URL path, extra entry fields, capability)
STYLES: dict[str, tuple[str, str, dict[str, Any], PrefillSupport]] = {
    "continue_final_message": ("vllm", "/v1", {}, PrefillSupport.EATS_PREFIX),
    "prefix": ("deepseek", "/beta", {}, PrefillSupport.EATS_PREFIX),
    "prefix-echoes": ("deepseek", "/beta", {"echoes": True}, PrefillSupport.ECHOES_PREFIX),
    "trailing_assistant": ("llama", "/v1", {}, PrefillSupport.EATS_PREFIX),
    "none": ("openai", "/v1", {}, PrefillSupport.EMULATED),
}


@pytest.fixture
def servers_file(user_dir: Path) -> Path:
    return user_dir / "openai-servers.json"


def write_servers(path: Path, *entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"servers": list(entries)}))


@pytest.fixture
def server(request: pytest.FixtureRequest, servers_file: Path,
           load_plugins: Callable[..., None]) -> Iterator[FakeOpenAI]:
    """A fake in the mode for ``request.param`` (a STYLES key), configured as model 'local'."""
    style_key: str = request.param
    mode, path, extra, _ = STYLES[style_key]
    with FakeOpenAI(mode, continuation=CONTINUATION, echoes=bool(extra.get("echoes"))) as fake:
        write_servers(servers_file, {
            "id": "local", "model_name": "served-model", "base_url": fake.url + path,
            "prefill_style": style_key.split("-")[0], **extra,
        })
        load_plugins("llmcli-openai")
        yield fake  # type: ignore[misc]


def body_of(fake: FakeOpenAI) -> dict[str, Any]:
    body = fake.chat_requests[-1].body
    assert isinstance(body, dict)
    return body


def run_cli(*args: str) -> Any:
    from llmcli.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# -- every style x stream x API/CLI -------------------------------------------------------------


@pytest.mark.parametrize("server", list(STYLES), indirect=True)
@pytest.mark.parametrize("stream", [True, False])
def test_api_prefill_every_style(server: FakeOpenAI, stream: bool) -> None:
    model = llmcli.get_model("local")
    response = model.prompt("Give JSON", prefill=PREFILL, stream=stream, log=False)
    assert response.text() == PREFILL + CONTINUATION
    body = body_of(server)
    assert body["model"] == "served-model"
    assert body["stream"] is stream
    style_key = next(k for k, v in STYLES.items() if v[0] == server.mode
                     and bool(v[2].get("echoes")) == server.echoes)
    assert response.prefill_support is STYLES[style_key][3]
    messages = body["messages"]
    if server.mode == "openai":
        assert messages[-1] == {"role": "user", "content": "Give JSON"}
        assert f"<reply_prefix>{PREFILL}</reply_prefix>" in messages[0]["content"]
        return
    final = {"role": "assistant", "content": PREFILL}
    if server.mode == "deepseek":
        final["prefix"] = True
    assert messages[-1] == final
    if server.mode == "vllm":
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
    else:
        assert "continue_final_message" not in body


@pytest.mark.parametrize("server", list(STYLES), indirect=True)
@pytest.mark.parametrize("stream_flag", [[], ["--no-stream"]])
def test_cli_prefill_every_style(server: FakeOpenAI, stream_flag: list[str]) -> None:
    result = run_cli("-m", "local", "--prefill", PREFILL, "Give JSON", *stream_flag)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == PREFILL + CONTINUATION.rstrip()
    assert body_of(server)["stream"] is (not stream_flag)


@pytest.mark.parametrize("server", ["continue_final_message", "prefix", "trailing_assistant"],
                         indirect=True)
def test_no_prefill_sends_no_assistant_message_and_no_flags(server: FakeOpenAI) -> None:
    text = llmcli.get_model("local").prompt("Hi", stream=False, log=False).text()
    assert text == FRESH_TURN
    body = body_of(server)
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert "continue_final_message" not in body and "add_generation_prompt" not in body


@pytest.mark.parametrize("server", ["trailing_assistant"], indirect=True)
def test_compatible_options_use_max_tokens(server: FakeOpenAI) -> None:
    llmcli.get_model("local").prompt("Hi", prefill="A", stream=False, log=False,
                                      max_tokens=9, temperature=0.1).text()
    body = body_of(server)
    assert body["max_tokens"] == 9 and body["temperature"] == 0.1
    assert body["messages"][0]["role"] == "user"  # no system message was asked for


@pytest.mark.parametrize("server", ["continue_final_message"], indirect=True)
def test_broken_stream_on_a_native_style(server: FakeOpenAI) -> None:
    server.cut_after = 3
    response = llmcli.get_model("local").prompt("Hi", prefill=PREFILL, log=False)
    with pytest.raises(llmcli.PartialResponseError, match="local .*stream broke off"):
        response.text()
    assert response.text_so_far().startswith(PREFILL)
    assert response.text_so_far() != PREFILL + CONTINUATION


# -- the servers' own rules, enforced by the fakes ------------------------------------------------


def test_vllm_rejects_both_flags_and_we_report_its_message(
    servers_file: Path, load_plugins: Callable[..., None],
) -> None:
    """Our plugin never sends both; this shows what happens when a server says no."""
    import openai

    with FakeOpenAI("vllm") as fake:
        client = openai.OpenAI(api_key="x", base_url=fake.url + "/v1", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="Cannot set both"):
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "A"}],
                extra_body={"continue_final_message": True, "add_generation_prompt": True})
        # continue_final_message alone: vLLM's add_generation_prompt defaults to true.
        with pytest.raises(openai.BadRequestError, match="Cannot set both"):
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "A"}],
                extra_body={"continue_final_message": True})


def test_deepseek_prefix_needs_the_beta_url(servers_file: Path,
                                           load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("deepseek") as fake:
        write_servers(servers_file, {"id": "ds", "model_name": "deepseek-chat",
                                     "base_url": fake.url + "/v1", "prefill_style": "prefix"})
        load_plugins("llmcli-openai")
        response = llmcli.get_model("ds").prompt("Hi", prefill="A", log=False)
        with pytest.raises(ProviderError, match=r"rejected the request \(400\): prefix is only "
                           "available when using beta api") as info:
            response.text()
    assert info.value.status == 400
    assert info.value.provider.startswith("ds ")


def test_key_from_env_var(servers_file: Path, load_plugins: Callable[..., None],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI("llama", api_key="secret-token-1234", continuation=CONTINUATION) as fake:
        write_servers(servers_file, {"id": "k", "model_name": "m", "base_url": fake.url + "/v1",
                                     "prefill_style": "trailing_assistant",
                                     "key_env": "MY_SERVER_KEY"})
        load_plugins("llmcli-openai")
        model = llmcli.get_model("k")
        with pytest.raises(KeyNeededError, match="MY_SERVER_KEY"):
            model.prompt("Hi", prefill="A", log=False)
        monkeypatch.setenv("MY_SERVER_KEY", "secret-token-1234")
        assert model.prompt("Hi", prefill="A", log=False).text() == "A" + CONTINUATION
        assert fake.chat_requests[-1].headers["authorization"] == "Bearer secret-token-1234"
        monkeypatch.setenv("MY_SERVER_KEY", "wrong-token-5678")
        with pytest.raises(ProviderError, match="rejected the API key.*MY_SERVER_KEY") as info:
            model.prompt("Hi", prefill="A", log=False).text()
        assert "wrong-token-5678" not in str(info.value)


def test_keyless_server_ignores_openai_base_url(servers_file: Path,
                                               load_plugins: Callable[..., None],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    with FakeOpenAI("llama", continuation=CONTINUATION) as fake:
        write_servers(servers_file, {"id": "free", "model_name": "m",
                                     "base_url": fake.url + "/v1/",
                                     "prefill_style": "trailing_assistant"})
        load_plugins("llmcli-openai")
        model = llmcli.get_model("free")
        assert model.needs_key is None
        assert model.prompt("Hi", prefill="A", log=False).text() == "A" + CONTINUATION


def test_openai_account_headers_stay_with_openai(servers_file: Path,
                                                 load_plugins: Callable[..., None],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-private")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-private")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-000000000000")
    with FakeOpenAI("llama", continuation=CONTINUATION) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
        write_servers(servers_file, {"id": "third", "model_name": "m",
                                     "base_url": fake.url + "/v1",
                                     "prefill_style": "trailing_assistant"})
        load_plugins("llmcli-openai")
        llmcli.get_model("third").prompt("Hi", prefill="A", log=False).text()
        assert "openai-organization" not in fake.chat_requests[-1].headers
        assert "openai-project" not in fake.chat_requests[-1].headers
        llmcli.get_model("gpt-4o").prompt("Hi", log=False).text()
        assert fake.chat_requests[-1].headers["openai-organization"] == "org-private"


# -- presets resolved by name -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "url", "support", "key_env"), [
    ("vllm/Qwen/Qwen2.5-7B-Instruct", "http://localhost:8000/v1", PrefillSupport.EATS_PREFIX,
     None),
    ("llama-server/any", "http://localhost:8080/v1", PrefillSupport.EATS_PREFIX, None),
    ("ollama/qwen2.5:7b", "http://localhost:11434/v1", PrefillSupport.EATS_PREFIX, None),
    ("deepseek/deepseek-chat", "https://api.deepseek.com/beta", PrefillSupport.EATS_PREFIX,
     "DEEPSEEK_API_KEY"),
    ("openrouter/openai/gpt-4o", "https://openrouter.ai/api/v1", PrefillSupport.EMULATED,
     "OPENROUTER_API_KEY"),
])
def test_preset_names_resolve(load_plugins: Callable[..., None], name: str, url: str,
                              support: PrefillSupport, key_env: str | None) -> None:
    load_plugins("llmcli-openai")
    model = llmcli.get_model(name)
    assert model.model_id == name
    assert model.prefill_support is support
    assert model.backend.base_url == url  # type: ignore[attr-defined]
    assert model.backend.api_model == name.split("/", 1)[1]  # type: ignore[attr-defined]
    assert (model.needs_key.env_var if model.needs_key else None) == key_env


def test_unknown_prefix_is_not_claimed(load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    with pytest.raises(llmcli.UnknownModelError):
        llmcli.get_model("nosuchprovider/model")


# -- the servers file -----------------------------------------------------------------------------


def test_malformed_json_file(servers_file: Path, load_plugins: Callable[..., None]) -> None:
    servers_file.parent.mkdir(parents=True, exist_ok=True)
    servers_file.write_text('{"servers": [{"id": "qwen",}]}')
    load_plugins("llmcli-openai")
    # Other models keep working...
    assert llmcli.get_model("gpt-4o").model_id == "gpt-4o"
    # ...and asking for a model from the broken file says what is wrong, in one line.
    with pytest.raises(ConfigError) as info:
        llmcli.get_model("qwen")
    message = str(info.value)
    assert str(servers_file) in message and "not valid JSON" in message and "line 1" in message
    assert "\n" not in message


def test_invalid_entry_names_the_field(servers_file: Path,
                                       load_plugins: Callable[..., None]) -> None:
    write_servers(servers_file, {"id": "qwen", "model_name": "q", "base_url": "http://x/v1",
                                 "prefill_style": "continue"})
    load_plugins("llmcli-openai")
    with pytest.raises(ConfigError, match=r"openai-servers\.json: servers\.0\.prefill_style: "
                       "Input should be"):
        llmcli.get_model("qwen")


@pytest.mark.parametrize(("entry", "problem"), [
    ({"id": "a", "model_name": "m", "base_url": "localhost:8000", "prefill_style": "none"},
     "base_url: must start with http"),
    ({"id": "a/b", "model_name": "m", "base_url": "http://x", "prefill_style": "none"},
     "servers.0.id"),
    ({"id": "a", "model_name": "m", "base_url": "http://x", "prefill_style": "none",
      "api_key": "x"}, "api_key: Extra inputs are not permitted"),
    ({"id": "a", "model_name": "m", "base_url": "http://x", "prefill_style": "none",
      "echoes": True}, "echoes applies only to prefill_style 'prefix'"),
])
def test_validation_problems(servers_file: Path, entry: dict[str, Any], problem: str) -> None:
    from llmcli_openai._servers import load_servers

    write_servers(servers_file, entry)
    with pytest.raises(ConfigError, match="fix or remove it") as info:
        load_servers()
    assert problem in str(info.value)


def test_duplicate_ids(servers_file: Path) -> None:
    from llmcli_openai._servers import load_servers

    entry = {"id": "a", "model_name": "m", "base_url": "http://x", "prefill_style": "none"}
    write_servers(servers_file, entry, entry)
    with pytest.raises(ConfigError, match="'a' is used twice"):
        load_servers()


# -- commands -------------------------------------------------------------------------------------


def test_add_with_preset_list_and_remove(servers_file: Path,
                                        load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    result = run_cli("openai-servers", "add", "qwen", "--preset", "ollama", "--model-name",
                     "qwen2.5:7b")
    assert result.exit_code == 0, result.output
    assert "trailing_assistant: eats" in result.output
    saved = json.loads(servers_file.read_text())
    assert saved == {"servers": [{"id": "qwen", "model_name": "qwen2.5:7b",
                                  "base_url": "http://localhost:11434/v1",
                                  "prefill_style": "trailing_assistant"}]}
    listing = run_cli("openai-servers", "list")
    assert listing.exit_code == 0
    assert "qwen: qwen2.5:7b at http://localhost:11434/v1" in listing.output
    assert llmcli.get_model("qwen").prefill_support is PrefillSupport.EATS_PREFIX

    again = run_cli("openai-servers", "add", "qwen", "--preset", "vllm", "--model-name", "q")
    assert again.exit_code == 1 and "--replace" in again.output
    replaced = run_cli("openai-servers", "add", "qwen", "--preset", "vllm", "--model-name",
                       "q", "--replace")
    assert replaced.exit_code == 0, replaced.output
    as_json = json.loads(run_cli("openai-servers", "list", "--json").output)
    assert as_json[0]["prefill_style"] == "continue_final_message"

    removed = run_cli("openai-servers", "remove", "qwen")
    assert removed.exit_code == 0, removed.output
    assert json.loads(servers_file.read_text()) == {"servers": []}
    missing = run_cli("openai-servers", "remove", "qwen")
    assert missing.exit_code == 1 and "No server named 'qwen'" in missing.output


def test_add_deepseek_preset_keeps_key_settings(servers_file: Path,
                                                load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    result = run_cli("openai-servers", "add", "ds", "--preset", "deepseek", "--model-name",
                     "deepseek-chat", "--echoes")
    assert result.exit_code == 0, result.output
    entry = json.loads(servers_file.read_text())["servers"][0]
    assert entry["key_env"] == "DEEPSEEK_API_KEY" and entry["key_name"] == "deepseek"
    assert entry["base_url"] == "https://api.deepseek.com/beta"
    assert llmcli.get_model("ds").prefill_support is PrefillSupport.ECHOES_PREFIX


def test_add_without_preset(servers_file: Path, load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    missing = run_cli("openai-servers", "add", "x", "--model-name", "m")
    assert missing.exit_code == 2 and "--base-url is required" in missing.output
    bad = run_cli("openai-servers", "add", "x", "--model-name", "m", "--base-url", "ftp://h",
                  "--prefill-style", "prefix")
    assert bad.exit_code == 2 and "must start with http" in bad.output
    ok = run_cli("openai-servers", "add", "x", "--model-name", "m", "--base-url",
                 "http://gpu-box:8000/v1", "--prefill-style", "continue_final_message",
                 "--key-name", "gpubox", "--alias", "big")
    assert ok.exit_code == 0, ok.output
    model = llmcli.get_model("big")
    assert model.model_id == "x"
    assert model.needs_key == llmcli.KeySpec("gpubox", None)


def test_list_with_a_malformed_file(servers_file: Path,
                                    load_plugins: Callable[..., None]) -> None:
    servers_file.parent.mkdir(parents=True, exist_ok=True)
    servers_file.write_text("not json")
    load_plugins("llmcli-openai")
    result = run_cli("openai-servers", "list")
    assert result.exit_code == 1
    assert str(servers_file) in result.output and "not valid JSON" in result.output


def test_list_empty_and_presets(load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    assert "No servers configured" in run_cli("openai-servers", "list").output
    presets = run_cli("openai-servers", "presets").output
    for name in ("vllm", "llama-server", "ollama", "deepseek", "openrouter"):
        assert f"{name}: " in presets


@pytest.mark.parametrize("server", ["prefix"], indirect=True)
def test_cli_models_shows_configured_server(server: FakeOpenAI) -> None:
    result = run_cli("models")
    assert result.exit_code == 0, result.output
    assert "local" in result.output


def test_docs_python_example_runs(load_plugins: Callable[..., None],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from llmcli_openai._servers import PRESETS, Preset

    doc = Path(__file__).resolve().parents[2] / "docs" / "providers" / "openai-compatible.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)
    assert blocks
    with FakeOpenAI("llama", continuation=CONTINUATION) as fake:
        monkeypatch.setitem(PRESETS, "ollama", Preset(fake.url + "/v1", "trailing_assistant"))
        load_plugins("llmcli-openai")
        for block in blocks:
            exec(compile(block, str(doc), "exec"), {})
        assert body_of(fake)["messages"][-1] == {"role": "assistant", "content": '["'}


# -- pure request building ------------------------------------------------------------------


@pytest.mark.parametrize(("style", "final", "extra_body"), [
    ("continue_final_message", {"role": "assistant", "content": "P "},
     {"continue_final_message": True, "add_generation_prompt": False}),
    ("prefix", {"role": "assistant", "content": "P ", "prefix": True}, None),
    ("trailing_assistant", {"role": "assistant", "content": "P "}, None),
    ("none", {"role": "user", "content": "Q"}, None),
])
def test_build_create_kwargs(style: Any, final: dict[str, Any],
                             extra_body: dict[str, Any] | None) -> None:
    from llmcli_openai._models import ChatOptions
    from llmcli_openai._wire import Backend, build_create_kwargs, capability_for

    request = Request(model_id="x", prompt="Q", system="S", history=[Message("user", "H")],
                      prefill="P ", prefill_support=capability_for(style),
                      options=ChatOptions(max_tokens=5), stream=False)
    kwargs = build_create_kwargs(request, Backend("p", "served", "http://h/v1", style))
    assert kwargs["messages"][-1] == final
    assert kwargs["messages"][1] == {"role": "user", "content": "H"}
    assert kwargs.get("extra_body") == extra_body
    assert kwargs["max_tokens"] == 5 and "stream_options" not in kwargs
    system = kwargs["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("S")
    assert ("<reply_prefix>P </reply_prefix>" in system["content"]) is (style == "none")
