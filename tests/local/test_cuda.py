"""CUDA paths (bf16; the lean backend; the transformers backend with its dynamic and static
KV caches and CUDA graphs); skipped without a GPU."""

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


def _text(backend: Any) -> tuple[str, Any]:
    from llmcli_local import decode

    from llmcli.models import Usage

    events = list(decode.generate(backend, [{"role": "user", "content": "Hi"}], '["Cal',
                                  decode.GenerationSettings(max_tokens=12)))
    usage = events[-1]
    assert isinstance(usage, Usage)
    return "".join(e for e in events if isinstance(e, str)), usage


def test_cuda_runs_in_bf16_with_one_prompt_pass(tiny_cuda: Any) -> None:
    assert tiny_cuda.device == "cuda" and tiny_cuda.dtype == torch.bfloat16
    assert tiny_cuda.name == "lean"
    _, usage = _text(tiny_cuda)
    assert usage.details["device"] == "cuda"
    assert usage.details["forward_passes"] == usage.output_tokens


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
