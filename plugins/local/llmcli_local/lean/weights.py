"""The lean backend's weights: the safetensors files read into plain tensors, one
:class:`Layer` per decoder layer (no transformers model objects)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from llmcli_local.lean.config import LeanConfig, read_json

if TYPE_CHECKING:
    from llmcli_local.lean.quant import Quantized, Scheme

__all__ = ["CpuLinear", "Layer", "Weights", "for_cpu", "load_weights"]


class CpuLinear:
    """A full-precision weight on CPU, of shape (out, in), with its matrix products chosen by
    measurement (2-core AMD EPYC, torch 2.13's MKL and oneDNN; docs/benchmarks.md).

    **Packed** (where this torch has oneDNN, :func:`_onednn`): the weight is reordered once,
    at load, into oneDNN's blocked layout for its linear (``mkldnn._reorder_linear_weight``),
    and every product, whatever its number of rows, is one ``mkldnn._linear_pointwise`` call
    on it. Against the unpacked kernels below, one loaded SmolLM2 in one process, passes
    interleaved, two runs (``tests/bench/bench_cpu_linear.py``): a 2-row and an 8-row
    batched step 0.65-0.71x and 0.67-0.69x the time, a pass over 5 tokens (a lone call's
    verification) 0.64-0.71x, 8 rows x 3 tokens 0.73-0.80x, a 201-token prompt 0.98-1.00x,
    a one-row step 0.98-1.06x. Unpacked, oneDNN reorders the weight on every call.

    The packed copy replaces the weight: the checkpoint's (out, in) tensor is kept only
    where something reads its rows (``keep``: the output head, for the exact prefill's
    candidate gather and tied embeddings), and only when it lies in the file mapping, whose
    pages are given back (:func:`for_cpu`); :attr:`weight` reorders the packed copy back
    otherwise (exact: the values are the checkpoint's, only the order of the sums differs).

    **Unpacked** (no oneDNN, or a kept head the file does not hold, which a copy would
    double), the kernel is chosen by rows:

    - **one row** (a decode step of one sequence): a matrix-vector product, which MKL reads
      at 11 GB/s for a *tall* weight (more outputs than inputs: SmolLM2's gate and up,
      1536 x 576, and its output head, 49152 x 576) in the usual layout and at 18-24 GB/s
      transposed. Tall weights are therefore stored transposed (in, out), contiguous, and
      called as ``x @ t``; wide and square ones as ``F.linear``. A step: 56 -> 41 ms.
    - **2 to 64 rows** (a batched decode step, a short pass): oneDNN's linear
      (``mkldnn._linear_pointwise``) where it exists, 1.3-2.6x MKL's speed here for every
      weight of the model, in either layout; an 8-row step: 80 -> 56 ms.
    - **more rows** (a long prompt pass): MKL again, slightly faster there.

    The values are the checkpoint's; only the order of the sums, and so the last bits of a
    result, depend on the kernel (as between a batched step and a lone one)."""

    def __init__(self, weight: torch.Tensor, *, pack: bool, keep: bool = False) -> None:
        self.shape = weight.shape
        #: oneDNN's blocked copy (packed), else None.
        self.packed: torch.Tensor | None = None
        #: The unpacked weight as stored: (in, out) when ``transposed``.
        self.stored: torch.Tensor | None = None
        self.transposed = False
        #: The (out, in) weight where one is held: the kept checkpoint tensor, or a view of
        #: the stored one (no copy).
        self._plain: torch.Tensor | None = None
        if pack:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
            self._plain = weight if keep else None
        elif weight.shape[0] > weight.shape[1]:
            self.stored, self.transposed = weight.t().contiguous(), True
            self._plain = self.stored.t()
        else:
            self.stored = self._plain = weight

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in) weight: the one held, else the packed copy reordered back (a new
        tensor)."""
        if self._plain is not None:
            return self._plain
        assert self.packed is not None
        return self.packed.to_dense()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        assert self.stored is not None
        rows = x.numel() // x.shape[-1]
        if 1 < rows <= _ONEDNN_ROWS and _onednn():
            flat = x.reshape(rows, x.shape[-1])
            out = torch.ops.mkldnn._linear_pointwise(flat, self._plain, None, "none", [], "")
            return out.view(*x.shape[:-1], self.shape[0])
        return x @ self.stored if self.transposed else F.linear(x, self.stored)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]


#: The most rows a call takes through oneDNN (:class:`CpuLinear`).
_ONEDNN_ROWS = 64


@functools.cache
def _onednn() -> bool:
    """Whether this torch has oneDNN's linear on CPU (tried once, on a tiny product)."""
    try:
        probe = torch.ops.mkldnn._linear_pointwise(
            torch.ones(2, 4), torch.ones(3, 4), None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.equal(probe, torch.full((2, 3), 4.0)))


if TYPE_CHECKING:
    #: A linear layer's weight: a tensor, the same on CPU with its kernels chosen
    #: (:class:`CpuLinear`), or its quantization (``-o quantize``).
    Linear = torch.Tensor | Quantized | CpuLinear


def for_cpu(weights: Weights) -> None:
    """Full-precision weights on CPU become :class:`CpuLinear`: packed for oneDNN where this
    torch has it, else the tall ones transposed. The output head keeps its checkpoint rows
    (the exact prefill gathers them; tied embeddings are them), without a second copy: read
    from the file when it holds them, else the head stays unpacked (transposed, and tied
    embeddings a view of it).

    The weights are read from a memory-mapped safetensors file, which stays mapped while any
    of its tensors lives: the pages a copy was made from would stay resident beside it
    (+316 MB for SmolLM2 for the transposed ones, the whole model for packed ones). They are
    handed back to the kernel (:func:`_drop_pages`); a kept head's rows fault back in from
    the file as they are read."""
    mapped = _file_mappings()
    packs = _onednn()

    def adopt(weight: Linear, keep: bool = False) -> Linear:
        if not isinstance(weight, torch.Tensor):
            return weight
        linear = CpuLinear(weight, pack=packs and (not keep or _in(weight, mapped)), keep=keep)
        if linear.packed is not None or linear.transposed:
            _drop_pages(weight, mapped)
        return linear

    # The head first: the largest weight, whose file pages and copy are both resident until
    # its pages are given back, meets none of the layers' copies yet (a lower peak).
    head = weights.lm_head
    if isinstance(head, torch.Tensor):
        linear = adopt(head, keep=True)
        assert isinstance(linear, CpuLinear)
        if head is weights.embed:
            weights.embed = linear.weight
        weights.lm_head = linear
    for layer in weights.layers:
        for name in ("q", "k", "v", "out", "gate", "up", "down"):
            weight = getattr(layer, name)
            if weight is not None:
                setattr(layer, name, adopt(weight))


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of safetensors files (Linux; else none)."""
    from llmcli_local.openmp import mappings

    return [(start, end) for start, end, path in mappings() if path.endswith(".safetensors")]


def _in(tensor: torch.Tensor, mapped: list[tuple[int, int]]) -> bool:
    """Whether ``tensor``'s bytes lie inside one of the ``mapped`` address ranges."""
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    return any(low <= start and end <= high for low, high in mapped)


def _drop_pages(tensor: torch.Tensor, mapped: list[tuple[int, int]]) -> None:
    """Let the kernel drop the resident pages of ``tensor`` if it lies in a file mapping
    (``madvise(MADV_DONTNEED)``). The mapping is private and never written, so a later read
    would fault the same bytes back in from the file: nothing can change, only memory is
    given back. Whole pages inside the tensor only; nothing at all for other memory."""
    import ctypes
    import mmap

    if not _in(tensor, mapped):
        return
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first),
                     mmap.MADV_DONTNEED)


