"""The plugin's surface: cheap import, options, ``local add/list/remove``, the API and CLI
on a registered (tiny) model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from llmcli_local.sources import inspect_path

import llmcli
from llmcli.capabilities import PrefillSupport
from llmcli.errors import ConfigError, OptionsError
from tests.local.conftest import configured


def test_importing_and_registering_does_not_import_torch() -> None:
    code = (
        "import sys, llmcli_local\n"
        "models = []\n"
        "llmcli_local.register_models(models.append)\n"
        "assert [m.model_id for m in models][:1] == ['smollm2'], models\n"
        "heavy = [m for m in ('torch', 'transformers', 'gguf', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_model_is_registered_with_native_prefill(load_plugins: Any) -> None:
    load_plugins("llmcli-local")
    model = llmcli.get_model("SmolLM2")
    assert model.model_id == "smollm2"
    assert llmcli.get_model("smollm2-135m-instruct") is model
    assert model.needs_key is None
    assert model.prefill_support is PrefillSupport.EATS_PREFIX


def test_options_are_validated(load_plugins: Any) -> None:
    load_plugins("llmcli-local")
    model = llmcli.get_model("smollm2")
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_tokens": 0},
                {"top_k": -2}, {"temprature": 1}):
        with pytest.raises(OptionsError):
            model.prompt("hi", **bad)
    options = model.Options(stop="###", token_healing="0")
    assert options.stop == ["###"] and options.token_healing is False
    assert model.Options(stop='["a", "b"]').stop == ["a", "b"]


def _cli() -> Any:
    from llmcli.cli import cli

    return cli


def test_local_add_list_remove(tiny_model_dir: Path, load_plugins: Any, user_dir: Path) -> None:
    load_plugins("llmcli-local")
    runner = CliRunner()
    result = runner.invoke(_cli(), ["local", "add", str(tiny_model_dir), "--name", "tiny",
                                    "--alias", "tiny-llama"])
    assert result.exit_code == 0, result.output
    stored = json.loads((user_dir / "local-models.json").read_text())
    assert stored["models"][0]["name"] == "tiny" and stored["models"][0]["format"] == "hf"

    result = runner.invoke(_cli(), ["local", "add", str(tiny_model_dir), "--name", "tiny"])
    assert result.exit_code == 1 and "exists" in result.output

    result = runner.invoke(_cli(), ["local", "list", "--json"])
    names = [row["name"] for row in json.loads(result.stdout)]
    assert names == ["smollm2", "tiny"]

    llmcli.plugins.reset()
    assert llmcli.get_model("tiny-llama").model_id == "tiny"

    result = runner.invoke(_cli(), ["local", "remove", "tiny"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(_cli(), ["local", "remove", "tiny"])
    assert result.exit_code == 1 and "No local model named 'tiny'" in result.output


def test_bad_paths_give_one_line_errors(tmp_path: Path, load_plugins: Any) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        inspect_path(tmp_path / "missing.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        inspect_path(text)
    with pytest.raises(ConfigError, match="no config.json"):
        inspect_path(tmp_path)

    gguf = pytest.importorskip("gguf")
    gpt2 = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(gpt2), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match="unsupported GGUF architecture 'gpt2'"):
        inspect_path(gpt2)

    load_plugins("llmcli-local")
    result = CliRunner().invoke(_cli(), ["local", "add", str(gpt2), "--name", "x"])
    assert result.exit_code == 1
    assert "unsupported GGUF architecture" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_malformed_registry_is_a_config_error(user_dir: Path, load_plugins: Any) -> None:
    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / "local-models.json").write_text('{"models": [{"name": "x"}]}')
    load_plugins("llmcli-local")
    from llmcli_local.registry import load_registry

    with pytest.raises(ConfigError, match="malformed"):
        load_registry()
    # Only the registered models are lost (tests/test_rough_edges.py has the CLI's side).
    assert [m.model_id for m in llmcli.get_models()] == ["smollm2"]


def test_registered_model_runs_through_the_api_and_cli(
    tiny_model_dir: Path, load_plugins: Any
) -> None:
    load_plugins("llmcli-local")
    runner = CliRunner()
    assert runner.invoke(_cli(), ["local", "add", str(tiny_model_dir), "--name", "tiny"]
                         ).exit_code == 0
    llmcli.plugins.reset()
    model = llmcli.get_model("tiny")
    response = model.prompt("Hi", prefill='["Cal', max_tokens=6, log=False, device="cpu")
    assert response.text().startswith('["Cal')
    assert response.usage().output_tokens
    # A conversation reuses the loaded model and carries the history.
    conversation = model.conversation()
    conversation.prompt("one", max_tokens=3, log=False).text()
    assert conversation.prompt("two", max_tokens=3, log=False).usage().input_tokens

    result = runner.invoke(_cli(), ["-m", "tiny", "Hi", "--prefill", "def quicksor",
                                    "-o", "max_tokens", "5", "-o", "token_healing", "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("def quicksor")


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tiny_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from llmcli_local import loader
    from llmcli_local.sources import ModelSource

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        loader.load(ModelSource("hf", tiny_model_dir), configured(device="cuda"))
