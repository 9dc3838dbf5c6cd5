"""The GGUF → safetensors cache on a tiny llama GGUF: converted once, keyed by the file,
reused, deleted by ``local remove``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import llmcli


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("LLMCLI_LOCAL_CACHE", str(path))
    return path


def test_converted_once_then_read_from_the_cache(tiny_gguf: Path, cache: Path,
                                                 tmp_path: Path) -> None:
    from llmcli_local import loader

    gguf = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf, gguf)
    directory = loader.convert_gguf(gguf, show_progress=False)
    assert directory.parent == cache
    files = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "llmcli-local.json"} <= files
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    marker = (directory / "llmcli-local.json").stat().st_mtime_ns
    assert loader.convert_gguf(gguf, show_progress=False) == directory
    assert (directory / "llmcli-local.json").stat().st_mtime_ns == marker
    assert not list(cache.glob(".converting-*"))

    # A changed file (new mtime) gets a new cache entry.
    os.utime(gguf, ns=(marker, marker + 10**9))
    assert loader.convert_gguf(gguf, show_progress=False) != directory


def test_a_registered_gguf_runs_and_remove_deletes_its_cache(
    tiny_gguf: Path, cache: Path, load_plugins: Any
) -> None:
    from llmcli.cli import cli

    load_plugins("llmcli-local")
    runner = CliRunner()
    result = runner.invoke(cli, ["local", "add", str(tiny_gguf), "--name", "tiny-gguf"])
    assert result.exit_code == 0, result.output
    llmcli.plugins.reset()
    response = llmcli.get_model("tiny-gguf").prompt("Hi", prefill='["Cal', max_tokens=4,
                                                   log=False)
    assert response.text().startswith('["Cal')
    rows = json.loads(runner.invoke(cli, ["local", "list", "--json"]).stdout)
    assert rows[1]["name"] == "tiny-gguf" and rows[1]["cached"] is True
    assert len(list(cache.glob("*/llmcli-local.json"))) == 1
    result = runner.invoke(cli, ["local", "remove", "tiny-gguf"])
    assert result.exit_code == 0 and "cache" in result.stdout
    assert not list(cache.glob("*/llmcli-local.json"))


@pytest.mark.parametrize(("arch", "fixture", "engine_name"), [
    ("llama", "tiny_model_dir", "lean"),
    # Converted qwen2 tokenizers are Qwen2Tokenizer, which transformers rebuilds on load:
    # the lean backend leaves them to transformers (docs/local.md, "Backends").
    ("qwen2", "tiny_qwen2_dir", "transformers"),
])
def test_a_converted_gguf_is_the_same_model(
    arch: str, fixture: str, engine_name: str, cache: Path, tmp_path: Path,
    request: pytest.FixtureRequest
) -> None:
    import torch
    from llmcli_local import decode, loader
    from llmcli_local.backend import BackendOptions
    from llmcli_local.sources import ModelSource, inspect_path

    from tests.local.conftest import load, without_eos, write_tiny_gguf

    original = request.getfixturevalue(fixture)
    gguf = write_tiny_gguf(original, tmp_path / f"tiny-{arch}.gguf", arch)
    assert inspect_path(str(gguf)).format == "gguf"
    transformers = BackendOptions(engine="transformers")
    converted = loader.load(ModelSource("gguf", gguf), device="cpu", options=transformers)
    reference = load(original, engine="transformers")
    ids = torch.tensor([list(range(3, 60))])
    with torch.no_grad():
        # Dequantized fp32 weights, q/k un-permuted from llama.cpp's layout: the same model.
        assert torch.allclose(converted.model(ids).logits, reference.model(ids).logits,
                              atol=1e-5)
    texts = ["Hello world", "  two  spaces\n\nand lines", "héllo 日本語 🙂",
             "def quicksort(arr):\n    return"]
    for text in texts:
        assert converted.tokenizer(text)["input_ids"] == reference.tokenizer(text)["input_ids"]

    chosen = loader.load(ModelSource("gguf", gguf), device="cpu")
    assert chosen.name == engine_name
    messages = [{"role": "user", "content": "Write quicksort."}]
    settings = decode.GenerationSettings(max_tokens=12)
    texts_out = [
        "".join(c for c in decode.generate(without_eos(loaded), messages, "def quicksor",
                                           settings)
                if isinstance(c, str))
        for loaded in (chosen, reference)
    ]
    assert texts_out[0] == texts_out[1] and texts_out[0]


def test_a_gguf_claiming_the_mistral_architecture_is_refused(tmp_path: Path,
                                                             tiny_model_dir: Path) -> None:
    from llmcli_local.sources import inspect_path

    from llmcli.errors import ConfigError
    from tests.local.conftest import write_tiny_gguf

    gguf = write_tiny_gguf(tiny_model_dir, tmp_path / "m.gguf", "mistral")
    with pytest.raises(ConfigError, match="unsupported GGUF architecture 'mistral'"):
        inspect_path(str(gguf))