@dataclass
class Layer:
    """One decoder layer's weights. Full precision keeps q/k/v and gate/up apart (the
    layout transformers computes with); quantized weights (``-o quantize``) fuse them into
    ``qkv`` and ``gate_up``, one kernel call each, and keep ``q``…``up`` as None."""

    norm_in: torch.Tensor
    norm_post: torch.Tensor
    q: Linear | None
    k: Linear | None
    v: Linear | None
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    out: Linear
    out_bias: torch.Tensor | None
    gate: Linear | None
    up: Linear | None
    down: Linear
    #: q, k and v stacked along the output (rows q, then k, then v), when fused.
    qkv: Linear | None = None
    #: The q, k and v biases stacked as ``qkv``'s rows (qwen2 has them), when fused.
    qkv_bias: torch.Tensor | None = None
    #: gate and up stacked along the output, when fused.
    gate_up: Linear | None = None
    #: RMSNorm weights over each head of q and of k, shape (head_dim,), where the family
    #: norms them before RoPE (``LeanConfig.qk_norm``: qwen3).
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None


@dataclass
class Weights:
    embed: torch.Tensor
    #: The output head: the embeddings themselves when they are tied (no copy).
    lm_head: Linear
    norm: torch.Tensor
    layers: list[Layer]


def _state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from llmcli_local.lean.quant import QUANTIZED_PREFIX

    index = read_json(directory / "model.safetensors.index.json")
    files = sorted(set(index.get("weight_map", {}).values())) if index else []
    # Not the quantized weights cached beside them (quant.cache_path): only the model's own.
    paths = [directory / f for f in files] or sorted(
        path for path in directory.glob("*.safetensors")
        if not path.name.startswith(QUANTIZED_PREFIX))
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(load_file(str(path)))
    return state


