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
from tests.fakes.openai import FRESH_TURN, FakeOpenAI, error_reply

CONTINUATION = " and the rest of the reply."
PREFILL = '{"answer": '

ECHOES, EATS, EMULATED = (PrefillSupport.ECHOES_PREFIX, PrefillSupport.EATS_PREFIX,
                          PrefillSupport.EMULATED)

# case -> (prefill style, fake mode, base URL path, extra entry fields,
#          capability when streaming, capability otherwise)
# Without "echoes" in the entry a native style is "auto": the normalizer's "echoes", which
# drops a leading copy of the prefill when the server sent one and keeps the reply when not.
STYLES: dict[str, tuple[str, str, str, dict[str, Any], PrefillSupport, PrefillSupport]] = {
    "vllm": ("continue_final_message", "vllm", "/v1", {}, ECHOES, ECHOES),
    "deepseek": ("prefix", "deepseek", "/beta", {}, ECHOES, ECHOES),
    "deepseek-eats": ("prefix", "deepseek", "/beta", {"echoes": False}, EATS, EATS),
    "prefix-echoes": ("prefix", "deepseek", "/beta", {"echoes": True}, ECHOES, ECHOES),
    "llama-old": ("trailing_assistant", "llama", "/v1", {}, ECHOES, ECHOES),
    # llama-server 0c1e570 as measured: echoes a trailing assistant message in both modes...
    "llama-server": ("trailing_assistant", "llama-server", "/v1", {}, ECHOES, ECHOES),
    # ...and with continue_final_message only when not streaming.
    "llama-server-cfm": ("continue_final_message", "llama-server", "/v1", {}, ECHOES, ECHOES),
    "llama-server-echoes": ("trailing_assistant", "llama-server", "/v1", {"echoes": True},
                            ECHOES, ECHOES),
    "emulated": ("none", "openai", "/v1", {}, EMULATED, EMULATED),
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
    """A fake for ``request.param`` (a STYLES key), configured as model 'local'; the key is
    kept as ``fake.case``."""
    case: str = request.param
    style, mode, path, extra, _, _ = STYLES[case]
    with FakeOpenAI(mode, continuation=CONTINUATION, echoes=mode == "deepseek"
                    and extra.get("echoes") is True) as fake:
        fake.case = case  # type: ignore[attr-defined]
        write_servers(servers_file, {
            "id": "local", "model_name": "served-model", "base_url": fake.url + path,
            "prefill_style": style, **extra,
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
    style, _, _, _, when_streaming, otherwise = STYLES[server.case]  # type: ignore[attr-defined]
    assert response.prefill_support is (when_streaming if stream else otherwise)
    messages = body["messages"]
    if style == "none":
        assert messages[-1] == {"role": "user", "content": "Give JSON"}
        assert f"<reply_prefix>{PREFILL}</reply_prefix>" in messages[0]["content"]
        return
    final = {"role": "assistant", "content": PREFILL}
    if style == "prefix":
        final["prefix"] = True
    assert messages[-1] == final
    if style == "continue_final_message":
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


@pytest.mark.parametrize("server", ["vllm", "deepseek", "llama-old", "llama-server"],
                         indirect=True)
def test_no_prefill_sends_no_assistant_message_and_no_flags(server: FakeOpenAI) -> None:
    text = llmcli.get_model("local").prompt("Hi", stream=False, log=False).text()
    assert text == FRESH_TURN
    body = body_of(server)
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert "continue_final_message" not in body and "add_generation_prompt" not in body


@pytest.mark.parametrize("server", ["llama-old"], indirect=True)
def test_compatible_options_use_max_tokens(server: FakeOpenAI) -> None:
    llmcli.get_model("local").prompt("Hi", prefill="A", stream=False, log=False,
                                      max_tokens=9, temperature=0.1).text()
    body = body_of(server)
    assert body["max_tokens"] == 9 and body["temperature"] == 0.1
    assert body["messages"][0]["role"] == "user"  # no system message was asked for


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
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
    ("vllm/Qwen/Qwen2.5-7B-Instruct", "http://localhost:8000/v1", ECHOES, None),
    ("llama-server/any", "http://localhost:8080/v1", ECHOES, None),
    ("ollama/qwen2.5:7b", "http://localhost:11434/v1", ECHOES, None),
    ("deepseek/deepseek-chat", "https://api.deepseek.com/beta", ECHOES, "DEEPSEEK_API_KEY"),
    ("openrouter/openai/gpt-4o", "https://openrouter.ai/api/v1", PrefillSupport.EMULATED,
     "OPENROUTER_API_KEY"),
    ("sglang/Qwen/Qwen3-8B", "http://localhost:30000/v1", ECHOES, None),
    ("lmdeploy/internlm/internlm3-8b-instruct", "http://localhost:23333/v1", ECHOES, None),
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


@pytest.mark.parametrize(("preset", "mode", "extra_fields"), [
    ("sglang", "vllm", {"continue_final_message": True, "add_generation_prompt": False}),
    ("lmdeploy", "llama", {}),
])
def test_the_unmeasured_presets_send_their_documented_style(
        preset: str, mode: str, extra_fields: dict[str, Any],
        load_plugins: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    """SGLang and LMDeploy are presets from their own docs and source, not measured here:
    auto (an echo is detected reply by reply), no native schema, and the probe decides at
    'openai-servers add'. What they send is checked on a fake that continues that form."""
    from dataclasses import replace

    from llmcli_openai._servers import PRESETS, preset_echo

    assert preset_echo(PRESETS[preset]) == "auto"
    assert PRESETS[preset].schema_field is None and PRESETS[preset].key_env is None
    with FakeOpenAI(mode, continuation=CONTINUATION) as fake:
        monkeypatch.setitem(PRESETS, preset, replace(PRESETS[preset],
                                                     base_url=fake.url + "/v1"))
        load_plugins("llmcli-openai")
        for stream in (True, False):
            response = llmcli.get_model(f"{preset}/some/model").prompt(
                "Hi", prefill="The answer", stream=stream, log=False)
            assert response.text() == "The answer" + CONTINUATION
            body = body_of(fake)
            assert body["model"] == "some/model"
            assert body["messages"][-1] == {"role": "assistant", "content": "The answer"}
            assert {k: body[k] for k in extra_fields} == extra_fields
            if not extra_fields:
                assert "continue_final_message" not in body


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
    ({"id": "a", "model_name": "m", "base_url": "http://x", "prefill_style": "prefix",
      "probe": {"at": "now", "chosen": "prefix", "styles": {"prefix": {"stream": "maybe",
                                                                      "complete": "eats"}}}},
     "servers.0.probe.styles.prefix.stream: Input should be"),
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
                     "qwen2.5:7b", "--no-probe")
    assert result.exit_code == 0, result.output
    assert "trailing_assistant: echoes, detected per reply" in result.output
    saved = json.loads(servers_file.read_text())
    assert saved == {"servers": [{"id": "qwen", "model_name": "qwen2.5:7b",
                                  "base_url": "http://localhost:11434/v1",
                                  "prefill_style": "trailing_assistant",
                                  "schema_field": "response_format"}]}
    listing = run_cli("openai-servers", "list")
    assert listing.exit_code == 0
    assert "qwen: qwen2.5:7b at http://localhost:11434/v1" in listing.output
    assert llmcli.get_model("qwen").prefill_support is ECHOES

    again = run_cli("openai-servers", "add", "qwen", "--preset", "vllm", "--model-name", "q",
                    "--no-probe")
    assert again.exit_code == 1 and "--replace" in again.output
    replaced = run_cli("openai-servers", "add", "qwen", "--preset", "vllm", "--model-name",
                       "q", "--replace", "--no-probe")
    assert replaced.exit_code == 0, replaced.output
    as_json = json.loads(run_cli("openai-servers", "list", "--json").output)
    assert as_json[0]["prefill_style"] == "continue_final_message"

    removed = run_cli("openai-servers", "remove", "qwen")
    assert removed.exit_code == 0, removed.output
    assert json.loads(servers_file.read_text()) == {"servers": []}
    missing = run_cli("openai-servers", "remove", "qwen")
    assert missing.exit_code == 1 and "No server named 'qwen'" in missing.output


def test_add_takes_the_presets_schema_field_or_the_given_one(
        servers_file: Path, load_plugins: Callable[..., None]) -> None:
    """An added server enforces --schema as its preset does (vLLM's structured_outputs,
    llama-server's json_schema); --schema-field overrides, none means validated."""
    from llmcli.capabilities import SchemaSupport

    load_plugins("llmcli-openai")
    for server, extra, field in [("v", ["--preset", "vllm"], "structured_outputs"),
                                 ("l", ["--preset", "llama-server"], "json_schema"),
                                 ("o", ["--preset", "vllm", "--schema-field", "json_schema"],
                                  "json_schema"),
                                 ("n", ["--preset", "vllm", "--schema-field", "none"], None),
                                 ("u", ["--base-url", "http://box:1/v1",
                                        "--prefill-style", "none"], None)]:
        result = run_cli("openai-servers", "add", server, "--model-name", "m", "--no-probe",
                         *extra)
        assert result.exit_code == 0, result.output
        entry = next(e for e in json.loads(servers_file.read_text())["servers"]
                     if e["id"] == server)
        assert entry.get("schema_field") == field
        model = llmcli.get_model(server)
        assert model.get_schema_support(model.Options()) is (
            SchemaSupport.NATIVE if field else SchemaSupport.VALIDATED)
    bad = run_cli("openai-servers", "add", "b", "--model-name", "m", "--preset", "vllm",
                  "--schema-field", "guided_json", "--no-probe")
    assert bad.exit_code == 2 and "guided_json" in bad.output


def test_add_deepseek_preset_keeps_key_settings(servers_file: Path,
                                                load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    result = run_cli("openai-servers", "add", "ds", "--preset", "deepseek", "--model-name",
                     "deepseek-chat", "--echoes", "--no-probe")
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


def test_list_empty(load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    assert "No servers configured" in run_cli("openai-servers", "list").output


def test_presets_print_the_table_the_docs_promise(load_plugins: Callable[..., None]) -> None:
    """``openai-servers presets`` and the docs' preset table say the same, row for row."""
    load_plugins("llmcli-openai")
    result = run_cli("openai-servers", "presets")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split("\t")[:5] == ["preset", "base URL", "prefill style", "capability",
                                        "key"]
    printed = [line.split("\t")[:5] for line in lines[1:]]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "providers"
           / "openai-compatible.md").read_text()
    section = doc.split("| preset |", 1)[1].split("\n\n", 1)[0]
    documented = [[cell.strip().strip("`") for cell in row.strip("|").split("|")]
                  for row in section.splitlines()[2:]]
    assert [row[:5] for row in documented] == printed
    assert [row[0] for row in printed] == ["vllm", "llama-server", "ollama", "deepseek",
                                          "openrouter", "sglang", "lmdeploy"]


@pytest.mark.parametrize("server", ["deepseek"], indirect=True)
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


# -- servers whose echo varies: the prefill exactly once, everywhere -----------------------------


@pytest.mark.parametrize("server", ["llama-server", "llama-server-cfm"], indirect=True)
@pytest.mark.parametrize("flags", [[], ["--no-stream"], ["--json"]])
def test_llama_server_prefill_once_in_the_cli_and_the_log(server: FakeOpenAI, flags: list[str],
                                                          user_dir: Path) -> None:
    import sqlite3

    result = run_cli("-m", "local", "--prefill", PREFILL, "Give JSON", *flags)
    assert result.exit_code == 0, result.output
    if flags == ["--json"]:
        data = json.loads(result.output)
        assert data["text"] == PREFILL + CONTINUATION
        assert data["continuation"] == CONTINUATION
        assert data["usage"]["stop_reason"] == "end_turn"
    else:
        assert result.output == PREFILL + CONTINUATION + "\n"
    row = sqlite3.connect(user_dir / "logs.db").execute(
        "select text, continuation, prefill_support, stop_reason from responses").fetchone()
    assert row == (PREFILL + CONTINUATION, CONTINUATION, "echoes", "end_turn")


@pytest.mark.parametrize("server", ["llama-server", "llama-server-cfm"], indirect=True)
@pytest.mark.parametrize("stream_flag", [[], ["--no-stream"]])
def test_llama_server_hide_prefill_prints_the_continuation(server: FakeOpenAI,
                                                           stream_flag: list[str]) -> None:
    result = run_cli("-m", "local", "--prefill", PREFILL, "Give JSON", "--hide-prefill",
                     *stream_flag)
    assert result.exit_code == 0, result.output
    assert result.output == CONTINUATION + "\n"


@pytest.mark.parametrize("server", ["llama-server", "llama-server-cfm"], indirect=True)
@pytest.mark.parametrize("stream_flag", [[], ["--no-stream"]])
def test_llama_server_continued_conversation_sends_the_turn_once(server: FakeOpenAI,
                                                                 stream_flag: list[str]) -> None:
    first = run_cli("-m", "local", "--prefill", PREFILL, "Give JSON", *stream_flag)
    assert first.exit_code == 0, first.output
    second = run_cli("-c", "And again", *stream_flag)
    assert second.exit_code == 0, second.output
    messages = body_of(server)["messages"]
    assert messages[:3] == [{"role": "user", "content": "Give JSON"},
                            {"role": "assistant", "content": PREFILL + CONTINUATION},
                            {"role": "user", "content": "And again"}]


@pytest.mark.parametrize("server", ["llama-server"], indirect=True)
def test_llama_server_conversation_in_python(server: FakeOpenAI) -> None:
    conversation = llmcli.get_model("local").conversation()
    assert conversation.prompt("One", prefill=PREFILL, log=False).text() == PREFILL + CONTINUATION
    assert conversation.prompt("Two", prefill="[", stream=False, log=False).text() == (
        "[" + CONTINUATION)
    assert body_of(server)["messages"][1] == {"role": "assistant",
                                              "content": PREFILL + CONTINUATION}


def test_the_ambiguity_and_how_the_user_resolves_it(servers_file: Path,
                                                    load_plugins: Callable[..., None]) -> None:
    """A server that eats the prefill, and a continuation that starts with the prefill's own
    text: "auto" takes that for an echo and keeps one copy; stating --eats (or a probe that
    saw the server eat) keeps both, which is what the model wrote."""
    with FakeOpenAI("llama", continuation="ha ha") as fake:
        base = {"model_name": "m", "base_url": fake.url + "/v1",
                "prefill_style": "trailing_assistant"}
        write_servers(servers_file, {"id": "auto", **base},
                      {"id": "eats", "echoes": False, **base},
                      {"id": "probed", **base, "probe": {
                          "at": "2026-11-26T00:00:00Z", "chosen": "trailing_assistant",
                          "styles": {"trailing_assistant": {"stream": "eats",
                                                            "complete": "eats"}}}})
        load_plugins("llmcli-openai")
        for stream in (True, False):
            assert llmcli.get_model("auto").prompt(
                "Laugh", prefill="ha", stream=stream, log=False).text() == "ha ha"
            for name in ("eats", "probed"):
                assert llmcli.get_model(name).prompt(
                    "Laugh", prefill="ha", stream=stream, log=False).text() == "haha ha"


def test_probed_modes_choose_the_capability_per_stream_mode(
        servers_file: Path, load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("llama-server", continuation=CONTINUATION) as fake:
        write_servers(servers_file, {
            "id": "lsrv", "model_name": "m", "base_url": fake.url + "/v1",
            "prefill_style": "continue_final_message", "probe": {
                "at": "2026-11-26T00:00:00Z", "chosen": "continue_final_message",
                "styles": {"continue_final_message": {"stream": "eats",
                                                      "complete": "echoes"}}}})
        load_plugins("llmcli-openai")
        model = llmcli.get_model("lsrv")
        streamed = model.prompt("Q", prefill=PREFILL, log=False)
        whole = model.prompt("Q", prefill=PREFILL, stream=False, log=False)
        assert (streamed.prefill_support, whole.prefill_support) == (EATS, ECHOES)
        assert streamed.text() == whole.text() == PREFILL + CONTINUATION
        assert "eats it streaming, echoes it otherwise" in model.prefill_note()


@pytest.mark.parametrize("server", ["llama-old"], indirect=True)
def test_stop_reasons_in_one_vocabulary(server: FakeOpenAI) -> None:
    model = llmcli.get_model("local")
    for finish, expected in (("stop", "end_turn"), ("length", "max_tokens"),
                             ("content_filter", "content_filter"), ("tool_calls", "tool_use")):
        server.finish_reason = finish
        for stream in (True, False):
            response = model.prompt("Q", prefill="A", stream=stream, log=False)
            assert response.stop_reason == expected, (finish, stream)


# -- probing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "path", "chosen", "seen"), [
    # llama-server 0c1e570: continue_final_message works; echoes only when not streaming.
    ("llama-server", "/v1", "continue_final_message",
     {"continue_final_message": ("eats", "echoes")}),
    ("vllm", "/v1", "continue_final_message", {"continue_final_message": ("eats", "eats")}),
    # Older llama.cpp and Ollama ignore the flags and continue the trailing message.
    ("llama", "/v1", "continue_final_message", {"continue_final_message": ("eats", "eats")}),
    ("deepseek", "/beta", "prefix", {"continue_final_message": ("ignores", "ignores"),
                                     "trailing_assistant": ("ignores", "ignores"),
                                     "prefix": ("eats", "eats")}),
    ("fresh", "/v1", "none", {style: ("ignores", "ignores") for style in
                              ("continue_final_message", "trailing_assistant", "prefix")}),
])
def test_add_probes_and_records(servers_file: Path, load_plugins: Callable[..., None],
                                mode: str, path: str, chosen: str,
                                seen: dict[str, tuple[str, str]]) -> None:
    with FakeOpenAI(mode, continuation=CONTINUATION) as fake:
        load_plugins("llmcli-openai")
        result = run_cli("openai-servers", "add", "srv", "--base-url", fake.url + path,
                         "--model-name", "m")
        assert result.exit_code == 0, result.output
        entry = json.loads(servers_file.read_text())["servers"][0]
        assert entry["prefill_style"] == chosen
        assert entry["probe"]["chosen"] == chosen
        recorded = {style: (r["stream"], r["complete"])
                    for style, r in entry["probe"]["styles"].items()}
        assert recorded == seen
        # Then tool calling: one request per tool_choice kind (required, named, auto).
        assert set(entry["probe"]["tools"]["choices"]) == {"required", "named", "auto"}
        requests = [r for r in fake.chat_requests if "tools" not in r.body]
        assert len(requests) == 2 * len(seen)
        assert len(fake.chat_requests) == 2 * len(seen) + 3
        for r in requests:
            assert r.body["max_tokens"] <= 3 and r.body["temperature"] == 0
        assert [r.body["stream"] for r in requests[:2]] == [True, False]
        # What the probe saw is what the model then does: the prefill once, both modes.
        if chosen != "none":
            model = llmcli.get_model("srv")
            for stream in (True, False):
                assert model.prompt("Q", prefill=PREFILL, stream=stream,
                                    log=False).text() == PREFILL + CONTINUATION
        listing = run_cli("openai-servers", "list").output
        assert f"prefill={chosen}" in listing and "probe: " in listing


def test_probe_rejecting_server_is_recorded(servers_file: Path,
                                            load_plugins: Callable[..., None]) -> None:
    """vLLM-style 400 for continue_final_message without add_generation_prompt is a verdict."""
    with FakeOpenAI("llama-server", continuation=CONTINUATION) as fake:
        from llmcli_openai._probe import probe_server

        record = probe_server(fake.url + "/v1", "m", styles=["prefix"])
        assert record.chosen == "prefix"
        assert (record.styles["prefix"].stream, record.styles["prefix"].complete) == (
            "echoes", "echoes")
        fake.enqueue(*[error_reply(400, "Assistant response prefill is incompatible with "
                                   "enable_thinking.")] * 2)
        record = probe_server(fake.url + "/v1", "m", styles=["trailing_assistant"])
        assert record.chosen == "none"
        assert record.styles["trailing_assistant"].stream == "rejects"
        assert "incompatible with enable_thinking" in record.styles["trailing_assistant"].seen


def test_explicit_style_sends_no_request(servers_file: Path,
                                         load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("llama-server") as fake:
        load_plugins("llmcli-openai")
        result = run_cli("openai-servers", "add", "srv", "--base-url", fake.url + "/v1",
                         "--model-name", "m", "--prefill-style", "trailing_assistant")
        assert result.exit_code == 0, result.output
        assert fake.requests == []
        assert "probe" not in json.loads(servers_file.read_text())["servers"][0]


def test_unreachable_server(servers_file: Path, load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    dead = "http://127.0.0.1:9/v1"
    # No style and no preset: nothing to fall back on, nothing saved.
    result = run_cli("openai-servers", "add", "srv", "--base-url", dead, "--model-name", "m")
    assert result.exit_code == 1
    assert "Cannot probe http://127.0.0.1:9/v1: cannot reach the server" in result.output
    assert "give --prefill-style" in result.output
    assert not servers_file.exists()
    # A preset's style is kept, with a warning and the command to run later.
    result = run_cli("openai-servers", "add", "srv", "--preset", "llama-server", "--base-url",
                     dead, "--model-name", "m")
    assert result.exit_code == 0, result.output
    assert "Warning: Cannot probe" in result.stderr
    assert "openai-servers probe srv" in result.stderr
    assert json.loads(servers_file.read_text())["servers"][0]["prefill_style"] == (
        "trailing_assistant")
    reprobe = run_cli("openai-servers", "probe", "srv")
    assert reprobe.exit_code == 1 and "cannot reach the server" in reprobe.output


def test_probe_command_updates_a_changed_server(servers_file: Path,
                                                load_plugins: Callable[..., None]) -> None:
    with FakeOpenAI("llama-server", continuation=CONTINUATION) as fake:
        write_servers(servers_file, {"id": "srv", "model_name": "m", "echoes": False,
                                     "base_url": fake.url + "/v1",
                                     "prefill_style": "trailing_assistant"})
        load_plugins("llmcli-openai")
        result = run_cli("openai-servers", "probe", "srv")
        assert result.exit_code == 0, result.output
        assert "continue_final_message: stream eats, complete echoes" in result.output
        assert "'Monday, Tuesday, Wednesday, Thursday, Friday'" in result.output
        entry = json.loads(servers_file.read_text())["servers"][0]
        assert entry["prefill_style"] == "continue_final_message"
        assert "echoes" not in entry  # the probe's record replaces the user's old word
        missing = run_cli("openai-servers", "probe", "nope")
        assert missing.exit_code == 1 and "No server named 'nope'" in missing.output


def test_probe_with_a_wrong_key_is_an_error_not_a_verdict(
        servers_file: Path, load_plugins: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI("llama-server", api_key="right-key-123456") as fake:
        monkeypatch.setenv("SRV_KEY", "wrong-key-987654")
        load_plugins("llmcli-openai")
        result = run_cli("openai-servers", "add", "srv", "--base-url", fake.url + "/v1",
                         "--model-name", "m", "--key-env", "SRV_KEY")
        assert result.exit_code == 1
        assert "Incorrect API key" in result.output
        assert "wrong-key-987654" not in result.output
        assert not servers_file.exists()


def test_echoes_with_every_style_and_option_errors_name_the_option(
        servers_file: Path, load_plugins: Callable[..., None]) -> None:
    load_plugins("llmcli-openai")
    ok = run_cli("openai-servers", "add", "a", "--base-url", "http://h/v1", "--model-name", "m",
                 "--prefill-style", "continue_final_message", "--echoes")
    assert ok.exit_code == 0, ok.output
    assert "continue_final_message: echoes" in ok.output
    assert llmcli.get_model("a").prefill_support is ECHOES
    bad = run_cli("openai-servers", "add", "b", "--base-url", "localhost:1", "--model-name",
                  "m", "--prefill-style", "none")
    assert bad.exit_code == 2
    assert "Invalid value for --base-url: must start with http" in bad.output
    bad_id = run_cli("openai-servers", "add", "b/c", "--base-url", "http://h/v1",
                     "--model-name", "m", "--prefill-style", "none")
    assert bad_id.exit_code == 2 and "Invalid value for ID" in bad_id.output
