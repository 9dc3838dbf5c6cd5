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
