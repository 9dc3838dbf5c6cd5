"""How the lean backend holds its weights in memory: the packed copies of full-precision
weights (or, unpacked, the transposed tall ones) do not leave the file's pages resident
beside them, and nothing but the model's own
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


FOR_CPU = """
import sys, torch
from safetensors.torch import load_file
from llmcli_local.lean.weights import Layer, Weights, for_cpu

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

state = load_file(sys.argv[1])  # memory-mapped: nothing read yet
names = ("q", "k", "v", "out", "gate", "up", "down")
layer = Layer(norm_in=state["norm"], norm_post=state["norm"], q_bias=None, k_bias=None,
              v_bias=None, out_bias=None, **{name: state[name] for name in names})
weights = Weights(embed=state["embed"], lm_head=state["embed"], norm=state["norm"],
                  layers=[layer])
# Anonymous copies to check against; reading them makes every file page resident, as a
# model's load does.
plain = {name: state[name].clone() for name in (*names, "embed")}
start = rss()
for_cpu(weights)
grown = rss() - start
head = weights.lm_head
same = all(torch.equal(getattr(layer, name).weight, plain[name]) for name in names)
x = torch.randn(8, 1024)
close = all(torch.allclose(getattr(layer, name)(x), x @ plain[name].t(), atol=1e-3)
            for name in ("q", "out"))
print(grown, head.packed is not None, weights.embed is head.weight,
      torch.equal(weights.embed, plain["embed"]), same, close)
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_packed_weights_replace_the_file_pages(tmp_path: Path) -> None:
    """On CPU, full-precision weights are packed for oneDNN (a copy of each): the file's
    pages they were read from are given back, so the model is resident once, not twice, and
    the tied head keeps the file's tensor as its rows and embeddings (no third copy)."""
    from safetensors.torch import save_file

    if not lean_weights._onednn():
        pytest.skip("this torch has no oneDNN linear: nothing is packed")
    tensors = {name: torch.randn(1024, 1024) for name in ("q", "k", "v", "out", "down")}
    tensors |= {"gate": torch.randn(2048, 1024), "up": torch.randn(2048, 1024),
                "embed": torch.randn(8192, 1024), "norm": torch.ones(1024)}
    size = sum(t.numel() * 4 for t in tensors.values())  # about 60 MB
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FOR_CPU), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    grown, packed, tied, embed_same, same, close = result.stdout.split()
    assert (packed, tied, embed_same, same, close) == ("True",) * 5
    # The file's pages were resident before (read), packing writes a copy of the same size
    # and gives them back: about nothing grows. Without the pages given back the process
    # grows by the model's size (measured: 75 MB here, against 7-9 MB).
    assert int(grown) < size * 0.4, f"{int(grown) >> 20} MB more for a {size >> 20} MB model"
