"""Speculative decoding as a decision of each step, per sequence, beside batching.

A step of the decode loop (:func:`llmcli_local.decode.generate`, one sequence) or of the
scheduler (:mod:`llmcli_local.scheduler`, every running sequence) goes through
:func:`step`, in the order of vLLM's v1 scheduler, which decides a step and then applies
its output:

1. **decide** (:class:`Policy`): which rows speculate, and how many draft tokens each
   proposes. A row may (:func:`eligible`) where its backend drafts, its choice is greedy
   and free (no grammar, no prefill bytes owed) and the call asked for it
   (``GenerationSettings.speculative``). The policy weighs what the step would cost with
   and without proposals (:class:`~llmcli_local.backend.SpeculationCosts`, the backend's
   measured pass costs) against the tokens each row is expected to keep (its own running
   acceptance rate): a row whose draft keeps failing stops paying for proposals, a batch
   whose pass is already compute-bound speculates fewer tokens per row.
2. **propose**: the draft proposes for every speculating row. A model draft
   (:mod:`llmcli_local.lean.draft`, the int4 weights of a full-precision model) catches
   each row up on what it has not seen, then steps all of them together (one
   ``step_batch`` per proposal); a lookup draft (quantized weights, whose own step is too
   cheap for any model draft to pay: measured in docs/benchmarks.md) copies what followed
   the last few tokens where they occurred before in the sequence, for free.
3. **run**: one forward pass. Without proposals, a lone row takes the backend's ``step``
   (bit for bit the plain loop) and several one ``step_batch``; with any, every row's
   tokens go through one ``verify_batch`` pass (the row's token, then its proposals).
4. **apply**: each row takes its token, then each proposal while it is the model's own
   argmax; the first that is not ends the row's round (the model's choice there is the next
   token), and its cache forgets the rest. So greedy text is the model's own, whatever the
   draft proposes.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from llmcli_local.backend import (
    Backend,
    BatchStep,
    Cache,
    Draft,
    Drafting,
    SpeculationCosts,
    common_prefix,
)

if TYPE_CHECKING:
    from llmcli_local.decode import Decoding

__all__ = ["CALIBRATE", "DRAFT_CATCH_UP", "DRAFT_MAX", "DRAFT_REPAY", "DRAFT_START",
           "LOOKUP", "LOOKUP_NGRAM", "MODEL", "Calibration", "Policy", "Row", "Speculation",
           "calibration", "eligible", "expected", "lookup", "step"]

log = logging.getLogger(__name__)

#: A row's first round proposes this many tokens; a round the model takes whole proposes
#: two more next time (up to DRAFT_MAX), one it does not, one more than it kept.
DRAFT_START = 4
DRAFT_MAX = 8
#: A model draft catches up on at most this many tokens at once while the reply is short:
#: more (a long prompt the draft has not seen) waits until the reply has a token for every
#: DRAFT_REPAY of them (a catch-up pass costs about 1/DRAFT_REPAY of a step per token, and
#: speculation saves about half a step per token).
DRAFT_CATCH_UP = 64
DRAFT_REPAY = 16
#: A lookup draft matches the last LOOKUP_NGRAM tokens (down to 1) against the sequence.
LOOKUP_NGRAM = 3
#: A row's acceptance rate starts here (about what SmolLM2's int4 draft keeps on ordinary
#: text: 17 of 20 proposals on a list, about half on a haiku) and follows each round's
#: outcome with this weight.
START_RATE = 0.7
#: A lookup's rate starts lower: a repeated n-gram is a weaker sign than a model's guess.
LOOKUP_START_RATE = 0.4
RATE_WEIGHT = 0.3
#: A row that could speculate but did not drifts back towards its start rates by this
#: weight a step, so that a draft that failed on one stretch of text is tried again on a
#: later one.
RECOVER = 0.02
#: In a step of several rows, a model draft proposes only when at most this many of the
#: row's positions are missing from its cache (:func:`_current`).
CURRENT = 2
#: Where a row's proposals come from.
MODEL, LOOKUP = "model", "lookup"
#: Calibrate the cost fits while running (:class:`Calibration`); tests of the mechanism
#: turn it off, so that what a step does does not depend on how long it took.
CALIBRATE = True
#: The weight of each measurement in its running estimate.
CALIBRATION_WEIGHT = 0.2
#: A kind of step (one row, several) takes the fits' word until its proposals' passes were
#: timed this many times: until then it speculates as the fits say (a lone row: always).
CALIBRATION_ROUNDS = 4
#: Of the steps that would speculate, one in this many steps plainly, so that the plain
#: step's time (the unit every cost is weighed in) stays measured.
REMEASURE = 32
#: Each plain step taken while rows could have speculated moves the measured scales back
#: towards the fits by this weight, so that a spell of load that made proposals look dear
#: does not stop speculation for good.
CALIBRATION_RECOVER = 0.02


@dataclass
class Calibration:
    """What one backend's passes cost on this machine, as it runs: seconds per unit of the
    fits (:class:`~llmcli_local.backend.SpeculationCosts`, measured elsewhere and for one
    model) from its plain steps, and for one row and for several, how much dearer (or
    cheaper) than the fits say its verification passes and its draft's steps are.

    The fits were measured on one CPU, with one model, one thread count and one load; a
    user's machine differs (two threads against one: the draft's int4 kernel gains less
    than the full-precision step from the second thread; other processes; a GPU). The
    policy weighs proposals with the fits times these scales, so speculation stops where it
    costs more time than it saves, and goes on where it pays."""

    clock: Callable[[], float] = time.perf_counter
    #: Seconds per unit of the fits (a one-row plain step is 1), from the plain steps of a
    #: lone row (True) and of several (False): each kind's proposals are weighed against its
    #: own plain step, whose cost the fits may get wrong by row count (8 rows' step on two
    #: threads is dearer than they say, which would make every pass of 8 rows look cheap).
    unit: dict[bool, float | None] = field(default_factory=lambda: {True: None, False: None})
    #: Measured over modelled cost of verification passes and of the draft's steps, for a
    #: lone row (True) and for several (False).
    verify: dict[bool, float] = field(default_factory=lambda: {True: 1.0, False: 1.0})
    draft: dict[bool, float] = field(default_factory=lambda: {True: 1.0, False: 1.0})
    #: Timed rounds with proposals, per kind.
    rounds: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    #: Steps with proposals since the last plain one, per kind.
    since_plain: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})

    def calibrated(self, lone: bool) -> bool:
        """Whether steps of this kind weigh proposals with measured costs yet."""
        return self.unit[lone] is not None and self.rounds[lone] >= CALIBRATION_ROUNDS

    def costs(self, fits: SpeculationCosts, lone: bool) -> SpeculationCosts:
        """``fits`` as measured here (``fits`` itself until :meth:`calibrated`)."""
        if not self.calibrated(lone):
            return fits
        return fits.scaled(self.verify[lone], self.draft[lone])

    def must_step_plainly(self, lone: bool) -> bool:
        """Whether this step, which would speculate, steps plainly to time the unit."""
        return self.unit[lone] is None or self.since_plain[lone] >= REMEASURE

    def plain(self, lone: bool, seconds: float, units: float, could_speculate: bool) -> None:
        """A plain step of ``units`` (the fits' ``step(rows)``) took ``seconds``."""
        self.since_plain[lone] = 0
        self.unit[lone] = _follow(self.unit[lone], seconds / units)
        if could_speculate:
            for scales in (self.verify, self.draft):
                for lone, scale in scales.items():
                    scales[lone] = scale + CALIBRATION_RECOVER * (1.0 - scale)

    def speculated(self, lone: bool, verify: tuple[float, float],
                   draft: tuple[float, float] | None) -> None:
        """A step with proposals: its pass took ``verify[0]`` seconds for ``verify[1]``
        units of the fits, its draft ``draft[0]`` for ``draft[1]`` (None: a lookup)."""
        self.since_plain[lone] += 1
        unit = self.unit[lone]
        if unit is None:
            return
        self.rounds[lone] += 1
        seconds, units = verify
        self.verify[lone] = _follow(self.verify[lone], seconds / (units * unit))
        if draft is not None and draft[1] > 0:
            seconds, units = draft
            self.draft[lone] = _follow(self.draft[lone], seconds / (units * unit))


def _follow(estimate: float | None, measured: float) -> float:
    if estimate is None:
        return measured
    return estimate + CALIBRATION_WEIGHT * (measured - estimate)


#: Each drafting backend's calibration by the backend's id, for as long as the backend
#: lives (backends are dataclasses, compared by value, so not hashable; variants of one
#: loaded model are backends of their own: their weights differ, and so do their costs).
_calibrations: dict[int, Calibration] = {}


def calibration(backend: Drafting[Any]) -> Calibration:
    """``backend``'s :class:`Calibration` (one per backend, kept across calls)."""
    key = id(backend)
    found = _calibrations.get(key)
    if found is None:
        found = _calibrations[key] = Calibration()
        weakref.finalize(backend, _calibrations.pop, key, None)
    return found


@dataclass
class Speculation:
    """One sequence's speculative state: its model draft (None: lookup only) and that
    draft's cache, how many tokens to propose next, the running acceptance rate of each
    source of proposals (the model draft's, the lookup's), and how many tokens were proposed
    and kept (usage: ``draft_tokens``, ``draft_accepted``)."""

    draft: Draft[Any] | None
    cache: Cache | None = None
    next: int = DRAFT_START
    rate: float = START_RATE
    lookup_rate: float = LOOKUP_START_RATE
    proposed: int = 0
    accepted: int = 0

    def kept(self, proposed: int, kept: int, source: str) -> None:
        """A round's outcome: ``kept`` of ``proposed`` proposals from ``source`` taken."""
        self.proposed += proposed
        self.accepted += kept
        # Proposals are taken in order until one fails: kept successes, then one failure
        # unless all were taken.
        observed = kept / (kept + (kept < proposed))
        if source == MODEL:
            self.rate += RATE_WEIGHT * (observed - self.rate)
            # Propose more after a round the model took whole, fewer after one it did not.
            self.next = min(self.next + 2, DRAFT_MAX) if kept == proposed else max(1, kept + 1)
        else:
            self.lookup_rate += RATE_WEIGHT * (observed - self.lookup_rate)

    def idle(self) -> None:
        """It could have speculated and did not: each rate drifts back towards the start."""
        self.rate += RECOVER * (START_RATE - self.rate)
        self.lookup_rate += RECOVER * (LOOKUP_START_RATE - self.lookup_rate)

    def release(self) -> None:
        """The sequence has ended: a model draft's cache is kept for a prompt that starts
        the same (as the model's own, ``LeanBackend.release``)."""
        if self.draft is not None and self.cache is not None:
            self.draft.release(self.cache)
            self.cache = None


def eligible(sequence: Decoding) -> bool:
    """Whether ``sequence`` may speculate this step: it has a draft, nothing but the argmax
    chooses its next tokens (greedy, no grammar, the prefill's bytes settled), and it has
    room for a proposal (budget and cache)."""
    spec, cache = sequence.speculation, sequence.cache
    return (spec is not None and sequence.settings.temperature <= 0
            and sequence.constraint is None and not sequence.pending and not sequence.done
            and cache.capacity is not None and _room(sequence) >= 1)


def _room(sequence: Decoding) -> int:
    cache = sequence.cache
    capacity = cache.capacity if cache.capacity is not None else 0
    return min(sequence.budget - sequence.produced, capacity - cache.position - 1)


def lookup(ids: Sequence[int], count: int, ngram: int = LOOKUP_NGRAM) -> list[int]:
    """Prompt-lookup drafting: ``count`` tokens that followed the latest earlier occurrence
    of ``ids``' last ``ngram`` tokens (of fewer where none of that length occurs, down to
    one token), the copy running on into its own proposals where it reaches the end (a
    repeating pattern repeats); none where nothing matches."""
    end = len(ids)
    if end < 2:
        return []
    last, source, matched = ids[-1], -1, 0
    # From the latest earlier occurrence of the last token back: the first that matches the
    # most of the last ``ngram`` tokens (one step over the ids, every step of the loop).
    for at in range(end - 2, -1, -1):
        if ids[at] != last:
            continue
        size = 1
        while size < ngram and at - size >= 0 and ids[at - size] == ids[end - 1 - size]:
            size += 1
        if size > matched:
            source, matched = at + 1, size
            if size == ngram:
                break
    if not matched:
        return []
    copied = list(ids)
    for offset in range(count):
        copied.append(copied[source + offset])
    return copied[end:]


def expected(rate: float, proposals: int) -> float:
    """Tokens a round is expected to keep: its own token, then each proposal while every
    one before it was taken (each with probability ``rate``)."""
    if rate >= 1.0:
        return proposals + 1.0
    return (1.0 - rate ** (proposals + 1)) / (1.0 - rate)


@dataclass(eq=False)
class Row:
    """One sequence in a step: the token it chose (taken already), what a lookup found
    after it, and once decided the proposals it checks (``count`` of them at most, from
    ``source``); ``text`` is the text of the proposals it kept."""

    sequence: Decoding
    token: int
    found: list[int] = field(default_factory=list)
    proposals: list[int] = field(default_factory=list)
    count: int = 0
    source: str = ""
    text: str = ""


@dataclass
class Policy:
    """Which rows speculate, and how far: the choice that gives the most tokens per unit
    of cost, where a step's cost is the backend's
    :class:`~llmcli_local.backend.SpeculationCosts` of its pass and of the draft's steps,
    and a row's tokens are :func:`expected` at its source's acceptance rate. It weighs, for
    ``k`` from 1 to DRAFT_MAX, the ``j`` rows with the best rate speculating ``k`` tokens each,
    from the model draft (paying its steps) or from the lookup (free, where it found
    something), against the plain step. Observed by tests and benchmarks: steps taken with
    and without proposals."""

    speculated: int = 0
    plain: int = 0

    def decide(self, rows: Sequence[Row], costs: SpeculationCosts,
               measured: bool = False) -> None:
        """Set ``count`` and ``source`` of each row (``count`` 0: it steps plainly).
        ``measured``: ``costs`` are this machine's (:class:`Calibration`), not the fits."""
        for row in rows:
            row.count, row.source = 0, ""
        candidates = [r for r in rows if eligible(r.sequence)]
        if not candidates:
            return
        n = len(rows)
        if n == 1 and _limit(rows[0], DRAFT_MAX, MODEL):
            # A lone row with a model draft proposes its adaptive count (4 first, two more
            # after a round taken whole, one more than kept after one that was not): what
            # the cost fits would choose gained less (1.40x the plain loop against 1.99x,
            # docs/benchmarks.md): they under-state how little a lone row's pass costs.
            # Once its costs are measured here, only while that count pays: on a machine
            # where the draft is dear, or on text it guesses badly, the row steps plainly
            # (or takes a lookup's proposals, below).
            row = rows[0]
            count = _limit(row, DRAFT_MAX, MODEL)
            if not measured or _pays(row, count, costs):
                row.count, row.source = count, MODEL
                return
        best_rate = n / costs.step(n) * (1 + costs.margin)
        best: tuple[str, list[Row], int] | None = None
        for source in (MODEL, LOOKUP):
            limits = [(r, _limit(r, DRAFT_MAX, source), _rate(r, source)) for r in candidates
                      if source == LOOKUP or _current(r)]
            ranked = sorted((c for c in limits if c[1]), key=lambda c: c[2], reverse=True)
            for j in range(1, len(ranked) + 1):
                top = ranked[:j]
                for k in range(1, max(c[1] for c in top) + 1):
                    counts = [min(k, c[1]) for c in top]
                    tokens = n - j + sum(expected(c[2], m)
                                         for c, m in zip(top, counts, strict=True))
                    cost = costs.verify(n, n + sum(counts))
                    if source == MODEL:
                        cost += max(counts) * costs.draft(j)
                    if tokens / cost > best_rate:
                        best_rate, best = tokens / cost, (source, [c[0] for c in top], k)
        if best is not None:
            source, chosen, k = best
            for row in chosen:
                row.count, row.source = _limit(row, k, source), source
        for row in candidates:
            if not row.count:
                spec = row.sequence.speculation
                assert spec is not None
                spec.idle()


def _pays(row: Row, count: int, costs: SpeculationCosts) -> bool:
    """Whether a lone row's ``count`` proposals from its model draft are expected to give
    more tokens per unit of time than its plain step."""
    spec = row.sequence.speculation
    assert spec is not None
    cost = costs.verify(1, 1 + count) + count * costs.draft(1)
    return expected(spec.rate, count) / cost > 1 + costs.margin


def _current(row: Row) -> bool:
    """Whether ``row``'s model draft has seen all but the last couple of its tokens: in a
    step of several rows only such a draft proposes. A draft that is further behind would
    first catch up in a pass of its own (the prompt and the reply so far), which the cost
    fits leave out; with it, 8 calls' tails measured slower (docs/benchmarks.md)."""
    spec = row.sequence.speculation
    assert spec is not None
    held = spec.cache
    return held is not None and row.sequence.cache.position - held.position <= CURRENT


def _rate(row: Row, source: str) -> float:
    spec = row.sequence.speculation
    assert spec is not None
    return spec.rate if source == MODEL else spec.lookup_rate


def _limit(row: Row, k: int, source: str) -> int:
    """At most ``k`` proposals for ``row`` from ``source``: none where it has no such source,
    else its room, and the model draft's adaptive count or what the lookup found."""
    spec = row.sequence.speculation
    assert spec is not None
    limit = min(k, _room(row.sequence))
    if source == MODEL:
        return min(limit, spec.next) if spec.draft is not None else 0
    return min(limit, len(row.found))


def step(backend: Backend[Any], rows: Sequence[Row], policy: Policy | None = None,
         single: bool = False) -> None:
    """One step of ``rows``, each of which has taken its token: decide, propose, run one
    forward pass, apply (the module's description). Each row's sequence has its next logits
    after; ``row.text`` holds the text of the proposals it kept (``done`` may be set).
    ``single``: a lone row steps through ``step_batch`` too (a CUDA graph of one row)."""
    policy = policy if policy is not None else Policy()
    drafting = backend if isinstance(backend, Drafting) else None
    if drafting is None:
        policy.plain += 1
        with torch.inference_mode():
            _plain(backend, rows, single)
        return
    lone = len(rows) == 1
    fits = drafting.speculation_costs
    measure = calibration(drafting) if CALIBRATE else None
    could = False
    for row in rows:  # a lookup costs nothing: what it finds first, then the decision
        if eligible(row.sequence):
            could = True
            row.found = lookup([*row.sequence.cache.ids, row.token], DRAFT_MAX)
    if measure is None:
        policy.decide(rows, fits)
    else:
        policy.decide(rows, measure.costs(fits, lone), measured=measure.calibrated(lone))
        if any(row.count for row in rows) and measure.must_step_plainly(lone):
            for row in rows:
                row.count, row.source = 0, ""
    clock = measure.clock if measure is not None else time.perf_counter
    began = clock()
    drafted = [r for r in rows if r.count and r.source == MODEL]
    _propose(drafted)
    for row in rows:
        if row.count and row.source == LOOKUP:
            row.proposals = row.found[:row.count]
    proposed = clock()
    with torch.inference_mode():
        if not any(row.proposals for row in rows):
            policy.plain += 1
            logits = _plain(backend, rows, single)
            if measure is not None:
                _synchronize(logits)
                measure.plain(lone, clock() - proposed, fits.step(len(rows)), could)
            return
        policy.speculated += 1
        runs = [[row.token, *row.proposals] for row in rows]
        outputs = drafting.verify_batch([row.sequence.cache for row in rows], runs)
        if measure is not None:
            _synchronize(outputs[-1])
            verified = clock()
            draft = None
            if drafted:
                steps = max(len(r.proposals) for r in drafted)
                draft = (proposed - began, steps * fits.draft(len(drafted)))
            measure.speculated(lone, (verified - proposed,
                                            fits.verify(len(rows), sum(map(len, runs)))), draft)
        for row, logits in zip(rows, outputs, strict=True):
            _apply(backend, row, logits)


def _synchronize(tensor: torch.Tensor) -> None:
    """Wait for ``tensor``'s kernels (a GPU runs them after the call returns), so that a
    timed pass is the pass."""
    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)


