"""A lean one-token decode step for llama-family models (llama, mistral, qwen2).

transformers' model code spends about a third of a CPU decode step outside the matrix
multiplications (module calls, mask building, cache concatenation). This step runs the same
weights (the very same tensors: no copy, no extra memory) as a flat sequence of operations,
with a preallocated KV buffer written in place and grouped-query attention as two small
matmuls. On transformers' path the prompt runs through transformers' forward (one pass,
matmul-bound) and its KV cache is then copied into the buffer; on the lean path
(:mod:`llmcli_local.lean`, no transformers at all) :meth:`FastDecoder.prompt` runs the prompt
in one pass with ``scaled_dot_product_attention`` straight into the buffer. (Fusing QKV and
gate/up into single matmuls was tried: no faster here, and the copies cost memory.)

Used automatically when :func:`supports` says so; anything else (sliding windows, other
architectures, unusual activations) takes transformers' path. The tests check both paths
give the same logits as a full recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FastDecoder", "Layer", "Rotary", "supports"]

_FAMILIES = {"llama", "mistral", "qwen2"}


def supports(model: Any) -> bool:
    config = model.config
    if getattr(config, "model_type", None) not in _FAMILIES:
        return False
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        return False
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return False
    window = getattr(config, "sliding_window", None)
    if window and (config.model_type == "mistral" or getattr(config, "use_sliding_window", False)):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


@dataclass
class Layer:
    norm_in: torch.Tensor
    norm_post: torch.Tensor
    eps_in: float
    eps_post: float
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    out: torch.Tensor
    out_bias: torch.Tensor | None
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    scaling: float


def _bias(linear: Any) -> torch.Tensor | None:
    return linear.bias.data if getattr(linear, "bias", None) is not None else None


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class Rotary:
    """RoPE cos/sin as transformers' default rotary embedding computes them (fp32 angles,
    then cast to the activations' dtype); same call signature as its module."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float = 1.0) -> None:
        self.inv_freq = inv_freq
        self.scaling = scaling

    def __call__(self, x: torch.Tensor, position_ids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device,
                                                                   dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.scaling
        sin = emb.sin() * self.scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


class FastDecoder:
    """Prepared once per loaded model (references to its weights); :meth:`start` makes the
    per-request KV buffers."""

    model: Any
    heads: int
    kv_heads: int
    head_dim: int
    embed: torch.Tensor
    norm: torch.Tensor
    norm_eps: float
    rotary: Any
    lm_head: torch.Tensor
    layers: list[Layer]

    @classmethod
    def from_parts(cls, *, heads: int, kv_heads: int, head_dim: int, embed: torch.Tensor,
                   norm: torch.Tensor, norm_eps: float, rotary: Any, lm_head: torch.Tensor,
                   layers: list[Layer]) -> FastDecoder:
        """A decoder over plain tensors (the lean path: no transformers model behind it)."""
        self = cls.__new__(cls)
        self.model = None
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.embed, self.norm, self.norm_eps = embed, norm, norm_eps
        self.rotary, self.lm_head, self.layers = rotary, lm_head, layers
        return self

    def __init__(self, model: Any) -> None:
        config = model.config
        inner = model.model
        self.model = model
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.norm_eps = _eps(inner.norm)
        self.rotary = inner.rotary_emb
        self.lm_head = model.get_output_embeddings().weight
        self.layers: list[Layer] = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(Layer(
                norm_in=layer.input_layernorm.weight,
                norm_post=layer.post_attention_layernorm.weight,
                eps_in=_eps(layer.input_layernorm), eps_post=_eps(layer.post_attention_layernorm),
                q=attn.q_proj.weight, k=attn.k_proj.weight, v=attn.v_proj.weight,
                q_bias=_bias(attn.q_proj), k_bias=_bias(attn.k_proj), v_bias=_bias(attn.v_proj),
                out=attn.o_proj.weight, out_bias=_bias(attn.o_proj),
                gate=mlp.gate_proj.weight, up=mlp.up_proj.weight, down=mlp.down_proj.weight,
                scaling=float(getattr(attn, "scaling", self.head_dim ** -0.5)),
            ))

    @staticmethod
    def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # As transformers' LlamaRMSNorm: normalise in fp32, scale in the model's dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    def start(self, cache: Any, length: int, capacity: int) -> list[torch.Tensor]:
        """Per-layer [keys, values] buffers of ``capacity`` positions, filled from the
        transformers cache that the prompt pass produced."""
        buffers: list[torch.Tensor] = []
        for index in range(len(self.layers)):
            layer = cache.layers[index]
            keys, values = layer.keys[0], layer.values[0]  # (kv_heads, length, head_dim)
            buffer = torch.empty((2, self.kv_heads, capacity, self.head_dim),
                                 dtype=keys.dtype, device=keys.device)
            buffer[0, :, :length] = keys[:, :length]
            buffer[1, :, :length] = values[:, :length]
            buffers.append(buffer)
        return buffers

    def new_buffers(self, capacity: int) -> list[torch.Tensor]:
        """Empty per-layer [keys, values] buffers of ``capacity`` positions."""
        return [torch.empty((2, self.kv_heads, capacity, self.head_dim), dtype=self.embed.dtype,
                            device=self.embed.device) for _ in self.layers]

    def prompt(self, buffers: list[torch.Tensor], ids: list[int], start: int) -> torch.Tensor:
        """Last-position logits for ``ids`` at positions ``start``.. in one causal pass (as
        transformers' forward computes them); their K/V are written into ``buffers``."""
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        count = len(ids)
        end = start + count
        index = torch.tensor(ids, dtype=torch.long, device=self.embed.device)
        x = self.embed[index].unsqueeze(0)  # (1, count, hidden)
        positions = torch.arange(start, end, device=x.device).unsqueeze(0)
        cos, sin = self.rotary(x, positions)  # (1, count, dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        half = dim // 2
        mask = None
        if start > 0 and count > 1:
            mask = torch.ones((count, end), dtype=torch.bool, device=x.device).tril(start)
        for layer, buffer in zip(self.layers, buffers, strict=True):
            h = self._rms(x, layer.norm_in, layer.eps_in)
            q = F.linear(h, layer.q, layer.q_bias).view(1, count, heads, dim).transpose(1, 2)
            k = F.linear(h, layer.k, layer.k_bias).view(1, count, kv_heads, dim).transpose(1, 2)
            v = F.linear(h, layer.v, layer.v_bias).view(1, count, kv_heads, dim).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
            buffer[0, :, start:end] = k[0]
            buffer[1, :, start:end] = v[0]
            attended = F.scaled_dot_product_attention(
                q, buffer[0, :, :end].unsqueeze(0), buffer[1, :, :end].unsqueeze(0),
                attn_mask=mask, is_causal=mask is None and count > 1, scale=layer.scaling,
                enable_gqa=heads != kv_heads,
            )
            attended = attended.transpose(1, 2).reshape(1, count, heads * dim)
            x = x + F.linear(attended, layer.out, layer.out_bias)
            h = self._rms(x, layer.norm_post, layer.eps_post)
            x = x + F.linear(F.silu(F.linear(h, layer.gate)) * F.linear(h, layer.up), layer.down)
        x = self._rms(x[:, -1], self.norm, self.norm_eps)
        return F.linear(x, self.lm_head)[0]

    def step(self, buffers: list[torch.Tensor], token: int, position: int) -> torch.Tensor:
        """Logits for ``token`` at ``position``; its K/V are written at that position."""
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads
        q_size = heads * dim
        x = self.embed[token].unsqueeze(0)  # (1, hidden)
        positions = torch.tensor([[position]], device=x.device)
        cos, sin = self.rotary(x.unsqueeze(0), positions)
        cos, sin = cos.reshape(1, dim), sin.reshape(1, dim)
        half = dim // 2
        end = position + 1
        for layer, buffer in zip(self.layers, buffers, strict=True):
            h = self._rms(x, layer.norm_in, layer.eps_in)
            q = F.linear(h, layer.q, layer.q_bias).view(heads, dim)
            k = F.linear(h, layer.k, layer.k_bias).view(kv_heads, dim)
            v = F.linear(h, layer.v, layer.v_bias).view(kv_heads, dim)
            q = q * cos + torch.cat((-q[:, half:], q[:, :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[:, half:], k[:, :half]), dim=-1) * sin
            buffer[0, :, position] = k
            buffer[1, :, position] = v
            keys = buffer[0, :, :end]  # (kv_heads, end, dim)
            values = buffer[1, :, :end]
            scores = torch.matmul(q.view(kv_heads, group, dim), keys.transpose(1, 2))
            weights = torch.softmax(scores.float() * layer.scaling, dim=-1).to(q.dtype)
            attended = torch.matmul(weights, values).reshape(1, q_size)
            x = x + F.linear(attended, layer.out, layer.out_bias)
            h = self._rms(x, layer.norm_post, layer.eps_post)
            x = x + F.linear(F.silu(F.linear(h, layer.gate)) * F.linear(h, layer.up), layer.down)
        x = self._rms(x, self.norm, self.norm_eps)
        return F.linear(x, self.lm_head)[0]
