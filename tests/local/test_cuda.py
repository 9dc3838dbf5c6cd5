"""CUDA paths (bf16, static KV cache, CUDA graphs); skipped without a GPU."""

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
    from llmcli_local import loader
    from llmcli_local.sources import ModelSource

    return loader.load(ModelSource("hf", tiny_model_dir), device="cuda")


def _text(loaded: Any, **settings: Any) -> tuple[str, Any]:
    from llmcli_local import engine

    from llmcli.models import Usage

    events = list(engine.generate(loaded, [{"role": "user", "content": "Hi"}], '["Cal',
                                  engine.GenerationSettings(max_tokens=12, **settings)))
    usage = events[-1]
    assert isinstance(usage, Usage)
    return "".join(e for e in events if isinstance(e, str)), usage


def test_cuda_runs_in_bf16_with_one_prompt_pass(tiny_cuda: Any) -> None:
    assert tiny_cuda.device == "cuda" and tiny_cuda.dtype == torch.bfloat16
    _, usage = _text(tiny_cuda)
    assert usage.details["device"] == "cuda"
    assert usage.details["forward_passes"] == usage.output_tokens


@pytest.mark.parametrize("settings", [
    {"kv_cache": "dynamic"},                          # the lean decode step
    {"kv_cache": "dynamic", "fast_decode": False},    # transformers' step
    {"kv_cache": "static"},
    {"kv_cache": "static", "cuda_graphs": True},
])
def test_every_decode_path_matches_full_recompute_in_bf16(
    tiny_cuda: Any, settings: dict[str, Any]
) -> None:
    from llmcli_local import engine

    config = engine.GenerationSettings(**settings)
    messages = [{"role": "user", "content": "Hi"}]
    ids = engine.build_prompt(tiny_cuda, messages, "California", config).ids
    continuation = [5, 17, 42, 99]
    with torch.inference_mode():
        forward = engine._Forward(tiny_cuda, config, max_len=256)
        steps = [forward(ids)] + [forward([t]) for t in continuation]
        full = tiny_cuda.model(input_ids=torch.tensor([ids + continuation], device="cuda"))
    expected = full.logits[0, len(ids) - 1 :].float()
    # bf16 rounding differs between paths: compare loosely.
    assert torch.allclose(torch.stack(steps), expected, atol=5e-2, rtol=5e-2)
    text, usage = _text(tiny_cuda, **settings)
    assert usage.output_tokens
