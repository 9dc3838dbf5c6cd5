"""Prefill modes on SmolLM2, as a user meets them: what a long prefill costs, how often a
JSON-list prefill gives valid JSON (with and without ``--schema``), and how often a prefill
that ends mid-word, mid-identifier or on a space continues as unbroken text would.

    python tests/bench/bench_prefill.py [--cost] [--json] [--boundary] [--forced]
                                        [--runs 3] [--prefill-tokens 1000] [--threads N]

Modes: none (the tokenizer's split), heal, chars (the default: the reply given the
prefill's characters) and, with ``--forced``, forced (grammar-forced decoding's split; slow
on text the model would not write, so it is opt-in here too). Greedy throughout, on CPU,
the prefix cache off (``LLMCLI_LOCAL_PREFIX_CACHE=0``) so that every pass is paid, and
speculative decoding off so that passes count the prompt's work. Without a section flag,
all three run. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

THINGS = ["US states", "fruits", "colors", "animals", "countries in Europe", "programming "
          "languages", "vegetables", "musical instruments", "planets", "car brands",
          "prime numbers as strings", "dog breeds", "capital cities", "sports",
          "chemical elements", "flowers", "rivers", "famous scientists", "board games",
          "kitchen utensils"]
LIST_SCHEMA = {"type": "array", "items": {"type": "string"}}

PROSE = ("The committee met on a grey Tuesday morning to review the quarterly report on "
         "regional rainfall. Several members noted that the northern valleys had received "
         "almost twice the usual amount, while the coastal towns reported a dry spring and "
         "early restrictions on garden watering. After a long discussion about reservoirs, "
         "pipelines and the cost of new pumping stations, the chair asked the engineers to "
         "prepare three options, each with a budget, a timetable and an honest account of "
         "the risks, before the next meeting in June. ")
PYTHON = '''def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping closed intervals and return them sorted by start."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = float(burst), 0.0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

'''


def _starts(expected: str) -> Callable[[str], bool]:
    return lambda text: text.startswith(expected)


def _no_space(text: str) -> bool:
    return bool(text) and not text[0].isspace()


def _goes_on(text: str) -> bool:
    return bool(text.strip())


#: Prefills that end mid-word, mid-identifier, on a space, in a URL scheme, mid-character,
#: or type a special token's name; and what unbroken text does next.
BOUNDARY: list[tuple[str, str, Callable[[str], bool]]] = [
    ("What is the URL of Google's homepage?", "The URL is http:", _starts("//")),
    ("What is the URL of Google's homepage?", "https://www.goo", _starts("gle")),
    ("Write a quicksort in Python.", "```python\ndef quicksor", _starts("t")),
    ("Write a Python function that reverses a string.", "def reverse_str", _starts("ing")),
    ("Write an SQL query that selects all users.", "SELECT * FR", _starts("OM")),
    ("Write an SQL query that selects all users.", "SELECT * FROM us", _starts("ers")),
    ("Describe a cat as a JSON object with name and age.", '{"na', _starts('me"')),
    ("Describe a cat as a JSON object with name and age.", '{"name": "Whiskers", "a',
     _starts('ge"')),
    ("Name three US states.", "1. Califor", _starts("nia")),
    ("What is the capital of France?", "The capital of France is Par", _starts("is")),
    ("Write a hello world in C.", "#include <std", _starts("io.h>")),
    ("Write a hello world in Python.", 'print("Hello, Wor', _starts("ld")),
    ("What is 6 times 7?", "Answer: ", _no_space),
    ("Pick a number between 1 and 10.", "My number is: ", _no_space),
    ("Say hello in Japanese.", "こんにち", _starts("は")),
    ("Translate 'thank you' to German.", "Dank", _starts("e")),
    ("How does ChatML end a turn?", "ChatML ends each turn with the token <|im_end|>",
     _goes_on),
    ("Write a JavaScript function that adds two numbers.", "function addNumb",
     _starts("ers")),
    ("Give the HTML for a link to example.com.", '<a href="https://exa', _starts("mple.com")),
    ("List two colors.", "- Red\n- Blu", _starts("e")),
]


def _load() -> Any:
    from llmcli_local import loader
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.model import SmolLM2

    return loader.load(SmolLM2().source(), RuntimeConfig.build().replace(device="cpu"))


def _run(backend: Any, question: str, prefill: str, mode: str, tokens: int,
         grammar: str | None = None, cpu: bool = False) -> tuple[str, dict[str, Any], float]:
    """The continuation, the usage details, and the seconds it took (wall time, or with
    ``cpu`` the process's CPU time: on a shared machine, less disturbed by other work)."""
    from llmcli_local import decode

    settings = decode.GenerationSettings(max_tokens=tokens, prefill_mode=mode,  # type: ignore[arg-type]
                                         speculative=False, grammar=grammar)
    clock = time.process_time if cpu else time.perf_counter
    start = clock()
    events = list(decode.generate(backend, [{"role": "user", "content": question}], prefill,
                                  settings))
    elapsed = clock() - start
    return "".join(e for e in events if isinstance(e, str)), dict(events[-1].details), elapsed


def cost(backend: Any, modes: list[str], prefill_tokens: int, runs: int) -> None:
    for kind, text in (("prose", PROSE), ("python", PYTHON)):
        ids = backend.encode(text * (prefill_tokens // 50 + 2))[:prefill_tokens]
        prefill = b"".join(backend.vocab.bytes_of(i) for i in ids).decode("utf-8", "replace")
        own = len(backend.encode(prefill))
        wall = dict.fromkeys(modes, float("inf"))
        cpu = dict.fromkeys(modes, float("inf"))
        details: dict[str, dict[str, Any]] = {}
        _run(backend, "Continue the text.", prefill, "none", 1)  # warm-up
        for _ in range(runs):  # interleaved, so that load on the machine hits all alike
            for mode in modes:
                if mode == "forced" and details.get("forced"):
                    continue  # one run: it takes minutes
                for clock, best in ((False, wall), (True, cpu)):
                    _, details[mode], seconds = _run(backend, "Continue the text.", prefill,
                                                     mode, 1, cpu=clock)
                    best[mode] = min(best[mode], seconds)
        print(f"\n{kind}: a {own}-token prefill (the tokenizer's count), one token generated, "
              f"best of {runs}")
        print("| mode | wall time | × none | CPU time | × none | prefill tokens | passes |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mode in modes:
            d = details[mode]
            print(f"| {mode} | {wall[mode]:.2f} s | {wall[mode] / wall['none']:.2f} | "
                  f"{cpu[mode]:.2f} s | {cpu[mode] / cpu['none']:.2f} | "
                  f"{d.get('prefill_tokens', own)} | {d['forward_passes']} |")


def json_lists(backend: Any, modes: list[str], tokens: int) -> None:
    from llmcli_local import grammar

    schema = grammar.from_schema(LIST_SCHEMA)
    print(f"\nJSON lists: 20 prompts 'Give a JSON array of 5 X. Reply with the JSON only.', "
          f"prefill '[\"', max_tokens {tokens}")
    print("| mode | valid lists | with --schema | closed by budget (schema) | schema time |")
    print("|---|---:|---:|---:|---:|")
    for mode in modes:
        valid = valid_schema = closed = 0
        seconds = 0.0
        for thing in THINGS:
            question = f"Give a JSON array of 5 {thing}. Reply with the JSON only."
            for with_schema in (False, True):
                text, details, elapsed = _run(backend, question, '["', mode, tokens,
                                              schema if with_schema else None)
                try:
                    ok = isinstance(json.loads('["' + text), list)
                except ValueError:
                    ok = False
                if with_schema:
                    valid_schema += ok
                    closed += bool(details.get("closed_by_budget"))
                    seconds += elapsed
                else:
                    valid += ok
        print(f"| {mode} | {valid}/20 | {valid_schema}/20 | {closed} | {seconds:.1f} s |")


def boundaries(backend: Any, modes: list[str], tokens: int) -> None:
    print(f"\nBoundary prefills: {len(BOUNDARY)} that end mid-word, mid-identifier, on a "
          "space, in a URL, mid-character or type <|im_end|>")
    print("| mode | continue as unbroken text |")
    print("|---|---:|")
    misses: dict[str, list[str]] = {}
    for mode in modes:
        hits = 0
        for question, prefill, check in BOUNDARY:
            text, _, _ = _run(backend, question, prefill, mode, tokens)
            if check(text):
                hits += 1
            else:
                misses.setdefault(mode, []).append(f"{prefill!r} -> {text[:24]!r}")
        print(f"| {mode} | {hits}/{len(BOUNDARY)} |")
    for mode, lines in misses.items():
        for line in lines:
            print(f"  {mode} miss: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--boundary", action="store_true")
    parser.add_argument("--forced", action="store_true", help="also time and score forced")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefill-tokens", type=int, default=1000)
    parser.add_argument("--json-tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: its default); 1 makes CPU time steadier on "
                             "a shared machine")
    args = parser.parse_args()
    os.environ["LLMCLI_LOCAL_PREFIX_CACHE"] = "0"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    backend = _load()
    modes = ["none", "heal", "chars", *(["forced"] if args.forced else [])]
    every = not (args.cost or args.json or args.boundary)
    if every or args.cost:
        cost(backend, modes, args.prefill_tokens, args.runs)
    if every or args.json:
        json_lists(backend, modes, args.json_tokens)
    if every or args.boundary:
        boundaries(backend, modes, 12)


if __name__ == "__main__":
    main()
