"""Weight-only quantization for the lean backend (``-o quantize int8|int4``).

Each linear weight and the output head is quantized once into a :class:`Quantized` weight
that is called in place of ``F.linear`` (:func:`linear` dispatches on the weight's type, so
full-precision weights take exactly the path they always took). The embeddings used for
lookup stay full precision; the decoder's other code (prompt pass, healing, exact prefill,
batched steps) is unchanged: only the weights change.

Kernels (chosen by measurement on a 2-core AMD EPYC with AVX-512 BF16/VNNI, see
docs/benchmarks.md): PyTorch's own CPU ops, no new dependency.

- ``int8``: ``aten._weight_int8pack_mm``, int8 weights with one scale per output channel
  (symmetric, absmax / 127). The op is fast only with bf16 activations (with fp32 ones it is
  slower than fp32 ``F.linear``), so activations go in as bf16 and results come back fp32.
- ``int4``: ``aten._weight_int4pack_mm_for_cpu``, 4-bit codes in groups of 32 along the input
  with a scale and a minimum per group (asymmetric, like llama.cpp's Q4_1), bf16 activations.

The quantized tensors are cached beside the converted weights (:func:`cache_path`): keyed by
the source (the conversion's directory is named by the GGUF's hash) and the scheme.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from llmcli_local.backend import Quantize as Scheme

if TYPE_CHECKING:
    from llmcli_local.lean.weights import Linear, Weights

__all__ = ["Int4Weight", "Int8Weight", "Quantized", "Scheme", "cache_path", "linear",
           "load_or_quantize", "quantize", "quantize_weights", "rows"]

#: Bump when the stored layout or the rounding changes: old cache files are then ignored.
#: 2: q/k/v and gate/up stored fused (``qkv``, ``gate_up``).
_FORMAT = 2
INT4_GROUP = 32
_ACT = torch.bfloat16


class Int8Weight:
    """int8 codes (out, in) and one scale per output channel: ``w ≈ q * scale``."""

    scheme: Scheme = "int8"

    def __init__(self, q: torch.Tensor, scales: torch.Tensor) -> None:
        self.q = q.contiguous()
        self.scales = scales.to(_ACT)  # what the kernel reads
        self.shape = q.shape

    @classmethod
    def of(cls, weight: torch.Tensor) -> Int8Weight:
        w = weight.float()
        # Scales rounded to bf16 first, so the codes are rounded against the scale the kernel
        # really uses: the quantized weight is exactly q * scale.
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(_ACT).float()
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scales)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a decode step's rows: no reshaping (each op counts there)
            return torch.ops.aten._weight_int8pack_mm(x.to(_ACT), self.q,
                                                      self.scales).to(x.dtype)
        flat = x.reshape(-1, x.shape[-1]).to(_ACT)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.q, self.scales)
        return out.to(x.dtype).view(*x.shape[:-1], self.shape[0])

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.q[ids].float() * self.scales[ids].float().unsqueeze(-1)

    def state(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scales": self.scales}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Int8Weight:
        return cls(state["q"], state["scales"])


class Int4Weight:
    """4-bit codes in groups of :data:`INT4_GROUP` along the input, each group with a scale
    and a minimum: ``w ≈ code * scale + min``. Kept as plain nibbles (low nibble first, for
    :meth:`rows`) and in the CPU kernel's packed layout, which depends on the CPU's
    instruction set (the cache file's name says which)."""

    scheme: Scheme = "int4"

    def __init__(self, nibbles: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                 packed: torch.Tensor | None = None) -> None:
        self.nibbles = nibbles  # (out, in / 2) uint8
        self.scales = scales  # (out, in / group) bf16
        self.mins = mins
        out, groups = scales.shape
        self.shape = torch.Size((out, groups * INT4_GROUP))
        if packed is None:
            codes = torch.stack([nibbles & 15, nibbles >> 4], dim=-1).view(out, -1)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        self.packed = packed
        # The kernel computes (code - 8) * scale + zero.
        zeros = mins.float() + 8 * scales.float()
        pairs = torch.stack([scales.float().t(), zeros.t()], dim=-1)
        self.scale_zeros = pairs.to(_ACT).contiguous()

    @classmethod
    def of(cls, weight: torch.Tensor) -> Int4Weight:
        out, inner = weight.shape
        groups = weight.float().view(out, inner // INT4_GROUP, INT4_GROUP)
        low = groups.amin(dim=-1)
        high = groups.amax(dim=-1)
        scales = ((high - low) / 15).clamp(min=1e-12).to(_ACT).float()
        mins = low.to(_ACT).float()
        codes = torch.round((groups - mins[..., None]) / scales[..., None]).clamp(0, 15)
        codes = codes.to(torch.uint8).view(out, inner)
        nibbles = codes[:, 0::2] | (codes[:, 1::2] << 4)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        return cls(nibbles.contiguous(), scales.to(_ACT), mins.to(_ACT), packed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a decode step's rows: no reshaping (each op counts there)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.to(_ACT), self.packed, INT4_GROUP, self.scale_zeros).to(x.dtype)
        flat = x.reshape(-1, x.shape[-1]).to(_ACT)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, INT4_GROUP,
                                                           self.scale_zeros)
        return out.to(x.dtype).view(*x.shape[:-1], self.shape[0])

    def without_rows(self) -> Int4Weight:
        """The same weight for matrix products only: the plain nibbles (for :meth:`rows`,
        half the weight's bytes again) dropped."""
        lean = Int4Weight.__new__(Int4Weight)
        lean.__dict__.update(self.__dict__)
        lean.nibbles = torch.empty((0,), dtype=torch.uint8)
        return lean

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self.nibbles.numel() == 0:
            raise RuntimeError("this int4 weight keeps no rows (a speculative draft's)")
        nibbles = self.nibbles[ids]
        codes = torch.stack([nibbles & 15, nibbles >> 4], dim=-1).flatten(-2).float()
        grouped = codes.view(*codes.shape[:-1], -1, INT4_GROUP)
        scales = self.scales[ids].float().unsqueeze(-1)
        mins = self.mins[ids].float().unsqueeze(-1)
        return (grouped * scales + mins).flatten(-2)

    def state(self) -> dict[str, torch.Tensor]:
        return {"nibbles": self.nibbles, "scales": self.scales, "mins": self.mins,
                "packed": self.packed}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Int4Weight:
        return cls(state["nibbles"], state["scales"], state["mins"], state.get("packed"))


Quantized = Int8Weight | Int4Weight
_KINDS: dict[str, type[Int8Weight] | type[Int4Weight]] = {"int8": Int8Weight,
                                                          "int4": Int4Weight}


def linear(x: torch.Tensor, weight: Linear,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for a full-precision weight, a CPU one with its kernels chosen
    (``weights.CpuLinear``) or a quantized one."""
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight, bias)
    out = weight(x)
    return out if bias is None else out + bias


def rows(weight: Linear, ids: torch.Tensor) -> torch.Tensor:
    """``weight[ids]`` in full precision (the output head's rows for a candidate gather)."""
    return weight[ids] if isinstance(weight, torch.Tensor) else weight.rows(ids)


def quantize(weight: torch.Tensor, scheme: Scheme) -> Quantized:
    return _KINDS[scheme].of(weight)


#: How quantized weights cached beside a model's own begin their file name (the loader of
#: the model's own weights, ``weights._state_dict``, skips them).
QUANTIZED_PREFIX = "quantized-"


def cache_path(directory: Path, scheme: Scheme) -> Path:
    """Where ``directory``'s weights quantized by ``scheme`` are cached: inside a GGUF's
    conversion directory (named by the GGUF's hash), else under ``quantized/`` in the local
    cache, keyed by the safetensors files' paths, sizes and modification times."""
    from llmcli_local.sources import cache_root

    # int4's packed layout is the CPU kernel's own: per instruction set and torch version.
    cpu = (f"-{torch.backends.cpu.get_cpu_capability()}-torch{torch.__version__.split('+')[0]}"
           if scheme == "int4" else "")
    name = f"{QUANTIZED_PREFIX}{scheme}{cpu}-v{_FORMAT}.safetensors"
    root = cache_root()
    if directory.resolve().parent == root.resolve():
        return directory / name
    versions = "\n".join(
        f"{p.resolve()}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}"
        for p in sorted(directory.glob("*.safetensors"))
    )
    return root / "quantized" / hashlib.sha256(versions.encode()).hexdigest()[:32] / name


def load_or_quantize(path: Path, scheme: Scheme,
                     weights: Callable[[], dict[str, torch.Tensor]]) -> dict[str, Quantized]:
    """The quantized weights cached at ``path``, or ``weights()`` quantized by ``scheme`` and
    written there (atomically; an unwritable cache only costs quantizing again next time)."""
    from safetensors.torch import load_file, save_file

    kind = _KINDS[scheme]
    if path.is_file():
        flat = load_file(str(path))
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in flat.items():
            name, _, part = key.rpartition(":")
            grouped.setdefault(name, {})[part] = tensor
        return {name: kind.from_state(state) for name, state in grouped.items()}
    quantized = {name: quantize(w, scheme) for name, w in weights().items()}
    flat = {f"{name}:{part}": t.contiguous() for name, q in quantized.items()
            for part, t in q.state().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        save_file(flat, str(tmp), metadata={"scheme": scheme, "format": str(_FORMAT)})
        os.replace(tmp, path)
        _drop_older_formats(path.parent, scheme)
    except OSError:
        pass
    return quantized


def _drop_older_formats(directory: Path, scheme: Scheme) -> None:
    """Delete ``scheme``'s cache files of earlier formats beside a new one (never read again;
    SmolLM2's int8 is 135 MB). Other instruction sets' and torch versions' files stay."""
    for old in directory.glob(f"{QUANTIZED_PREFIX}{scheme}*-v*.safetensors"):
        version = old.name.rsplit("-v", 1)[-1].removesuffix(".safetensors")
        if version.isdigit() and int(version) < _FORMAT:
            old.unlink(missing_ok=True)


#: What is quantized per layer: each a weight of its own or the rows of several stacked.
#: Stacking q/k/v and gate/up makes one kernel call of each (the decode step is a long
#: sequence of small operations on CPU: fewer of them is faster). Both schemes quantize
#: each output row on its own (int8: a scale per row; int4: groups along the row), so a
#: stacked weight holds exactly the codes of its parts.
_LINEARS = {"qkv": ("q", "k", "v"), "out": ("out",), "gate_up": ("gate", "up"),
            "down": ("down",)}


def quantize_weights(weights: Weights, directory: Path, scheme: Scheme) -> None:
    """Replace ``weights``' linear layers and output head by their ``scheme`` quantization,
    read from the cache when it is there (the embeddings used for lookup stay as they are).
    q/k/v become one ``qkv`` weight and gate/up one ``gate_up`` (see :data:`_LINEARS`)."""
    if scheme == "none":
        return

    def full() -> dict[str, torch.Tensor]:
        named = {}
        for i, layer in enumerate(weights.layers):
            for name, parts in _LINEARS.items():
                tensors = [getattr(layer, part) for part in parts]
                assert all(isinstance(t, torch.Tensor) for t in tensors)
                named[f"layers.{i}.{name}"] = torch.cat(tensors) if len(parts) > 1 else tensors[0]
        assert isinstance(weights.lm_head, torch.Tensor)
        return {**named, "lm_head": weights.lm_head}

    quantized = load_or_quantize(cache_path(directory, scheme), scheme, full)
    for i, layer in enumerate(weights.layers):
        biases = [layer.q_bias, layer.k_bias, layer.v_bias]
        if all(b is not None for b in biases):
            layer.qkv_bias = torch.cat([b for b in biases if b is not None])
        layer.q = layer.k = layer.v = layer.gate = layer.up = None
        layer.qkv = quantized[f"layers.{i}.qkv"]
        layer.out = quantized[f"layers.{i}.out"]
        layer.gate_up = quantized[f"layers.{i}.gate_up"]
        layer.down = quantized[f"layers.{i}.down"]
    weights.lm_head = quantized["lm_head"]
