"""The lean backend (no transformers) against the transformers backend: the same rendered
prompt, token ids, token bytes and end-of-turn ids, the same greedy tokens; what it declines
goes to transformers; and a whole run never imports transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local import decode, lean, loader  # noqa: E402

import llmcli  # noqa: E402
from llmcli.errors import ConfigError  # noqa: E402
from llmcli.models import Usage  # noqa: E402
from tests.local.conftest import load, without_eos  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "Say something."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo 日本"},
     {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "More, please."}],
]
PREFILLS = ["", "Call", '["Cal', "The URL is http:", "日本", "This is a "]

#: Exercises what transformers' environment adds: tojson, raise_exception, strftime_now,
#: namespace, loop controls, trim_blocks/lstrip_blocks, and the special-token variables.
FEATURE_TEMPLATE = """{{ bos_token }}
{% set ns = namespace(count=0) %}
{% for message in messages %}
  {% if message['role'] not in ['system', 'user', 'assistant'] %}
    {{ raise_exception('bad role ' + message['role']) }}
  {% endif %}
  {% if message['role'] == 'assistant' %}{% set ns.count = ns.count + 1 %}{% continue %}{% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | tojson }} {{ message | tojson(indent=1, sort_keys=True) }}<|im_end|>
{% endfor %}
{{ 'turns:' ~ ns.count ~ ' year:' ~ strftime_now('%Y') ~ ' ' ~ eos_token ~ pad_token }}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def _both(directory: Path) -> tuple[Any, Any]:
    transformers_model = load(directory, engine="transformers")
    lean_model = load(directory, engine="lean")
    return lean_model, transformers_model


def _greedy(loaded: Any, messages: list[dict[str, str]], prefill: str,
            recorded: list[int]) -> tuple[list[int], str]:
    """Greedy tokens and text; ``recorded`` is the ``recorded_tokens`` fixture's list."""
    recorded.clear()
    text = "".join(e for e in decode.generate(
        without_eos(loaded), messages, prefill, decode.GenerationSettings(max_tokens=24)
    ) if not isinstance(e, Usage))
    assert recorded, "the fixture saw no sampled tokens"
    return list(recorded), text


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "thinking_model_dir", "tiny_qwen2_dir"])
def test_same_prompt_tokens_and_greedy_output_as_transformers(
    fixture: str, request: pytest.FixtureRequest, recorded_tokens: list[int]
) -> None:
    directory = request.getfixturevalue(fixture)
    assert lean.why_not(directory) is None
    fast, reference = _both(directory)
    assert fast.name == "lean" and reference.name == "transformers"
    assert fast.vocab.token_bytes == reference.vocab.token_bytes
    assert fast.vocab.atomic == reference.vocab.atomic
    assert fast.eos_ids == reference.eos_ids
    assert len(fast.tokenizer) == len(reference.tokenizer)
    assert fast.context_length == reference.model.config.max_position_embeddings
    kwargs = [{}]
    if fixture == "thinking_model_dir":
        kwargs += [{"enable_thinking": False}, {"enable_thinking": True}]
    for messages in CONVERSATIONS:
        for template_kwargs in kwargs:
            for prefill in PREFILLS:
                settings = decode.GenerationSettings(template_kwargs=template_kwargs)
                assert decode.render(fast, messages, prefill, template_kwargs) == \
                    decode.render(reference, messages, prefill, template_kwargs)
                a = decode.build_prompt(fast, messages, prefill, settings)
                b = decode.build_prompt(reference, messages, prefill, settings)
                assert a == b
    for messages in CONVERSATIONS:
        for prefill in ("", '["Cal', "The URL is http:"):
            assert _greedy(fast, messages, prefill, recorded_tokens) == \
                _greedy(reference, messages, prefill, recorded_tokens)


def test_template_features_render_as_in_transformers(tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    directory = tmp_path / "features"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "chat_template.jinja").write_text(FEATURE_TEMPLATE)
    fast, reference = _both(directory)
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            assert fast.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            ) == reference.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
    bad = [{"role": "tool", "content": "x"}]
    with pytest.raises(Exception, match="bad role tool") as lean_error:
        fast.tokenizer.apply_chat_template(bad, tokenize=False)
    with pytest.raises(Exception, match="bad role tool") as hf_error:
        reference.tokenizer.apply_chat_template(bad, tokenize=False)
    assert type(lean_error.value) is type(hf_error.value)


def _variant(source: Path, tmp_path: Path, config: dict[str, Any] | None = None,
             tokenizer_config: dict[str, Any] | None = None) -> Path:
    directory = tmp_path / "variant"
    shutil.copytree(source, directory)
    for name, changes in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if changes:
            data = json.loads((directory / name).read_text())
            data.update(changes)
            (directory / name).write_text(json.dumps(data))
    return directory


