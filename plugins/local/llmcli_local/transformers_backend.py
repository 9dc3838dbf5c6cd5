"""The transformers backend: :class:`llmcli_local.backend.Backend` over transformers' own
model and tokenizer, for the architectures and configs the lean backend does not implement,
and for its cache options:

- ``kv_cache="dynamic"``: transformers' ``DynamicCache`` grows as we go;
- ``kv_cache="static"``: a preallocated ``StaticCache``, its length rounded up so that
  requests of similar size reuse it;
- ``cuda_graphs``: the static cache, and the one-token step compiled with
  ``torch.compile(mode="reduce-overhead")``, which captures it as a CUDA graph (CUDA only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from llmcli.errors import ConfigError
from llmcli_local.backend import Backend, KVCache, LoadedFields, end_of_turn_ids
from llmcli_local.healing import Vocab, token_bytes_from_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["TransformersBackend", "TransformersCache", "TransformersScores", "load",
           "quiet_transformers"]

#: Static caches are allocated in multiples of this many positions.
_STATIC_ROUNDING = 256


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its progress bars and below-error logging, restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


@dataclass
class TransformersCache:
    cache: Any
    #: The static length (a multiple of _STATIC_ROUNDING), or None for a dynamic cache.
    capacity: int | None
    position: int = 0
    #: The token ids at positions 0..position.
    ids: list[int] = field(default_factory=list)
    #: Prompt positions taken from a kept prefix: none here (the transformers backend
    #: keeps none).
    cached: int = 0


@dataclass
class TransformersScores:
    """Logits at every scored position, as the model's own forward computed them (its head
    may scale or cap logits: nothing here assumes a plain linear head)."""

    logits: torch.Tensor  # (rows, vocab)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def full(self, row: int) -> torch.Tensor:
        return self.logits[row].float()

    def all(self) -> torch.Tensor:
        return self.logits.float()

    def gather(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        device = self.logits.device
        return self.logits[rows.to(device)].gather(1, ids.to(device)).float()


@dataclass
class TransformersBackend(LoadedFields):
    #: A transformers ``PreTrainedModel`` (typed Any: transformers' classes are generated).
    model: Any
    #: A transformers tokenizer.
    tokenizer: Any
    kv_cache: KVCache = "dynamic"
    cuda_graphs: bool = False
    #: Compiled decode steps (CUDA graphs), keyed by static cache length; shared by every
    #: configuration of the same loaded model.
    compiled: dict[int, Callable[..., Any]] = field(default_factory=dict)
    #: The forward keyword of the cache: transformers 5.x renamed ``past_key_values``.
    cache_keyword: str = "past_key_values"
    name: Literal["transformers"] = "transformers"

    def configured(self, kv_cache: KVCache, cuda_graphs: bool) -> TransformersBackend:
        """The same loaded model with these cache options (nothing is copied)."""
        if cuda_graphs and self.device != "cuda":
            raise ConfigError("cuda_graphs needs a CUDA GPU (device=cuda)")
        if (kv_cache, cuda_graphs) == (self.kv_cache, self.cuda_graphs):
            return self
        return dataclasses.replace(self, kv_cache=kv_cache, cuda_graphs=cuda_graphs)

    @property
    def loaded_model(self) -> Any:
        """What its cache-option variants share (the scheduler is keyed by it)."""
        return self.model

    @property
    def fast_tokenizer(self) -> Tokenizer | None:
        tokenizer: Tokenizer | None = (self.tokenizer.backend_tokenizer
                                       if self.tokenizer.is_fast else None)
        return tokenizer

    @property
    def chat_template(self) -> str:
        return str(self.tokenizer.chat_template or "")

    def render(self, messages: Sequence[Mapping[str, str]], **template_kwargs: Any) -> str:
        rendered = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True,
            **template_kwargs,
        )
        return str(rendered)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, ids: Sequence[int], capacity: int) -> tuple[torch.Tensor, TransformersCache]:
        cache = self._new_cache(capacity)
        return self._forward(cache, list(ids), self.model)[-1], cache

    def prompt_scores(self, ids: Sequence[int], capacity: int,
                      keep: int) -> tuple[TransformersScores, TransformersCache]:
        cache = self._new_cache(capacity)
        return TransformersScores(self._forward(cache, list(ids), self.model, keep)), cache

    def extend(self, cache: TransformersCache, ids: Sequence[int]) -> TransformersScores:
        if cache.capacity is not None and cache.position + len(ids) > cache.capacity:
            raise RuntimeError("the pass runs past the KV buffer")
        return TransformersScores(self._forward(cache, list(ids), self.model, len(ids)))

    def truncate(self, cache: TransformersCache, length: int) -> None:
        if length >= cache.position:
            return
        if cache.capacity is None:
            # A negative count removes that many positions (transformers 4.x and 5.x alike).
            cache.cache.crop(length - cache.position)
        # A static cache keeps its stale tail: the causal mask built from cache_position
        # hides it until it is overwritten.
        cache.position = length
        del cache.ids[length:]

    def _new_cache(self, capacity: int) -> TransformersCache:
        from transformers import DynamicCache, StaticCache

        config = self.model.config
        if self.kv_cache == "static" or self.cuda_graphs:
            # Rounded up so that compiled graphs are reused across requests of similar size
            # instead of recompiled for each exact length.
            length = -(-capacity // _STATIC_ROUNDING) * _STATIC_ROUNDING
            if self.context_length:
                length = max(min(length, self.context_length), capacity)
            cache = TransformersCache(StaticCache(config=config, max_cache_len=length), length)
        else:
            cache = TransformersCache(DynamicCache(config=config), None)
        return cache

    def step(self, cache: TransformersCache, token: int) -> torch.Tensor:
        if cache.capacity is not None and cache.position >= cache.capacity:
            raise RuntimeError("decode ran past the KV buffer")
        return self._forward(cache, [token], self._compiled_step(cache))[-1]

    def _compiled_step(self, cache: TransformersCache) -> Callable[..., Any]:
        if not self.cuda_graphs or cache.capacity is None:
            return self.model
        # One compiled step per static length, reused across requests.
        step = self.compiled.get(cache.capacity)
        if step is None:
            # Inductor's graph trees capture an empty graph to set up their memory pool, and
            # torch warns about it as if it were a mistake (pytorch/pytorch#149653).
            warnings.filterwarnings("ignore", message="The CUDA Graph is empty",
                                    category=UserWarning)
            step = torch.compile(self.model.forward, mode="reduce-overhead")
            self.compiled[cache.capacity] = step
        return step

    def _forward(self, cache: TransformersCache, ids: list[int],
                 fn: Callable[..., Any], keep: int = 1) -> torch.Tensor:
        """Logits (fp32) of the last ``keep`` positions, shape (keep, vocab)."""
        with torch.inference_mode():
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            positions = torch.arange(cache.position, cache.position + len(ids),
                                     device=self.device, dtype=torch.long)
            out = fn(
                input_ids=input_ids, use_cache=True, **{self.cache_keyword: cache.cache},
                cache_position=positions, position_ids=positions.unsqueeze(0),
                logits_to_keep=keep,
            )
            cache.position += len(ids)
            cache.ids.extend(ids)
            # Clone: a CUDA-graph output buffer is overwritten by the next replay.
            return out.logits[0, -keep:].float().clone()


def load(directory: Path, device: str, dtype: torch.dtype) -> TransformersBackend:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dtype, local_files_only=True
        )
    model.to(device)
    model.eval()
    token_bytes, atomic = token_bytes_from_tokenizer(tokenizer)
    config = model.config
    return TransformersBackend(
        model=model, tokenizer=tokenizer, vocab=Vocab(token_bytes, atomic),
        eos_ids=end_of_turn_ids(
            [getattr(model.generation_config, "eos_token_id", None),
             getattr(config, "eos_token_id", None), tokenizer.eos_token_id],
            tokenizer.get_vocab(),
        ),
        device=device, dtype=dtype, directory=directory,
        context_length=getattr(config, "max_position_embeddings", None),
        cache_keyword="cache" if "cache" in inspect.signature(model.forward).parameters
        else "past_key_values",
    )


if TYPE_CHECKING:
    def _is(backend: TransformersBackend) -> Backend[TransformersCache]:
        """mypy checks that it is a :class:`~llmcli_local.backend.Backend` (only that)."""
        return backend