def _plain(backend: Backend[Any], rows: Sequence[Row], single: bool) -> torch.Tensor:
    """One step of ``rows`` without proposals; the logits it gave."""
    if len(rows) == 1 and not single:
        # One row: the unbatched step, so a lone call is exactly the plain loop's.
        row = rows[0]
        logits = backend.step(row.sequence.cache, row.token)
        row.sequence.stepped(logits)
        return logits
    assert isinstance(backend, BatchStep)
    logits = backend.step_batch([row.sequence.cache for row in rows],
                                [row.token for row in rows])
    for index, row in enumerate(rows):
        row.sequence.stepped(logits[index])
    return logits


def _apply(backend: Backend[Any], row: Row, logits: torch.Tensor) -> None:
    """Keep each proposal of ``row`` while it is the model's argmax at its position."""
    sequence = row.sequence
    spec = sequence.speculation
    sequence.forward_passes += 1
    if not row.proposals or spec is None:
        sequence.logits = logits[0]
        return
    cache = sequence.cache
    start = cache.position - len(row.proposals) - 1
    kept = 0
    for index, proposal in enumerate(row.proposals):
        if int(torch.argmax(logits[index])) != proposal:
            break
        kept += 1
        row.text += sequence.advance(proposal)
        if sequence.done:
            break
    spec.kept(len(row.proposals), kept, row.source)
    backend.truncate(cache, start + 1 + kept)
    sequence.logits = logits[kept]