@pytest.mark.parametrize(("config", "tokenizer_config", "reason"), [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0,
                          "original_max_position_embeddings": 8192}}, None, "rope type"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, None,
     "incomplete llama3"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                          "partial_rotary_factor": 0.5}}, None, "partial rotary"),
    ({"model_type": "gemma2"}, None, "architecture 'gemma2'"),
    ({"model_type": "mistral", "sliding_window": 4096}, None, "sliding-window"),
    ({"attention_bias": True}, None, "attention bias"),
    ({"hidden_act": "gelu"}, None, "activation"),
    (None, {"tokenizer_class": "LlamaTokenizer"}, "tokenizer class"),
])
def test_what_the_lean_path_does_not_implement_goes_to_transformers(
    tiny_model_dir: Path, tmp_path: Path, config: Any, tokenizer_config: Any, reason: str
) -> None:
    directory = _variant(tiny_model_dir, tmp_path, config, tokenizer_config)
    assert reason in (lean.why_not(directory) or "")
    with pytest.raises(ConfigError, match="engine=lean cannot run"):
        load(directory, engine="lean")


def test_unsupported_rope_loads_through_transformers(tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    directory = _variant(tiny_model_dir, tmp_path, {"rope_parameters": {
        "rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}})
    loaded = load(directory)
    assert loaded.name == "transformers"


def test_engine_option_and_environment_force_transformers(
    tiny_model_dir: Path, load_plugins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from llmcli.cli import cli

    load_plugins("llmcli-local")
    runner = CliRunner()
    assert runner.invoke(cli, ["local", "add", str(tiny_model_dir), "--name", "tiny"]
                         ).exit_code == 0
    llmcli.plugins.reset()
    model = llmcli.get_model("tiny")

    def engine_used(**options: Any) -> str:
        loader.unload_all()
        model.prompt("Hi", max_tokens=2, log=False, **options).text()
        (loaded,) = loader.loaded_models().values()
        return loaded.name

    assert engine_used() == "lean"
    assert engine_used(engine="transformers") == "transformers"
    assert engine_used(kv_cache="static") == "transformers"
    with pytest.raises(ConfigError, match="need engine=transformers"):
        engine_used(engine="lean", kv_cache="static")
    monkeypatch.setenv("LLMCLI_LOCAL_ENGINE", "transformers")
    assert engine_used() == "transformers"
    assert engine_used(engine="lean") == "lean"
    result = runner.invoke(cli, ["-m", "tiny", "Hi", "--prefill", "Cal", "-o", "engine",
                                 "transformers", "-o", "max_tokens", "3"])
    assert result.exit_code == 0, result.output


def test_a_cli_run_on_the_lean_engine_never_imports_transformers(
    tiny_model_dir: Path, load_plugins: Any
) -> None:
    load_plugins("llmcli-local")  # the subprocess inherits the test's user dir and plugins
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from llmcli.cli import cli\n"
        "runner = CliRunner()\n"
        f"added = runner.invoke(cli, ['local', 'add', {str(tiny_model_dir)!r}, '--name', 't'])\n"
        "assert added.exit_code == 0, added.output\n"
        "import llmcli\n"
        "llmcli.plugins.reset()\n"
        "result = runner.invoke(cli, ['-m', 't', 'Hi', '--prefill', '[\"Cal',"
        " '-o', 'max_tokens', '4'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert result.stdout.startswith('[\"Cal'), result.stdout\n"
        "assert 'torch' in sys.modules\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'transformers')\n"
        "assert not heavy, heavy[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("rope", [
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}},
    # The older layout: rope_theta beside rope_scaling.
    {"rope_theta": 2e4, "rope_scaling": {"type": "llama3", "factor": 4.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                                         "original_max_position_embeddings": 32}},
    {"rope_theta": 2e4, "rope_scaling": None},
])
def test_llama3_and_older_rope_configs_match_transformers(
    tiny_model_dir: Path, tmp_path: Path, rope: dict[str, Any], recorded_tokens: list[int]
) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config.pop("rope_parameters", None)
    directory = _variant(tiny_model_dir, tmp_path)
    (directory / "config.json").write_text(json.dumps({**config, **rope}))
    assert lean.why_not(directory) is None
    fast, reference = _both(directory)
    assert fast.name == "lean"
    messages = CONVERSATIONS[1]
    prompt = decode.build_prompt(fast, messages, "This is a ", decode.GenerationSettings())
    with torch.inference_mode():
        # A long prompt, so that positions reach the low and medium frequencies.
        ids = prompt.ids * 6
        ours, _ = fast.prompt(ids, len(ids) + 1)
        theirs = reference.model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(fast.decoder.rotary.inv_freq,
                              reference.model.model.rotary_emb.inv_freq)
    assert torch.allclose(ours, theirs.float(), atol=1e-4, rtol=1e-4)
    assert _greedy(fast, messages, "Call", recorded_tokens) == \
        _greedy(reference, messages, "Call", recorded_tokens)
