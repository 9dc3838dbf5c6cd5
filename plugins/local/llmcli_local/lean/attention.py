"""The attention strategies the lean layer runs with (:meth:`Decoder.forward
<llmcli_local.lean.decoder.Decoder.forward>`, the one llama layer): a strategy is called once
per layer with that layer's index, q (rows, heads, head_dim) and k (rows, kv_heads, head_dim),
RoPE applied, and v (rows, kv_heads, head_dim); it writes k and v where its pass keeps them
and returns the attended values, shape (rows, heads * head_dim). The layer around it (norms,
projections, RoPE, residuals, MLP) is the same for every pass; only this differs:

- :class:`Causal`: consecutive positions of one sequence (a prompt pass, ``extend``,
  speculative decoding's ``verify``): ``scaled_dot_product_attention`` over the sequence's
  buffer, causal; optionally a tree of continuations after the causal rows, whose rows
  attend through a mask (``Decoder.states``' ``tree``).
- :class:`Segments`: several sequences in one pass, each a run of consecutive rows at its
  own next positions (speculative decoding's batched verification, several rows each
  checking a draft's proposals): :class:`Causal` per sequence on its slice of the rows.
- :class:`PerRow`: one token per row, each of its own sequence at its own position (decode
  steps, one row or a batch): per row, grouped-query attention as two small matmuls over that
  row's own buffer, so a row sees nothing of the others and its result is the same batched
  or alone.
- :class:`Pooled`: the static batch's step (:mod:`llmcli_local.lean.static`): every row's
  K/V written into one preallocated pool with one indexed write, and one
  ``scaled_dot_product_attention`` for all rows (a key head's group of query heads as its
  queries) under a mask of each row's positions: fixed shapes, no host synchronisation, so
  it can be captured as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = ["Attention", "Causal", "Heads", "KVBuffers", "PerRow", "Pooled", "Segments"]

#: Per layer, keys and values of shape (2, kv_heads, capacity, head_dim).
KVBuffers = list[torch.Tensor]


@dataclass(frozen=True)
class Heads:
    """The attention's shape: query and key/value heads, their size, the scores' scale."""

    heads: int
    kv_heads: int
    dim: int
    scaling: float

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads


class Attention(Protocol):
    def __call__(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> torch.Tensor: ...


class Causal:
    """A pass over positions ``start .. start + count`` of the sequence whose buffers are
    ``buffers``; with ``leaves`` (shape (nodes, start + count), True where a row attends),
    its last ``nodes`` rows are a tree's and attend through that mask, while the others keep
    the causal kernel (so a long prompt with a tree costs what it costs without one)."""

    def __init__(self, heads: Heads, buffers: KVBuffers, start: int, count: int,
                 leaves: torch.Tensor | None = None) -> None:
        self.shape = heads
        self.buffers = buffers
        self.start, self.end, self.count = start, start + count, count
        self.leaves = leaves
        #: Rows attended causally; the rest (a tree's) through ``leaves``.
        self.causal = count - (0 if leaves is None else int(leaves.shape[0]))
        self.mask = None
        if start > 0 and self.causal > 1:  # new rows after cached ones: an offset causal mask
            self.mask = torch.ones((self.causal, start + self.causal), dtype=torch.bool,
                                   device=buffers[0].device).tril(start)

    def __call__(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> torch.Tensor:
        shape, buffer = self.shape, self.buffers[index]
        start, end, causal = self.start, self.end, self.causal
        buffer[0, :, start:end] = k.transpose(0, 1)
        buffer[1, :, start:end] = v.transpose(0, 1)
        queries = q.transpose(0, 1).unsqueeze(0)  # (1, heads, count, dim)
        grouped = shape.heads != shape.kv_heads
        attended = F.scaled_dot_product_attention(
            queries[:, :, :causal], buffer[0, :, :start + causal].unsqueeze(0),
            buffer[1, :, :start + causal].unsqueeze(0), attn_mask=self.mask,
            is_causal=self.mask is None and causal > 1, scale=shape.scaling,
            enable_gqa=grouped)
        if self.leaves is not None:
            attended = torch.cat((attended, F.scaled_dot_product_attention(
                queries[:, :, causal:], buffer[0, :, :end].unsqueeze(0),
                buffer[1, :, :end].unsqueeze(0), attn_mask=self.leaves, scale=shape.scaling,
                enable_gqa=grouped)), dim=2)
        return attended[0].transpose(0, 1).reshape(self.count, shape.heads * shape.dim)


class Segments:
    """Several sequences' runs in one pass: rows ``bounds[i] .. bounds[i + 1]`` are
    consecutive positions of sequence ``i`` from ``starts[i]``, attending causally to that
    sequence's own buffers (:class:`Causal` on each slice): the projections read every
    weight once for all the rows, attention stays per sequence."""

    def __init__(self, heads: Heads, buffers: Sequence[KVBuffers], starts: Sequence[int],
                 counts: Sequence[int]) -> None:
        self.parts: list[tuple[Causal, int, int]] = []
        row = 0
        for sequence, start, count in zip(buffers, starts, counts, strict=True):
            self.parts.append((Causal(heads, sequence, start, count), row, row + count))
            row += count

    def __call__(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> torch.Tensor:
        return torch.cat([causal(index, q[a:b], k[a:b], v[a:b])
                          for causal, a, b in self.parts])


class PerRow:
    """One token per row: row ``i`` at ``positions[i]`` of the sequence whose buffers are
    ``buffers[i]``. The same operations for one row or many (a batch adds only this loop),
    so a row's result is the same batched or alone, but for the last bit a batched matrix
    product may round differently in the projections around it."""

    def __init__(self, heads: Heads, buffers: Sequence[KVBuffers],
                 positions: Sequence[int]) -> None:
        self.spans = list(zip(buffers, positions, strict=True))
        # Looked up once: a step calls this once per layer, where each lookup counts.
        self.grouped = (heads.kv_heads, heads.group, heads.dim)
        self.width, self.scaling = heads.heads * heads.dim, heads.scaling

    def __call__(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> torch.Tensor:
        rows, scaling = q.shape[0], self.scaling
        kv = torch.stack((k, v), dim=1)  # (rows, 2, kv_heads, dim)
        queries = q.reshape(rows, *self.grouped)
        full = q.dtype == torch.float32  # a float() and back would be no-ops
        outputs = []
        for row, (sequence, position) in enumerate(self.spans):
            buffer = sequence[index]
            buffer[:, :, position] = kv[row]
            cached = buffer[:, :, :position + 1]  # (2, kv_heads, end, dim)
            scores = torch.bmm(queries[row], cached[0].mT)
            if full:
                weights = torch.softmax(scores.mul_(scaling), dim=-1)
            else:  # softmax in fp32, as transformers computes it
                weights = torch.softmax(scores.float() * scaling, dim=-1).to(q.dtype)
            outputs.append(torch.bmm(weights, cached[1]))
        if rows == 1:
            return outputs[0].view(1, self.width)
        return torch.stack(outputs).view(rows, self.width)


class Pooled:
    """The static batch's step over the first ``len(rows)`` slots of ``pools`` (per layer,
    shape (2, slots, kv_heads, length + 1, head_dim)): row ``i`` is slot ``rows[i]`` at
    ``positions[i]`` and attends over the keys ``key_index`` (``arange(span)``) up to its
    position. Every input is a device tensor and nothing here reads one on the host."""

    def __init__(self, heads: Heads, pools: Sequence[torch.Tensor], rows: torch.Tensor,
                 positions: torch.Tensor, key_index: torch.Tensor) -> None:
        self.shape = heads
        self.pools = pools
        self.rows, self.positions = rows, positions
        self.count, self.span = int(rows.shape[0]), int(key_index.shape[0])
        # A key takes part up to the row's own position (True: attend).
        self.visible = (key_index.unsqueeze(0) <= positions.unsqueeze(1)).view(
            self.count, 1, 1, self.span)

    def __call__(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> torch.Tensor:
        shape, count, span = self.shape, self.count, self.span
        pool = self.pools[index][:, :count]  # (2, rows, kv_heads, length + 1, dim)
        pool[:, self.rows, :, self.positions] = torch.stack((k, v), dim=1)
        # Keys and values (rows, kv_heads, span, dim): slots and heads merge into one batch
        # dimension without a copy (why slots come after keys/values in the pool); a key
        # head's group of query heads are its queries.
        attended = F.scaled_dot_product_attention(
            q.reshape(count, shape.kv_heads, shape.group, shape.dim), pool[0, :, :, :span],
            pool[1, :, :, :span], attn_mask=self.visible, scale=shape.scaling)
        return attended.reshape(count, shape.heads * shape.dim)
