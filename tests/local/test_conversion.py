"""The GGUF → safetensors cache on a tiny llama GGUF: converted once, keyed by the file's
content, shared by every user directory, reused, deleted by ``local remove``; its progress
is one honest status line."""

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
    assert json.loads((directory / "llmcli-local.json").read_text())["sha256"].startswith(
        directory.name)

    # Keyed by content: a touched file, or a copy elsewhere, is the same entry, not
    # converted again; changed content is a new entry.
    os.utime(gguf, ns=(marker, marker + 10**9))
    assert loader.convert_gguf(gguf, show_progress=False) == directory
    elsewhere = tmp_path / "other" / "renamed.gguf"
    elsewhere.parent.mkdir()
    shutil.copy(gguf, elsewhere)
    assert loader.convert_gguf(elsewhere, show_progress=False) == directory
    assert (directory / "llmcli-local.json").stat().st_mtime_ns == marker
    with elsewhere.open("ab") as f:
        f.write(b"\0")
    assert loader.cache_dir_for(elsewhere) != directory


def test_one_cache_for_every_user_directory(tiny_gguf: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local import loader, sources

    monkeypatch.delenv("LLMCLI_LOCAL_CACHE", raising=False)
    monkeypatch.delenv("LLMCLI_CACHE_PATH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_root() == tmp_path / "xdg" / "llmcli" / "local"
    monkeypatch.setenv("LLMCLI_CACHE_PATH", str(tmp_path / "shared"))
    monkeypatch.setenv("LLMCLI_USER_PATH", str(tmp_path / "one"))
    directory = loader.convert_gguf(tiny_gguf, show_progress=False)
    assert directory.parent == tmp_path / "shared" / "local"
    marker = (directory / "llmcli-local.json").stat().st_mtime_ns
    monkeypatch.setenv("LLMCLI_USER_PATH", str(tmp_path / "two"))
    assert loader.convert_gguf(tiny_gguf, show_progress=False) == directory
    assert (directory / "llmcli-local.json").stat().st_mtime_ns == marker  # not again
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists()


def test_a_cache_that_cannot_be_written_is_one_line(tiny_gguf: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local import loader

    from llmcli.errors import ConfigError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LLMCLI_LOCAL_CACHE", str(blocker / "cache"))
    with pytest.raises(ConfigError) as info:
        loader.convert_gguf(tiny_gguf, show_progress=False)
    assert str(info.value) == (f"Cannot write the local model cache {blocker / 'cache'}: "
                               "Not a directory; set LLMCLI_CACHE_PATH to a writable "
                               "directory")


def test_conversion_progress_is_one_line_of_stages(tiny_gguf: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from llmcli_local import loader

    from llmcli import progress

    shown: list[str] = []
    real_set = progress.StatusLine.set

    def record(self: progress.StatusLine, text: str, since: float | None = None) -> None:
        shown.append(text)
        real_set(self, text, since)

    monkeypatch.setattr(progress.StatusLine, "set", record)
    monkeypatch.setattr(progress, "is_terminal", lambda stream: True)
    loader.convert_gguf(tiny_gguf)
    title = f"Converting {tiny_gguf.name} (once)"
    stages = [text.removeprefix(title + ": ") for text in shown if text.startswith(title)]
    assert stages[:3] == [title, "reading the tokenizer", "reading the weights"]
    tensors = [s for s in stages if s.startswith("dequantizing tensors ")]
    assert tensors and tensors[-1].split()[-1].split("/")[0] == tensors[-1].split("/")[-1]
    assert stages[-1] == "writing the cache"
    err = capsys.readouterr().err
    assert "ETA" not in err and "it/s" not in err and err.endswith("\r\x1b[K")
    # Off a terminal: one plain line.
    monkeypatch.setattr(progress, "is_terminal", lambda stream: False)
    monkeypatch.setenv("LLMCLI_LOCAL_CACHE", str(cache / "again"))
    loader.convert_gguf(tiny_gguf)
    assert capsys.readouterr().err == (
        f"Converting {tiny_gguf.name} into the local cache (once)...\n")


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
    from llmcli_local.sources import ModelSource, inspect_path

    from tests.local.conftest import configured, load, without_eos, write_tiny_gguf

    original = request.getfixturevalue(fixture)
    gguf = write_tiny_gguf(original, tmp_path / f"tiny-{arch}.gguf", arch)
    assert inspect_path(str(gguf)).format == "gguf"
    transformers = configured(device="cpu", engine="transformers")
    converted = loader.load(ModelSource("gguf", gguf), transformers)
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

    chosen = loader.load(ModelSource("gguf", gguf), configured(device="cpu"))
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
