"""The backend seam on a tiny random-weight Llama: choose_backend, and the forward side of each
backend (the prompt in one pass, then one step per token, equal to a full recomputation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local import decode, lean  # noqa: E402
from llmcli_local.backend import choose_backend  # noqa: E402
from llmcli_local.config import RuntimeConfig  # noqa: E402
from llmcli_local.lean.config import unsupported  # noqa: E402

from llmcli.errors import ConfigError  # noqa: E402
from llmcli.models import Usage  # noqa: E402
from tests.local.conftest import load, without_eos  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something."}]


def run(backend: Any, prefill: str = "", **settings: Any) -> Usage:
    events = list(decode.generate(backend, MESSAGES, prefill,
                                  decode.GenerationSettings(**settings)))
    usage = events[-1]
    assert isinstance(usage, Usage)
    return usage


# -- choosing -----------------------------------------------------------------------------


def test_choose_backend(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMCLI_LOCAL_ENGINE", raising=False)
    choose = choose_backend
    assert choose(RuntimeConfig(), "cpu", tiny_model_dir) == "lean"
    assert choose(RuntimeConfig(), "cuda", tiny_model_dir) == "lean"
    assert choose(RuntimeConfig(engine="transformers"), "cpu", tiny_model_dir) == "transformers"
    assert choose(RuntimeConfig(kv_cache="static"), "cpu", tiny_model_dir) == "transformers"
    assert choose(RuntimeConfig(cuda_graphs=True), "cuda", tiny_model_dir) == "transformers"
    # Without the model directory (the keep-alive key): what the request alone decides.
    assert choose(RuntimeConfig(), "auto", None) == "auto"
    assert choose(RuntimeConfig(engine="lean"), "auto", None) == "lean"
    assert choose(RuntimeConfig(kv_cache="static"), "auto", None) == "transformers"
    with pytest.raises(ConfigError, match="need engine=transformers"):
        choose(RuntimeConfig(engine="lean", kv_cache="static"), "cpu", tiny_model_dir)
    with pytest.raises(ConfigError, match="cuda_graphs needs a CUDA GPU"):
        choose(RuntimeConfig(cuda_graphs=True), "cpu", None)
    # LLMCLI_LOCAL_ENGINE is -o engine's default, read into the call's configuration.
    from llmcli_local.options import LocalOptions

    monkeypatch.setenv("LLMCLI_LOCAL_ENGINE", "transformers")
    assert choose(RuntimeConfig.build(LocalOptions()), "auto", None) == "transformers"
    lean = RuntimeConfig.build(LocalOptions(engine="lean"))
    assert choose(lean, "cpu", tiny_model_dir) == "lean"
    # A cache option only transformers has picks the backend, whatever the variable says.
    monkeypatch.setenv("LLMCLI_LOCAL_ENGINE", "lean")
    static = RuntimeConfig.build(LocalOptions(kv_cache="static"))
    assert choose(static, "cpu", tiny_model_dir) == "transformers"
    monkeypatch.setenv("LLMCLI_LOCAL_ENGINE", "fastest")
    with pytest.raises(ConfigError, match="Unknown local engine 'fastest'"):
        RuntimeConfig.build(LocalOptions())


def test_the_lean_backend_declines_what_it_does_not_implement(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert unsupported(config) is None
    assert unsupported({**config, "model_type": "gemma2"})
    assert unsupported({**config, "model_type": "mistral", "sliding_window": 4096})
    assert unsupported({**config, "hidden_act": "gelu"})
    assert unsupported({**config, "model_type": "qwen2",
                        "layer_types": ["full_attention", "sliding_attention"]})


# -- the forward side ---------------------------------------------------------------------


@pytest.fixture
def forward_calls(tiny_hf: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of input tokens of each forward call the runtime makes (transformers)."""
    calls: list[int] = []
    model = tiny_hf.model
    original = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


def test_the_whole_prompt_and_a_long_prefill_take_one_forward_pass(
    tiny_hf: Any, forward_calls: list[int]
) -> None:
    prefill = "This is a test. " * 60
    usage = run(tiny_hf, prefill, max_tokens=5, prefill_mode="none")
    prompt_ids = decode.build_prompt(
        tiny_hf, MESSAGES, prefill, decode.GenerationSettings(prefill_mode="none")
    ).ids
    assert len(prompt_ids) > 200
    assert forward_calls[0] == len(prompt_ids) == usage.input_tokens
    # Then one single-token step per further generated token.
    assert usage.details["forward_passes"] == usage.output_tokens
    assert forward_calls[1:] == [1] * (usage.output_tokens - 1)