def load_weights(directory: Path, config: LeanConfig, device: str,
                 dtype: torch.dtype, quantize: Scheme = "none") -> Weights:
    """The tensors of ``directory``'s safetensors, named as transformers names them, on
    ``device`` in ``dtype``; the linear layers and output head quantized by ``quantize``."""
    state = _state_dict(directory)

    def weight(name: str) -> torch.Tensor:
        tensor = state.get(name)
        if tensor is None:
            raise KeyError(f"{name} is missing from the weights")
        return tensor.to(device=device, dtype=dtype)

    def optional(name: str, wanted: bool) -> torch.Tensor | None:
        """A tensor the family's config asks for (then required), else none."""
        return weight(name) if wanted else None

    layers = []
    for i in range(config.layers):
        p = f"model.layers.{i}.self_attn."
        layers.append(Layer(
            norm_in=weight(f"model.layers.{i}.input_layernorm.weight"),
            norm_post=weight(f"model.layers.{i}.post_attention_layernorm.weight"),
            q=weight(p + "q_proj.weight"), k=weight(p + "k_proj.weight"),
            v=weight(p + "v_proj.weight"),
            q_bias=optional(p + "q_proj.bias", config.qkv_bias),
            k_bias=optional(p + "k_proj.bias", config.qkv_bias),
            v_bias=optional(p + "v_proj.bias", config.qkv_bias),
            out=weight(p + "o_proj.weight"),
            out_bias=optional(p + "o_proj.bias", config.out_bias),
            gate=weight(f"model.layers.{i}.mlp.gate_proj.weight"),
            up=weight(f"model.layers.{i}.mlp.up_proj.weight"),
            down=weight(f"model.layers.{i}.mlp.down_proj.weight"),
            q_norm=optional(p + "q_norm.weight", config.qk_norm),
            k_norm=optional(p + "k_norm.weight", config.qk_norm),
        ))
    embed = weight("model.embed_tokens.weight")
    weights = Weights(
        embed=embed,
        lm_head=embed if config.tie_word_embeddings else weight("lm_head.weight"),
        norm=weight("model.norm.weight"),
        layers=layers,
    )
    if quantize != "none":
        from llmcli_local.lean.quant import quantize_weights

        quantize_weights(weights, directory, quantize)
    return weights
