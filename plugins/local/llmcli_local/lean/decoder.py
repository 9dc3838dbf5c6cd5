"""The lean backend's forward pass, for llama-like families (llama, mistral, qwen2, qwen3), on
CPU or CUDA: **one layer definition**, :meth:`Decoder.forward`, that every pass runs.

transformers' model code spends about a third of a CPU decode step outside the matrix
multiplications (module calls, mask building, cache concatenation). Here the same weights
run as a flat sequence of operations, and what differs between passes is injected:

- **the attention** (:mod:`llmcli_local.lean.attention`): :class:`~.attention.Causal` for a
  prompt pass, ``extend`` and ``verify`` (and a tree of continuations scored in the same
  pass), :class:`~.attention.PerRow` for decode steps, one row or a batch, and
  :class:`~.attention.Pooled` for the static batch's step (:mod:`llmcli_local.lean.static`);
- **the projections** (:class:`Projections`, each layer's weights as callables, built once):
  q/k/v and gate/up apart in full precision, or fused into one kernel call each for
  quantized weights (:mod:`llmcli_local.lean.quant`, where the number of operations per step
  decides). Fusing them in full precision was tried: no faster here, and the copies cost
  memory. On CPU a full-precision weight chooses its own kernel by rows
  (:class:`~llmcli_local.lean.weights.CpuLinear`).

What a family changes is a field of :class:`~llmcli_local.lean.config.LeanConfig` (its
:class:`~llmcli_local.lean.config.Family`): q/k/v and o biases, q/k norms, RoPE's scaling,
tied heads. RMSNorm is ``F.rms_norm`` (normalised in fp32, scaled in the model's dtype: on
CPU bit for bit what transformers' ``LlamaRMSNorm`` computes, in fewer operations), and RoPE
is computed as transformers computes it (:class:`Rotary`), so logits agree with it (the tests
compare them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from llmcli_local.lean.attention import Attention, Causal, Heads, KVBuffers, PerRow, Segments
from llmcli_local.lean.config import LeanConfig, RopeConfig
from llmcli_local.lean.weights import Layer, Weights

if TYPE_CHECKING:
    from llmcli_local.lean.weights import Linear

__all__ = ["Decoder", "KVBuffers", "Projections", "Rotary", "inv_freq"]

#: A projection: its input (rows, in) to its output (rows, out), bias included.
Project = Callable[[torch.Tensor], torch.Tensor]


def inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """RoPE inverse frequencies as transformers computes them (default, or llama 3.1's
    ``_compute_llama3_parameters``)."""
    freqs = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(
        dtype=torch.float) / head_dim))
    if rope.kind != "llama3":
        return freqs
    factor = rope.parameters["factor"]
    low_freq_factor = rope.parameters["low_freq_factor"]
    high_freq_factor = rope.parameters["high_freq_factor"]
    old_context_len = rope.parameters["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / freqs
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, inv_freq_llama)


class Rotary:
    """RoPE: the angles as transformers' rotary embedding computes them (fp32, then cos and
    sin cast to the activations' dtype), and their rotation of q and k, ``v * cos +
    rotate_half(v) * sin``, applied to q and k of every head together (shape (rows, heads +
    kv_heads, head_dim)) by one of two kernels of the same computation:

    - **a decode step** (one token per row: few rows): one batched product with a matrix per
      row, ``v @ rope[row]``: one kernel (a CUDA graph's step wants few), and on CPU the
      fastest for a row or a few (SmolLM2's shape: 4.8 µs a layer, against 18.6 for the
      rotate-half form on q and k apart);
    - **a pass** (many rows): ``v * cos + roll(v, half) * signed_sin``, elementwise, where the
      per-row matrices would cost more than the rotation itself (400 rows: 0.10 ms a layer,
      against 0.65 ms by matrices and 0.11 ms for q and k apart). Bit for bit transformers'
      ``v * cos + rotate_half(v) * sin`` (``(-a) * s == a * (-s)`` exactly), so a prompt
      pass computes what it computed before this class (tested): with ``addcmul``'s single
      rounding instead, SmolLM2's int8 prompt logits moved from 1.37 to 1.58 of full
      precision's, the bf16 casts before each quantized kernel amplifying last-bit changes.

    The two agree to float rounding (the tests compare a pass's K/V with the steps')."""

    def __init__(self, rope: RopeConfig, head_dim: int, device: torch.device) -> None:
        self.inv_freq = inv_freq(rope, head_dim).to(device)
        self.half = head_dim // 2
        half = torch.arange(self.half)
        swap = torch.zeros((head_dim, head_dim), dtype=torch.float32)
        swap[half + self.half, half] = -1.0
        swap[half, half + self.half] = 1.0
        sign = torch.ones(head_dim)
        sign[:self.half] = -1.0
        #: rotate-half as a matrix (``v @ swap == cat(-v[half:], v[:half])``) and as a sign
        #: (``roll(v, half) * sign``), per dtype.
        self._tables: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {
            torch.float32: (swap.to(device), sign.to(device))}

    def _of(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        tables = self._tables.get(dtype)
        if tables is None:
            swap, sign = self._tables[torch.float32]
            tables = self._tables[dtype] = (swap.to(dtype), sign.to(dtype))
        return tables

    def angles(self, positions: torch.Tensor, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at ``positions`` (rows,), shape (rows, head_dim), in ``dtype``."""
        freqs = positions.unsqueeze(1).float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def at(self, positions: torch.Tensor, dtype: torch.dtype, step: bool
           ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The rotation at ``positions`` (one per row) of q and k (rows, heads, head_dim):
        by per-row matrices for a decode ``step``, elementwise for a pass."""
        cos, sin = self.angles(positions, dtype)
        swap, sign = self._of(dtype)
        if step:
            rope = torch.diag_embed(cos) + swap * sin.unsqueeze(1)  # (rows, dim, dim)
            return lambda qk: torch.bmm(qk, rope)
        cos, signed, half = cos.unsqueeze(1), (sin * sign).unsqueeze(1), self.half
        # A multiply and an add, not addcmul's fused one: transformers' rounding, bit for
        # bit (quantized weights' bf16 casts amplify any last-bit change).
        return lambda qk: qk * cos + qk.roll(half, -1) * signed


def _call(weight: Linear | None, bias: torch.Tensor | None = None) -> Project:
    """``linear(h, weight, bias)`` as a callable that looks nothing up: a CPU or quantized
    weight is its own kernel call."""
    assert weight is not None
    if isinstance(weight, torch.Tensor):
        return lambda h: F.linear(h, weight, bias)
    if bias is None:
        return weight
    return lambda h: weight(h) + bias


def _qkv(layer: Layer, shape: Heads) -> Callable[[torch.Tensor],
                                                 tuple[torch.Tensor, torch.Tensor]]:
    """The normed input (rows, hidden) to q and k together, (rows, heads + kv_heads,
    head_dim), and v (rows, kv_heads, head_dim): one kernel call where the weights are fused
    (quantized), else three, q and k joined for RoPE's one call."""
    heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.dim
    rotated = heads + kv_heads
    k_end = rotated * dim
    if layer.qkv is not None:
        fused = _call(layer.qkv, layer.qkv_bias)

        def qkv(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = fused(h)
            rows = out.shape[0]
            return (out[:, :k_end].view(rows, rotated, dim),
                    out[:, k_end:].view(rows, kv_heads, dim))
        return qkv
    q, k, v = (_call(layer.q, layer.q_bias), _call(layer.k, layer.k_bias),
               _call(layer.v, layer.v_bias))

    def apart(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = h.shape[0]
        return (torch.cat((q(h), k(h)), dim=-1).view(rows, rotated, dim),
                v(h).view(rows, kv_heads, dim))
    return apart


def _mlp(layer: Layer) -> Project:
    """The gated MLP of the normed input: gate and up in one kernel call where they are
    fused (quantized), else apart."""
    down = _call(layer.down)
    if layer.gate_up is not None:
        gate_up = _call(layer.gate_up)

        def fused(h: torch.Tensor) -> torch.Tensor:
            gate, up = gate_up(h).chunk(2, dim=-1)
            return down(F.silu(gate) * up)
        return fused
    gate, up = _call(layer.gate), _call(layer.up)
    return lambda h: down(F.silu(gate(h)) * up(h))


@dataclass(frozen=True)
class Projections:
    """One layer's weights as :meth:`Decoder.forward` calls them (built once)."""

    norm_in: torch.Tensor
    norm_post: torch.Tensor
    #: The normed input to q and k before RoPE, and v (:func:`_qkv`).
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    #: q's and k's norm weights per head, shape (heads + kv_heads, head_dim), or None.
    qk_norm: torch.Tensor | None
    out: Project
    mlp: Project

    @classmethod
    def of(cls, layer: Layer, shape: Heads) -> Projections:
        qk_norm = None
        if layer.q_norm is not None and layer.k_norm is not None:
            qk_norm = torch.cat((layer.q_norm.expand(shape.heads, shape.dim),
                                 layer.k_norm.expand(shape.kv_heads, shape.dim)))
        return cls(layer.norm_in, layer.norm_post, _qkv(layer, shape), qk_norm,
                   _call(layer.out, layer.out_bias), _mlp(layer))


class Decoder:
    """The forward pass over one model's weights (references: no copy, no extra memory)."""

    def __init__(self, config: LeanConfig, weights: Weights) -> None:
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        self.eps = config.rms_norm_eps
        self.scaling = config.head_dim ** -0.5
        self.shape = Heads(self.heads, self.kv_heads, self.head_dim, self.scaling)
        self.weights = weights
        self.rotary = Rotary(config.rope, config.head_dim, weights.embed.device)
        #: Quantized weights come fused (q/k/v and gate/up one kernel call each).
        self.fused = all(layer.qkv is not None and layer.gate_up is not None
                         for layer in weights.layers)
        self._layers: list[Projections] | None = None
        self._head: Project | None = None

    @property
    def layers(self) -> list[Projections]:
        """Each layer's weights as the forward pass calls them, built at the first pass
        (the weights are not to change after it)."""
        if self._layers is None:
            self._layers = [Projections.of(layer, self.shape) for layer in self.weights.layers]
        return self._layers

    def head(self, states: torch.Tensor) -> torch.Tensor:
        """Logits (rows, vocab) of final-normed states (rows, hidden)."""
        if self._head is None:
            self._head = _call(self.weights.lm_head)
        return self._head(states)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, attention: Attention,
                step: bool, keep: int | None = None) -> torch.Tensor:
        """**The llama layer**, every layer in turn, for the embedded tokens ``x`` (rows,
        hidden) at ``positions`` (rows,): the final-normed hidden states of the last ``keep``
        rows (all by default). ``attention`` writes each layer's K/V and attends;
        ``step``: one token per row (RoPE by per-row matrices, :class:`Rotary`).

        Nothing here reads a tensor's value on the host: the static batch captures it as a
        CUDA graph."""
        heads, dim, eps = self.heads, self.head_dim, self.eps
        hidden = (x.shape[-1],)
        norm = torch.rms_norm  # F.rms_norm without its Python wrapper (each call counts)
        rotate = self.rotary.at(positions, x.dtype, step)
        for index, layer in enumerate(self.layers):
            qk, v = layer.qkv(layer.norm_in * norm(x, hidden, None, eps))
            if layer.qk_norm is not None:
                qk = layer.qk_norm * norm(qk, (dim,), None, eps)
            qk = rotate(qk)
            x = x + layer.out(attention(index, qk[:, :heads], qk[:, heads:], v))
            x = x + layer.mlp(layer.norm_post * norm(x, hidden, None, eps))
        if keep is not None:
            x = x[x.shape[0] - keep:]
        return self.weights.norm * norm(x, hidden, None, eps)

    def new_buffers(self, capacity: int) -> KVBuffers:
        """Empty per-layer [keys, values] buffers of ``capacity`` positions."""
        embed = self.weights.embed
        return [torch.empty((2, self.kv_heads, capacity, self.head_dim), dtype=embed.dtype,
                            device=embed.device) for _ in self.weights.layers]

    def prompt(self, buffers: KVBuffers, ids: list[int], start: int) -> torch.Tensor:
        """Last-position logits for ``ids`` at positions ``start``.. in one causal pass (as
        transformers' forward computes them); their K/V are written into ``buffers``."""
        return self.head(self.states(buffers, ids, start, 1))[0]

    def states(self, buffers: KVBuffers, ids: list[int], start: int,
               keep: int, tree: tuple[list[int], torch.Tensor] | None = None
               ) -> torch.Tensor:
        """The same pass; the final-normed hidden states of its last ``keep`` positions,
        shape (keep, hidden): the output head (``weights.lm_head``) turns a row into logits.

        ``tree``: the pass's RoPE positions, and the attention mask of its last rows (shape
        (rows, start + count), True where a row attends): a tree of continuations after the
        causal rows, scored in the same pass, each seeing the cache, the causal rows and its
        own ancestors (:mod:`llmcli_local.boundary`). The causal rows keep the causal kernel,
        so a long prompt with a tree costs what it costs without one."""
        embed = self.weights.embed
        device = embed.device
        x = embed[torch.tensor(ids, dtype=torch.long, device=device)]  # (count, hidden)
        leaves = None
        if tree is not None:
            positions = torch.tensor(tree[0], device=device)
            leaves = tree[1].to(device)
        else:
            positions = torch.arange(start, start + len(ids), device=device)
        attention = Causal(self.shape, buffers, start, len(ids), leaves)
        return self.forward(x, positions, attention, step=False, keep=keep)

    def step(self, buffers: KVBuffers, token: int, position: int) -> torch.Tensor:
        """Logits for ``token`` at ``position``; its K/V are written at that position."""
        x = self.weights.embed[token:token + 1]  # (1, hidden): a view, no gather
        positions = torch.tensor([position], device=x.device)
        attention = PerRow(self.shape, [buffers], [position])
        return self.head(self.forward(x, positions, attention, step=True))[0]

    def step_batch(self, buffers: Sequence[KVBuffers], tokens: list[int],
                   positions: list[int]) -> torch.Tensor:
        """One decode step for several sequences at once: row ``i`` is ``tokens[i]`` at
        ``positions[i]`` of the sequence whose KV buffers are ``buffers[i]``. Logits, shape
        (rows, vocab).

        Every weight is read once for all rows (the matrix multiplications take the rows
        together: that is the speed-up); attention runs per row over that row's own buffer,
        with exactly the operations of :meth:`step`, so a row sees nothing of the others.
        A batched matmul may round its last bit differently from a one-row one: greedy text
        can differ from a run alone only where two tokens tie to within that rounding."""
        embed = self.weights.embed
        device = embed.device
        x = embed[torch.tensor(tokens, dtype=torch.long, device=device)]  # (rows, hidden)
        attention = PerRow(self.shape, buffers, positions)
        return self.head(self.forward(x, torch.tensor(positions, device=device), attention,
                                      step=True))

    def runs(self, buffers: Sequence[KVBuffers], runs: Sequence[Sequence[int]],
             starts: Sequence[int]) -> torch.Tensor:
        """One pass over several sequences' runs of tokens: run ``i`` at positions
        ``starts[i]``.. of the sequence whose buffers are ``buffers[i]`` (its K/V written
        there). The final-normed hidden states of every row, shape (total, hidden), the runs'
        rows in order. Speculative decoding's batched verification: every weight is read
        once for all the rows; attention is per sequence (:class:`Segments`)."""
        embed = self.weights.embed
        device = embed.device
        flat = [token for run in runs for token in run]
        x = embed[torch.tensor(flat, dtype=torch.long, device=device)]
        positions = torch.tensor([start + j for run, start in zip(runs, starts, strict=True)
                                  for j in range(len(run))], device=device)
        attention = Segments(self.shape, buffers, starts, [len(run) for run in runs])
        return self.forward(x, positions, attention, step=False)

