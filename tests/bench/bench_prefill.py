"""Exact prefill on SmolLM2: how often each ``prefill_mode`` continues as grammar-forced
decoding does, and what a long prefill costs in each.

    python tests/bench/bench_prefill.py [--chars 40] [--tokens 30] [--prefill-tokens 1000]
                                        [--runs 3] [--no-table] [--no-timing]

Table: for each of the prompts and prefills below, greedy, the first ``--chars`` characters of
the continuation in modes none (the tokenizer's split), heal and exact, against grammar-forced
decoding (the reference in tests/local/test_exact.py: one constrained step per prefill
token). Timing: a ``--prefill-tokens`` prefill and one generated token, plain (mode none: one
pass), exact, and forced token by token; best of ``--runs`` for the first two, one run of the
last. Not a pytest test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CASES = [
    ("Give a JSON array of 5 US states. Reply with the JSON only.", '["'),
    ("Give a JSON array of 5 US states. Reply with the JSON only.", '["Cal'),
    ("Give a JSON array of 3 fruits.", '["ap'),
    ("Describe a cat as a JSON object with name and age.", '{"name": "'),
    ("Describe a cat as a JSON object with name and age.", '{\n  "'),
    ("What is 6 times 7?", "Answer: "),
    ("What is 6 times 7?", "Answer:"),
    ("Pick a number between 1 and 10.", "My number is: "),
    ("Pick a number between 1 and 10.", "My number is "),
    ("What is the URL of Google's homepage?", "The URL is http:"),
    ("What is the URL of Google's homepage?", "https://www."),
    ("Write a quicksort in Python.", "```python\ndef quicksor"),
    ("Write a quicksort in Python.", "def quicksort(arr):\n    "),
    ("Write a quicksort in Python.", "```python\n"),
    ("Write a hello world in C.", "#include <std"),
    ("Write a Python function that adds two numbers.", "def add(a, b):\n\treturn "),
    ("Name three US states.", "1."),
    ("Name three US states.", "1. Cal"),
    ("Name three US states.", "Here are three US states:\n\n"),
    ("What is the capital of France?", "The capital of France is "),
    ("What is the capital of France?", "Par"),
    ("What is pi?", "Pi is approximately 3.14"),
    ("Translate 'good morning' to French.", "Bonjour"),
    ("Say hello in Japanese.", "こんに"),
    ("Write a sentence with an emoji.", "I love pizza 🍕"),
    ("Write a sentence about the café.", "The café is naï"),
    ("Finish the sentence: The weather today is", "The weather today is"),
    ("List two colors.", "- Red\n- "),
    ("Write a haiku about the sea.", "Waves "),
    ("How do chat templates end a turn?", "With the token <|im_end|>"),
]


def _load() -> Any:
    from llmcli_local import loader
    from llmcli_local.model import SmolLM2

    return loader.load(SmolLM2().source(), device="cpu")


def _text(backend: Any, tokens: list[int], pending: bytes) -> str:
    data = b""
    for token in tokens:
        if token in backend.eos_ids:
            break
        data += backend.vocab.bytes_of(token)
    return data[len(pending):].decode("utf-8", errors="replace")


def reference_text(backend: Any, messages: Any, prefill: str, tokens: int) -> str:
    from tests.local.test_exact import reference

    forced = dataclasses.replace(backend, eos_ids=frozenset())
    split, generated = reference(forced, messages, prefill.encode(), tokens)
    covered = sum(len(backend.vocab.bytes_of(t)) for t in split)
    return _text(backend, generated, prefill.encode()[covered:])


def mode_text(backend: Any, messages: Any, prefill: str, mode: str, tokens: int) -> str:
    from llmcli_local import decode

    settings = decode.GenerationSettings(max_tokens=tokens, prefill_mode=mode)  # type: ignore[arg-type]
    return "".join(e for e in decode.generate(backend, messages, prefill, settings)
                   if isinstance(e, str))


def table(backend: Any, chars: int, tokens: int) -> None:
    modes = ("none", "heal", "exact")
    hits = dict.fromkeys(modes, 0)
    misses: dict[str, list[str]] = {m: [] for m in modes}
    for question, prefill in CASES:
        messages = [{"role": "user", "content": question}]
        want = reference_text(backend, messages, prefill, tokens)[:chars]
        for mode in modes:
            got = mode_text(backend, messages, prefill, mode, tokens)[:chars]
            if got == want:
                hits[mode] += 1
            else:
                misses[mode].append(f"{prefill!r}: {got!r} vs {want!r}")
    print(f"| mode | same first {chars} characters as grammar-forced decoding |")
    print("|---|---|")
    for mode in modes:
        print(f"| {mode} | {hits[mode]}/{len(CASES)} |")
    for mode in modes:
        for miss in misses[mode]:
            print(f"  {mode} miss: {miss}")


def forced_steps(backend: Any, messages: Any, prefill: bytes) -> list[int]:
    """Grammar forcing as a runtime does it: one constrained step per prefill token (the
    mask from the vocabulary index, as fast as exact mode's), until the prefill is covered."""
    import torch
    from llmcli_local import decode

    vocab = backend.vocab
    ids = backend.encode(decode.render(backend, messages, "", {}))
    with torch.inference_mode():
        logits, cache = backend.prompt(ids, len(ids) + len(prefill) + 1)
        remaining = prefill
        split: list[int] = []
        while remaining:
            allowed = vocab.consistent(remaining)
            token = allowed[int(torch.argmax(logits[torch.tensor(allowed)]))]
            split.append(token)
            remaining = remaining[len(vocab.bytes_of(token)):]
            logits = backend.step(cache, token)
    return split


def timing(backend: Any, prefill_tokens: int, runs: int, kind: str) -> None:
    from llmcli_local import decode

    forced = dataclasses.replace(backend, eos_ids=frozenset())
    sentence = ("The quick brown fox jumps over the lazy dog while the committee reviews the "
                "quarterly report on regional rainfall. ")
    ids = backend.encode(sentence * (prefill_tokens // 10 + 10))[:prefill_tokens]
    prefill = b"".join(backend.vocab.bytes_of(i) for i in ids).decode()
    # "copy": the text is in the question and the prefill repeats it (text the model would
    # write itself, as when resuming or quoting); "unseen": the prefill is the only place the
    # text appears, and the model's own split of it is not the tokenizer's.
    question = ("Continue the text." if kind == "unseen" else
                "Repeat this text exactly:\n\n" + prefill)
    messages = [{"role": "user", "content": question}]

    def run(mode: str) -> dict[str, Any]:
        settings = decode.GenerationSettings(max_tokens=1, prefill_mode=mode)  # type: ignore[arg-type]
        events = list(decode.generate(forced, messages, prefill, settings))
        return dict(events[-1].details)

    best = {"none": float("inf"), "exact": float("inf")}
    details: dict[str, Any] = {}
    run("none")  # warm-up
    for _ in range(runs):
        for mode in best:
            start = time.perf_counter()
            details[mode] = run(mode)
            best[mode] = min(best[mode], time.perf_counter() - start)
    start = time.perf_counter()
    forced_steps(forced, messages, prefill.encode())
    stepped = time.perf_counter() - start
    split = details["exact"].get("prefill_tokens")
    print(f"{kind}: prefill {len(ids)} tokens; exact split: {split} tokens in "
          f"{details['exact']['forward_passes']} pass(es)")
    print(f"plain one pass (prefill_mode none): {best['none']:.3f} s")
    print(f"exact:                              {best['exact']:.3f} s "
          f"({best['exact'] / best['none']:.2f}x plain)")
    print(f"forced token by token:              {stepped:.3f} s "
          f"({stepped / best['exact']:.1f}x exact)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--prefill-tokens", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-table", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--kind", choices=["copy", "unseen"], action="append",
                        help="timing prefills (default: copy)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    backend = _load()
    if not args.no_table:
        table(backend, args.chars, args.tokens)
    if not args.no_timing:
        for kind in args.kind or ["copy"]:
            timing(backend, args.prefill_tokens, args.runs, kind)


if __name__ == "__main__":
    main()
