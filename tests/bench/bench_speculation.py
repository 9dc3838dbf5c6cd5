"""Speculation in the scheduler: SmolLM2 on CPU (lean backend), the decode paths a user's calls
take, each with speculative decoding on (the default) and off, in one process; and, with
``--before``, the same script run on another checkout's code, in turns (ABBA), so that a
change is measured as one before/after pair on the same machine state. Not a pytest test.

    python tests/bench/bench_speculation.py [--tokens 48] [--rounds 2] [--threads 1]
                                            [--before /work/main]

Rows (greedy; tok/s = tokens written / wall seconds, prompt passes included; the best of
``--rounds``, the variants of a row alternating, A B B A):

- ``8 at once``: 8 calls submitted together to the scheduler (different questions, end of
  turn ignored so each writes ``--tokens``), speculative on / off;
- ``1 call``: one of them alone through the scheduler (on), against the plain loop
  (``decode.generate`` with speculative off: one step per token);
- ``batch -j 8 / -j 1``: ``llmcli batch``'s 8 long-answer prompts (those of
  bench_batch_local.py, end of turn kept) submitted together, against one after another:
  what ``-j 8`` and ``-j 1`` do in the model's process, without the process start-up;
- ``int8 / default``: ``-o quantize int8`` against the default weights, one call each, on
  predictable text (a list the reply copies) and on unpredictable text (a poem).

With ``--before DIR``, each round runs this script's measurements in a subprocess on DIR's
``llmcli`` and ``llmcli_local`` (PYTHONPATH), then on this checkout's, then this
checkout's, then DIR's; the rows print side by side with their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

QUESTIONS = [
    "Name three US states.", "What is the capital of France?", "Write a haiku about rain.",
    "Give me a JSON list of four fruits.", "Explain recursion in one sentence.",
    "What is 12 times 12?", "Suggest a name for a cat.", "Why is the sky blue?",
]
BATCH_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe a day in the life of a honeybee.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain why the seasons change.",
    "Write a recipe for a vegetable soup, with every step.",
    "Describe how a city changes from morning to night.",
    "Tell the history of the printing press.",
]
PREDICTABLE = ("Copy this list exactly, one per line: Alabama, Alaska, Arizona, Arkansas, "
               "California, Colorado, Connecticut, Delaware, Florida, Georgia, Hawaii, Idaho, "
               "Illinois, Indiana, Iowa, Kansas.")
UNPREDICTABLE = "Write a strange poem about a clock that dreams of the sea."


def _load(quantize: str) -> Any:
    from llmcli_local import loader
    from llmcli_local.sources import ModelSource, smollm2_path

    source = ModelSource("gguf", smollm2_path())
    try:
        from llmcli_local.config import RuntimeConfig
    except ImportError:  # a checkout before RuntimeConfig (#27), run by --before or pair.py
        from llmcli_local.backend import BackendOptions

        return loader.load(source, device="cpu", show_progress=False,
                           options=BackendOptions(engine="lean", quantize=quantize))
    config = RuntimeConfig.build().replace(device="cpu", engine="lean", quantize=quantize)
    return loader.load(source, config, show_progress=False)


def _calls(scheduler: Any, backend: Any, prompts: list[str], tokens: int, speculative: bool,
           together: bool) -> tuple[float, int]:
    from llmcli_local.decode import GenerationSettings

    settings = GenerationSettings(max_tokens=tokens, speculative=speculative)
    start = time.perf_counter()
    written = 0
    handles: list[Any] = []
    for prompt in prompts:
        handle = scheduler.submit([{"role": "user", "content": prompt}], "", settings, backend)
        if together:
            handles.append(handle)
        else:
            written += _drain(handle)
    for handle in handles:
        written += _drain(handle)
    return time.perf_counter() - start, written


def _drain(handle: Any) -> int:
    written = 0
    for chunk in handle:
        if not isinstance(chunk, str):
            written += chunk.output_tokens
    return written


def _plain(backend: Any, prompt: str, tokens: int) -> tuple[float, int]:
    from llmcli_local.decode import GenerationSettings, generate

    start = time.perf_counter()
    written = 0
    for chunk in generate(backend, [{"role": "user", "content": prompt}], "",
                          GenerationSettings(max_tokens=tokens, speculative=False)):
        if not isinstance(chunk, str):
            written += chunk.output_tokens
    return time.perf_counter() - start, written


def measure(args: argparse.Namespace) -> dict[str, float]:
    """tok/s of every row's variants, this process's code."""
    import torch
    from llmcli_local.scheduler import Scheduler

    torch.set_num_threads(args.threads)
    full = _load("none")
    int8 = _load("int8")
    ignoring = dataclasses.replace(full, eos_ids=frozenset())
    int8_ignoring = dataclasses.replace(int8, eos_ids=frozenset())
    scheduler = Scheduler(full, max_batch=8)
    scheduler8 = Scheduler(int8, max_batch=8)
    tokens = args.tokens
    rows: dict[str, Any] = {
        "8 at once, speculative": lambda: _calls(scheduler, ignoring, QUESTIONS, tokens,
                                                 True, True),
        "8 at once, one step per token": lambda: _calls(scheduler, ignoring, QUESTIONS,
                                                        tokens, False, True),
        "1 call, speculative": lambda: _calls(scheduler, ignoring, QUESTIONS[:1], tokens,
                                              True, True),
        "1 call, plain loop": lambda: _plain(ignoring, QUESTIONS[0], tokens),
        "batch -j 8": lambda: _calls(scheduler, full, BATCH_PROMPTS, args.batch_tokens,
                                     True, True),
        "batch -j 1": lambda: _calls(scheduler, full, BATCH_PROMPTS, args.batch_tokens,
                                     True, False),
        "predictable, int8": lambda: _calls(scheduler8, int8_ignoring, [PREDICTABLE],
                                            tokens, True, True),
        "predictable, default": lambda: _calls(scheduler, ignoring, [PREDICTABLE], tokens,
                                               True, True),
        "unpredictable, int8": lambda: _calls(scheduler8, int8_ignoring, [UNPREDICTABLE],
                                              tokens, True, True),
        "unpredictable, default": lambda: _calls(scheduler, ignoring, [UNPREDICTABLE],
                                                 tokens, True, True),
    }
    # Warm-up: the kernels' first calls, the draft's and the prefix stores' first use.
    _calls(scheduler, ignoring, QUESTIONS, 4, True, True)
    _calls(scheduler8, int8_ignoring, QUESTIONS[:1], 4, True, True)
    best: dict[str, float] = {}
    names = list(rows)
    pairs = [names[i:i + 2] for i in range(0, len(names), 2)]
    for round_ in range(args.rounds):
        for pair in pairs:
            for name in (pair if round_ % 2 == 0 else pair[::-1]):
                seconds, written = rows[name]()
                if name.startswith("batch"):
                    best[name] = min(best.get(name, seconds), seconds)  # wall seconds
                else:
                    best[name] = max(best.get(name, 0.0), written / seconds)
    return best


def _child(code: Path, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code / "plugins" / "local"), str(code)])
    out = subprocess.run([sys.executable, __file__, "--child", "--tokens", str(args.tokens),
                          "--batch-tokens", str(args.batch_tokens), "--rounds",
                          str(args.rounds), "--threads", str(args.threads)],
                         env=env, check=True, capture_output=True, text=True, cwd=str(code))
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _ratios(rows: dict[str, float]) -> dict[str, float]:
    return {
        "8 at once: speculative / one step per token (tok/s)":
            rows["8 at once, speculative"] / rows["8 at once, one step per token"],
        "1 call: speculative / plain loop (tok/s)":
            rows["1 call, speculative"] / rows["1 call, plain loop"],
        "batch: -j 8 / -j 1 (wall time)": rows["batch -j 8"] / rows["batch -j 1"],
        "predictable: int8 / default (tok/s)":
            rows["predictable, int8"] / rows["predictable, default"],
        "unpredictable: int8 / default (tok/s)":
            rows["unpredictable, int8"] / rows["unpredictable, default"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--before", default=None,
                        help="another checkout (its llmcli and plugins/local) to run in turns")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    header = (f"SmolLM2 on CPU, {args.threads} thread(s), {args.tokens} tokens a call "
              f"(batch rows: {args.batch_tokens}, end of turn kept), best of {args.rounds}; "
              f"load average {os.getloadavg()[0]:.1f}")
    if args.before is None:
        rows = _child(ROOT, args)
        print(header)
        for name, value in rows.items():
            print(f"{name:<32} {value:8.2f} {'s' if name.startswith('batch') else 'tok/s'}")
        for name, value in _ratios(rows).items():
            print(f"{name:<56} {value:6.2f}")
        return
    before_dir = Path(args.before)
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for side in ("before", "after", "after", "before"):
        results[side].append(_child(before_dir if side == "before" else ROOT, args))
    merged = {}
    for side, runs in results.items():
        merged[side] = {name: (min if name.startswith("batch") else max)(r[name] for r in runs)
                        for name in runs[0]}
    print(header + f"; before: {before_dir}, after: {ROOT}, run A B B A")
    print(f"{'row':<32} {'before':>9} {'after':>9}")
    for name in merged["before"]:
        unit = "s" if name.startswith("batch") else "tok/s"
        print(f"{name:<32} {merged['before'][name]:9.2f} {merged['after'][name]:9.2f} {unit}")
    before_ratios, after_ratios = _ratios(merged["before"]), _ratios(merged["after"])
    for name in before_ratios:
        print(f"{name:<56} {before_ratios[name]:6.2f} {after_ratios[name]:6.2f}")


if __name__ == "__main__":
    main()
