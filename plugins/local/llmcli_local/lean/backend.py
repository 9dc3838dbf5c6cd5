"""The lean backend: :class:`llmcli_local.backend.Backend` over the lean tokenizer and the
lean decoder. Nothing here imports transformers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from llmcli_local.backend import LoadedFields, SpeculationCosts, end_of_turn_ids
from llmcli_local.config import RuntimeConfig
from llmcli_local.healing import Vocab, token_bytes_from_tokenizer
from llmcli_local.lean.config import LeanConfig
from llmcli_local.lean.decoder import Decoder, KVBuffers
from llmcli_local.lean.draft import COSTS, costs, draft_weights
from llmcli_local.lean.prefix import PrefixStore
from llmcli_local.lean.quant import linear
from llmcli_local.lean.quant import rows as head_rows
from llmcli_local.lean.static import StaticBatch
from llmcli_local.lean.tokenizer import LeanTokenizer
from llmcli_local.lean.weights import for_cpu, load_weights

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from llmcli_local.lean.weights import Linear

__all__ = ["LeanBackend", "LeanCache", "LeanScores", "load"]


@dataclass
class LeanCache:
    buffers: KVBuffers
    capacity: int
    position: int = 0
    #: The token ids at positions 0..position (what a kept prefix is matched on).
    ids: list[int] = field(default_factory=list)
    #: Prompt positions its first pass took from a kept prefix (usage: ``cached_tokens``).
    cached: int = 0


@dataclass
class LeanScores:
    """Final hidden states of a pass; rows are projected through the output head on demand
    (all of them only where asked, so candidate scores cost a gather, not the whole head)."""

    states: torch.Tensor  # (rows, hidden)
    head: Linear  # (vocab, hidden)

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def full(self, row: int) -> torch.Tensor:
        with torch.inference_mode():
            return linear(self.states[row:row + 1], self.head)[0].float()

    def all(self) -> torch.Tensor:
        """Every row's logits, shape (rows, vocab): the output head read once for all."""
        with torch.inference_mode():
            return linear(self.states, self.head).float()

    def gather(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            states = self.states[rows.to(self.states.device)]  # (n, hidden)
            heads = head_rows(self.head, ids.to(self.states.device))  # (n, c, hidden)
            return torch.matmul(heads, states.unsqueeze(-1)).squeeze(-1).float()


@dataclass
class LeanBackend(LoadedFields):
    tokenizer: LeanTokenizer
    decoder: Decoder
    name: Literal["lean"] = "lean"
    #: The static batch (:mod:`llmcli_local.lean.static`): a preallocated KV pool and CUDA
    #: graphs for batched steps; None: batches step through ``Decoder.step_batch``. On by
    #: default on CUDA (``RuntimeConfig.static_batch`` overrides). Variants share it.
    static: StaticBatch | None = None
    #: Finished sequences' caches, for prompt passes that start the same
    #: (:mod:`llmcli_local.lean.prefix`); None: ``RuntimeConfig.prefix_cache`` 0. Variants
    #: share it.
    prefixes: PrefixStore | None = None
    #: Speculative decoding's draft (:mod:`llmcli_local.lean.draft`): this model with int4
    #: weights, its own kept prefixes, no draft of its own; None: one step per token.
    draft: LeanBackend | None = None
    #: Without a model draft: whether proposals come from the sequence itself (prompt
    #: lookup; quantized weights, whose step no model draft can undercut).
    lookup: bool = False
    #: What its passes cost (:class:`~llmcli_local.backend.SpeculationCosts`), for the
    #: scheduler's speculation policy: measured per weight kind (``lean/draft.py``).
    speculation_costs: SpeculationCosts = COSTS[("none", True)]

    @property
    def graphed_single(self) -> bool:
        """Whether a lone sequence should step through :meth:`step_batch` too (the
        scheduler asks): where a bucket-1 CUDA graph beats the plain step."""
        return self.static is not None and self.static.single

    @property
    def loaded_model(self) -> Decoder:
        """What its variants share (the scheduler is keyed by it)."""
        return self.decoder

    @property
    def fast_tokenizer(self) -> Tokenizer:
        return self.tokenizer.backend_tokenizer

    @property
    def chat_template(self) -> str:
        return self.tokenizer.chat_template

    def render(self, messages: Sequence[Mapping[str, str]], **template_kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True,
            **template_kwargs,
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, ids: Sequence[int], capacity: int) -> tuple[torch.Tensor, LeanCache]:
        if len(ids) > capacity:
            raise RuntimeError("the prompt is longer than the KV buffer")
        with torch.inference_mode():
            cache = self._new_cache(ids, capacity, keep=1)
            start = cache.position
            logits = self.decoder.prompt(cache.buffers, list(ids[start:]), start)
        cache.position = len(ids)
        cache.ids = list(ids)
        return logits.float(), cache

    def prompt_scores(self, ids: Sequence[int], capacity: int,
                      keep: int) -> tuple[LeanScores, LeanCache]:
        if len(ids) > capacity:
            raise RuntimeError("the prompt is longer than the KV buffer")
        with torch.inference_mode():
            cache = self._new_cache(ids, capacity, keep)
            start = cache.position
            states = self.decoder.states(cache.buffers, list(ids[start:]), start, keep)
        cache.position = len(ids)
        cache.ids = list(ids)
        return LeanScores(states, self.decoder.weights.lm_head), cache

    def prompt_tree(self, ids: Sequence[int], tokens: Sequence[int], parents: Sequence[int],
                    capacity: int) -> tuple[LeanScores, LeanCache]:
        """One pass over ``ids`` and a tree of continuations after them: node ``i`` is
        ``tokens[i]``, child of node ``parents[i]`` (-1: of the last of ``ids``; a parent
        comes before its children). Row 0 of the scores is after ``ids``, row ``1 + i``
        after node ``i`` and its ancestors. The cache holds the nodes after ``ids`` until
        :meth:`keep_path` keeps one path of them."""
        body, count = len(ids), len(tokens)
        if body + count > capacity:
            raise RuntimeError("the prompt is longer than the KV buffer")
        with torch.inference_mode():
            cache = self._new_cache(ids, capacity, keep=1)
            start = cache.position
            end = body + count
            depth: list[int] = []
            # The nodes' rows: each sees the body, its ancestors and itself.
            mask = torch.zeros((count, end), dtype=torch.bool)
            mask[:, :body] = True
            for i, parent in enumerate(parents):
                depth.append(0 if parent < 0 else depth[parent] + 1)
                if parent >= 0:
                    mask[i] = mask[parent]
                mask[i, body + i] = True
            positions = list(range(start, body)) + [body + d for d in depth]
            states = self.decoder.states(cache.buffers, [*ids[start:], *tokens], start,
                                         count + 1, tree=(positions, mask))
        cache.position = end
        cache.ids = [*ids, *tokens]
        return LeanScores(states, self.decoder.weights.lm_head), cache

    def keep_path(self, cache: LeanCache, body: int, nodes: Sequence[int]) -> None:
        """After :meth:`prompt_tree` over ``body`` ids: keep the nodes ``nodes`` (a path
        from the root, in order) as the positions after the body, and forget the rest."""
        tokens = cache.ids[body:]
        with torch.inference_mode():
            for at, node in enumerate(nodes):
                if node != at:  # a parent's slot is before its child's: copies go forward
                    for buffer in cache.buffers:
                        buffer[:, :, body + at] = buffer[:, :, body + node]
        cache.position = body + len(nodes)
        cache.ids = [*cache.ids[:body], *(tokens[node] for node in nodes)]

    def _new_cache(self, ids: Sequence[int], capacity: int, keep: int) -> LeanCache:
        """An empty cache of ``capacity``, its first positions copied from a kept prefix of
        ``ids`` where there is one (its ``position`` says how many); the last ``keep`` ids
        are always computed (their scores are the pass's result)."""
        cache = LeanCache(self.decoder.new_buffers(capacity), capacity)
        if self.prefixes is not None:
            cache.position = cache.cached = self.prefixes.take(ids, len(ids) - keep,
                                                               cache.buffers)
        return cache

    def extend(self, cache: LeanCache, ids: Sequence[int]) -> LeanScores:
        if cache.position + len(ids) > cache.capacity:
            raise RuntimeError("the pass runs past the KV buffer")
        with torch.inference_mode():
            states = self.decoder.states(cache.buffers, list(ids), cache.position, len(ids))
        cache.position += len(ids)
        cache.ids.extend(ids)
        return LeanScores(states, self.decoder.weights.lm_head)

    def verify(self, cache: LeanCache, ids: Sequence[int]) -> torch.Tensor:
        """:meth:`extend` with the logits after every one of ``ids``, shape (len(ids),
        vocab): one pass, and the output head read once for all rows (speculative decoding
        checks a draft's proposals with it)."""
        return self.extend(cache, ids).all()

    def verify_batch(self, caches: Sequence[LeanCache], runs: Sequence[Sequence[int]]
                     ) -> list[torch.Tensor]:
        """:meth:`verify` for several sequences in one pass: row ``i``'s logits after every
        token of ``runs[i]`` (shape (len(runs[i]), vocab)); every weight read once for all
        of them (:meth:`Decoder.runs`), the output head once for every row."""
        for cache, run in zip(caches, runs, strict=True):
            if cache.position + len(run) > cache.capacity:
                raise RuntimeError("the pass runs past the KV buffer")
        if len(caches) == 1:
            return [self.verify(caches[0], runs[0])]
        with torch.inference_mode():
            states = self.decoder.runs([c.buffers for c in caches], runs,
                                       [c.position for c in caches])
            logits = linear(states, self.decoder.weights.lm_head).float()
        for cache, run in zip(caches, runs, strict=True):
            cache.position += len(run)
            cache.ids.extend(run)
        return list(logits.split([len(run) for run in runs]))

    def truncate(self, cache: LeanCache, length: int) -> None:
        # Positions past ``length`` are overwritten before they are read again.
        cache.position = min(cache.position, length)
        del cache.ids[cache.position:]

    def step_batch(self, caches: Sequence[LeanCache], tokens: Sequence[int]) -> torch.Tensor:
        """:meth:`step` for several sequences in one pass: logits of shape (rows, vocab)."""
        for cache in caches:
            if cache.position >= cache.capacity:
                raise RuntimeError("decode ran past the KV buffer")
        with torch.inference_mode():
            logits = None if self.static is None else self.static.step(caches, tokens)
            if logits is None:
                logits = self.decoder.step_batch([c.buffers for c in caches], list(tokens),
                                                 [c.position for c in caches])
        for cache, token in zip(caches, tokens, strict=True):
            cache.position += 1
            cache.ids.append(token)
        return logits.float()

    def release(self, cache: LeanCache) -> None:
        """The sequence of ``cache`` has ended (the scheduler says so): what it holds is
        kept for a prompt that starts the same, and its static slot, if it has one, is free
        for another."""
        if self.prefixes is not None:
            self.prefixes.keep(cache.ids[:cache.position], cache.buffers)
        if self.static is not None:
            self.static.release(cache)

    def step(self, cache: LeanCache, token: int) -> torch.Tensor:
        if cache.position >= cache.capacity:
            raise RuntimeError("decode ran past the KV buffer")
        with torch.inference_mode():
            logits = self.decoder.step(cache.buffers, token, cache.position)
        cache.position += 1
        cache.ids.append(token)
        return logits.float()


def load(directory: Path, device: str, dtype: torch.dtype,
         settings: RuntimeConfig | None = None) -> LeanBackend:
    """The model in ``directory`` on ``device`` (resolved), configured by ``settings``
    (its weights' ``quantize``, ``draft``, ``prefix_cache``, static batch and
    ``max_batch``; the defaults without it)."""
    settings = settings or RuntimeConfig()
    quantize = settings.quantize
    config = LeanConfig.read(directory)
    tokenizer = LeanTokenizer(directory)
    weights = load_weights(directory, config, device, dtype, quantize)
    drafted = None
    if device == "cpu" and quantize == "none":
        # Before for_cpu: the draft quantizes the checkpoint's own (out, in) tensors.
        drafted = draft_weights(weights, directory, settings.draft)
        for_cpu(weights)
        if drafted is not None:
            drafted.embed = weights.embed  # tied: now a view of the head's copy, not the file
    decoder = Decoder(config, weights)
    token_bytes, atomic = token_bytes_from_tokenizer(tokenizer)
    static = None
    if settings.static_batch_on(device):
        static = StaticBatch(decoder, settings.max_batch,
                             settings.static_positions(config.max_position_embeddings))
    kept = settings.prefix_cache
    backend = LeanBackend(
        tokenizer=tokenizer, decoder=decoder, vocab=Vocab(token_bytes, atomic),
        eos_ids=end_of_turn_ids([*config.eos_token_ids, tokenizer.eos_token_id],
                                tokenizer.get_vocab()),
        device=device, dtype=dtype, directory=directory,
        context_length=config.max_position_embeddings, static=static,
        prefixes=PrefixStore(kept) if kept else None,
    )
    if drafted is not None:
        backend.draft = replace(backend, decoder=Decoder(config, drafted), static=None,
                                prefixes=PrefixStore(kept) if kept else None)
    elif device == "cpu" and settings.draft != "none" and (
            quantize != "none" or settings.draft == "lookup"):
        backend.lookup = True
    backend.speculation_costs = costs(quantize, torch.get_num_threads())
    return backend


if TYPE_CHECKING:
    from llmcli_local import backend as seam

    def _can(backend: LeanBackend) -> tuple[
            seam.Backend[LeanCache], seam.BatchStep[LeanCache], seam.Releases[LeanCache],
            seam.GraphedSingle, seam.Drafting[LeanCache], seam.Draft[LeanCache],
            seam.TreeBackend[LeanCache]]:
        """mypy checks that it has every capability the runtime uses it for."""
        return backend, backend, backend, backend, backend, backend, backend
