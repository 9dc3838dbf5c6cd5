"""The decode loop on a tiny random-weight Llama, on each backend: healing constraints, stops,
seeds, sampling, streaming, templates, usage. (The forward side of each backend: test_backends.)"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local import decode  # noqa: E402

from llmcli.models import Usage  # noqa: E402
from tests.local.conftest import load, without_eos  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something."}]


def run(tiny: Any, prefill: str = "", **settings: Any) -> tuple[list[str], Usage]:
    chunks: list[str] = []
    usage: Usage | None = None
    for event in decode.generate(tiny, MESSAGES, prefill, decode.GenerationSettings(**settings)):
        if isinstance(event, Usage):
            usage = event
        else:
            chunks.append(event)
    assert usage is not None
    return chunks, usage


@pytest.mark.parametrize("prefill", ["The URL is http:", '["Cal', "def quicksor", "This is a "])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_healing_constraint_regenerates_the_removed_text(
    tiny_any: Any, recorded_tokens: list[int], prefill: str, seed: int
) -> None:
    tiny, tokens = tiny_any, recorded_tokens
    chunks, usage = run(tiny, prefill, max_tokens=8, temperature=1.5, seed=seed,
                        prefill_mode="heal")
    removed = usage.details["healed"].encode()
    assert removed, "the tiny vocabulary has longer tokens for each of these tails"
    assert prefill.encode().endswith(removed)
    generated = b"".join(tiny.vocab.bytes_of(t) for t in tokens if t not in tiny.eos_ids)
    assert generated.startswith(removed)
    # The reported text is relative to the user's exact prefill.
    assert "".join(chunks) == generated[len(removed) :].decode("utf-8", errors="replace")


def test_healing_off_feeds_the_prefill_as_is(tiny_any: Any) -> None:
    tiny = tiny_any
    _, healed = run(tiny, "The URL is http:", max_tokens=2, prefill_mode="heal")
    _, plain = run(tiny, "The URL is http:", max_tokens=2, prefill_mode="none")
    assert plain.details["healed"] == ""
    assert plain.input_tokens > healed.input_tokens


def test_stop_sequence_ends_the_text_before_it(tiny_any: Any) -> None:
    tiny = tiny_any
    chunks, usage = run(tiny, "Answer:", max_tokens=30, prefill_mode="none")
    text = "".join(chunks)
    assert usage.stop_reason == "max_tokens" and len(text) > 12
    stop = text[8:11]
    chunks, usage = run(tiny, "Answer:", max_tokens=30, prefill_mode="none", stop=[stop])
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
    settings = decode.GenerationSettings(temperature=1.0, top_p=0.5)
    assert {decode.sample_next(logits, settings, generator) for _ in range(50)} == {0}
    settings = decode.GenerationSettings(temperature=5.0, top_k=2)
    assert {decode.sample_next(logits, settings, generator) for _ in range(200)} == {0, 1}


def test_max_tokens_and_usage(tiny_any: Any) -> None:
    tiny = tiny_any
    _, usage = run(tiny, "", max_tokens=3)
    assert usage.output_tokens <= 3
    assert usage.stop_reason in ("max_tokens", "end_turn")
    assert usage.input_tokens and usage.input_tokens > 5


def test_streaming_equals_decoding_the_whole_output_at_once(
    tiny_any: Any, recorded_tokens: list[int]
) -> None:
    tiny, tokens = tiny_any, recorded_tokens
    for seed in range(3):
        tokens.clear()
        chunks, _ = run(tiny, "日本", max_tokens=40, temperature=1.0, seed=seed,
                        prefill_mode="none")
        whole = b"".join(tiny.vocab.bytes_of(t) for t in tokens if t not in tiny.eos_ids)
        # Chunk boundaries never split a character: streaming changes nothing.
        assert "".join(chunks) == whole.decode("utf-8", errors="replace")
        if "\ufffd" not in "".join(chunks):
            assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("engine_name", ["lean", "transformers"])
def test_thinking_switch_and_think_prefill(thinking_model_dir: Any, engine_name: str) -> None:
    model = load(thinking_model_dir, engine=engine_name)
    assert model.name == engine_name
    think = model.tokenizer.convert_tokens_to_ids("<think>")
    rendered = decode.render(model, MESSAGES, "", {"enable_thinking": False})
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # A prefill that opens the thinking block: <think> stays one atomic token, never healed.
    prompt = decode.build_prompt(model, MESSAGES, "<think>", decode.GenerationSettings())
    assert prompt.ids[-1] == think and prompt.heal.backed_off == 0
    prompt = decode.build_prompt(model, MESSAGES, "<think>\nOK.\n</think>\n\n",
                                 decode.GenerationSettings())
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
    tiny = without_eos(tiny_any)
    settings = decode.GenerationSettings(max_tokens=5)
    for _ in decode.generate(tiny, MESSAGES, "Call", settings):
        assert not torch.is_inference_mode_enabled()