def test_the_lean_backend_takes_the_prompt_in_one_pass(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int]] = []
    decoder = tiny.decoder
    prompt, step = decoder.prompt, decoder.step
    monkeypatch.setattr(decoder, "prompt", lambda b, ids, p: calls.append(("prompt", len(ids)))
                        or prompt(b, ids, p))
    monkeypatch.setattr(decoder, "step",
                        lambda b, t, p: calls.append(("step", 1)) or step(b, t, p))
    prefill = "This is a test. " * 60
    usage = run(without_eos(tiny), prefill, max_tokens=5, prefill_mode="none")
    assert usage.input_tokens > 200
    assert calls == [("prompt", usage.input_tokens)] + [("step", 1)] * 4
    assert usage.details["forward_passes"] == usage.output_tokens == 5


def _step_logits(backend: Any, ids: list[int], continuation: list[int],
                 reference: Any) -> Any:
    """Logits of the prompt pass then each decode step, and the same rows from one full
    transformers forward over everything (``reference``: the transformers backend)."""
    logits, cache = backend.prompt(ids, len(ids) + len(continuation) + 1)
    steps = [logits] + [backend.step(cache, token) for token in continuation]
    with torch.inference_mode():
        full = reference.model(input_ids=torch.tensor([ids + continuation])).logits[0]
    return torch.stack(steps), full[len(ids) - 1 :].float()


@pytest.mark.parametrize(("engine_name", "kv_cache"),
                         [("lean", "dynamic"), ("transformers", "dynamic"),
                          ("transformers", "static")])
def test_incremental_kv_cache_decode_equals_full_recompute(
    tiny_model_dir: Path, tiny_hf: Any, engine_name: str, kv_cache: str
) -> None:
    backend = load(tiny_model_dir, engine=engine_name, kv_cache=kv_cache)
    assert backend.name == engine_name
    ids = decode.build_prompt(backend, MESSAGES, "California", decode.GenerationSettings()).ids
    steps, expected = _step_logits(backend, ids, [5, 17, 42, 99, 123, 7], reference=tiny_hf)
    assert torch.allclose(steps, expected, atol=1e-4, rtol=1e-4)


def test_lean_prompt_pass_after_a_cached_prefix_equals_full_recompute(
    tiny: Any, tiny_hf: Any
) -> None:
    """Several new tokens after cached ones (a causal mask offset by the cache length)."""
    ids = decode.build_prompt(tiny, MESSAGES, "California", decode.GenerationSettings()).ids
    more = [5, 17, 42, 99]
    with torch.inference_mode():
        buffers = tiny.decoder.new_buffers(len(ids) + len(more))
        tiny.decoder.prompt(buffers, ids, 0)
        last = tiny.decoder.prompt(buffers, more, len(ids))
        full = tiny_hf.model(input_ids=torch.tensor([ids + more])).logits[0, -1]
    assert torch.allclose(last, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("engine_name", ["lean", "transformers"])
def test_decode_matches_qwen2_with_qkv_bias(tiny_qwen2_dir: Path, engine_name: str) -> None:
    reference = load(tiny_qwen2_dir, engine="transformers")
    assert reference.model.model.layers[0].self_attn.q_proj.bias is not None
    assert lean.why_not(tiny_qwen2_dir) is None
    qwen = load(tiny_qwen2_dir, engine=engine_name)
    assert qwen.name == engine_name
    ids = decode.build_prompt(qwen, MESSAGES, "Call", decode.GenerationSettings()).ids
    steps, expected = _step_logits(qwen, ids, [3, 30, 300, 33], reference=reference)
    assert torch.allclose(steps, expected, atol=1e-4, rtol=1e-4)


def test_a_step_past_the_cache_is_an_error(tiny: Any) -> None:
    logits, cache = tiny.prompt([1, 2, 3], 4)
    tiny.step(cache, 5)
    with pytest.raises(RuntimeError, match="past the KV buffer"):
        tiny.step(cache, 6)
