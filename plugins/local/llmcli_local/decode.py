"""The decode loop, over any :class:`~llmcli_local.backend.Backend`: the prompt (template and
prefill) in one forward pass, the prefill's split (``prefill_mode``: chars, heal, none or
forced),
sampling, UTF-8-safe streaming, stop sequences and usage. Nothing here knows which backend
runs the model.

Imported only when a local model runs (it imports torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from llmcli.capabilities import StopReason
from llmcli.errors import ConfigError
from llmcli.models import Usage
from llmcli_local import boundary, exact, speculation
from llmcli_local.backend import Backend, Cache, Drafting, Scores
from llmcli_local.config import GenerationSettings
from llmcli_local.healing import HealPlan, plan_healing
from llmcli_local.streaming import TextStream

if TYPE_CHECKING:
    from llmcli_local.grammar import Constraint

__all__ = ["Decoding", "GenerationSettings", "Prepared", "Prompt", "build_prompt",
           "generate", "prepare", "render", "sample_next", "start"]

Messages = Sequence[Mapping[str, str]]

# How the prefill is split into tokens (``settings.prefill_mode``,
# :data:`llmcli_local.config.PREFILL_MODES`): ``chars`` (the default), the model's reply
# given the prefill's characters: the tokenizer's split, its boundary region weighed over
# every canonical split in the same pass (:mod:`llmcli_local.boundary`); ``heal``, the
# tokenizer's split with its last token(s) backed off and regenerated; ``none``, the
# tokenizer's split as it is; ``forced``, grammar-forced decoding's split, verified in
# passes (:mod:`llmcli_local.exact`: the reference of old, slow on text the model would not
# write).


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
    healing = settings.prefill_mode == "heal"
    heal = plan_healing(ids, prefill, backend.vocab) if healing else HealPlan()
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


@dataclass
class Prepared:
    """A call's prompt, tokenized, before any forward pass: what its KV cache will need
    (``capacity`` positions), so that a scheduler can hold it back until that fits."""

    #: The prompt's ids (``forced``: the template's only; the prefill's split comes later;
    #: ``chars``: the template and the prefill's body).
    ids: list[int]
    capacity: int
    budget: int
    #: Healed prefill bytes the first tokens must spell (``heal``).
    pending: bytes = b""
    #: ``exact`` with a prefill: its bytes and the tokenizer's draft split of them.
    exact_prefill: bytes | None = None
    first_draft: list[int] = field(default_factory=list)
    #: The grammar's state (:class:`llmcli_local.grammar.Constraint`), the prefill checked.
    constraint: Constraint | None = None
    #: ``chars`` with a prefill: the body, the boundary region and its paths.
    boundary: boundary.Plan | None = None


def prepare(backend: Backend[Any], messages: Messages, prefill: str,
            settings: GenerationSettings) -> Prepared:
    """Render and tokenize the prompt (template and prefill); no forward pass."""
    prepared = _prepare(backend, messages, prefill, settings)
    prepared.constraint = grammar_constraint(backend, settings, prefill)
    return prepared


def _prepare(backend: Backend[Any], messages: Messages, prefill: str,
             settings: GenerationSettings) -> Prepared:
    context = backend.context_length or 1 << 30
    if settings.prefill_mode == "chars" and prefill:
        template = render(backend, messages, "", settings.template_kwargs)
        plan = boundary.plan(backend, backend.encode(template), template, prefill)
        budget = _budget(settings, context, len(plan.body) + len(plan.canon))
        if not plan.region:  # the prefill ends with an added token: nothing to weigh
            return Prepared(plan.body, len(plan.body) + budget, budget)
        # Room for every path the pass scores; one of them stays.
        return Prepared(plan.body, len(plan.body) + len(plan.tokens) + budget, budget,
                        boundary=plan)
    if settings.prefill_mode == "forced" and prefill:
        template = render(backend, messages, "", settings.template_kwargs)
        template_ids = backend.encode(template)
        prefill_bytes = prefill.encode("utf-8")
        first = exact.first_draft(backend, template_ids, template + prefill, prefill_bytes)
        budget = _budget(settings, context, len(template_ids) + len(first))
        # Room for the longest split the model could choose (one token per byte).
        return Prepared(template_ids, len(template_ids) + len(prefill_bytes) + budget, budget,
                        exact_prefill=prefill_bytes, first_draft=first)
    prompt = build_prompt(backend, messages, prefill, settings)
    budget = _budget(settings, context, len(prompt.ids))
    return Prepared(prompt.ids, len(prompt.ids) + budget, budget, pending=prompt.heal.removed)


def start(backend: Backend[Any], prepared: Prepared, settings: GenerationSettings,
          started: float | None = None) -> Decoding:
    """The prompt pass (the prefill's split included): the sequence, ready for its first
    token. ``started`` is when the call began (for the usage's timings)."""
    started = time.perf_counter() if started is None else started
    vocab = backend.vocab
    allowed: Callable[[bytes], list[int]] = vocab.allowed
    generator = _generator(backend, settings)
    first: int | None = None
    prefill_tokens: int | None = None
    details: dict[str, Any] = {}
    if prepared.boundary is not None:
        plan = prepared.boundary
        constraint = prepared.constraint
        with torch.inference_mode():
            choice, cache, logits, forward_passes = boundary.start(
                backend, plan, prepared.capacity, temperature=settings.temperature,
                generator=generator, top_k=settings.top_k, top_p=settings.top_p,
                allowed=constraint.extends if constraint is not None else None)
        budget = prepared.budget
        pending, first = choice.pending, choice.first
        input_tokens = len(plan.body) + len(choice.path)
        prefill_tokens = plan.body_prefill + len(choice.path)
        details = {"boundary_bytes": len(plan.region), "boundary_paths": len(plan.tokens),
                   "boundary_covers": choice.considered,
                   "boundary_dropped": choice.dropped}
    elif prepared.exact_prefill is not None:
        with torch.inference_mode():
            head = exact.start(backend, prepared.ids, prepared.exact_prefill,
                               prepared.first_draft, prepared.capacity)
        budget = _budget(settings, backend.context_length or 1 << 30, len(head.ids))
        logits, cache, pending = head.logits, head.cache, head.pending
        input_tokens, forward_passes = len(head.ids), head.passes
        prefill_tokens = head.prefill_tokens
        allowed = vocab.consistent
    else:
        budget = prepared.budget
        # The whole prompt, prefill included, in one forward pass.
        logits, cache = backend.prompt(prepared.ids, prepared.capacity)
        pending = prepared.pending
        input_tokens, forward_passes = len(prepared.ids), 1
    sequence = Decoding(backend, settings, logits=logits, cache=cache, pending=pending,
                        allowed=allowed, budget=budget, input_tokens=input_tokens,
                        forward_passes=forward_passes, prefill_tokens=prefill_tokens,
                        started=started, generator=generator, first=first, details=details)
    if prepared.constraint is not None:
        # The grammar takes the prefill's bytes that are in the cache; the bytes still owed
        # go with the next token, which both constraints then choose.
        prepared.constraint.feed_prefill(owed=len(pending))
        sequence.constraint = prepared.constraint
    return sequence


def _generator(backend: Backend[Any], settings: GenerationSettings) -> torch.Generator | None:
    """The sampler's random source (seeded where the call gives a seed); None: greedy."""
    if settings.temperature <= 0:
        return None
    generator = torch.Generator(device=backend.device)
    if settings.seed is not None:
        generator.manual_seed(settings.seed)
    else:
        generator.seed()
    return generator


# -- constrained decoding (llmcli_local.grammar): small hooks, used only with a grammar


def grammar_constraint(backend: Backend[Any], settings: GenerationSettings,
                       prefill: str) -> Constraint | None:
    """The grammar's state for a call, or None; a prefill the grammar cannot start with
    fails here, before any forward pass."""
    if settings.grammar is None:
        return None
    from llmcli_local import grammar

    tokenizer = grammar.tokenizer_for(backend.vocab, backend.eos_ids, backend.encode)
    constraint = grammar.Constraint(tokenizer, settings.grammar)
    constraint.check_prefill(prefill.encode("utf-8"))
    return constraint


def _grammar_mask(constraint: Constraint, logits: torch.Tensor) -> torch.Tensor:
    masked = constraint.apply(logits)
    if not bool(torch.isfinite(masked).any()):
        raise ConfigError("Constrained decoding: no token can continue both the prefill and "
                          "the grammar")
    return masked


class Decoding:
    """One sequence after its prompt pass: the next token's logits, its cache, the prefill
    constraint, its sampler, its text stream (UTF-8 safe, stops) and its usage. The loop in
    :func:`generate` drives one; :mod:`llmcli_local.scheduler` drives many, stepping them
    together."""

    def __init__(self, backend: Backend[Any], settings: GenerationSettings, *,
                 logits: torch.Tensor, cache: Cache, pending: bytes,
                 allowed: Callable[[bytes], list[int]], budget: int, input_tokens: int,
                 forward_passes: int, prefill_tokens: int | None, started: float,
                 generator: torch.Generator | None = None, first: int | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.logits = logits
        self.cache = cache
        self.pending = pending
        self.healed = pending
        self.allowed = allowed
        self.budget = budget
        self.input_tokens = input_tokens
        self.forward_passes = forward_passes
        self.prefill_tokens = prefill_tokens
        self.started = started
        self.generator = generator
        #: The first token where the prompt pass chose it already (``chars``' cover).
        self.first = first
        self.details = dict(details or {})
        self.stream = TextStream(skip=pending, stops=settings.stop)
        self.stop_reason = StopReason.MAX_TOKENS
        self.produced = 0
        self.done = False
        self.first_text_at: float | None = None
        self.prompt_seconds = time.perf_counter() - started
        #: The grammar's state with a schema or grammar (:mod:`llmcli_local.grammar`).
        self.constraint: Constraint | None = None
        #: Tokens the grammar forced, taken without a choice (run in one pass each run).
        self.forced_tokens = 0
        #: Tokens written to end a JSON reply the budget would have cut (``--schema``).
        self.closed_tokens = 0
        #: Speculative decoding's state (:mod:`llmcli_local.speculation`): None where the
        #: backend has no draft or the call asked for one step per token. Whether a step
        #: speculates, and how far, is the caller's decision (the scheduler's policy).
        self.speculation: speculation.Speculation | None = None
        if settings.speculative and isinstance(backend, Drafting) and (
                backend.draft is not None or backend.lookup):
            self.speculation = speculation.Speculation(backend.draft)

    def choose(self) -> int:
        """The next token from ``logits`` (constrained while the prefill is not covered)."""
        if self.first is not None:
            token, self.first = self.first, None
            return token
        # Inference mode only around tensor work, never across a yield: grad mode is
        # thread-local, and the consumer's code runs while a generator is suspended.
        with torch.inference_mode():
            logits = self.logits
            if self.pending:
                logits = _constrain(logits, self.allowed(self.pending))
            if self.constraint is not None:
                logits = _grammar_mask(self.constraint, logits)
            return sample_next(logits, self.settings, self.generator)

    def advance(self, token: int) -> str:
        """Take ``token``: the text it completes (maybe none); sets ``done`` at the end of
        the turn, a stop sequence or the token budget."""
        self.produced += 1
        if token in self.backend.eos_ids and not self.pending:
            self.stop_reason = StopReason.END_TURN
            self.done = True
            return ""
        if self.constraint is not None:
            self.constraint.consume(token)
        piece = self.backend.vocab.bytes_of(token)
        if self.pending:
            self.pending = b"" if piece.startswith(self.pending) else self.pending[len(piece):]
        text = self.stream.feed(piece)
        if text and self.first_text_at is None:
            self.first_text_at = time.perf_counter()
        if self.stream.stopped:
            self.stop_reason = StopReason.STOP_SEQUENCE
            self.done = True
        elif self.constraint is not None and self.constraint.stopped:
            # The grammar is complete and allows nothing more: the reply ends here.
            self.stop_reason = StopReason.END_TURN
            self.done = True
        elif self.produced >= self.budget:
            self.done = True
        return text

    def forced(self) -> list[int]:
        """Tokens the grammar forces next (none without a grammar, or while prefill bytes
        are owed): the caller takes them with :meth:`advance` and runs them in one pass."""
        if self.constraint is None or self.pending or self.done:
            return []
        left = self.budget - self.produced
        closing = self.constraint.closing(left)
        if closing is not None:
            # What is left of the budget is what ending the JSON takes: end it now.
            self.closed_tokens += len(closing)
            return closing
        return self.constraint.forced()[:left]

    def extended(self, run: Sequence[int], scores: Scores) -> None:
        """The logits after a run of tokens (a sampled one and those forced after it),
        from one pass over the run."""
        self.logits = scores.full(len(run) - 1)
        self.forward_passes += 1
        self.forced_tokens += len(run) - 1

    def advance_run(self, token: int) -> tuple[list[int], str]:
        """:meth:`advance` with ``token``, then with each token the grammar forces after it
        (none without a grammar): the run the next pass takes, and its text."""
        run, text = [token], self.advance(token)
        for forced in self.forced():
            run.append(forced)
            text += self.advance(forced)
            if self.done:
                break
        return run, text

    def step_run(self, run: Sequence[int]) -> None:
        """The next pass over a run of several tokens (a sampled one and those a grammar
        forced after it): one pass over all. A run of one token goes through
        :func:`llmcli_local.speculation.step` (one step, or a speculative round)."""
        self.extended(run, self.backend.extend(self.cache, run))

    def release_draft(self) -> None:
        """The sequence has ended: its draft's cache is kept for a prompt that starts the
        same."""
        if self.speculation is not None:
            self.speculation.release()

    def stepped(self, logits: torch.Tensor) -> None:
        """The logits after the last token, from one more forward step."""
        self.logits = logits
        self.forward_passes += 1

    def finish(self) -> str:
        """Text held back until the end (an incomplete character, a possible stop)."""
        return self.stream.finish()

    def usage(self) -> Usage:
        elapsed = time.perf_counter() - self.started
        decode_seconds = max(elapsed - self.prompt_seconds, 1e-9)
        first = self.first_text_at
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.produced,
            stop_reason=self.stop_reason.value,
            details={
                "prefill_mode": self.settings.prefill_mode,
                "healed": self.healed.decode("utf-8", errors="replace"),
                **({"prefill_tokens": self.prefill_tokens}
                   if self.prefill_tokens is not None else {}),
                **self.details,
                "forward_passes": self.forward_passes,
                "prompt_seconds": round(self.prompt_seconds, 4),
                "first_text_seconds": (
                    round(first - self.started, 4) if first is not None else None
                ),
                "decode_tokens_per_second": round(
                    max(self.produced - 1, 0) / decode_seconds, 2),
                "device": self.backend.device,
                **({"forced_tokens": self.forced_tokens}
                   if self.constraint is not None else {}),
                # The budget was nearly spent: the constraint closed the JSON value.
                **({"closed_by_budget": self.closed_tokens} if self.closed_tokens else {}),
                # Speculative decoding: tokens the draft proposed, and those kept.
                **({"draft_tokens": self.speculation.proposed,
                    "draft_accepted": self.speculation.accepted}
                   if self.speculation is not None and self.speculation.proposed else {}),
                # Prompt positions a kept prefix gave (llmcli_local.lean.prefix), as OpenAI
                # names them.
                **({"cached_tokens": self.cache.cached} if self.cache.cached else {}),
            },
        )


def generate(backend: Backend[Any], messages: Messages, prefill: str,
             settings: GenerationSettings) -> Generator[str | Usage, None, None]:
    """Yield the continuation of ``prefill`` (text only: the core prepends the prefill),
    then a Usage."""
    started = time.perf_counter()
    sequence = start(backend, prepare(backend, messages, prefill, settings), settings, started)
    try:
        while True:
            # Where a grammar leaves one way on, those tokens go with this one in one pass.
            run, text = sequence.advance_run(sequence.choose())
            if text:
                yield text
            if sequence.done:
                break
            if len(run) > 1:
                sequence.step_run(run)
                continue
            # One token: a step, or a speculative round where the policy finds it pays
            # (the text of the proposals kept; ``done`` may then be set).
            row = speculation.Row(sequence, run[0])
            speculation.step(sequence.backend, [row])
            if row.text:
                yield row.text
            if sequence.done:
                break
    finally:
        sequence.release_draft()
    tail = sequence.finish()
    if tail:
        yield tail
    yield sequence.usage()
