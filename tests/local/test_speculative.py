"""Speculative decoding (``-o speculative``, :mod:`llmcli_local.lean.draft`): a draft
proposes tokens, one pass of the model checks them; under greedy decoding the text is the
model's own, whatever the draft proposes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from llmcli_local.config import RuntimeConfig

from tests.local.conftest import configured, without_eos
from tests.local.test_scheduler import CALLS, _batched, _messages, _settings

PROMPTS = [("Hi", "def quicksor"), ("Give me a URL please", "The URL is http:"),
           ("Say something", ""), ("Héllo", "naïve caf"), ("Emoji", "Emoji 🙂")]


def _run(backend: Any, text: str, prefill: str, **settings: Any) -> tuple[str, Any]:
    from llmcli_local.decode import generate

    chunks = list(generate(backend, _messages(text), prefill, _settings(**settings)))
    return "".join(c for c in chunks if isinstance(c, str)), chunks[-1]


def _with_draft(backend: Any, draft: Any) -> Any:
    return dataclasses.replace(backend, draft=draft)


def _cheap_draft(backend: Any) -> Any:
    """``backend`` on a machine whose draft steps cost little beside a verification pass (a
    GPU's, say): there several rows' proposals pay, where on the 2-core CPU the fits were
    measured on they almost never do (``lean/draft.py``)."""
    from llmcli_local.backend import SpeculationCosts

    return dataclasses.replace(backend, speculation_costs=SpeculationCosts(
        step_base=1.0, step_per_row=0.03, verify_base=0.75, verify_per_row=0.05,
        verify_per_token=0.02, draft_base=0.15, draft_per_row=0.059))


def _perfect(backend: Any) -> Any:
    """A draft that is the model itself: the model agrees with every proposal."""
    return dataclasses.replace(backend, prefixes=None, draft=None)


class _Cache:
    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)

    @property
    def position(self) -> int:
        return len(self.ids)


class _Scores:
    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def full(self, row: int) -> Any:
        return self.rows[row]


class _Garbage:
    """A draft that proposes seeded random tokens (the model takes almost none of them);
    it counts the calls it gets and the caches it is given back."""

    prefixes = None

    def __init__(self, vocab: int) -> None:
        import torch

        self.vocab = vocab
        self.generator = torch.Generator().manual_seed(7)
        self.released: list[_Cache] = []
        self.calls = 0

    def _logits(self, rows: int) -> Any:
        import torch

        self.calls += 1
        return torch.randn((rows, self.vocab), generator=self.generator)

    def prompt(self, ids: list[int], capacity: int) -> tuple[Any, _Cache]:
        return self._logits(1)[0], _Cache(ids)

    def extend(self, cache: _Cache, ids: list[int]) -> _Scores:
        cache.ids.extend(ids)
        return _Scores(self._logits(len(ids)))

    def step(self, cache: _Cache, token: int) -> Any:
        cache.ids.append(token)
        return self._logits(1)[0]

    def step_batch(self, caches: list[_Cache], tokens: list[int]) -> Any:
        for cache, token in zip(caches, tokens, strict=True):
            cache.ids.append(token)
        return self._logits(len(caches))

    def truncate(self, cache: _Cache, length: int) -> None:
        del cache.ids[length:]

    def release(self, cache: _Cache) -> None:
        self.released.append(cache)


@pytest.mark.parametrize(("text", "prefill"), PROMPTS)
def test_a_draft_the_model_agrees_with_gives_the_same_text_in_fewer_passes(
        tiny: Any, text: str, prefill: str) -> None:
    model = without_eos(tiny)
    want, plain = _run(model, text, prefill, max_tokens=40, speculative=False)
    got, usage = _run(_with_draft(model, _perfect(model)), text, prefill, max_tokens=40)
    assert got == want
    assert usage.output_tokens == plain.output_tokens == 40
    details = usage.details
    assert details["draft_accepted"] == details["draft_tokens"] > 0
    # Rounds of up to 4, 6 and then 8 proposals (the policy's choice): a pass takes up to
    # 9 tokens.
    assert details["forward_passes"] < plain.details["forward_passes"] // 2
    assert "draft_tokens" not in plain.details


@pytest.fixture
def model_draft_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proposals from the model draft alone: the lookup finds nothing (the tiny model's
    loops would otherwise give it most rounds)."""
    from llmcli_local import speculation

    monkeypatch.setattr(speculation, "lookup", lambda ids, count: [])


@pytest.mark.parametrize(("text", "prefill"), PROMPTS)
@pytest.mark.usefixtures("model_draft_only")
def test_a_draft_the_model_disagrees_with_changes_nothing(tiny: Any, text: str,
                                                          prefill: str) -> None:
    model = without_eos(tiny)
    want, plain = _run(model, text, prefill, max_tokens=40, speculative=False)
    garbage = _Garbage(len(model.vocab.token_bytes))
    got, usage = _run(_with_draft(model, garbage), text, prefill, max_tokens=40)
    assert got == want
    assert usage.output_tokens == 40
    assert usage.details["draft_tokens"] > usage.details["draft_accepted"]
    # A round is one pass of the model: the token it was given, plus what it kept.
    assert usage.details["forward_passes"] == \
        plain.details["forward_passes"] - usage.details["draft_accepted"]
    assert len(garbage.released) == 1  # its cache, given back when the reply ended


def test_speculative_off_never_asks_the_draft(tiny: Any) -> None:
    garbage = _Garbage(len(tiny.vocab.token_bytes))
    want, _ = _run(tiny, "Hi", "def ", max_tokens=20)
    got, usage = _run(_with_draft(tiny, garbage), "Hi", "def ", max_tokens=20,
                      speculative=False)
    assert got == want and garbage.calls == 0 and "draft_tokens" not in usage.details


def test_sampling_and_grammars_do_not_speculate(tiny: Any) -> None:
    """A draft's greedy proposals say nothing of a sampled token; a grammar chooses among
    its own tokens."""
    from llmcli_local import grammar

    garbage = _Garbage(len(tiny.vocab.token_bytes))
    model = _with_draft(tiny, garbage)
    _run(model, "Hi", "", max_tokens=20, temperature=0.8, seed=3)
    text, _ = _run(model, "Hi", "", max_tokens=20,
                   grammar=grammar.from_text('start: "A" /[0-9]{3}/ "."'))
    assert text[0] == "A" and text.endswith(".")
    assert garbage.calls == 0


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 9, 17])
def test_max_tokens_ends_a_round_exactly(tiny: Any, max_tokens: int) -> None:
    model = without_eos(tiny)
    want, _ = _run(model, "Say something", "", max_tokens=max_tokens, speculative=False)
    got, usage = _run(_with_draft(model, _perfect(model)), "Say something", "",
                      max_tokens=max_tokens)
    assert got == want and usage.output_tokens == max_tokens


