"""How the lean backend holds its weights in memory: the transposed copies of the tall
weights do not leave the file's pages resident beside them, and nothing but the model's own
safetensors is read as the model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llmcli_local.lean import weights as lean_weights  # noqa: E402

SCRIPT = """
import sys, torch
from safetensors.torch import load_file
from llmcli_local.lean.weights import _drop_pages, _file_mappings

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

tensor = load_file(sys.argv[1])["big"]  # memory-mapped: nothing read yet
before = float(tensor.sum())  # every page read: resident
resident = rss()
_drop_pages(tensor, _file_mappings())
dropped = resident - rss()
print(dropped, float(tensor.sum()) == before)  # read again: the same bytes, from the file

anonymous = torch.arange(4 << 20, dtype=torch.float32)
_drop_pages(anonymous, _file_mappings())  # not a file's: left alone
print(bool(torch.equal(anonymous, torch.arange(4 << 20, dtype=torch.float32))))
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_dropped_pages_are_given_back_and_read_the_same(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    size = 32 << 20
    path = tmp_path / "model.safetensors"
    save_file({"big": torch.rand(size // 4)}, str(path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = result.stdout.split("\n")[:2]
    dropped, same = first.split()
    assert int(dropped) > size * 0.8, f"only {int(dropped) >> 20} MB given back"
    assert same == "True"
    assert second == "True"


def test_only_the_models_own_files_are_read_as_the_model(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    # A cached quantization beside the weights, with a name the model also has.
    save_file({"model.norm.weight": torch.zeros(64)},
              str(directory / "quantized-int8-v2.safetensors"))
    state = lean_weights._state_dict(directory)
    assert not torch.equal(state["model.norm.weight"], torch.zeros(64))
