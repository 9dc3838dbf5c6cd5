"""What the passes the speculation policy weighs cost, in units of the model's own one-row
decode step: the measurements behind ``lean/draft.py``'s ``COSTS`` fits, and each fit's
figure beside them. Not a pytest test.

    python tests/bench/bench_pass_costs.py [--model DIR] [--threads 2] [--rounds 3]
        [--quantize none|int8|int4] [--position 120]

One loaded model (the default lean backend on CPU, SmolLM2 unless ``--model``), 8 sequences
whose caches hold ``--position`` tokens. Each round times every pass in turn (the median of
its calls, each followed by a truncation back to the same position), the one-row step
among them; each pass keeps its best round's ratio to that round's one-row step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_local import _source  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file or HF model directory (default: SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quantize", default="none", choices=["none", "int8", "int4"])
    parser.add_argument("--position", type=int, default=120)
    args = parser.parse_args()
    import torch
    from llmcli_local import loader
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.lean.draft import costs

    torch.set_num_threads(args.threads)
    backend: Any = loader.load(_source(args), RuntimeConfig.build().replace(
        device="cpu", quantize=args.quantize))
    ids = backend.encode("Write a short story about a lighthouse keeper. " * 40)[:args.position]
    caches = [backend.prompt(ids, args.position + 64)[1] for _ in range(8)]
    draft = getattr(backend, "draft", None)
    drafts = [draft.prompt(ids, args.position + 64)[1] for _ in range(8)] if draft else []

    def reset() -> None:
        for cache in caches:
            backend.truncate(cache, len(ids))
        for cache in drafts:
            draft.truncate(cache, len(ids))

    fits = costs(args.quantize, args.threads)
    passes: dict[str, tuple[Callable[[], object], float]] = {}
    for rows in (2, 4, 8):
        passes[f"plain step, {rows} rows"] = (
            lambda r=rows: backend.step_batch(caches[:r], [42] * r), fits.step(rows))
    for tokens in (2, 5, 9):
        passes[f"pass over {tokens} tokens, one row"] = (
            lambda t=tokens: backend.verify_batch(caches[:1], [[42] * t]), fits.verify(1, tokens))
    for rows, each in ((2, 3), (4, 3), (8, 3), (8, 5), (8, 9)):
        passes[f"pass over {rows} rows x {each} tokens"] = (
            lambda r=rows, e=each: backend.verify_batch(caches[:r], [[42] * e] * r),
            fits.verify(rows, rows * each))
    if draft is not None:
        for rows in (1, 2, 4, 8):
            passes[f"draft step, {rows} rows"] = (
                (lambda: draft.step(drafts[0], 42)) if rows == 1 else
                (lambda r=rows: draft.step_batch(drafts[:r], [42] * r)), fits.draft(rows))
    best: dict[str, float] = {}
    unit = 0.0
    for _ in range(args.rounds):
        one = _median(lambda: backend.step(caches[0], 42), reset)
        unit = one if not unit else min(unit, one)
        for label, (call, _fit) in passes.items():
            ratio = _median(call, reset) / one
            best[label] = min(best.get(label, ratio), ratio)
    print(f"{args.quantize} weights on CPU, {torch.get_num_threads()} threads, position "
          f"{len(ids)}: one-row step {unit * 1e3:.1f} ms; best of {args.rounds} rounds")
    print(f"{'pass':34s} {'steps':>7s} {'fit':>7s}")
    for label, (_call, fit) in passes.items():
        print(f"{label:34s} {best[label]:7.2f} {fit:7.2f}")


def _median(call: Callable[[], object], reset: Callable[[], None], runs: int = 15) -> float:
    times = []
    for i in range(runs + 2):
        began = time.perf_counter()
        call()
        took = time.perf_counter() - began
        reset()
        if i >= 2:
            times.append(took)
    return statistics.median(times)


if __name__ == "__main__":
    main()
