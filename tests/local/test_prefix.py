"""Kept prompt prefixes (llmcli_local.lean.prefix): a conversation's next turn starts its
prompt pass where the last turn's KV cache left off, and computes what a fresh pass does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local.decode import GenerationSettings  # noqa: E402
from llmcli_local.lean import backend as lean_backend  # noqa: E402
from llmcli_local.lean.prefix import MIN_REUSE, PrefixStore  # noqa: E402
from llmcli_local.scheduler import Scheduler  # noqa: E402

LONG = ("def quicksort(arr): return sorted(arr) and the lazy dog sleeps while the fox runs "
        * 6)


def _fresh(directory: Path, kept: int | None = 4096) -> Any:
    """The tiny model loaded on its own (not the loader's shared one): its own store."""
    backend = lean_backend.load(directory, "cpu", torch.float32)
    return dataclasses.replace(backend, prefixes=None if kept is None else PrefixStore(kept))


def _run(scheduler: Scheduler, messages: list[dict[str, str]], prefill: str = "",
         max_tokens: int = 12) -> str:
    chunks = list(scheduler.generate(messages, prefill, GenerationSettings(max_tokens=max_tokens)))
    return "".join(c for c in chunks if isinstance(c, str))


def test_the_next_turn_reuses_the_last_ones_cache_and_writes_the_same(tiny_model_dir: Path
                                                                       ) -> None:
    kept, plain = _fresh(tiny_model_dir), _fresh(tiny_model_dir, kept=None)
    first = [{"role": "user", "content": LONG}]
    ours, theirs = Scheduler(kept), Scheduler(plain)
    chunks = list(ours.generate(first, "", GenerationSettings(max_tokens=12)))
    reply = "".join(c for c in chunks if isinstance(c, str))
    assert reply == _run(theirs, first)
    assert kept.prefixes.reused == 0  # nothing kept yet
    assert "cached_tokens" not in chunks[-1].details

    turn = [*first, {"role": "assistant", "content": reply},
            {"role": "user", "content": "And then?"}]
    chunks = list(ours.generate(turn, "", GenerationSettings(max_tokens=12)))
    assert "".join(c for c in chunks if isinstance(c, str)) == _run(theirs, turn)
    history = len(kept.encode(kept.render(first)))
    # At least the first turn's prompt came from the kept cache, not from a pass, and the
    # usage says how much.
    assert kept.prefixes.reused >= history >= MIN_REUSE
    assert chunks[-1].details["cached_tokens"] == kept.prefixes.reused


def test_reused_positions_give_a_fresh_passs_logits(tiny_model_dir: Path) -> None:
    kept, plain = _fresh(tiny_model_dir), _fresh(tiny_model_dir, kept=None)
    ids = kept.encode(kept.render([{"role": "user", "content": LONG}]))
    _, cache = kept.prompt(ids, len(ids) + 4)
    kept.release(cache)  # the sequence ends: its cache is kept

    longer = [*ids, *kept.encode("more text after it")]
    got, cache = kept.prompt(longer, len(longer) + 4)
    assert kept.prefixes.reused == len(ids)
    expected, fresh = plain.prompt(longer, len(longer) + 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The cache goes on as a fresh one does.
    token = int(expected.argmax())
    torch.testing.assert_close(kept.step(cache, token), plain.step(fresh, token),
                               rtol=1e-5, atol=1e-5)

    kept.release(cache)

    # The same prompt again: all but its last positions come from the kept cache, and the
    # scores a pass must return (exact prefill keeps several) are still computed.
    before = kept.prefixes.reused
    scores, _ = kept.prompt_scores(longer, len(longer) + 4, keep=3)
    expected_scores, _ = plain.prompt_scores(longer, len(longer) + 4, keep=3)
    assert kept.prefixes.reused - before == len(longer) - 3
    for row in range(3):
        torch.testing.assert_close(scores.full(row), expected_scores.full(row),
                                   rtol=1e-5, atol=1e-5)


def test_exact_prefill_after_a_kept_prefix_still_starts_with_it(tiny_model_dir: Path) -> None:
    kept = _fresh(tiny_model_dir)
    scheduler = Scheduler(kept)
    first = [{"role": "user", "content": LONG}]
    reply = _run(scheduler, first)
    turn = [*first, {"role": "assistant", "content": reply},
            {"role": "user", "content": "Again"}]
    before = kept.prefixes.reused
    text = _run(scheduler, turn, prefill="def quick")
    assert kept.prefixes.reused > before
    plain = Scheduler(_fresh(tiny_model_dir, kept=None))
    assert text == _run(plain, turn, prefill="def quick")


def test_the_store_is_bounded_and_keeps_what_is_worth_it(tiny_model_dir: Path) -> None:
    backend = _fresh(tiny_model_dir)
    store = PrefixStore(3 * MIN_REUSE)
    buffers = backend.decoder.new_buffers(4 * MIN_REUSE)
    short = list(range(MIN_REUSE - 1))
    store.keep(short, buffers)
    assert store.take(short + [1], len(short), backend.decoder.new_buffers(MIN_REUSE)) == 0

    a = [1] * (MIN_REUSE + 10)
    store.keep(a, buffers)
    store.keep(a + [2] * 20, buffers)  # supersedes a: one entry, not two
    assert [len(k) for k, _ in store._entries] == [MIN_REUSE + 30]
    b = [3] * (2 * MIN_REUSE)
    store.keep(b, buffers)  # over the budget together: the least recently used goes
    assert [len(k) for k, _ in store._entries] == [2 * MIN_REUSE]
    assert store.take(a, len(a), backend.decoder.new_buffers(len(a))) == 0
    assert store.take(b + [4], len(b), backend.decoder.new_buffers(len(b) + 1)) == len(b)


def test_zero_turns_it_off(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcli_local.config import RuntimeConfig

    monkeypatch.setenv("LLMCLI_LOCAL_PREFIX_CACHE", "0")
    config = RuntimeConfig.build()
    assert lean_backend.load(tiny_model_dir, "cpu", torch.float32, config).prefixes is None
    monkeypatch.setenv("LLMCLI_LOCAL_PREFIX_CACHE", "500")
    config = RuntimeConfig.build()
    prefixes = lean_backend.load(tiny_model_dir, "cpu", torch.float32, config).prefixes
    assert prefixes is not None and prefixes.positions == 500


def kept_prefix_through_the_static_pool(kept: Any, tolerance: float) -> None:
    """A cache whose first positions came from a kept prefix steps through the static pool
    (llmcli_local.lean.static) as a fresh one does; a kept copy is taken out of its slot
    before the slot is freed. ``kept``: a backend with a store and a static batch. Run here
    on CPU (the pool forced) and on CUDA in bf16 (tests/local/test_cuda.py)."""
    assert kept.prefixes is not None and kept.static is not None
    plain = dataclasses.replace(kept, prefixes=None, static=None)
    ids = kept.encode(kept.render([{"role": "user", "content": LONG}]))
    _, first = kept.prompt(ids, len(ids) + 16)
    kept.step_batch([first], [5])  # the cache moves into a slot of the pool
    kept.release(first)  # kept (copied out of the slot), then the slot freed
    assert kept.static.occupied == 0
    # Another sequence takes the freed slot and overwrites it: the kept copy is its own.
    _, other = kept.prompt(kept.encode(kept.render([{"role": "user", "content": "Hi"}])), 64)
    kept.step_batch([other], [3])
    assert kept.static.occupied == 1

    longer = [*ids, 5, *kept.encode(" and more")]
    got, cache = kept.prompt(longer, len(longer) + 16)
    assert kept.prefixes.reused == len(ids) + 1
    expected, fresh = plain.prompt(longer, len(longer) + 16)
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    for token in (7, 9, 11):
        torch.testing.assert_close(kept.step_batch([cache], [token]),
                                   plain.step_batch([fresh], [token]),
                                   atol=tolerance, rtol=tolerance)
    assert kept.static.fallbacks == 0


def test_a_kept_prefix_steps_through_the_static_pool(tiny_model_dir: Path) -> None:
    from llmcli_local.lean.static import StaticBatch

    backend = _fresh(tiny_model_dir)
    kept_prefix_through_the_static_pool(
        dataclasses.replace(backend, static=StaticBatch(backend.decoder, 8, 512)), 1e-5)
