"""A lean one-token decode step for llama-family models (llama, mistral, qwen2).

transformers' model code spends a third of a CPU decode step outside the matrix
multiplications (module calls, mask building, cache concatenation). This step works on the
same weights directly: fused QKV and gate/up projections (the module weights become views of
the fused tensors, so no memory is duplicated), a preallocated KV buffer written in place, and
grouped-query attention as two small matmuls. The prompt still runs through transformers'
forward (one pass, matmul-bound); its KV cache is then copied into the buffer.

Used automatically when :func:`supports` says so; anything else (sliding windows, other
architectures, unusual activations) takes transformers' path. The tests check both paths
give the same logits as a full recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FastDecoder", "supports"]

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
class _Layer:
    norm_in: torch.Tensor
    norm_post: torch.Tensor
    eps_in: float
    eps_post: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    out_bias: torch.Tensor | None
    gate_up: torch.Tensor
    down: torch.Tensor
    scaling: float


def _fuse(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (rows) and rebind each module's weight to its slice."""
    fused = torch.cat([m.weight.data for m in linears], dim=0).contiguous()
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        # A row slice of a row-major matrix is contiguous: the HF path keeps working on views.
        m.weight.data = fused[start : start + rows]
        start += rows
    biases = [m.bias for m in linears]
    if all(b is None for b in biases):
        return fused, None
    parts = [b.data if b is not None else torch.zeros(m.weight.shape[0], dtype=fused.dtype,
                                                       device=fused.device)
             for b, m in zip(biases, linears, strict=True)]
    return fused, torch.cat(parts)


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class FastDecoder:
    """Prepared once per loaded model; :meth:`start` makes a per-request state."""

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
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj])
            out_bias = attn.o_proj.bias
            self.layers.append(_Layer(
                norm_in=layer.input_layernorm.weight,
                norm_post=layer.post_attention_layernorm.weight,
                eps_in=_eps(layer.input_layernorm), eps_post=_eps(layer.post_attention_layernorm),
                qkv=qkv, qkv_bias=qkv_bias, out=attn.o_proj.weight,
                out_bias=out_bias.data if out_bias is not None else None,
                gate_up=gate_up, down=mlp.down_proj.weight,
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

    def step(self, buffers: list[torch.Tensor], token: int, position: int) -> torch.Tensor:
        """Logits for ``token`` at ``position``; its K/V are written at that position."""
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads
        q_size, kv_size = heads * dim, kv_heads * dim
        x = self.embed[token].unsqueeze(0)  # (1, hidden)
        positions = torch.tensor([[position]], device=x.device)
        cos, sin = self.rotary(x.unsqueeze(0), positions)
        cos, sin = cos.reshape(1, dim), sin.reshape(1, dim)
        half = dim // 2
        end = position + 1
        for layer, buffer in zip(self.layers, buffers, strict=True):
            h = self._rms(x, layer.norm_in, layer.eps_in)
            qkv = F.linear(h, layer.qkv, layer.qkv_bias)[0]
            q = qkv[:q_size].view(heads, dim)
            k = qkv[q_size : q_size + kv_size].view(kv_heads, dim)
            v = qkv[q_size + kv_size :].view(kv_heads, dim)
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
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        x = self._rms(x, self.norm, self.norm_eps)
        return F.linear(x, self.lm_head)[0]
