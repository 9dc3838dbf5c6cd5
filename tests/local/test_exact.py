"""Forced prefill (``prefill_mode="forced"``, called ``exact`` before ``chars`` became the
default) against a slow reference: grammar-forced greedy
decoding, one constrained step per prefill token, written here independently of
``llmcli_local.exact`` (a brute-force mask over the whole vocabulary)."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmcli_local import decode, exact  # noqa: E402

from llmcli.models import Usage  # noqa: E402
from tests.local.conftest import load, without_eos  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something."}]

#: Code, JSON, trailing spaces and newlines, indentation, numbers, mid-word, non-ASCII,
#: emoji (byte tokens), special-looking text typed as text.
PREFILLS = [
    "The URL is http:", '["Cal', '["', "def quicksor", "def quicksort(arr):\n    ",
    "Answer: ", "My number is: ", "This is a ", "Answer:", "\n", "A list:\n\n", "  ",
    '{"name": "Ca', '{"a": [1, 2', "3.14159", "12345 + 6", "Califor", "Connecticut, Col",
    "Héllo wö", "naïve caf", "日本語の", "テキ", "Emoji 🙂", "🚀", "🙂🚀 ", "Call me <|im_end|>",
    "<|im_end|>", "<|im_start|>user", "\t\tx = ", "..."
]


def reference(backend: Any, messages: Any, prefill: bytes, free: int
              ) -> tuple[list[int], list[int]]:
    """Grammar-forced greedy decoding: the prefill's tokens, then ``free`` generated ones
    (the first of which may still cover the prefill's last bytes)."""
    table = backend.vocab.token_bytes
    ids = backend.encode(decode.render(backend, messages, "", {}))
    logits, cache = backend.prompt(ids, len(ids) + len(prefill) + free + 1)
    split: list[int] = []
    generated: list[int] = []
    remaining = prefill
    while len(generated) < free:
        if remaining:
            allowed = [i for i, b in enumerate(table)
                       if b and (remaining.startswith(b) or b.startswith(remaining))]
            mask = torch.full_like(logits, float("-inf"))
            mask[allowed] = 0
            token = int(torch.argmax(logits + mask))
            piece = table[token] or b""
            if len(piece) <= len(remaining):
                split.append(token)
            else:
                generated.append(token)
            remaining = remaining[len(piece):] if len(piece) < len(remaining) else b""
        else:
            token = int(torch.argmax(logits))
            generated.append(token)
        logits = backend.step(cache, token)
    return split, generated


def exact_split(backend: Any, messages: Any, prefill: bytes) -> exact.ExactStart:
    template = decode.render(backend, messages, "", {})
    template_ids = backend.encode(template)
    try:
        text = template + prefill.decode()
    except UnicodeDecodeError:
        first = exact.draft(backend, prefill)
    else:
        first = exact.first_draft(backend, template_ids, text, prefill)
    with torch.inference_mode():
        head = exact.start(backend, template_ids, prefill, first,
                           len(template_ids) + len(prefill) + 64)
    assert head.ids[:len(template_ids)] == template_ids
    return head


def exact_tokens(backend: Any, messages: Any, prefill: str, free: int,
                 tokens: list[int]) -> tuple[list[int], list[int], Usage]:
    head = exact_split(backend, messages, prefill.encode())
    split = head.ids[len(head.ids) - head.prefill_tokens:]
    tokens.clear()
    settings = decode.GenerationSettings(max_tokens=free, prefill_mode="forced")
    events = list(decode.generate(without_eos(backend), messages, prefill, settings))
    usage = events[-1]
    assert isinstance(usage, Usage)
    text = "".join(e for e in events if isinstance(e, str))
    generated = b"".join(backend.vocab.bytes_of(t) for t in tokens)
    # The reported text is the continuation after the user's exact prefill.
    assert (prefill.encode() + text.encode()).startswith(prefill.encode())
    assert generated.startswith(head.pending)
    return split, list(tokens), usage


@pytest.mark.parametrize("prefill", PREFILLS)
def test_exact_split_is_grammar_forced_decoding(tiny_any: Any, recorded_tokens: list[int],
                                                prefill: str) -> None:
    backend = without_eos(tiny_any)
    want = reference(backend, MESSAGES, prefill.encode(), 6)
    split, generated, usage = exact_tokens(backend, MESSAGES, prefill, 6, recorded_tokens)
    assert (split, generated) == want
    assert usage.details["prefill_mode"] == "forced"
    assert usage.details["prefill_tokens"] == len(split)


@pytest.mark.parametrize("prefill", ["日".encode()[:2], "🙂".encode()[:3], b"ab\xf0\x9f"])
def test_a_prefill_ending_inside_a_character(tiny_any: Any, prefill: bytes) -> None:
    backend = without_eos(tiny_any)
    split, generated = reference(backend, MESSAGES, prefill, 1)
    head = exact_split(backend, MESSAGES, prefill)
    assert head.ids[len(head.ids) - head.prefill_tokens:] == split
    mask = torch.full_like(head.logits, float("-inf"))
    mask[backend.vocab.consistent(head.pending) if head.pending else slice(None)] = 0
    assert int(torch.argmax(head.logits + mask)) == generated[0]


def test_atomic_added_tokens_are_candidates(thinking_model_dir: Any,
                                            recorded_tokens: list[int]) -> None:
    backend = without_eos(load(thinking_model_dir))
    for prefill in ["<think>\n", "<thi", "OK </think>\n\n"]:
        want = reference(backend, MESSAGES, prefill.encode(), 4)
        split, generated, _ = exact_tokens(backend, MESSAGES, prefill, 4, recorded_tokens)
        assert (split, generated) == want


def test_one_pass_when_the_tokenizer_split_is_the_models(tiny: Any) -> None:
    backend = without_eos(tiny)
    passes = [exact_split(backend, MESSAGES, p.encode()).passes for p in PREFILLS]
    # One pass, plus one per disagreement: never one per token.
    assert all(n <= 1 + len(p.encode()) // 2 for n, p in zip(passes, PREFILLS, strict=True))
    assert passes.count(1) >= len(PREFILLS) // 3


def test_modes_and_the_old_switch(tiny: Any, recorded_tokens: list[int]) -> None:
    from llmcli_local.options import LocalOptions

    assert LocalOptions().prefill_mode == "chars"
    assert LocalOptions(token_healing="0").prefill_mode == "none"
    assert LocalOptions(prefill_mode="heal").prefill_mode == "heal"
    with pytest.raises(ValueError, match="token_healing 0 means prefill_mode none"):
        LocalOptions(token_healing=False, prefill_mode="exact")
    backend = without_eos(tiny)
    for mode in ("chars", "heal", "none", "forced"):
        events = list(decode.generate(backend, MESSAGES, "The URL is http:",
                                      decode.GenerationSettings(max_tokens=3, prefill_mode=mode)))
        usage = events[-1]
        assert isinstance(usage, Usage) and usage.details["prefill_mode"] == mode


def test_sampling_keeps_the_prefill(tiny: Any, recorded_tokens: list[int]) -> None:
    backend = without_eos(tiny)
    for seed in range(3):
        for prefill in ['["Cal', "Answer: ", "🙂"]:
            recorded_tokens.clear()
            events = list(decode.generate(backend, MESSAGES, prefill, decode.GenerationSettings(
                max_tokens=5, temperature=1.5, seed=seed, prefill_mode="forced")))
            usage = events[-1]
            assert isinstance(usage, Usage)
            pending = usage.details["healed"].encode()
            generated = b"".join(backend.vocab.bytes_of(t) for t in recorded_tokens)
            assert generated.startswith(pending)
            text = "".join(e for e in events if isinstance(e, str))
            assert text == generated[len(pending):].decode("utf-8", errors="replace")
