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

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from llmcli.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from llmcli_local.healing import Vocab

__all__ = [
    "ENGINES",
    "Backend",
    "BackendName",
    "BackendOptions",
    "BackendRequest",
    "BatchStep",
    "Scores",
    "choose_backend",
    "common_prefix",
    "end_of_turn_ids",
]

#: Values of ``-o engine`` (and of ``LLMCLI_LOCAL_ENGINE``): "auto" lets :func:`choose_backend`
#: decide; the others name a backend.
ENGINES = ("auto", "lean", "transformers")
BackendName = Literal["lean", "transformers"]
Engine = Literal["auto", "lean", "transformers"]
KVCache = Literal["dynamic", "static"]
Quantize = Literal["none", "int8", "int4"]

#: Names of tokens that end an assistant turn in common chat templates.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>")


class BackendRequest(Protocol):
    """What :func:`choose_backend` reads of a call's options (``LocalOptions`` has these)."""

    @property
    def engine(self) -> Engine: ...
    @property
    def kv_cache(self) -> KVCache: ...
    @property
    def cuda_graphs(self) -> bool: ...
    @property
    def quantize(self) -> Quantize: ...


@dataclass(frozen=True)
class BackendOptions:
    """The backend options of one call, apart from the rest of ``LocalOptions``: what the
    loader, the keep-alive wire format and the tests pass around."""

    engine: Engine = "auto"
    kv_cache: KVCache = "dynamic"
    cuda_graphs: bool = False
    quantize: Quantize = "none"

    @classmethod
    def of(cls, request: BackendRequest) -> BackendOptions:
        return cls(engine=request.engine, kv_cache=request.kv_cache,
                   cuda_graphs=request.cuda_graphs, quantize=request.quantize)


def choose_backend(options: BackendRequest, device: str,
                   model_dir: Path | None) -> Engine:
    """The backend for a call: ``"lean"`` or ``"transformers"``.

    ``options.engine`` (else ``LLMCLI_LOCAL_ENGINE``) may force one; a static KV cache and
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
    requested: str = options.engine
    if requested == "auto":
        requested = os.environ.get("LLMCLI_LOCAL_ENGINE", "").strip().lower() or "auto"
    if requested == "transformers":
        return "transformers"
    if requested not in ENGINES:
        raise ConfigError(f"Unknown local engine {requested!r} (choose from: {', '.join(ENGINES)})")
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


#: A backend's KV cache for one sequence: only the backend that made it reads it.
CacheT = TypeVar("CacheT")
CacheIn = TypeVar("CacheIn", contravariant=True)


class Scores(Protocol):
    """The output head's scores at consecutive positions of one pass: row ``j`` is the
    distribution of the token after the pass's ``j``-th scored position. A backend may keep
    hidden states and project only what is asked (the lean backend does), so that scoring a
    few candidate tokens at a thousand positions costs little next to the pass itself."""

    def __len__(self) -> int: ...

    def full(self, row: int) -> torch.Tensor:
        """Logits (fp32) over the whole vocabulary at ``row``."""
        ...

    def gather(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (fp32) of ``ids[i, c]`` at row ``rows[i]``: shape ``ids.shape``."""
        ...


class Backend(Protocol[CacheT]):
    """A loaded model as the decode loop sees it."""

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

    # -- the tokenizer side

    @property
    def vocab(self) -> Vocab:
        """The bytes of every token id (healing and streaming work on bytes)."""
        ...

    @property
    def eos_ids(self) -> frozenset[int]: ...

    @property
    def chat_template(self) -> str: ...

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


class BatchStep(Protocol[CacheIn]):
    """A backend that steps several sequences in one forward pass (continuous batching):
    every weight is read once for all of them. The lean backend has it; the scheduler runs
    a backend without it one sequence at a time."""

    def step_batch(self, caches: Sequence[CacheIn], tokens: Sequence[int]) -> torch.Tensor:
        """Logits (fp32), shape (rows, vocab): row ``i`` after ``tokens[i]`` at the next
        position of ``caches[i]``; each cache advances by one."""
        ...

    # Optional, read with getattr by the scheduler (the lean backend has both):
    #
    # ``release(cache) -> None``: the sequence of ``cache`` has ended and its cache will not
    # be stepped again; a backend that holds per-sequence state for batched steps (the lean
    # backend's static KV pool, :mod:`llmcli_local.lean.static`) frees it. Called for every
    # sequence that leaves, whether or not it was ever batched.
    #
    # ``graphed_single: bool``: True where a lone sequence should step through
    # :meth:`step_batch` (one row) rather than :meth:`Backend.step`, e.g. because a captured
    # CUDA graph of one row beats the plain step's kernel launches. Without it (or False) a
    # lone sequence steps with ``step``, bit for bit the unbatched loop.
