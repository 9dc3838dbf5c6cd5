"""Prompt prefixes kept between calls: a conversation's next turn, or the same system prompt
again, starts its prompt pass where the last call's KV cache left off.

Each turn of ``llmcli chat`` (and each ``-c`` call) sends the whole conversation again: the
prompt pass over the history costs more with every turn, though the model saw all of it the
turn before. When a sequence ends (the scheduler's ``release``), :class:`PrefixStore` keeps a
compact copy of its KV cache and the token ids it holds. A later prompt pass whose ids start
with at least :data:`MIN_REUSE` of those takes them from the copy and runs only the rest.

The kept positions are the same computation as a fresh pass (same weights, same positions),
done in a different number of passes: logits agree to float rounding, not to the bit, as
between a batched step and a lone one. Bounded by ``RuntimeConfig.prefix_cache`` positions
in all (``LLMCLI_LOCAL_PREFIX_CACHE``: 2048 by default, least recently used dropped first;
``0`` turns it off).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from llmcli_local.backend import common_prefix
from llmcli_local.lean.decoder import KVBuffers

__all__ = ["MIN_REUSE", "PrefixStore"]

#: A shorter shared prefix is not worth looking after. A chat template's system prompt is
#: longer: SmolLM2's default one is about 30 tokens, shared by every call that sets none,
#: and its pass costs about two decode steps on a 2-core CPU.
MIN_REUSE = 16


class PrefixStore:
    """Compact copies of finished sequences' KV caches, by the token ids they hold."""

    def __init__(self, positions: int) -> None:
        self.positions = positions
        self._entries: list[tuple[tuple[int, ...], KVBuffers]] = []  # least recent first
        self._lock = threading.Lock()
        #: Observed by tests and benchmarks: prompt positions taken from a kept prefix.
        self.reused = 0

    def keep(self, ids: Sequence[int], buffers: KVBuffers) -> None:
        """Keep the first ``len(ids)`` positions of ``buffers``, which hold ``ids``."""
        count = len(ids)
        if count < MIN_REUSE or count > self.positions:
            return
        key = tuple(ids)
        with self._lock:
            # A kept prefix of these ids says nothing they do not: it goes.
            self._entries = [(k, b) for k, b in self._entries if key[:len(k)] != k]
            if any(k[:count] == key for k, _ in self._entries):
                return
        with torch.inference_mode():
            copy = [buffer[:, :, :count].clone() for buffer in buffers]
        with self._lock:
            self._entries.append((key, copy))
            while sum(len(k) for k, _ in self._entries) > self.positions:
                self._entries.pop(0)

    def _best(self, ids: Sequence[int], usable: int) -> tuple[int, int]:
        """The longest kept prefix of ``ids`` (at most ``usable`` positions of it) and its
        entry's index; (0, -1) where none is worth it. Called holding the lock."""
        best, found = 0, -1
        for index, (key, _) in enumerate(self._entries):
            common = min(common_prefix(key, ids), usable)
            if common > best:
                best, found = common, index
        return (best, found) if best >= MIN_REUSE else (0, -1)

    def longest(self, ids: Sequence[int]) -> int:
        """How many positions of ``ids`` a :meth:`take` would copy now (0: none)."""
        with self._lock:
            return self._best(ids, len(ids))[0]

    def take(self, ids: Sequence[int], usable: int, buffers: KVBuffers) -> int:
        """Copy into ``buffers`` the longest kept prefix of ``ids``, at most ``usable``
        positions of it; the number of positions copied (0: none worth it)."""
        with self._lock:
            best, found = self._best(ids, usable)
            if not best:
                return 0
            entry = self._entries.pop(found)
            self._entries.append(entry)  # the most recently used
        with torch.inference_mode():
            for target, kept in zip(buffers, entry[1], strict=True):
                target[:, :, :best].copy_(kept[:, :, :best])
        self.reused += best
        return best
