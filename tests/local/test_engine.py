"""The decode loop on a tiny random-weight Llama: one forward pass for the prompt, KV-cache
decoding equal to full recomputation, healing constraints, stops, seeds, streaming."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local import engine  # noqa: E402

from llmcli.models import Usage  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something."}]


def run(tiny: Any, prefill: str = "", **settings: Any) -> tuple[list[str], Usage]:
    chunks: list[str] = []
    usage: Usage | None = None
    for event in engine.generate(tiny, MESSAGES, prefill, engine.GenerationSettings(**settings)):
        if isinstance(event, Usage):
            usage = event
        else:
            chunks.append(event)
    assert usage is not None
    return chunks, usage


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


@pytest.mark.parametrize("fast_decode", [True, False])
def test_the_whole_prompt_and_a_long_prefill_take_one_forward_pass(
    tiny_hf: Any, forward_calls: list[int], fast_decode: bool
) -> None:
    prefill = "This is a test. " * 60
    _, usage = run(tiny_hf, prefill, max_tokens=5, token_healing=False,
                   fast_decode=fast_decode)
    prompt_ids = engine.build_prompt(
        tiny_hf, MESSAGES, prefill, engine.GenerationSettings(token_healing=False)
    ).ids
    assert len(prompt_ids) > 200
    assert forward_calls[0] == len(prompt_ids) == usage.input_tokens
    # Then one single-token step per further generated token (through the lean decode step,
    # which does not call model.forward, or through transformers').
    assert usage.details["forward_passes"] == usage.output_tokens
    if fast_decode:
        assert forward_calls == [len(prompt_ids)]
    else:
        assert forward_calls[1:] == [1] * (usage.output_tokens - 1)


def test_the_lean_engine_takes_the_prompt_in_one_pass(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int]] = []
    fast = tiny.fast
    prompt, step = fast.prompt, fast.step
    monkeypatch.setattr(fast, "prompt", lambda b, ids, p: calls.append(("prompt", len(ids)))
                        or prompt(b, ids, p))
    monkeypatch.setattr(fast, "step", lambda b, t, p: calls.append(("step", 1)) or step(b, t, p))
    prefill = "This is a test. " * 60
    _, usage = run(tiny, prefill, max_tokens=5, token_healing=False, ignore_eos=True)
    assert usage.input_tokens > 200
    assert calls == [("prompt", usage.input_tokens)] + [("step", 1)] * 4
    assert usage.details["forward_passes"] == usage.output_tokens == 5


def _step_logits(loaded: Any, settings: Any, ids: list[int], continuation: list[int],
                 reference: Any = None) -> Any:
    """Logits of the prompt pass then each decode step, and the same rows from one full
    transformers forward over everything (``reference``: a transformers-loaded model)."""
    reference = reference or loaded
    with torch.inference_mode():
        forward = engine._Forward(loaded, settings, max_len=len(ids) + len(continuation) + 1)
        steps = [forward(ids)]
        for token in continuation:
            steps.append(forward([token]))
        full = reference.model(input_ids=torch.tensor([ids + continuation])).logits[0]
    return torch.stack(steps), full[len(ids) - 1 :].float()


@pytest.mark.parametrize(("engine_name", "kv_cache", "fast_decode"),
                         [("lean", "dynamic", True), ("transformers", "dynamic", True),
                          ("transformers", "dynamic", False), ("transformers", "static", False)])
def test_incremental_kv_cache_decode_equals_full_recompute(
    tiny: Any, tiny_hf: Any, engine_name: str, kv_cache: str, fast_decode: bool
) -> None:
    loaded = tiny if engine_name == "lean" else tiny_hf
    settings = engine.GenerationSettings(kv_cache=kv_cache, fast_decode=fast_decode)
    ids = engine.build_prompt(loaded, MESSAGES, "California", settings).ids
    steps, expected = _step_logits(loaded, settings, ids, [5, 17, 42, 99, 123, 7],
                                   reference=tiny_hf)
    assert torch.allclose(steps, expected, atol=1e-4, rtol=1e-4)


def test_lean_prompt_pass_after_a_cached_prefix_equals_full_recompute(
    tiny: Any, tiny_hf: Any
) -> None:
    """Several new tokens after cached ones (a causal mask offset by the cache length)."""
    ids = engine.build_prompt(tiny, MESSAGES, "California", engine.GenerationSettings()).ids
    more = [5, 17, 42, 99]
    with torch.inference_mode():
        buffers = tiny.fast.new_buffers(len(ids) + len(more))
        tiny.fast.prompt(buffers, ids, 0)
        last = tiny.fast.prompt(buffers, more, len(ids))
        full = tiny_hf.model(input_ids=torch.tensor([ids + more])).logits[0, -1]
    assert torch.allclose(last, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("engine_name", ["lean", "transformers"])
def test_lean_decode_step_matches_qwen2_with_qkv_bias(tiny_qwen2_dir: Any,
                                                      engine_name: str) -> None:
    from llmcli_local import fastpath, loader
    from llmcli_local.sources import ModelSource

    reference = loader.load(ModelSource("hf", tiny_qwen2_dir), device="cpu",
                            engine="transformers")
    assert reference.model.model.layers[0].self_attn.q_proj.bias is not None
    assert fastpath.supports(reference.model)
    qwen = loader.load(ModelSource("hf", tiny_qwen2_dir), device="cpu", engine=engine_name)
    assert qwen.engine == engine_name
    settings = engine.GenerationSettings()
    ids = engine.build_prompt(qwen, MESSAGES, "Call", settings).ids
    steps, expected = _step_logits(qwen, settings, ids, [3, 30, 300, 33], reference=reference)
    assert qwen.fast  # the lean step was used
    assert torch.allclose(steps, expected, atol=1e-4, rtol=1e-4)


def test_lean_decode_step_declines_what_it_does_not_implement(tiny_hf: Any) -> None:
    from types import SimpleNamespace

    from llmcli_local import fastpath

    def fake(**config: Any) -> Any:
        return SimpleNamespace(config=SimpleNamespace(**config), model=tiny_hf.model.model)

    assert fastpath.supports(fake(model_type="llama"))
    assert not fastpath.supports(fake(model_type="gemma2"))
    assert not fastpath.supports(fake(model_type="mistral", sliding_window=4096))
    assert not fastpath.supports(fake(model_type="llama", hidden_act="gelu"))
    assert not fastpath.supports(
        fake(model_type="qwen2", layer_types=["full_attention", "sliding_attention"]))


@pytest.mark.parametrize("prefill", ["The URL is http:", '["Cal', "def quicksor", "This is a "])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_healing_constraint_regenerates_the_removed_text(
    tiny_any: Any, recorded_tokens: list[int], prefill: str, seed: int
) -> None:
    tiny, tokens = tiny_any, recorded_tokens
    chunks, usage = run(tiny, prefill, max_tokens=8, temperature=1.5, seed=seed)
    removed = usage.details["healed"].encode()
    assert removed, "the tiny vocabulary has longer tokens for each of these tails"
    assert prefill.encode().endswith(removed)
    generated = b"".join(tiny.vocab.bytes_of(t) for t in tokens if t not in tiny.eos_ids)
    assert generated.startswith(removed)
    # The reported text is relative to the user's exact prefill.
    assert "".join(chunks) == generated[len(removed) :].decode("utf-8", errors="replace")


def test_healing_off_feeds_the_prefill_as_is(tiny_any: Any) -> None:
    tiny = tiny_any
    _, healed = run(tiny, "The URL is http:", max_tokens=2)
    _, plain = run(tiny, "The URL is http:", max_tokens=2, token_healing=False)
    assert plain.details["healed"] == ""
    assert plain.input_tokens > healed.input_tokens


def test_stop_sequence_ends_the_text_before_it(tiny_any: Any) -> None:
    tiny = tiny_any
    chunks, usage = run(tiny, "Answer:", max_tokens=30, token_healing=False)
    text = "".join(chunks)
    assert usage.stop_reason == "max_tokens" and len(text) > 12
    stop = text[8:11]
    chunks, usage = run(tiny, "Answer:", max_tokens=30, token_healing=False, stop=[stop])
    assert "".join(chunks) == text[: text.find(stop)]
    assert usage.stop_reason == "stop_sequence"
    assert not any(stop in c for c in chunks)


def test_same_seed_same_text_and_greedy_is_deterministic(tiny_any: Any) -> None:
    tiny = tiny_any
    def text(**kw: Any) -> str:
        return "".join(run(tiny, "Call", max_tokens=20, **kw)[0])

    assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)
    assert len({text(temperature=1.0, seed=s) for s in range(4)}) > 1
    assert text() == text()
    assert text(temperature=1.0, top_k=1, seed=3) == text()


def test_top_p_and_top_k_restrict_the_draw() -> None:
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    generator = torch.Generator().manual_seed(0)
    settings = engine.GenerationSettings(temperature=1.0, top_p=0.5)
    assert {engine.sample_next(logits, settings, generator) for _ in range(50)} == {0}
    settings = engine.GenerationSettings(temperature=5.0, top_k=2)
    assert {engine.sample_next(logits, settings, generator) for _ in range(200)} == {0, 1}


def test_max_tokens_and_usage(tiny_any: Any) -> None:
    tiny = tiny_any
    _, usage = run(tiny, "", max_tokens=3)
    assert usage.output_tokens <= 3
    assert usage.stop_reason in ("max_tokens", "stop")
    assert usage.input_tokens and usage.input_tokens > 5


def test_streaming_equals_decoding_the_whole_output_at_once(
    tiny_any: Any, recorded_tokens: list[int]
) -> None:
    tiny, tokens = tiny_any, recorded_tokens
    for seed in range(3):
        tokens.clear()
        chunks, _ = run(tiny, "日本", max_tokens=40, temperature=1.0, seed=seed,
                        token_healing=False)
        whole = b"".join(tiny.vocab.bytes_of(t) for t in tokens if t not in tiny.eos_ids)
        # Chunk boundaries never split a character: streaming changes nothing.
        assert "".join(chunks) == whole.decode("utf-8", errors="replace")
        if "\ufffd" not in "".join(chunks):
            assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("engine_name", ["lean", "transformers"])
def test_thinking_switch_and_think_prefill(thinking_model_dir: Any, engine_name: str) -> None:
    from llmcli_local import loader
    from llmcli_local.sources import ModelSource

    model = loader.load(ModelSource("hf", thinking_model_dir), device="cpu",
                        engine=engine_name)
    assert model.engine == engine_name
    think = model.tokenizer.convert_tokens_to_ids("<think>")
    rendered = engine.render(model, MESSAGES, "", {"enable_thinking": False})
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # A prefill that opens the thinking block: <think> stays one atomic token, never healed.
    prompt = engine.build_prompt(model, MESSAGES, "<think>", engine.GenerationSettings())
    assert prompt.ids[-1] == think and prompt.heal.backed_off == 0
    prompt = engine.build_prompt(model, MESSAGES, "<think>\nOK.\n</think>\n\n",
                                 engine.GenerationSettings())
    assert think in prompt.ids
    assert b"think" not in prompt.heal.removed
    chunks, usage = run(model, "<think>\n", max_tokens=4)
    assert usage.input_tokens


def test_template_without_the_switch_is_a_clear_error(tiny_any: Any) -> None:
    tiny = tiny_any
    from llmcli.errors import ConfigError

    with pytest.raises(ConfigError, match="no 'enable_thinking' switch"):
        run(tiny, "", template_kwargs={"enable_thinking": False})


def test_consumer_code_never_runs_in_inference_mode(tiny_any: Any) -> None:
    tiny = tiny_any
    settings = engine.GenerationSettings(max_tokens=5, ignore_eos=True)
    for _ in engine.generate(tiny, MESSAGES, "Call", settings):
        assert not torch.is_inference_mode_enabled()
