"""The decode loop, over any :class:`~llmcli_local.backend.Backend`: the prompt (template and
prefill) in one forward pass, the prefill's split (``prefill_mode``: exact, heal or none),
sampling, UTF-8-safe streaming, stop sequences and usage. Nothing here knows which backend
runs the model.

Imported only when a local model runs (it imports torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from llmcli.capabilities import StopReason
from llmcli.errors import ConfigError
from llmcli.models import Usage
from llmcli_local import exact
from llmcli_local.backend import Backend
from llmcli_local.healing import HealPlan, plan_healing
from llmcli_local.streaming import TextStream

__all__ = ["PREFILL_MODES", "GenerationSettings", "Prompt", "build_prompt", "generate",
           "render", "sample_next"]

Messages = Sequence[Mapping[str, str]]

#: How the prefill is split into tokens: ``exact``, the model's own split (grammar-forced
#: decoding's tokens, verified in one pass: :mod:`llmcli_local.exact`); ``heal``, the
#: tokenizer's split with its last token(s) backed off and regenerated; ``none``, the
#: tokenizer's split as it is.
PREFILL_MODES = ("exact", "heal", "none")
PrefillMode = Literal["exact", "heal", "none"]


@dataclass
class GenerationSettings:
    """What a call asks of the decode loop (the rest of ``LocalOptions`` picks the backend)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    prefill_mode: PrefillMode = "exact"
    #: The old switch: False means ``prefill_mode="none"``.
    token_healing: bool = True
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> PrefillMode:
        return self.prefill_mode if self.token_healing else "none"


@dataclass
class Prompt:
    ids: list[int]
    heal: HealPlan


def render(backend: Backend[Any], messages: Messages, prefill: str,
           template_kwargs: Mapping[str, Any]) -> str:
    """The chat template with an open assistant turn, and the prefill written into it."""
    template = backend.chat_template
    for name in template_kwargs:
        if name not in template:
            raise ConfigError(f"This model's chat template has no {name!r} switch")
    return backend.render(messages, **template_kwargs) + prefill


def build_prompt(backend: Backend[Any], messages: Messages, prefill: str,
                 settings: GenerationSettings) -> Prompt:
    text = render(backend, messages, prefill, settings.template_kwargs)
    # Template and prefill are tokenized together (the template already holds BOS and the
    # special tokens), exactly as the model saw such text in training.
    ids = backend.encode(text)
    heal = plan_healing(ids, prefill, backend.vocab) if settings.mode == "heal" else HealPlan()
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


def _budget(settings: GenerationSettings, context: int, prompt_tokens: int) -> int:
    budget = min(settings.max_tokens, max(0, context - prompt_tokens))
    if budget <= 0:
        raise ConfigError(f"The prompt is {prompt_tokens} tokens; the model's context is {context}")
    return budget


def _constrain(logits: torch.Tensor, allowed: list[int]) -> torch.Tensor:
    mask = torch.full_like(logits, float("-inf"))
    index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
    mask[index] = 0.0
    return logits + mask


def generate(backend: Backend[Any], messages: Messages, prefill: str,
             settings: GenerationSettings) -> Generator[str | Usage, None, None]:
    """Yield the continuation of ``prefill`` (text only: the core prepends the prefill),
    then a Usage."""
    vocab = backend.vocab
    context = backend.context_length or 1 << 30
    mode = settings.mode
    started = time.perf_counter()
    allowed: Callable[[bytes], list[int]] = vocab.allowed
    if mode == "exact" and prefill:
        template = render(backend, messages, "", settings.template_kwargs)
        template_ids = backend.encode(template)
        prefill_bytes = prefill.encode("utf-8")
        first = exact.first_draft(backend, template_ids, template + prefill, prefill_bytes)
        budget = _budget(settings, context, len(template_ids) + len(first))
        # Room for the longest split the model could choose (one token per byte).
        with torch.inference_mode():
            head = exact.start(backend, template_ids, prefill_bytes, first,
                               len(template_ids) + len(prefill_bytes) + budget)
        budget = _budget(settings, context, len(head.ids))
        logits, cache, pending = head.logits, head.cache, head.pending
        input_tokens, forward_passes = len(head.ids), head.passes
        prefill_tokens = head.prefill_tokens
        allowed = vocab.consistent
    else:
        prompt = build_prompt(backend, messages, prefill, settings)
        budget = _budget(settings, context, len(prompt.ids))
        # The whole prompt, prefill included, in one forward pass.
        logits, cache = backend.prompt(prompt.ids, len(prompt.ids) + budget)
        pending = prompt.heal.removed
        input_tokens, forward_passes = len(prompt.ids), 1
        prefill_tokens = None
    generator: torch.Generator | None = None
    if settings.temperature > 0:
        generator = torch.Generator(device=backend.device)
        if settings.seed is not None:
            generator.manual_seed(settings.seed)
        else:
            generator.seed()
    healed = pending
    stream = TextStream(skip=pending, stops=settings.stop)
    stop_reason = StopReason.MAX_TOKENS
    produced = 0
    first_token_at: float | None = None
    prompt_seconds = time.perf_counter() - started
    while produced < budget:
        # Inference mode only around tensor work, never across a yield: grad mode is
        # thread-local, and the consumer's code runs while this generator is suspended.
        with torch.inference_mode():
            if pending:
                logits = _constrain(logits, allowed(pending))
            token = sample_next(logits, settings, generator)
        produced += 1
        if token in backend.eos_ids and not pending:
            stop_reason = StopReason.END_TURN
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
            stop_reason = StopReason.STOP_SEQUENCE
            break
        if produced >= budget:
            break
        logits = backend.step(cache, token)
        forward_passes += 1
    tail = stream.finish()
    if tail:
        yield tail
    elapsed = time.perf_counter() - started
    decode_seconds = max(elapsed - prompt_seconds, 1e-9)
    yield Usage(
        input_tokens=input_tokens,
        output_tokens=produced,
        stop_reason=stop_reason.value,
        details={
            "prefill_mode": mode,
            "healed": healed.decode("utf-8", errors="replace"),
            **({"prefill_tokens": prefill_tokens} if prefill_tokens is not None else {}),
            "forward_passes": forward_passes,
            "prompt_seconds": round(prompt_seconds, 4),
            "first_text_seconds": (
                round(first_token_at - started, 4) if first_token_at is not None else None
            ),
            "decode_tokens_per_second": round(max(produced - 1, 0) / decode_seconds, 2),
            "device": backend.device,
        },
    )
