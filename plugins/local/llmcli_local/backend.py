"""The seam between the decode loop and what runs a model, and the one place that picks it.

A :class:`Backend` has a tokenizer side (render the chat template, encode, the bytes of every
token, the end-of-turn ids) and a forward side (a prompt pass over many tokens that returns
the last position's logits and a KV cache, then one step per token; for exact prefill, a
prompt pass and a pass over several more tokens that score every position, and a cache
truncation). A backend may also step several sequences in one pass (:class:`BatchStep`: the
lean one does), which the scheduler (:mod:`llmcli_local.scheduler`) uses to batch them. The
decode loop (:mod:`llmcli_local.decode`) runs over this protocol only. Two implementations:

- ``lean`` (:mod:`llmcli_local.lean`): llmcli's native runtime for the llama, mistral and
  qwen2 families, on CPU and CUDA, without transformers;
- ``transformers`` (:mod:`llmcli_local.transformers_backend`): every other architecture or
  config, and the cache options (``kv_cache=static``, ``cuda_graphs``).

:func:`choose_backend` decides which; the model, the loader and the keep-alive worker's key
all call it. Cheap to import: no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from llmcli.errors import ConfigError
from llmcli_local.config import ENGINES, BackendName, BackendRequest, Engine, KVCache, Quantize

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from llmcli_local.healing import Vocab

__all__ = [
    "ENGINES",
    "Backend",
    "BackendName",
    "BackendRequest",
    "BatchStep",
    "Cache",
    "Draft",
    "Drafting",
    "Engine",
    "GraphedSingle",
    "KVCache",
    "KeptPrefixes",
    "LoadedFields",
    "Quantize",
    "Releases",
    "Scores",
    "SpeculationCosts",
    "TreeBackend",
    "choose_backend",
    "common_prefix",
    "end_of_turn_ids",
]

#: Names of tokens that end an assistant turn in common chat templates.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>")


def choose_backend(options: BackendRequest, device: str,
                   model_dir: Path | None) -> Engine:
    """The backend for a call: ``"lean"`` or ``"transformers"``.

    ``options.engine`` (``-o engine``, else ``LLMCLI_LOCAL_ENGINE``: the configuration has
    both) may force one; a static KV cache and
    CUDA graphs exist only on transformers' path. ``"auto"`` then takes the lean backend
    wherever it implements the model in ``model_dir``. Without ``model_dir`` (the keep-alive
    key, computed before a GGUF is converted) the answer is what the request alone decides,
    ``"auto"`` included; the loader, which has the directory, always gets a backend name.
    ``device`` may still be ``"auto"``. Quantized weights (``options.quantize``) exist only
    on the lean backend, on CPU."""
    chosen = _choose(options, device, model_dir)
    if options.quantize != "none":
        if chosen == "transformers":
            raise ConfigError(f"quantize={options.quantize} is not supported on the "
                              "transformers backend (it needs engine=lean)")
        if device == "cuda":
            raise ConfigError(f"quantize={options.quantize} runs on CPU only (device=cpu)")
    return chosen


def _choose(options: BackendRequest, device: str, model_dir: Path | None) -> Engine:
    if options.kv_cache == "static" or options.cuda_graphs:
        if options.engine == "lean":
            raise ConfigError("kv_cache=static and cuda_graphs need engine=transformers")
        if options.cuda_graphs and device == "cpu":
            raise ConfigError("cuda_graphs needs a CUDA GPU (device=cuda)")
        return "transformers"
    requested = options.engine
    if requested == "transformers":
        return "transformers"
    if model_dir is None:
        return "lean" if requested == "lean" else "auto"
    from llmcli_local.lean.config import why_not

    reason = why_not(model_dir)
    if reason is None:
        return "lean"
    if requested == "lean":
        raise ConfigError(f"engine=lean cannot run {model_dir.name}: {reason}")
    return "transformers"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many ids ``a`` and ``b`` share from their start."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def end_of_turn_ids(declared: Iterable[Any], vocab: Mapping[str, int]) -> frozenset[int]:
    """The ids that end a turn: those the configs declare (an int, a list of ints or None
    each) and the common end-of-turn tokens that the vocabulary has."""
    ids: set[int] = set()
    for candidate in declared:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list | tuple):
            ids.update(int(c) for c in candidate)
    ids.update(vocab[name] for name in _END_OF_TURN if name in vocab)
    return frozenset(ids)


@dataclass
class LoadedFields:
    """What every loaded backend holds the same way, read from its model directory: the
    data half of :class:`Backend` (a backend dataclass adds its model and tokenizer)."""

    vocab: Vocab
    eos_ids: frozenset[int]
    device: str
    dtype: torch.dtype
    directory: Path
    context_length: int | None


class Cache(Protocol):
    """What the decode loop reads of one sequence's KV cache; the rest (the tensors) only
    the backend that made it reads."""

    @property
    def position(self) -> int:
        """Positions filled: the next token goes here."""
        ...

    @property
    def capacity(self) -> int | None:
        """Positions it has room for in all (None: it grows as needed)."""
        ...

    @property
    def ids(self) -> list[int]:
        """The token ids at positions ``0 .. position - 1``."""
        ...

    @property
    def cached(self) -> int:
        """Prompt positions its first pass took from a kept prefix (usage:
        ``cached_tokens``; 0 where none)."""
        ...


#: A backend's KV cache for one sequence.
CacheT = TypeVar("CacheT", bound=Cache)
CacheIn = TypeVar("CacheIn", bound=Cache, contravariant=True)


class Scores(Protocol):
    """The output head's scores at consecutive positions of one pass: row ``j`` is the
    distribution of the token after the pass's ``j``-th scored position. A backend may keep
    hidden states and project only what is asked (the lean backend does), so that scoring a
    few candidate tokens at a thousand positions costs little next to the pass itself."""

    def __len__(self) -> int: ...

    def full(self, row: int) -> torch.Tensor:
        """Logits (fp32) over the whole vocabulary at ``row``."""
        ...

    def all(self) -> torch.Tensor:
        """Every row's logits (fp32), shape (rows, vocab)."""
        ...

    def gather(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (fp32) of ``ids[i, c]`` at row ``rows[i]``: shape ``ids.shape``."""
        ...


class Backend(Protocol[CacheT]):
    """A loaded model as the decode loop sees it. What some backends can do beyond it is
    declared by the protocols below (:class:`BatchStep`, :class:`Releases`,
    :class:`GraphedSingle`, :class:`Drafting`, :class:`TreeBackend`), each checked with
    ``isinstance`` where it is used."""

    @property
    def name(self) -> BackendName:
        """Which backend: as ``-o engine`` names it and ``llmcli local workers`` shows it."""
        ...

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def directory(self) -> Path:
        """The model directory it was loaded from (a GGUF's converted cache)."""
        ...

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model takes (``max_position_embeddings``), if it says."""
        ...

    @property
    def loaded_model(self) -> object:
        """What this backend's variants (``dataclasses.replace`` of it, transformers' cache
        options) share: the loaded weights. A model's scheduler is keyed by it."""
        ...

    # -- the tokenizer side

    @property
    def vocab(self) -> Vocab:
        """The bytes of every token id (healing and streaming work on bytes)."""
        ...

    @property
    def eos_ids(self) -> frozenset[int]: ...

    @property
    def chat_template(self) -> str: ...

    @property
    def fast_tokenizer(self) -> Tokenizer | None:
        """The ``tokenizers`` tokenizer behind :meth:`encode`, where there is one (its
        pre-tokenizer tells character-level prefill where the last piece starts)."""
        ...

    def render(self, messages: Sequence[Mapping[str, str]], **template_kwargs: Any) -> str:
        """The chat template over ``messages`` with an open assistant turn."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as it is (no special tokens added)."""
        ...

    # -- the forward side
    def prompt(self, ids: Sequence[int], capacity: int) -> tuple[torch.Tensor, CacheT]:
        """One pass over ``ids`` from position 0: the last position's logits (fp32) and a
        cache with room for ``capacity`` positions in all."""
        ...

    def step(self, cache: CacheT, token: int) -> torch.Tensor:
        """The logits (fp32) after ``token``, at the cache's next position."""
        ...

    # -- exact prefill (llmcli_local.exact): score every position of a pass, drop a tail
    def prompt_scores(self, ids: Sequence[int], capacity: int,
                      keep: int) -> tuple[Scores, CacheT]:
        """As :meth:`prompt`, but scores at each of the last ``keep`` positions."""
        ...

    def extend(self, cache: CacheT, ids: Sequence[int]) -> Scores:
        """One pass over ``ids`` at the cache's next positions; scores at each of them."""
        ...

    def truncate(self, cache: CacheT, length: int) -> None:
        """Forget every position from ``length`` on (the next token goes at ``length``)."""
        ...


# -- what some backends can do beyond Backend (the lean one does all of it)


@runtime_checkable
class BatchStep(Protocol[CacheIn]):
    """A backend that steps several sequences in one forward pass (continuous batching):
    every weight is read once for all of them. The scheduler runs a backend without it one
    sequence at a time."""

    def step_batch(self, caches: Sequence[CacheIn], tokens: Sequence[int]) -> torch.Tensor:
        """Logits (fp32), shape (rows, vocab): row ``i`` after ``tokens[i]`` at the next
        position of ``caches[i]``; each cache advances by one."""
        ...


@runtime_checkable
class Releases(Protocol[CacheIn]):
    """A backend that holds something of a sequence beyond its cache: it is told when the
    sequence has ended (the lean backend keeps its prefix for later prompts, and frees its
    slot in the static KV pool). The scheduler calls it for every sequence that leaves,
    whether or not it was ever batched."""

    def release(self, cache: CacheIn) -> None: ...


@runtime_checkable
class GraphedSingle(Protocol):
    """A backend whose lone sequence may step through :meth:`BatchStep.step_batch` (one row)
    rather than :meth:`Backend.step`: where a captured CUDA graph of one row beats the plain
    step's kernel launches (the lean backend's static batch on CUDA)."""

    @property
    def graphed_single(self) -> bool:
        """False: a lone sequence steps with ``step``, bit for bit the unbatched loop."""
        ...


class KeptPrefixes(Protocol):
    """Prompt prefixes a backend keeps from finished sequences
    (:class:`~llmcli_local.lean.prefix.PrefixStore`)."""

    def longest(self, ids: Sequence[int]) -> int:
        """How many positions of ``ids`` a prompt pass would take from a kept prefix."""
        ...


class Draft(Protocol[CacheT]):
    """Speculative decoding's draft, as the decode loop drives it: a cheaper model over the
    same tokenizer (:mod:`llmcli_local.lean.draft`) that proposes the next tokens."""

    @property
    def prefixes(self) -> KeptPrefixes | None: ...

    def prompt(self, ids: Sequence[int], capacity: int) -> tuple[torch.Tensor, CacheT]: ...

    def step(self, cache: CacheT, token: int) -> torch.Tensor: ...

    def extend(self, cache: CacheT, ids: Sequence[int]) -> Scores: ...

    def truncate(self, cache: CacheT, length: int) -> None: ...

    def step_batch(self, caches: Sequence[CacheT], tokens: Sequence[int]) -> torch.Tensor:
        """Several rows' next proposals in one step (as :meth:`BatchStep.step_batch`)."""
        ...

    def release(self, cache: CacheT) -> None:
        """The sequence has ended: its draft cache is kept for a prompt that starts the same."""
        ...


@dataclass(frozen=True)
class SpeculationCosts:
    """What a backend's passes cost, in units of its own one-row decode step: what the
    speculation policy (:class:`llmcli_local.speculation.Policy`) weighs a step's proposals
    with. Linear fits of measured times (``lean/draft.py`` holds them, per weight kind, and
    docs/benchmarks.md the measurements):

    - a plain step of ``rows`` rows (``step_batch``; one row is the unit);
    - a verification pass over ``rows`` sequences' runs, ``tokens`` in all (``verify_batch``):
      a base, a cost per sequence (its attention) and per token, and a steeper one per token
      past ``knee`` (where the kernels turn compute-bound);
    - a model draft's step of ``rows`` rows, in the same unit.

    ``margin``: the gain a step's proposals must promise over the plain step before they
    are made (the fits and the acceptance rates are estimates)."""

    step_base: float
    step_per_row: float
    verify_base: float
    verify_per_row: float
    verify_per_token: float
    knee: int = 1 << 30
    past_knee: float = 0.0
    draft_base: float = 0.0
    draft_per_row: float = 0.0
    margin: float = 0.05

    def step(self, rows: int) -> float:
        return 1.0 if rows <= 1 else self.step_base + self.step_per_row * rows

    def verify(self, rows: int, tokens: int) -> float:
        return (self.verify_base + self.verify_per_row * rows + self.verify_per_token * tokens
                + self.past_knee * max(0, tokens - self.knee))

    def draft(self, rows: int) -> float:
        return self.draft_base + self.draft_per_row * rows

    def scaled(self, verify: float, draft: float) -> SpeculationCosts:
        """These costs with the verification pass's terms times ``verify`` and the draft's
        times ``draft`` (what :class:`llmcli_local.speculation.Calibration` measured)."""
        return replace(self, verify_base=self.verify_base * verify,
                       verify_per_row=self.verify_per_row * verify,
                       verify_per_token=self.verify_per_token * verify,
                       past_knee=self.past_knee * verify,
                       draft_base=self.draft_base * draft,
                       draft_per_row=self.draft_per_row * draft)


@runtime_checkable
class Drafting(Protocol[CacheIn]):
    """A backend that decodes speculatively: a draft proposes, one pass verifies (several
    sequences' proposals in one pass: :meth:`verify_batch`). The scheduler decides which
    rows speculate each step (:mod:`llmcli_local.speculation`)."""

    @property
    def draft(self) -> Draft[Any] | None:
        """The model draft (None: a lookup draft where :attr:`lookup`, else none)."""
        ...

    @property
    def lookup(self) -> bool:
        """Whether, without a model draft, proposals come from the sequence itself
        (prompt lookup: what followed its last tokens where they occurred before)."""
        ...

    @property
    def speculation_costs(self) -> SpeculationCosts:
        """What its passes cost, for the policy."""
        ...

    def verify(self, cache: CacheIn, ids: Sequence[int]) -> torch.Tensor:
        """One pass over ``ids`` at the cache's next positions: the logits after every one
        of them, shape (len(ids), vocab)."""
        ...

    def verify_batch(self, caches: Sequence[CacheIn], runs: Sequence[Sequence[int]]
                     ) -> list[torch.Tensor]:
        """:meth:`verify` for several sequences in one pass: logits after every token of
        each run, one tensor per sequence."""
        ...


@runtime_checkable
class TreeBackend(Protocol[CacheT]):
    """A backend that scores a tree of continuations in the prompt's own pass (the lean
    one: :meth:`~llmcli_local.lean.backend.LeanBackend.prompt_tree`); character-level
    prefill (:mod:`llmcli_local.boundary`) scores the others' paths one pass each."""

    def prompt_tree(self, ids: Sequence[int], tokens: Sequence[int],
                    parents: Sequence[int], capacity: int) -> tuple[Scores, CacheT]: ...

    def keep_path(self, cache: CacheT, body: int, nodes: Sequence[int]) -> None: ...

