"""The decode loop: native prefill in one forward pass, token healing, KV-cache decoding,
sampling, UTF-8-safe streaming and stop sequences.

Imported only when a local model runs (it imports torch).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmcli.errors import ConfigError
from llmcli.models import Usage
from llmcli_local.healing import HealPlan, plan_healing
from llmcli_local.loader import Loaded
from llmcli_local.streaming import TextStream

__all__ = ["GenerationSettings", "build_prompt", "generate", "sample_next"]


@dataclass
class GenerationSettings:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    token_healing: bool = True
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    kv_cache: str = "dynamic"
    cuda_graphs: bool = False
    #: Benchmarks only: generate exactly ``max_tokens`` tokens.
    ignore_eos: bool = False
    #: Use the lean decode step where the architecture allows (tests compare both paths).
    #: Applies to the transformers engine; the lean engine always runs the lean step.
    fast_decode: bool = True


@dataclass
class Prompt:
    ids: list[int]
    heal: HealPlan


def render(loaded: Loaded, messages: list[dict[str, str]], prefill: str,
           template_kwargs: dict[str, Any]) -> str:
    """The chat template with an open assistant turn, and the prefill written into it."""
    tokenizer = loaded.tokenizer
    template = tokenizer.chat_template or ""
    for name in template_kwargs:
        if name not in template:
            raise ConfigError(f"This model's chat template has no {name!r} switch")
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    return str(rendered) + prefill


def build_prompt(loaded: Loaded, messages: list[dict[str, str]], prefill: str,
                 settings: GenerationSettings) -> Prompt:
    text = render(loaded, messages, prefill, settings.template_kwargs)
    # Template and prefill are tokenized together (the template already holds BOS and the
    # special tokens), exactly as the model saw such text in training.
    ids = list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    heal = plan_healing(ids, prefill, loaded.vocab) if settings.token_healing else HealPlan()
    return Prompt(ids=ids[: len(ids) - heal.backed_off], heal=heal)


def sample_next(logits: torch.Tensor, settings: GenerationSettings,
                generator: torch.Generator | None) -> int:
    """Greedy at temperature 0; else temperature, top-k, top-p, then one multinomial draw."""
    if settings.temperature <= 0:
        return int(torch.argmax(logits).item())
    scores = logits.float() / settings.temperature
    if settings.top_k > 0 and settings.top_k < scores.shape[-1]:
        kth = torch.topk(scores, settings.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop tokens once the mass *before* them already reaches top_p (keeps at least one).
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= settings.top_p
        scores = scores.masked_fill(
            torch.zeros_like(drop).scatter(0, order, drop), float("-inf")
        )
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _constrain(logits: torch.Tensor, allowed: list[int]) -> torch.Tensor:
    mask = torch.full_like(logits, float("-inf"))
    index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
    mask[index] = 0.0
    return logits + mask


def _fast_decoder(loaded: Loaded) -> Any:
    if loaded.fast is None:
        from llmcli_local import fastpath

        loaded.fast = fastpath.FastDecoder(loaded.model) if fastpath.supports(loaded.model) \
            else False
    return loaded.fast or None


class _Forward:
    """Runs the model on new tokens against a KV cache and returns last-position logits.

    On the lean engine: the lean decoder's one-pass prompt, then its decode step, on its own
    KV buffers (no transformers). On the transformers engine:

    ``dynamic``: transformers' DynamicCache grows as we go. ``static``: a preallocated
    StaticCache; on CUDA with ``cuda_graphs`` the one-token decode step is compiled with
    ``torch.compile(mode="reduce-overhead")``, which captures it as a CUDA graph."""

    def __init__(self, loaded: Loaded, settings: GenerationSettings, max_len: int) -> None:
        model = loaded.model
        self.model = model
        self.device = loaded.device
        self.calls = 0
        self.position = 0
        self.max_len = max_len
        self.step_fn: Any = None
        self.fast: Any = None
        self.buffers: Any = None
        self.lean = loaded.engine == "lean"
        if self.lean:
            # No transformers: the prompt and every step run on the lean decoder's buffers.
            if settings.kv_cache == "static" or settings.cuda_graphs:
                raise ConfigError("kv_cache=static and cuda_graphs need engine=transformers")
            self.fast = loaded.fast
            self.buffers = self.fast.new_buffers(max_len)
            self.cache: Any = None
            return
        from transformers import DynamicCache, StaticCache

        # transformers 5.x renamed ``past_key_values`` to ``cache``; accept either.
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        if settings.kv_cache == "static" or settings.cuda_graphs:
            self.cache = StaticCache(config=model.config, max_cache_len=max_len)
            if settings.cuda_graphs:
                if loaded.device != "cuda":
                    raise ConfigError("cuda_graphs needs a CUDA GPU (device=cuda)")
                # One compiled step per static length, reused across requests.
                self.step_fn = loaded.compiled.get(max_len)
                if self.step_fn is None:
                    self.step_fn = torch.compile(model.forward, mode="reduce-overhead")
                    loaded.compiled[max_len] = self.step_fn
        else:
            self.cache = DynamicCache(config=model.config)
            if settings.fast_decode:
                self.fast = _fast_decoder(loaded)

    def __call__(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self._run(ids)

    def _run(self, ids: list[int]) -> torch.Tensor:
        self.calls += 1
        if self.lean:
            if self.position + len(ids) > self.max_len:
                raise RuntimeError("decode ran past the KV buffer")
            if len(ids) == 1 and self.position > 0:
                logits = self.fast.step(self.buffers, ids[0], self.position)
            else:
                logits = self.fast.prompt(self.buffers, ids, self.position)
            self.position += len(ids)
            return logits.float()
        if self.fast is not None and len(ids) == 1 and self.position > 0:
            if self.position >= self.max_len:
                raise RuntimeError("decode ran past the KV buffer")
            if self.buffers is None:
                # The prompt's keys/values move from transformers' cache into our buffer.
                self.buffers = self.fast.start(self.cache, self.position, self.max_len)
                self.cache = None
            logits = self.fast.step(self.buffers, ids[0], self.position)
            self.position += 1
            return logits.float()
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(
            self.position, self.position + len(ids), device=self.device, dtype=torch.long
        )
        fn = self.step_fn if (self.step_fn is not None and len(ids) == 1) else self.model
        out = fn(
            input_ids=input_ids, use_cache=True, **{self.cache_kw: self.cache},
            cache_position=positions, position_ids=positions.unsqueeze(0), logits_to_keep=1,
        )
        self.position += len(ids)
        # Clone: a CUDA-graph output buffer is overwritten by the next replay.
        return out.logits[0, -1].float().clone()


def generate(loaded: Loaded, messages: list[dict[str, str]], prefill: str,
             settings: GenerationSettings) -> Iterator[str | Usage]:
    """Yield the continuation of ``prefill`` (text only: the core prepends the prefill),
    then a Usage."""
    prompt = build_prompt(loaded, messages, prefill, settings)
    vocab = loaded.vocab
    context = getattr(loaded.model.config, "max_position_embeddings", None) or 1 << 30
    budget = min(settings.max_tokens, max(0, context - len(prompt.ids)))
    if budget <= 0:
        raise ConfigError(
            f"The prompt is {len(prompt.ids)} tokens; the model's context is {context}"
        )
    generator: torch.Generator | None = None
    if settings.temperature > 0:
        generator = torch.Generator(device=loaded.device)
        if settings.seed is not None:
            generator.manual_seed(settings.seed)
        else:
            generator.seed()
    stream = TextStream(skip=prompt.heal.removed, stops=settings.stop)
    pending = prompt.heal.removed
    stop_reason = "max_tokens"
    produced = 0
    started = time.perf_counter()
    first_token_at: float | None = None
    needed = len(prompt.ids) + budget
    if settings.kv_cache == "static" or settings.cuda_graphs:
        # Round the preallocated length up so that compiled graphs are reused across
        # requests of similar size instead of recompiled for each exact length.
        needed = min(-(-needed // 256) * 256, context)
    forward = _Forward(loaded, settings, needed)
    # The whole prompt, prefill included, in one forward pass.
    logits = forward(prompt.ids)
    prompt_seconds = time.perf_counter() - started
    while produced < budget:
        # Inference mode only around tensor work, never across a yield: grad mode is
        # thread-local, and the consumer's code runs while this generator is suspended.
        with torch.inference_mode():
            if pending:
                logits = _constrain(logits, vocab.allowed(pending))
            token = sample_next(logits, settings, generator)
        produced += 1
        if token in loaded.eos_ids and not pending and not settings.ignore_eos:
            stop_reason = "stop"
            break
        piece = vocab.bytes_of(token)
        if pending:
            pending = b"" if piece.startswith(pending) else pending[len(piece):]
        text = stream.feed(piece)
        if text:
            if first_token_at is None:
                first_token_at = time.perf_counter()
            yield text
        if stream.stopped:
            stop_reason = "stop_sequence"
            break
        if produced >= budget:
            break
        logits = forward([token])
    tail = stream.finish()
    if tail:
        yield tail
    elapsed = time.perf_counter() - started
    decode_seconds = max(elapsed - prompt_seconds, 1e-9)
    yield Usage(
        input_tokens=len(prompt.ids),
        output_tokens=produced,
        stop_reason=stop_reason,
        details={
            "healed": prompt.heal.removed.decode("utf-8", errors="replace"),
            "forward_passes": forward.calls,
            "prompt_seconds": round(prompt_seconds, 4),
            "first_text_seconds": (
                round(first_token_at - started, 4) if first_token_at is not None else None
            ),
            "decode_tokens_per_second": round(max(produced - 1, 0) / decode_seconds, 2),
            "device": loaded.device,
        },
    )
