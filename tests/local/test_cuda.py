"""CUDA paths (bf16; the lean backend, its static batch and CUDA graphs of the batched
step; the transformers backend with its dynamic and static KV caches and CUDA graphs);
skipped without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def tiny_cuda(tiny_model_dir: Path) -> Any:
    """The tiny model on CUDA on the default backend (the lean one)."""
    from tests.local.conftest import load

    return load(tiny_model_dir, device="cuda")


def _text(backend: Any, **settings: Any) -> tuple[str, Any]:
    from llmcli_local import decode

    from llmcli.models import Usage

    events = list(decode.generate(backend, [{"role": "user", "content": "Hi"}], '["Cal',
                                  decode.GenerationSettings(max_tokens=12, **settings)))
    usage = events[-1]
    assert isinstance(usage, Usage)
    return "".join(e for e in events if isinstance(e, str)), usage


def test_cuda_runs_in_bf16_with_one_prompt_pass(tiny_cuda: Any) -> None:
    assert tiny_cuda.device == "cuda" and tiny_cuda.dtype == torch.bfloat16
    assert tiny_cuda.name == "lean"
    from tests.local.conftest import without_eos

    # The prompt and the prefill in one pass, then one step per further token (as on CPU:
    # test_backends.py). Character-level prefill scores its split paths in that same pass.
    _, usage = _text(without_eos(tiny_cuda), prefill_mode="none")
    assert usage.details["device"] == "cuda"
    assert usage.details["forward_passes"] == usage.output_tokens == 12
    _, usage = _text(without_eos(tiny_cuda))
    assert usage.details["prefill_mode"] == "chars" and usage.details["prefill_tokens"] >= 1
    assert usage.details["forward_passes"] == usage.output_tokens == 12


@pytest.mark.parametrize("options", [
    {},                                                # the lean backend
    {"engine": "transformers"},                        # transformers' dynamic cache
    {"kv_cache": "static"},
    {"kv_cache": "static", "cuda_graphs": True},
])
def test_every_decode_path_matches_full_recompute_in_bf16(
    tiny_model_dir: Path, options: dict[str, Any]
) -> None:
    from llmcli_local import decode

    from tests.local.conftest import load

    reference = load(tiny_model_dir, device="cuda", engine="transformers")
    backend = load(tiny_model_dir, device="cuda", **options)
    assert backend.name == ("lean" if not options else "transformers")
    messages = [{"role": "user", "content": "Hi"}]
    ids = decode.build_prompt(backend, messages, "California", decode.GenerationSettings()).ids
    continuation = [5, 17, 42, 99]
    logits, cache = backend.prompt(ids, 256)
    steps = [logits] + [backend.step(cache, t) for t in continuation]
    with torch.inference_mode():
        full = reference.model(input_ids=torch.tensor([ids + continuation], device="cuda"))
    expected = full.logits[0, len(ids) - 1 :].float()
    # bf16 rounding differs between paths: compare loosely.
    assert torch.allclose(torch.stack(steps), expected, atol=5e-2, rtol=5e-2)
    text, usage = _text(backend)
    assert usage.output_tokens


# -- the lean backend's static batch (llmcli_local/lean/static.py): on by default on CUDA


def test_static_batch_on_cuda_is_the_text_alone_in_fp32(tiny_model_dir: Path) -> None:
    """Eight calls at once through the CUDA graphs (fp32, so that greedy text is stable):
    each text is the one it gets alone on the dynamic path."""
    import dataclasses

    from llmcli_local.lean import backend as lean

    from tests.local.conftest import without_eos
    from tests.local.test_scheduler import CALLS, _alone, _batched

    backend = without_eos(lean.load(tiny_model_dir, "cuda", torch.float32))
    pool = backend.static
    assert pool is not None and pool.graphs and backend.graphed_single
    plain = dataclasses.replace(backend, static=None)
    alone = [_alone(plain, *call) for call in CALLS]
    batched, scheduler = _batched(backend, CALLS)
    assert [text for text, _ in batched] == [text for text, _ in alone]
    assert scheduler.peak_batch == len(CALLS) and pool.fallbacks == 0
    assert pool.captured and len(set(pool.captured)) == len(pool.captured)
    assert all(runner.graphed for runner in pool._runners.values())
    assert pool.replays >= scheduler.steps and pool.occupied == 0
    # A lone call: one-row graph (bucket 1), the same text.
    single, _ = _batched(backend, CALLS[:1])
    assert single[0][0] == alone[0][0]
    assert any(rows == 1 for rows, _ in pool.captured)


def test_static_steps_on_cuda_match_the_dynamic_ones_in_bf16(tiny_cuda: Any) -> None:
    import dataclasses

    from llmcli_local.lean.static import StaticBatch

    assert tiny_cuda.dtype == torch.bfloat16 and tiny_cuda.static is not None
    plain = dataclasses.replace(tiny_cuda, static=None)
    fast = dataclasses.replace(tiny_cuda, static=StaticBatch(tiny_cuda.decoder, 8, 256))
    prompts = [[1 + i, 5, 9, 33 + i, 7][: 2 + i % 4] for i in range(8)]
    live = [(plain.prompt(p, 64)[1], fast.prompt(p, 64)[1]) for p in prompts]
    for step in range(6):
        tokens = [10 + step + i for i in range(len(live))]
        expected = plain.step_batch([dynamic for dynamic, _ in live], tokens)
        got = fast.step_batch([adopted for _, adopted in live], tokens)
        assert torch.allclose(got, expected, atol=5e-2, rtol=5e-2), step
        # One leaves after every step (the first: the highest slot moves into its place).
        fast.release(live.pop(0)[1])
    assert fast.static is not None and fast.static.fallbacks == 0
    assert all(runner.graphed for runner in fast.static._runners.values())


def test_eight_sequences_run_through_cuda_graphs_in_bf16(tiny_cuda: Any) -> None:
    from llmcli_local.lean.static import buckets

    from tests.local.conftest import without_eos
    from tests.local.test_scheduler import CALLS, _batched

    backend = without_eos(tiny_cuda)
    pool = backend.static
    assert pool is not None and pool.graphs and pool.buckets == buckets(pool.slots)
    batched, scheduler = _batched(backend, CALLS)
    assert scheduler.peak_batch == len(CALLS)
    for (text, usage), call in zip(batched, CALLS, strict=True):
        assert usage.output_tokens == call[2]["max_tokens"] and text
    # One graph per (rows, span) bucket used, replayed for the other steps.
    assert {rows for rows, _ in pool.captured} >= {8}
    assert len(set(pool.captured)) == len(pool.captured) < pool.replays
    assert all(runner.graphed for runner in pool._runners.values())
    assert pool.occupied == 0


def test_a_kept_prefix_steps_through_the_static_pool_in_bf16(tiny_model_dir: Path) -> None:
    """Kept prompt prefixes (llmcli_local.lean.prefix) with the static pool and its CUDA
    graphs: the check of tests/local/test_prefix.py, on the GPU, bf16 tolerance."""
    import dataclasses

    from llmcli_local.lean import backend as lean
    from llmcli_local.lean.prefix import PrefixStore

    from tests.local.test_prefix import kept_prefix_through_the_static_pool

    backend = lean.load(tiny_model_dir, "cuda", torch.bfloat16)
    assert backend.static is not None  # on by default on CUDA
    kept_prefix_through_the_static_pool(
        dataclasses.replace(backend, prefixes=PrefixStore(4096)), 5e-2)