def test_a_stop_sequence_inside_a_round(tiny: Any) -> None:
    model = without_eos(tiny)
    full, _ = _run(model, "Say something", "", max_tokens=40, speculative=False)
    stop = full[12:15]  # text well inside a round of proposals
    want, plain = _run(model, "Say something", "", max_tokens=40, stop=[stop],
                       speculative=False)
    got, usage = _run(_with_draft(model, _perfect(model)), "Say something", "",
                      max_tokens=40, stop=[stop])
    assert got == want == full[:full.index(stop)]
    assert usage.stop_reason == plain.stop_reason == "stop_sequence"
    assert usage.output_tokens == plain.output_tokens


def test_an_end_of_turn_proposed_and_taken_ends_the_reply(tiny: Any) -> None:
    """With the end-of-turn ids kept: the reply ends where the model's own greedy one does,
    with the same stop reason, for every prompt (some end the turn, some run out)."""
    for text, prefill in PROMPTS:
        want, plain = _run(tiny, text, prefill, max_tokens=60, speculative=False)
        got, usage = _run(_with_draft(tiny, _perfect(tiny)), text, prefill, max_tokens=60)
        assert (got, usage.stop_reason, usage.output_tokens) == \
            (want, plain.stop_reason, plain.output_tokens)


def test_batched_calls_with_a_draft_keep_their_texts(tiny: Any) -> None:
    """Through the scheduler: sequences step together while several run and speculate
    once alone (their draft catching up on the steps it missed); each text is its own."""
    model = without_eos(tiny)
    alone = [_run(model, text, prefill, speculative=False, **settings)[0]
             for text, prefill, settings in CALLS]
    results, scheduler = _batched(_with_draft(model, _perfect(model)), CALLS)
    assert [text for text, _ in results] == alone
    assert scheduler.peak_batch == len(CALLS)
    # The longest call ran alone at the end, and speculated there.
    longest = max(range(len(CALLS)), key=lambda i: CALLS[i][2]["max_tokens"])
    assert results[longest][1].details.get("draft_accepted", 0) > 0