def _propose(rows: Sequence[Row]) -> None:
    """A model draft's proposals for ``rows`` (each ``count`` of them at most, fewer where
    it proposes an end of turn): each row's draft cache catches up on what it has not seen
    (the prompt, on its first round; the model's choice that ended its last round) in one
    pass, then the rows step together. A row whose catch-up is too long to repay yet
    proposes nothing (its ``count`` becomes 0)."""
    if not rows:
        return
    pending: list[tuple[Row, Draft[Any], Cache, torch.Tensor]] = []
    with torch.inference_mode():
        for row in rows:
            caught = _catch_up(row)
            if caught is None:
                row.count = 0
                continue
            pending.append((row, *caught))
        while pending:
            going: list[tuple[Row, Draft[Any], Cache]] = []
            for row, draft, cache, logits in pending:
                proposal = int(torch.argmax(logits))
                row.proposals.append(proposal)
                if len(row.proposals) < row.count \
                        and proposal not in row.sequence.backend.eos_ids:
                    going.append((row, draft, cache))
            pending = []
            # The rows of one draft step together (a backend's variants share one draft).
            for draft in {id(d): d for _, d, _ in going}.values():
                group = [(r, c) for r, d, c in going if d is draft]
                if len(group) == 1:
                    row, cache = group[0]
                    pending.append((row, draft, cache, draft.step(cache, row.proposals[-1])))
                    continue
                stepped = draft.step_batch([c for _, c in group],
                                           [r.proposals[-1] for r, _ in group])
                pending.extend((row, draft, cache, stepped[i])
                               for i, (row, cache) in enumerate(group))


def _catch_up(row: Row) -> tuple[Draft[Any], Cache, torch.Tensor] | None:
    """The row's draft cache, made to hold the sequence and its token but the last, and the
    draft's logits after them; None: a catch-up too long for the reply so far."""
    sequence = row.sequence
    spec = sequence.speculation
    assert spec is not None and spec.draft is not None
    draft = spec.draft
    ids = [*sequence.cache.ids, row.token]
    held = spec.cache
    if held is not None:
        common = min(common_prefix(held.ids, ids), len(ids) - 1)
    else:  # what the draft kept of an earlier call that started the same
        kept = draft.prefixes
        common = min(kept.longest(ids), len(ids) - 1) if kept is not None else 0
    missing = len(ids) - common
    if missing > DRAFT_CATCH_UP and sequence.produced * DRAFT_REPAY < missing:
        return None
    capacity = sequence.cache.capacity
    assert capacity is not None
    if held is None:
        logits, held = draft.prompt(ids, capacity)
        spec.cache = held
        return draft, held, logits
    draft.truncate(held, common)
    scores = draft.extend(held, ids[common:])
    return draft, held, scores.full(len(scores) - 1)
