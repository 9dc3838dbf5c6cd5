"""The lean backend's static batch: one preallocated KV pool for the sequences the scheduler
steps together, a decode step over it with fixed shapes, and (on CUDA) one CUDA graph of that
step per batch-size bucket.

:meth:`Decoder.step_batch <llmcli_local.lean.decoder.Decoder.step_batch>` attends per row over
each sequence's own buffer: exact, fast on CPU, but a GPU spends a decode step launching
small kernels, and Python's loop over rows grows with the batch. Here:

- **The pool**: per layer one tensor of shape (2, slots, kv_heads, length + 1, head_dim),
  allocated at the first batched step (``slots``: ``RuntimeConfig.max_batch``; ``length``:
  ``RuntimeConfig.static_positions``, 4096 by default, at most the model's context). Index
  ``length`` is a scratch position: rows that do not step write there.
- **Adoption**: a sequence's cache moves into a free slot at its first batched step (its K/V
  at positions ``[0, position)`` copied, then ``cache.buffers`` points at the slot's
  per-layer views ``pool[:, slot, :, :length]``, shape (2, kv_heads, length, head_dim)), so
  the decoder's other passes (one-row steps, grammar runs through ``extend``, exact
  prefill's ``truncate``) work on it unchanged. Occupied slots stay ``0..n-1``: when a
  sequence leaves (:meth:`StaticBatch.release`), the highest slot's K/V move into the freed
  one.
- **The step** (:func:`static_step`): row ``i`` is slot ``i``, for a bucket of ``rows``
  (1, 2, 4, 8, ... up to ``slots``) and a ``span`` of keys (a power of two from 128 up to
  ``length``, covering the furthest stepping position); every row attends over the same span
  with a mask (a key past the row's position takes no part). Its inputs are two device
  tensors (tokens and positions) and it holds no host synchronisation, so it can be
  captured. It is written for few kernels (about 21 a layer, from 47): fused norms, RoPE as
  one product, attention as one call.
- **Graphs**: on CUDA one :class:`torch.cuda.CUDAGraph` per (rows, span), captured at its
  first use (after a warm-up on a side stream, all in one memory pool); a step copies its
  inputs in, replays, and reads the logits. A capture that fails is warned about once and
  that bucket runs eagerly. On CPU the same step runs eagerly (:class:`_Eager`, the same
  interface), slower there than the per-row attention, so it is off by default.

A step falls back to ``Decoder.step_batch`` (correct, only slower) when a cache does not fit
(its capacity is over ``length``) or no slot is free.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from llmcli_local.lean.attention import Pooled
from llmcli_local.lean.decoder import Decoder

if TYPE_CHECKING:
    from llmcli_local.lean.backend import LeanCache

__all__ = ["StaticBatch", "static_step"]

#: The shortest span of keys a step attends over (spans are powers of two from here).
MIN_SPAN = 128

_log = logging.getLogger(__name__)


def buckets(slots: int) -> list[int]:
    """Batch-size buckets: powers of two below ``slots``, then ``slots``."""
    sizes, size = [], 1
    while size < slots:
        sizes.append(size)
        size *= 2
    return [*sizes, slots]


def static_step(decoder: Decoder, pools: Sequence[torch.Tensor], tokens: torch.Tensor,
                positions: torch.Tensor, rows: torch.Tensor, key_index: torch.Tensor
                ) -> torch.Tensor:
    """One decode step over the first ``len(tokens)`` slots of ``pools``: row ``i`` is
    ``tokens[i]`` at ``positions[i]`` of slot ``i``; its K/V are written there, and it attends
    over the keys ``key_index`` (``arange(span)``) up to its position. Logits (rows, vocab).

    Shapes are fixed by the arguments' sizes and nothing here reads a tensor's value on the
    host: the step can be captured as a CUDA graph. ``rows`` is ``arange(len(tokens))``.

    The decoder's one layer (:meth:`Decoder.forward`) with the pool's attention
    (:class:`~llmcli_local.lean.attention.Pooled`), which is what makes it few operations,
    since a GPU runs a small model's step at the pace of its kernels, not of its arithmetic
    (docs/benchmarks.md, "On a GPU"): the norms are ``F.rms_norm`` (one fused kernel on
    CUDA), RoPE is one batched product for q and k together, and attention is one
    ``scaled_dot_product_attention`` whose queries are a key head's group. The same
    computation as :meth:`Decoder.step`, to float rounding (tested)."""
    attention = Pooled(decoder.shape, pools, rows, positions, key_index)
    return decoder.head(decoder.forward(decoder.weights.embed[tokens], positions, attention,
                                        step=True))


class _Eager:
    """A bucket's step run as it is (CPU, or where a capture failed): a graph's interface,
    so that the static inputs and outputs are used the same way with or without one."""

    graphed = False

    def __init__(self, run: Callable[[], torch.Tensor]) -> None:
        self._run = run

    def replay(self) -> torch.Tensor:
        return self._run()


class _Graph:
    """A bucket's step captured as a CUDA graph: :meth:`replay` reruns it on the static
    inputs and returns its static output (overwritten by the next replay)."""

    graphed = True

    def __init__(self, run: Callable[[], torch.Tensor], pool: Any) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: cuBLAS handles, workspaces, lazy init
            run()
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, pool=pool, capture_error_mode="thread_local"):
            self._output = run()

    def replay(self) -> torch.Tensor:
        self._graph.replay()
        return self._output


class StaticBatch:
    """The static KV pool of one loaded model, its slots' owners, and its bucket steps.
    Shared by the backend's variants (``dataclasses.replace`` keeps it); thread-safe."""

    def __init__(self, decoder: Decoder, slots: int, length: int,
                 graphs: bool | None = None, single: bool | None = None) -> None:
        device = decoder.weights.embed.device
        self.decoder = decoder
        self.slots = max(1, slots)
        self.length = length
        #: Capture CUDA graphs (on CUDA by default); else every bucket runs eagerly.
        self.graphs = device.type == "cuda" if graphs is None else graphs
        #: A lone sequence also steps here (bucket 1) rather than by ``Decoder.step``: on
        #: with graphs (one replay beats a step's kernel launches), off on CPU, where a lone
        #: call stays bit for bit the plain loop's.
        self.single = self.graphs if single is None else single
        self.buckets = buckets(self.slots)
        self.device = device
        #: Observed by tests and benchmarks: the (rows, span) keys captured (or, eagerly, first
        #: run), in order, how many steps ran here and how many fell back to the dynamic step.
        self.captured: list[tuple[int, int]] = []
        self.replays = 0
        self.fallbacks = 0
        #: Sequences moved down a slot when another left (compaction).
        self.moves = 0
        self._lock = threading.Lock()
        self._owners: list[weakref.ref[LeanCache]] = []
        self._pools: list[torch.Tensor] = []
        self._runners: dict[tuple[int, int], _Eager | _Graph] = {}
        self._graph_pool: Any = None
        self._warned = False

    @property
    def occupied(self) -> int:
        return len(self._owners)

    def _allocate(self) -> None:
        if self._pools:
            return
        decoder = self.decoder
        embed = decoder.weights.embed
        shape = (2, self.slots, decoder.kv_heads, self.length + 1, decoder.head_dim)
        # Zeros, not empty: a free slot's rows are computed too, and must not be NaN.
        self._pools = [torch.zeros(shape, dtype=embed.dtype, device=self.device)
                       for _ in decoder.weights.layers]
        self._inputs = torch.zeros((2, self.slots), dtype=torch.long, device=self.device)
        self._rows = torch.arange(self.slots, device=self.device)
        self._keys = torch.arange(self.length + 1, device=self.device)

    def _views(self, slot: int) -> list[torch.Tensor]:
        return [pool[:, slot, :, :self.length] for pool in self._pools]

    def _slot_of(self, cache: LeanCache) -> int | None:
        for slot, owner in enumerate(self._owners):
            if owner() is cache:
                return slot
        return None

    def _adopt(self, cache: LeanCache) -> int | None:
        slot = self._slot_of(cache)
        if slot is not None:
            return slot
        if cache.capacity > self.length:
            return None
        if len(self._owners) >= self.slots:
            self._sweep()
            if len(self._owners) >= self.slots:
                return None
        self._allocate()
        slot = len(self._owners)
        views = self._views(slot)
        end = cache.position
        for view, buffer in zip(views, cache.buffers, strict=True):
            view[:, :, :end].copy_(buffer[:, :, :end])
        cache.buffers = views
        self._owners.append(weakref.ref(cache))
        return slot

    def _vacate(self, slot: int) -> None:
        last = len(self._owners) - 1
        if slot != last:
            moved = self._owners[last]()
            if moved is not None:  # the highest slot moves down: slots stay 0..n-1
                end = moved.position
                for pool in self._pools:
                    pool[:, slot, :, :end].copy_(pool[:, last, :, :end])
                moved.buffers = self._views(slot)
                self.moves += 1
            self._owners[slot] = self._owners[last]
        self._owners.pop()

    def _sweep(self) -> None:
        """Free the slots of caches that were dropped without a release."""
        for slot in reversed(range(len(self._owners))):
            if self._owners[slot]() is None:
                self._vacate(slot)

    def release(self, cache: LeanCache) -> None:
        """The sequence of ``cache`` has ended: its slot is free (its K/V are kept by no one;
        the cache must not be stepped again)."""
        with self._lock, torch.inference_mode():
            slot = self._slot_of(cache)
            if slot is not None:
                self._vacate(slot)

    def _span(self, end: int) -> int:
        span = MIN_SPAN
        while span < end:
            span *= 2
        return min(span, self.length)

    def _runner(self, rows: int, span: int) -> _Eager | _Graph:
        key = (rows, span)
        runner = self._runners.get(key)
        if runner is not None:
            return runner
        pools = self._pools
        tokens, positions = self._inputs[0, :rows], self._inputs[1, :rows]
        index, keys = self._rows[:rows], self._keys[:span]

        def run() -> torch.Tensor:
            return static_step(self.decoder, pools, tokens, positions, index, keys)

        runner = _Eager(run)
        if self.graphs:
            try:
                if self._graph_pool is None:
                    self._graph_pool = torch.cuda.graph_pool_handle()
                runner = _Graph(run, self._graph_pool)
            except Exception as exc:  # noqa: BLE001 - never fail a call for the graph's sake
                if not self._warned:
                    self._warned = True
                    _log.warning("CUDA graph capture failed (%s: %s); the static batch "
                                 "steps eagerly", type(exc).__name__, exc)
        self._runners[key] = runner
        self.captured.append(key)
        return runner

    def step(self, caches: Sequence[LeanCache], tokens: Sequence[int]
             ) -> torch.Tensor | None:
        """Logits (rows, vocab) for ``tokens`` at the caches' next positions (adopting the
        caches that have no slot yet), or None where this step must take the dynamic path.
        Positions are not advanced here (the backend does that)."""
        with self._lock, torch.inference_mode():
            slots = []
            for cache in caches:
                slot = self._adopt(cache)
                if slot is None:
                    self.fallbacks += 1
                    return None
                slots.append(slot)
            occupied = len(self._owners)
            rows = next(b for b in self.buckets if b >= occupied)
            span = self._span(max(c.position for c in caches) + 1)
            # Rows that do not step (free slots; a sequence taking a grammar run) write at
            # the scratch position; their logits are not read.
            host = torch.empty((2, rows), dtype=torch.long)
            host[0].fill_(0)
            host[1].fill_(self.length)
            index = torch.tensor(slots, dtype=torch.long)
            host[0, index] = torch.tensor(list(tokens), dtype=torch.long)
            host[1, index] = torch.tensor([c.position for c in caches], dtype=torch.long)
            # Inputs first: a capture's warm-up runs the step on them (it is idempotent: the
            # replay rewrites the same K/V at the same positions).
            self._inputs[:, :rows].copy_(host)
            output = self._runner(rows, span).replay()
            self.replays += 1
            # A copy: the next replay overwrites the graph's output.
            return output.index_select(0, index.to(output.device))
