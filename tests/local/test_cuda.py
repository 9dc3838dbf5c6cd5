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


def test_static_cache_and_cuda_graphs_match_the_dynamic_cache(tiny_cuda: Any) -> None:
    dynamic, _ = _text(tiny_cuda)
    static, _ = _text(tiny_cuda, kv_cache="static")
    graphs, _ = _text(tiny_cuda, kv_cache="static", cuda_graphs=True)
    assert dynamic == static == graphs
