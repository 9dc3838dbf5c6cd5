"""The lean backend's forward pass, for llama-family models (llama, mistral, qwen2), on CPU
or CUDA: a prompt pass over many tokens, then a one-token step, both writing a preallocated
KV buffer in place.

transformers' model code spends about a third of a CPU decode step outside the matrix
multiplications (module calls, mask building, cache concatenation). Here the same weights
run as a flat sequence of operations; the prompt pass uses ``scaled_dot_product_attention``
and the step grouped-query attention as two small matmuls. RoPE and RMSNorm are computed as
transformers computes them, so logits agree with it (the tests compare them). Fusing QKV and
gate/up into single matmuls was tried in full precision: no faster here, and the copies cost
memory. Quantized weights (``-o quantize``) are fused (:mod:`llmcli_local.lean.quant`): there
the kernels are fast enough that the number of operations per step decides, and their
one-token step is :meth:`Decoder.step`'s leaner variant (``_step_fused``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from llmcli_local.lean.config import LeanConfig, RopeConfig
from llmcli_local.lean.quant import linear
from llmcli_local.lean.weights import Layer, Weights

if TYPE_CHECKING:
    from llmcli_local.lean.weights import Linear

__all__ = ["Decoder", "KVBuffers", "Rotary", "inv_freq"]

#: Per layer, keys and values of shape (2, kv_heads, capacity, head_dim).
KVBuffers = list[torch.Tensor]


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
    """RoPE cos/sin as transformers' default rotary embedding computes them (fp32 angles,
    then cast to the activations' dtype)."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq

    def __call__(self, x: torch.Tensor, position_ids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device,
                                                                   dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype=x.dtype), emb.sin().to(dtype=x.dtype)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As transformers' LlamaRMSNorm: normalise in fp32, scale in the model's dtype.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _qkv(layer: Layer, h: torch.Tensor, sizes: tuple[int, int, int]
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of ``h`` (..., hidden): three projections, or one fused (quantized)."""
    if layer.qkv is not None:
        q, k, v = linear(h, layer.qkv, layer.qkv_bias).split(sizes, dim=-1)
        return q, k, v
    assert layer.q is not None and layer.k is not None and layer.v is not None
    return (linear(h, layer.q, layer.q_bias), linear(h, layer.k, layer.k_bias),
            linear(h, layer.v, layer.v_bias))


def _mlp(layer: Layer, h: torch.Tensor) -> torch.Tensor:
    """The gated MLP of ``h``: gate and up apart, or one fused projection (quantized)."""
    if layer.gate_up is not None:
        gate, up = linear(h, layer.gate_up).chunk(2, dim=-1)
    else:
        assert layer.gate is not None and layer.up is not None
        gate, up = linear(h, layer.gate), linear(h, layer.up)
    return linear(F.silu(gate) * up, layer.down)


class Decoder:
    """The forward pass over one model's weights (references: no copy, no extra memory)."""

    def __init__(self, config: LeanConfig, weights: Weights) -> None:
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        self.eps = config.rms_norm_eps
        self.scaling = config.head_dim ** -0.5
        self.weights = weights
        self.rotary = Rotary(inv_freq(config.rope, config.head_dim).to(weights.embed.device))
        self.sizes = (self.heads * self.head_dim, self.kv_heads * self.head_dim,
                      self.kv_heads * self.head_dim)
        #: Quantized weights come fused: their one-token step is the lean variant.
        self.fused = all(layer.qkv is not None and layer.gate_up is not None
                         for layer in weights.layers)
        self._fused_cache: list[Any] | None = None
        half = self.head_dim // 2
        swap = torch.zeros((self.head_dim, self.head_dim), dtype=torch.float32)
        swap[torch.arange(half) + half, torch.arange(half)] = -1.0
        swap[torch.arange(half), torch.arange(half) + half] = 1.0
        #: RoPE's rotate-half as a matrix: ``x @ swap == cat(-x[half:], x[:half])``.
        self._swap = swap.to(weights.embed.device)

    def new_buffers(self, capacity: int) -> KVBuffers:
        """Empty per-layer [keys, values] buffers of ``capacity`` positions."""
        embed = self.weights.embed
        return [torch.empty((2, self.kv_heads, capacity, self.head_dim), dtype=embed.dtype,
                            device=embed.device) for _ in self.weights.layers]

    def prompt(self, buffers: KVBuffers, ids: list[int], start: int) -> torch.Tensor:
        """Last-position logits for ``ids`` at positions ``start``.. in one causal pass (as
        transformers' forward computes them); their K/V are written into ``buffers``."""
        return linear(self.states(buffers, ids, start, 1)[-1:], self.weights.lm_head)[0]

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
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        weights = self.weights
        count = len(ids)
        end = start + count
        index = torch.tensor(ids, dtype=torch.long, device=weights.embed.device)
        x = weights.embed[index].unsqueeze(0)  # (1, count, hidden)
        causal = count  # rows attended causally; the rest (a tree's) through ``leaves``
        leaves = None
        if tree is not None:
            positions = torch.tensor(tree[0], device=x.device).unsqueeze(0)
            leaves = tree[1].to(x.device)
            causal = count - int(leaves.shape[0])
        else:
            positions = torch.arange(start, end, device=x.device).unsqueeze(0)
        mask = None
        if start > 0 and causal > 1:
            mask = torch.ones((causal, start + causal), dtype=torch.bool,
                              device=x.device).tril(start)
        cos, sin = self.rotary(x, positions)  # (1, count, dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        half = dim // 2
        for layer, buffer in zip(weights.layers, buffers, strict=True):
            h = _rms(x, layer.norm_in, self.eps)
            q, k, v = _qkv(layer, h, self.sizes)
            q = q.reshape(1, count, heads, dim).transpose(1, 2)
            k = k.reshape(1, count, kv_heads, dim).transpose(1, 2)
            v = v.reshape(1, count, kv_heads, dim).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
            buffer[0, :, start:end] = k[0]
            buffer[1, :, start:end] = v[0]
            attended = F.scaled_dot_product_attention(
                q[:, :, :causal], buffer[0, :, :start + causal].unsqueeze(0),
                buffer[1, :, :start + causal].unsqueeze(0), attn_mask=mask,
                is_causal=mask is None and causal > 1, scale=self.scaling,
                enable_gqa=heads != kv_heads,
            )
            if leaves is not None:
                attended = torch.cat((attended, F.scaled_dot_product_attention(
                    q[:, :, causal:], buffer[0, :, :end].unsqueeze(0),
                    buffer[1, :, :end].unsqueeze(0), attn_mask=leaves, scale=self.scaling,
                    enable_gqa=heads != kv_heads)), dim=2)
            attended = attended.transpose(1, 2).reshape(1, count, heads * dim)
            x = x + linear(attended, layer.out, layer.out_bias)
            x = x + _mlp(layer, _rms(x, layer.norm_post, self.eps))
        return _rms(x[0, count - keep:], weights.norm, self.eps)

    def step(self, buffers: KVBuffers, token: int, position: int) -> torch.Tensor:
        """Logits for ``token`` at ``position``; its K/V are written at that position."""
        if self.fused:
            return self._step_fused([buffers], [token], [position])[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        weights = self.weights
        group = heads // kv_heads
        q_size = heads * dim
        x = weights.embed[token].unsqueeze(0)  # (1, hidden)
        positions = torch.tensor([[position]], device=x.device)
        cos, sin = self.rotary(x.unsqueeze(0), positions)
        cos, sin = cos.reshape(1, dim), sin.reshape(1, dim)
        half = dim // 2
        end = position + 1
        for layer, buffer in zip(weights.layers, buffers, strict=True):
            h = _rms(x, layer.norm_in, self.eps)
            q, k, v = _qkv(layer, h, self.sizes)
            q, k, v = q.reshape(heads, dim), k.reshape(kv_heads, dim), v.reshape(kv_heads, dim)
            q = q * cos + torch.cat((-q[:, half:], q[:, :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[:, half:], k[:, :half]), dim=-1) * sin
            buffer[0, :, position] = k
            buffer[1, :, position] = v
            keys = buffer[0, :, :end]  # (kv_heads, end, dim)
            values = buffer[1, :, :end]
            scores = torch.matmul(q.view(kv_heads, group, dim), keys.transpose(1, 2))
            attention = torch.softmax(scores.float() * self.scaling, dim=-1).to(q.dtype)
            attended = torch.matmul(attention, values).reshape(1, q_size)
            x = x + linear(attended, layer.out, layer.out_bias)
            x = x + _mlp(layer, _rms(x, layer.norm_post, self.eps))
        x = _rms(x, weights.norm, self.eps)
        return linear(x, weights.lm_head)[0]

    def _step_fused(self, buffers: list[KVBuffers], tokens: list[int],
                    positions: list[int]) -> torch.Tensor:
        """:meth:`step` and :meth:`step_batch` on fused (quantized) weights, in fewer
        operations: on CPU a step of this model is about 30 small operations per layer
        around four kernel calls, and each operation costs a few microseconds whatever its
        size. The same computation, arranged differently: RoPE as one product with a
        per-row matrix (the rotate-half of q and k together), the norm's mean as a sum,
        each layer's weights called directly (:meth:`_fused_layers`). Logits agree with the
        unfused step's to float rounding (tested). One row or many run the same operations
        row by row, so a row's logits are the same batched or alone."""
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        weights = self.weights
        eps, scaling = self.eps, self.scaling
        group = heads // kv_heads
        rows = len(tokens)
        rotated = heads + kv_heads
        q_end = heads * dim
        k_end = q_end + kv_heads * dim
        device = weights.embed.device
        x = weights.embed[torch.tensor(tokens, dtype=torch.long, device=device)]  # (rows, hidden)
        rope = self.rope(x, torch.tensor(positions, device=device))
        inverse = 1.0 / x.shape[-1]
        spans = [(buffers[row], positions[row], positions[row] + 1) for row in range(rows)]
        rsqrt, bmm, softmax = torch.rsqrt, torch.bmm, torch.softmax
        for index, (norm_in, qkv_of, out_of, norm_post, gate_up_of, down_of) in enumerate(
                self._fused_layers()):
            h = x * rsqrt(torch.sum(x * x, -1, keepdim=True).mul_(inverse).add_(eps))
            qkv = qkv_of(h * norm_in)  # (rows, q + k + v)
            qk = bmm(qkv[:, :k_end].view(rows, rotated, dim), rope)
            values = qkv[:, k_end:].view(rows, kv_heads, dim)
            outputs = []
            for row, (sequence, position, end) in enumerate(spans):
                buffer = sequence[index]
                buffer[0, :, position] = qk[row, heads:]
                buffer[1, :, position] = values[row]
                scores = bmm(qk[row, :heads].view(kv_heads, group, dim),
                             buffer[0, :, :end].transpose(1, 2))
                outputs.append(bmm(softmax(scores.mul_(scaling), -1), buffer[1, :, :end]))
            x = x + out_of(torch.stack(outputs).view(rows, q_end))
            h = x * rsqrt(torch.sum(x * x, -1, keepdim=True).mul_(inverse).add_(eps))
            gate, up = gate_up_of(h * norm_post).chunk(2, dim=-1)
            x = x + down_of(F.silu(gate) * up)
        x = _rms(x, weights.norm, self.eps)
        return linear(x, weights.lm_head)

    def _fused_layers(self) -> list[tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor],
                                          Callable[[torch.Tensor], torch.Tensor], torch.Tensor,
                                          Callable[[torch.Tensor], torch.Tensor],
                                          Callable[[torch.Tensor], torch.Tensor]]]:
        """Per layer: norm_in, qkv, out, norm_post, gate_up and down, each projection a
        callable of its input (bias included): the step's loop looks nothing else up."""
        if self._fused_cache is None:
            def call(weight: Linear | None, bias: torch.Tensor | None = None
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
                assert weight is not None
                if bias is None and not isinstance(weight, torch.Tensor):
                    return weight  # a quantized weight is its own kernel call
                return lambda h: linear(h, weight, bias)

            self._fused_cache = [
                (layer.norm_in, call(layer.qkv, layer.qkv_bias),
                 call(layer.out, layer.out_bias), layer.norm_post, call(layer.gate_up),
                 call(layer.down))
                for layer in self.weights.layers]
        return self._fused_cache

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE as one matrix per row, shape (rows, head_dim, head_dim), in ``x``'s dtype:
        ``v @ rope[row] == v * cos + rotate_half(v) * sin`` at ``positions[row]``, so that q
        and k of every head take it in one batched product (the fused step, the static
        batch's step). ``x``: the rows' activations (rows, hidden); ``positions``: (rows,)."""
        cos, sin = self.rotary(x.unsqueeze(0), positions.unsqueeze(0))  # (1, rows, dim)
        return torch.diag_embed(cos[0]) + self._swap.to(x.dtype) * sin[0].unsqueeze(1)

    def rows_qkv(self, layer: Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q and k (RoPE applied) and v of one token per row: ``h`` (rows, hidden) normed,
        ``cos``/``sin`` (rows, 1, head_dim) at each row's position; shapes (rows, heads or
        kv_heads, head_dim). :meth:`step_batch`'s projections."""
        rows, dim, half = h.shape[0], self.head_dim, self.head_dim // 2
        q, k, v = _qkv(layer, h, self.sizes)
        q = q.reshape(rows, self.heads, dim)
        k = k.reshape(rows, self.kv_heads, dim)
        q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
        k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
        return q, k, v.reshape(rows, self.kv_heads, dim)

    def step_batch(self, buffers: list[KVBuffers], tokens: list[int],
                   positions: list[int]) -> torch.Tensor:
        """One decode step for several sequences at once: row ``i`` is ``tokens[i]`` at
        ``positions[i]`` of the sequence whose KV buffers are ``buffers[i]``. Logits, shape
        (rows, vocab).

        Every weight is read once for all rows (the matrix multiplications take the rows
        together: that is the speed-up); attention runs per row over that row's own buffer,
        with exactly the operations of :meth:`step`, so a row sees nothing of the others.
        A batched matmul may round its last bit differently from a one-row one: greedy text
        can differ from a run alone only where two tokens tie to within that rounding."""
        if self.fused:
            return self._step_fused(buffers, tokens, positions)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        weights = self.weights
        group = heads // kv_heads
        q_size = heads * dim
        rows = len(tokens)
        device = weights.embed.device
        x = weights.embed[torch.tensor(tokens, dtype=torch.long, device=device)]  # (rows, hidden)
        position_ids = torch.tensor([positions], device=device)
        cos, sin = self.rotary(x.unsqueeze(0), position_ids)  # (1, rows, dim)
        cos, sin = cos.reshape(rows, 1, dim), sin.reshape(rows, 1, dim)
        full = x.dtype == torch.float32  # .float() and back would be no-ops
        for index, layer in enumerate(weights.layers):
            q, k, v = self.rows_qkv(layer, _rms(x, layer.norm_in, self.eps), cos, sin)
            # Per row as in step (the same operations; fewer Python calls: this loop is
            # what batching adds per layer).
            kv = torch.stack((k, v), dim=1)  # (rows, 2, kv_heads, dim)
            queries = q.view(rows, kv_heads, group, dim)
            outputs = []
            for row in range(rows):
                end = positions[row] + 1
                buffer = buffers[row][index]
                buffer[:, :, end - 1] = kv[row]
                cached = buffer[:, :, :end]  # (2, kv_heads, end, dim)
                scores = torch.matmul(queries[row], cached[0].mT)
                if full:
                    attention = torch.softmax(scores * self.scaling, dim=-1)
                else:
                    attention = torch.softmax(scores.float() * self.scaling, dim=-1).to(q.dtype)
                outputs.append(torch.matmul(attention, cached[1]))
            attended = torch.stack(outputs).view(rows, q_size)
            x = x + linear(attended, layer.out, layer.out_bias)
            x = x + _mlp(layer, _rms(x, layer.norm_post, self.eps))
        x = _rms(x, weights.norm, self.eps)
        return linear(x, weights.lm_head)