def test_the_draft_loads_by_size_or_when_asked(tiny_model_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto``: no draft for a model this small (its quantized step would cost what its own
    does); ``LLMCLI_LOCAL_DRAFT=int4``: the int4 draft, sharing the model's embeddings;
    ``none``: none."""
    from llmcli_local import loader
    from llmcli_local.lean.quant import Int4Weight

    from tests.local.conftest import load

    def fresh(value: str | None) -> Any:
        loader.unload_all()
        if value is None:
            monkeypatch.delenv("LLMCLI_LOCAL_DRAFT", raising=False)
        else:
            monkeypatch.setenv("LLMCLI_LOCAL_DRAFT", value)
        return load(tiny_model_dir, draft=RuntimeConfig.build().draft)

    try:
        assert fresh(None).draft is None
        assert fresh("none").draft is None
        model = fresh("int4")
        draft = model.draft
        assert draft is not None and draft.draft is None and draft.static is None
        assert isinstance(draft.decoder.weights.layers[0].qkv, Int4Weight)
        assert draft.decoder.weights.embed.data_ptr() == model.decoder.weights.embed.data_ptr()
        want, _ = _run(without_eos(model), "Hi", "def ", max_tokens=30, speculative=False)
        got, usage = _run(without_eos(model), "Hi", "def ", max_tokens=30)
        assert got == want and usage.details["draft_tokens"] > 0
        # The model's own weights stay full precision, apart.
        layer = model.decoder.weights.layers[0]
        assert layer.qkv is None and not isinstance(layer.q, Int4Weight)
    finally:
        loader.unload_all()


@pytest.mark.slow
def test_smollm2_speculates_by_default_and_its_text_is_its_own(smollm2: Any) -> None:
    """The default local model on CPU: an int4 draft is loaded, a greedy reply takes most
    of its proposals, and every text is the one decoding one step per token gives."""
    from llmcli_local import loader

    backend = loader.load(smollm2.source(), configured(device="cpu"))
    assert backend.draft is not None
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("Name three US states.", "1.", {"max_tokens": 40}),
        ("Give a JSON array of 5 fruits. Reply with the JSON only.", '["', {"max_tokens": 40}),
        ("Write a haiku about rain.", "", {"max_tokens": 40}),
        ("Why is the sky blue?", "Because", {"max_tokens": 48, "stop": ["."]}),
        ("List the planets of the solar system.", "", {"max_tokens": 64}),
    ]
    accepted = 0
    for text, prefill, settings in cases:
        want, plain = _run(backend, text, prefill, speculative=False, **settings)
        got, usage = _run(backend, text, prefill, **settings)
        assert (got, usage.stop_reason) == (want, plain.stop_reason), text
        accepted += usage.details.get("draft_accepted", 0)
        if usage.output_tokens > 8:
            assert usage.details["forward_passes"] < plain.details["forward_passes"], text
    assert accepted > 60


def test_batched_rows_speculate_and_keep_their_texts(tiny: Any) -> None:
    """The scheduler decides per step which rows speculate: eight sequences stepping
    together each check the draft's proposals in one pass for all of them (``verify_batch``),
    and every text is the one each gets alone, one step per token."""
    model = without_eos(tiny)
    alone = [_run(model, text, prefill, speculative=False, **settings)[0]
             for text, prefill, settings in CALLS]
    results, scheduler = _batched(_cheap_draft(_with_draft(model, _perfect(model))), CALLS)
    assert [text for text, _ in results] == alone
    assert scheduler.peak_batch == len(CALLS)
    # Rounds with several rows' proposals in one pass happened, and every call took some.
    assert scheduler.policy.speculated > 0
    assert all(usage.details.get("draft_accepted", 0) > 0 for _, usage in results)
    assert max(usage.details["batch"] for _, usage in results) == len(CALLS)


@pytest.mark.usefixtures("model_draft_only")
def test_batched_rows_with_a_draft_the_model_disagrees_with(tiny: Any) -> None:
    """Noise from the draft, several rows at once: the texts are still the model's own, and
    the policy soon stops paying for proposals it keeps rejecting."""
    model = without_eos(tiny)
    # The first runs on alone at the end, where a lone row always takes its draft's round.
    calls = [(text, prefill, {**settings, "max_tokens": 45 if i == 0 else 30})
             for i, (text, prefill, settings) in enumerate(CALLS)]
    alone = [_run(model, text, prefill, speculative=False, **settings)[0]
             for text, prefill, settings in calls]
    garbage = _Garbage(len(model.vocab.token_bytes))
    results, scheduler = _batched(_cheap_draft(_with_draft(model, garbage)), calls)
    assert [text for text, _ in results] == alone
    proposed = sum(u.details.get("draft_tokens", 0) for _, u in results)
    assert 0 < proposed < 30 * len(calls) // 2
    assert results[0][1].details["draft_tokens"] > 0
    assert scheduler.policy.plain > scheduler.policy.speculated


def test_verify_batch_is_each_row_verified_alone(tiny: Any) -> None:
    """One pass over several sequences' runs gives each the logits its own pass gives (to
    float rounding) and leaves each cache as its own pass does."""
    import torch

    prompts = [tiny.encode(text) for text in ("Hello there", "A longer prompt than that one",
                                              "x")]
    runs = [[5, 9, 11], [7], [3, 4, 8, 2, 1]]
    alone = []
    for ids, run in zip(prompts, runs, strict=True):
        _, cache = tiny.prompt(ids, 40)
        alone.append((tiny.verify(cache, run), cache))
    caches = [tiny.prompt(ids, 40)[1] for ids in prompts]
    together = tiny.verify_batch(caches, runs)
    for (want, single), got, cache in zip(alone, together, caches, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-4)
        assert cache.ids == single.ids and cache.position == single.position
        # The next step after the pass is the same too: the K/V were written in place.
        assert torch.allclose(tiny.step(cache, 6), tiny.step(single, 6), atol=1e-4)


def test_lookup_proposes_what_followed_the_last_tokens() -> None:
    from llmcli_local.speculation import lookup

    assert lookup([1, 2, 3, 9, 9, 1, 2, 3], 3) == [9, 9, 1]
    assert lookup([5, 1, 2, 7, 8, 4, 2], 2) == [7, 8]  # a shorter match: the last token
    assert lookup([1, 2, 3, 4], 3) == []
    # A repeating pattern repeats past the end of what was seen.
    assert lookup([4, 4], 5) == [4, 4, 4, 4, 4]
    assert lookup([7, 1, 2, 1, 2], 4) == [1, 2, 1, 2]


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_quantized_model_speculates_by_lookup(tiny_model_dir: Path, scheme: str) -> None:
    """Quantized weights have no model draft (none undercuts their step): they draft by
    looking the last tokens up in the sequence, and their greedy text is their own."""
    from llmcli_local import loader

    from tests.local.conftest import load

    try:
        model = without_eos(load(tiny_model_dir, quantize=scheme))
        assert model.draft is None and model.lookup
        text = "Repeat: the cat sat on the mat, the cat sat on the mat, the cat sat on the"
        want, plain = _run(model, text, "", max_tokens=48, speculative=False)
        got, usage = _run(model, text, "", max_tokens=48)
        assert got == want
        assert usage.details["draft_tokens"] > 0 and usage.details["draft_accepted"] > 0
        assert usage.details["forward_passes"] < plain.details["forward_passes"]
        # Batched, through the scheduler: the same texts.
        calls = [(text, "", {"max_tokens": 32}), ("Hi", "def ", {"max_tokens": 24}),
                 ("Say something", "", {"max_tokens": 28})]
        alone = [_run(model, t, p, speculative=False, **s)[0] for t, p, s in calls]
        results, _ = _batched(model, calls)
        assert [t for t, _ in results] == alone
    finally:
        loader.unload_all()


def test_calibration_measures_the_passes_and_scales_the_fits() -> None:
    """The costs the policy weighs are the fits times what this machine measured: seconds
    per unit from plain steps, then how much dearer verification passes and draft steps
    are; until a kind of step has been timed a few times, the fits hold."""
    from llmcli_local.backend import SpeculationCosts
    from llmcli_local.speculation import CALIBRATION_ROUNDS, REMEASURE, Calibration

    fits = SpeculationCosts(step_base=1.0, step_per_row=0.03, verify_base=0.75,
                            verify_per_row=0.05, verify_per_token=0.02, draft_base=0.15,
                            draft_per_row=0.059)
    measure = Calibration()
    assert measure.must_step_plainly(True)  # nothing timed yet: the unit first
    measure.plain(True, 0.010, fits.step(1), could_speculate=True)
    assert measure.unit[True] == pytest.approx(0.010)
    assert not measure.must_step_plainly(True)
    # Several rows are weighed against their own plain step: one of 8 rows that took 3 one-row
    # steps' time where the fits say 1.24 gives them a unit of their own, not the lone one's.
    assert measure.must_step_plainly(False)
    measure.plain(False, 0.030, fits.step(8), could_speculate=True)
    assert measure.unit[False] == pytest.approx(0.030 / fits.step(8))
    assert measure.unit[True] == pytest.approx(0.010)
    verify = (2 * 0.010 * fits.verify(1, 5), fits.verify(1, 5))  # twice the fits
    draft = (3 * 0.010 * 4 * fits.draft(1), 4 * fits.draft(1))  # three times
    for _ in range(CALIBRATION_ROUNDS - 1):
        measure.speculated(True, verify, draft)
        assert measure.costs(fits, True) is fits
    measure.speculated(True, verify, draft)
    assert measure.calibrated(True) and not measure.calibrated(False)
    assert measure.costs(fits, False) is fits
    costs = measure.costs(fits, True)
    assert 1.5 < measure.verify[True] < 2 and 2 < measure.draft[True] < 3
    assert costs.verify(1, 5) == pytest.approx(fits.verify(1, 5) * measure.verify[True])
    assert costs.draft(1) == pytest.approx(fits.draft(1) * measure.draft[True])
    assert costs.step(1) == 1.0
    # The unit is timed again now and then, and scales drift back towards the fits while
    # the policy steps plainly.
    for _ in range(REMEASURE - CALIBRATION_ROUNDS):
        measure.speculated(True, verify, draft)
    assert measure.must_step_plainly(True)
    assert not measure.must_step_plainly(False)
    before = measure.draft[True]
    measure.plain(True, 0.010, fits.step(1), could_speculate=True)
    assert not measure.must_step_plainly(True)
    assert 1.0 < measure.draft[True] < before


@pytest.mark.parametrize(("draft_steps", "pays"), [(0.05, True), (5.0, False)])
@pytest.mark.usefixtures("model_draft_only")
def test_a_lone_row_speculates_while_its_measured_draft_pays(
        tiny: Any, monkeypatch: pytest.MonkeyPatch, draft_steps: float, pays: bool) -> None:
    """On a machine where the draft's step costs a twentieth of the model's, a lone call
    keeps speculating; where it costs five steps, the call soon steps plainly: speculation
    never costs a user time it does not save. The text is the model's own either way.
    (Time is a fake clock here: a plain step takes 1 s, a pass what the fits say, a draft
    step ``draft_steps`` seconds.)"""
    from llmcli_local import speculation

    monkeypatch.setattr(speculation, "CALIBRATE", True)
    model = without_eos(tiny)
    want, plain = _run(model, "Hi", "def quicksor", max_tokens=60, speculative=False)
    backend = _with_draft(model, _perfect(model))
    now = [0.0]
    speculation.calibration(backend).clock = lambda: now[0]
    fits = backend.speculation_costs
    step, verify_batch, propose = backend.step, backend.verify_batch, speculation._propose

    def timed_step(cache: Any, token: int) -> Any:
        now[0] += 1.0
        return step(cache, token)

    def timed_verify(caches: Any, runs: Any) -> Any:
        now[0] += fits.verify(len(runs), sum(map(len, runs)))
        return verify_batch(caches, runs)

    def timed_propose(rows: Any) -> None:
        propose(rows)
        now[0] += draft_steps * max((len(r.proposals) for r in rows), default=0)

    object.__setattr__(backend, "step", timed_step)
    object.__setattr__(backend, "verify_batch", timed_verify)
    monkeypatch.setattr(speculation, "_propose", timed_propose)
    got, usage = _run(backend, "Hi", "def quicksor", max_tokens=60)
    assert got == want
    details = usage.details
    assert details["draft_accepted"] == details["draft_tokens"] > 0
    timing = speculation.CALIBRATION_ROUNDS * speculation.DRAFT_MAX
    if pays:
        assert details["draft_tokens"] > timing
        assert details["forward_passes"] < plain.details["forward_passes"] // 2
    else:
        # The first step times the unit, a few rounds time the draft, then plain steps.
        assert details["draft_tokens"] <= timing
