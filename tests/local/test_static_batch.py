"""The lean backend's static batch (``llmcli_local/lean/static.py``), forced on for CPU in
fp32: the KV pool, adoption and compaction of slots, the fixed-shape step per bucket and its
graph stand-in. On CUDA the same code captures CUDA graphs (tests/local/test_cuda.py)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local.config import RuntimeConfig  # noqa: E402

from tests.local.conftest import load, without_eos  # noqa: E402
from tests.local.test_grammar import LONG_KEYS  # noqa: E402
from tests.local.test_scheduler import CALLS, _alone, _batched, _messages, _settings  # noqa: E402


def static(backend: Any, slots: int = 8, length: int = 512, **options: Any) -> Any:
    """``backend`` with a static batch of its own (on CPU it is off by default)."""
    from llmcli_local.lean.static import StaticBatch

    return dataclasses.replace(backend, static=StaticBatch(backend.decoder, slots, length,
                                                           **options))


def test_cpu_backends_have_no_static_batch_by_default(tiny: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local.lean import backend as lean
    from llmcli_local.lean.static import buckets

    assert tiny.static is None and not tiny.graphed_single
    default = RuntimeConfig()
    assert not default.static_batch_on("cpu") and default.static_batch_on("cuda")
    monkeypatch.setenv("LLMCLI_LOCAL_STATIC_BATCH", "1")
    monkeypatch.setenv("LLMCLI_LOCAL_MAX_BATCH", "6")
    monkeypatch.setenv("LLMCLI_LOCAL_STATIC_LENGTH", "100")
    forced = lean.load(tiny.directory, "cpu", torch.float32, RuntimeConfig.build())
    assert forced.static is not None and not forced.static.graphs
    assert not forced.graphed_single  # a lone CPU call stays the plain loop
    assert (forced.static.slots, forced.static.length) == (6, 100)
    assert buckets(6) == [1, 2, 4, 6] and buckets(8) == [1, 2, 4, 8] and buckets(1) == [1]
    monkeypatch.setenv("LLMCLI_LOCAL_STATIC_BATCH", "0")
    assert not RuntimeConfig.build().static_batch_on("cuda")


def test_static_steps_match_the_dynamic_ones(tiny: Any) -> None:
    """Logits step by step, as sequences are adopted, leave (slots compacted) and join."""
    plain = tiny
    fast = static(tiny, slots=4, length=128)
    pool = fast.static
    prompts = [[1, 5, 9, 33, 7], [2, 40, 41], [3, 3, 3, 3, 3, 3, 3, 8], [4, 100]]
    pairs = [(plain.prompt(p, 64)[1], fast.prompt(p, 64)[1]) for p in prompts]

    def step(alive: list[int], token: int) -> None:
        tokens = [token + i for i in alive]
        expected = plain.step_batch([pairs[i][0] for i in alive], tokens)
        got = fast.step_batch([pairs[i][1] for i in alive], tokens)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        for i in alive:
            assert pairs[i][0].position == pairs[i][1].position

    step([0, 1, 2], 10)
    assert pool.occupied == 3
    step([0, 1, 2], 11)
    fast.release(pairs[0][1])  # slot 0 freed: slot 2's sequence moves into it
    assert pool.occupied == 2 and pool.moves == 1
    assert pairs[2][1].buffers[0].data_ptr() == pool._views(0)[0].data_ptr()
    step([1, 2], 12)
    step([1, 2, 3], 13)  # a join: adopted into slot 2
    # A lone step on an adopted cache (the scheduler's one-row path) and a pass over
    # several tokens (a grammar's forced run) work on the slot's views.
    expected = plain.step(pairs[3][0], 50)
    assert torch.allclose(fast.step(pairs[3][1], 50), expected, atol=1e-5)
    expected_scores = plain.extend(pairs[1][0], [60, 61, 62])
    got_scores = fast.extend(pairs[1][1], [60, 61, 62])
    assert torch.allclose(got_scores.full(2), expected_scores.full(2), atol=1e-5)
    step([1, 2, 3], 14)  # rows stepping at different positions, one that did not step
    fast.release(pairs[1][1])
    fast.release(pairs[1][1])  # twice: nothing more happens
    step([2, 3], 15)
    assert pool.fallbacks == 0 and pool.occupied == 2
    # Released caches' slots return; dropped ones too, once a slot is needed.
    del pairs[2]
    import gc

    gc.collect()
    with torch.inference_mode():
        pool._sweep()
    assert pool.occupied == 1


@pytest.mark.parametrize("model", ["tiny", "tiny_qwen2"])
def test_greedy_text_batched_static_is_the_text_alone(model: str,
                                                     request: pytest.FixtureRequest) -> None:
    directory = request.getfixturevalue("tiny_model_dir" if model == "tiny" else
                                        "tiny_qwen2_dir")
    plain = without_eos(load(directory))
    alone = [_alone(plain, *call) for call in CALLS]
    fast = static(plain)
    batched, scheduler = _batched(fast, CALLS)
    assert [text for text, _ in batched] == [text for text, _ in alone]
    assert scheduler.peak_batch == len(CALLS)
    pool = fast.static
    assert pool.replays >= scheduler.batched_steps > 0 and pool.fallbacks == 0
    # Different max_tokens: sequences left at different steps, and slots were compacted.
    assert pool.moves > 0
    assert pool.occupied == 0  # every sequence released its slot
    # One capture (here: an eager stand-in) per (rows, span) bucket, replayed after.
    assert len(set(pool.captured)) == len(pool.captured)
    assert {rows for rows, _ in pool.captured} <= {2, 4, 8}


def test_joins_and_leaves_with_back_pressure(tiny: Any) -> None:
    """Eight calls, at most three at once: slots are freed, compacted and reused."""
    plain = without_eos(tiny)
    calls = [(f"Call {i}", "def ", {"max_tokens": 4 + 2 * i}) for i in range(8)]
    fast = static(plain, slots=3)
    batched, scheduler = _batched(fast, calls, max_batch=3)
    assert [t for t, _ in batched] == [_alone(plain, *c)[0] for c in calls]
    assert scheduler.peak_batch == 3 and fast.static.fallbacks == 0
    assert fast.static.occupied == 0


def test_a_sequence_joins_a_running_static_batch(tiny: Any) -> None:
    from llmcli_local.scheduler import Scheduler

    plain = without_eos(tiny)
    fast = static(plain)
    scheduler = Scheduler(fast)
    long = scheduler.submit(_messages("Long"), "def ", _settings(max_tokens=150))
    first = next(long)
    short = [scheduler.submit(_messages(f"Short {i}"), "The", _settings(max_tokens=6 + i))
             for i in range(3)]
    for i, handle in enumerate(short):
        assert handle.text() == _alone(plain, f"Short {i}", "The", {"max_tokens": 6 + i})[0]
    assert first + long.text() == _alone(plain, "Long", "def ", {"max_tokens": 150})[0]
    assert fast.static.replays > 0 and fast.static.occupied == 0


def test_grammar_runs_and_exact_prefill_in_a_static_batch(tiny: Any) -> None:
    """A schema's forced runs go through ``extend`` on an adopted cache; forced prefill's
    prompt pass truncates its cache before adoption, character-level prefill's keeps one
    path of its tree; heal and none ride along."""
    from llmcli_local import grammar
    from llmcli_local.scheduler import Scheduler

    plain = without_eos(tiny)
    schema = grammar.from_schema(LONG_KEYS)  # a grammar needs the end-of-turn id: kept
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("Describe", "", {"max_tokens": 60, "grammar": schema}),
        ("Hi", "def quicksor", {"max_tokens": 15, "prefill_mode": "exact"}),
        ("URL", "The URL is http:", {"max_tokens": 25}),
        ("Code", "def quicks", {"max_tokens": 20}),  # chars: several split paths
        ("Describe", '{"the_first', {"max_tokens": 50, "grammar": schema}),
        ("List", '["Cal', {"max_tokens": 12, "prefill_mode": "heal"}),
        ("Test", "This is a te", {"max_tokens": 9, "prefill_mode": "none"}),
    ]

    def which(backend: Any, call: tuple[str, str, dict[str, Any]]) -> Any:
        return dataclasses.replace(backend, eos_ids=tiny.eos_ids) if "grammar" in call[
            2] else backend

    alone = [_alone(which(plain, call), *call) for call in calls]
    fast = static(plain)
    scheduler = Scheduler(fast)
    handles = [scheduler.submit(_messages(t), p, _settings(**s), backend=which(fast, (t, p, s)))
               for t, p, s in calls]
    batched = [(h.text(), h.usage) for h in handles]
    assert [t for t, _ in batched] == [t for t, _ in alone]
    assert batched[0][1].details["forced_tokens"] > 0
    assert batched[4][1].details["forced_tokens"] > 0
    assert scheduler.peak_batch == len(calls) and fast.static.fallbacks == 0
    assert fast.static.occupied == 0


def test_a_cache_longer_than_the_pool_falls_back(tiny: Any) -> None:
    plain = without_eos(tiny)
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("Hi", "def ", {"max_tokens": 30}),
        ("word " * 80, "The", {"max_tokens": 6}),  # over the pool's 64 positions; leaves first
        ("Other", "", {"max_tokens": 30}),
    ]
    fast = static(plain, length=64)
    batched, _ = _batched(fast, calls)
    assert [t for t, _ in batched] == [_alone(plain, *c)[0] for c in calls]
    pool = fast.static
    assert pool.fallbacks > 0 and pool.replays > 0  # the static path again once it left
    assert pool.occupied == 0


def test_a_lone_sequence_through_bucket_one(tiny: Any) -> None:
    """``single`` (on with CUDA graphs): a lone sequence steps as a one-row batch."""
    plain = without_eos(tiny)
    fast = static(plain, single=True)
    assert fast.graphed_single
    batched, scheduler = _batched(fast, [("Hi", "def quicksor", {"max_tokens": 12})])
    assert batched[0][0] == _alone(plain, "Hi", "def quicksor", {"max_tokens": 12})[0]
    assert "batch" not in batched[0][1].details and scheduler.batched_steps == 0
    assert fast.static.captured == [(1, 128)] and fast.static.replays == 11


def test_a_failed_capture_runs_eagerly_with_one_warning(
        tiny: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local.lean import static as module

    def failing(*args: Any) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(module, "_Graph", failing)
    monkeypatch.setattr(module.torch.cuda, "graph_pool_handle", lambda: None)
    plain = without_eos(tiny)
    fast = static(plain, graphs=True, single=False)
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        batched, _ = _batched(fast, CALLS[:4])
    assert [t for t, _ in batched] == [_alone(plain, *c)[0] for c in CALLS[:4]]
    warnings = [r for r in caplog.records if "capture failed" in r.getMessage()]
    assert len(warnings) == 1 and len(fast.static.captured) > 1


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_the_static_step_runs_on_quantized_weights(tiny: Any, scheme: str,
                                                   tmp_path: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantized weights are fused (qkv, gate_up): the static step takes them as the other
    steps do. Its attention is arranged differently from the fused dynamic step's, and the
    kernels round their activations to bf16, so the logits agree to that rounding."""
    from llmcli_local.lean import backend as lean

    monkeypatch.setenv("LLMCLI_LOCAL_CACHE", str(tmp_path / "cache"))
    plain = lean.load(tiny.directory, "cpu", torch.float32, RuntimeConfig(quantize=scheme))
    fast = static(plain, slots=2, length=64)
    prompts = [[1, 5, 9, 33, 7], [2, 40, 41]]
    pairs = [(plain.prompt(p, 32)[1], fast.prompt(p, 32)[1]) for p in prompts]
    for token in (10, 11, 12):
        expected = plain.step_batch([a for a, _ in pairs], [token, token + 1])
        got = fast.step_batch([b for _, b in pairs], [token, token + 1])
        assert torch.allclose(got, expected, atol=0.05)
    assert fast.static.replays == 3 and fast.static.fallbacks == 0
