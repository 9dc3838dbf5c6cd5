"""Full-precision weights on CPU packed for oneDNN (``CpuLinear``, ``lean/weights.py``) against
the same weights unpacked (kernels chosen by rows, tall weights transposed), in one process
on one loaded model: a one-row step, batched steps of 2 and 8 rows, a lone call's
verification pass over 5 tokens, 8 rows x 3 tokens, a 201-token prompt. Not a pytest test.

    python tests/bench/bench_cpu_linear.py [--model DIR] [--threads 2] [--rounds 3]

Both variants share the embeddings and norms; only the projections differ. Each round
measures every pass on both, in turns (A B, then B A), each the median of its calls, and
each variant keeps its best round: on a shared machine other processes only slow a run down.
The ratio is packed / unpacked time (under 1: packed is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_local import _source  # noqa: E402

NAMES = ("q", "k", "v", "out", "gate", "up", "down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file or HF model directory (default: SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch
    from llmcli_local import loader
    from llmcli_local.config import RuntimeConfig
    from llmcli_local.lean.config import LeanConfig
    from llmcli_local.lean.decoder import Decoder
    from llmcli_local.lean.weights import CpuLinear

    torch.set_num_threads(args.threads)
    packed = loader.load(_source(args), RuntimeConfig.build().replace(device="cpu",
                                                                       draft="none"))
    weights = packed.decoder.weights
    if not isinstance(weights.lm_head, CpuLinear) or weights.lm_head.packed is None:
        sys.exit("the weights are not packed here (no oneDNN, or quantized): nothing to compare")

    def unpack(linear: CpuLinear) -> CpuLinear:
        return CpuLinear(linear.weight.clone(), pack=False)

    plain = dataclasses.replace(weights, lm_head=unpack(weights.lm_head), layers=[
        dataclasses.replace(layer, **{name: unpack(getattr(layer, name)) for name in NAMES})
        for layer in weights.layers])
    unpacked = dataclasses.replace(packed, decoder=Decoder(LeanConfig.read(packed.directory),
                                                            plain))
    ids = packed.encode("Write a short story about a lighthouse keeper. " * 4)
    long_ids = packed.encode("hello world " * 100)

    def passes(b: Any) -> dict[str, Callable[[], object]]:
        caches = [b.prompt(ids, 512)[1] for _ in range(8)]

        def reset() -> None:
            for cache in caches:
                b.truncate(cache, len(ids))

        def run(call: Callable[[], object]) -> Callable[[], object]:
            def once() -> object:
                result = call()
                reset()
                return result
            return once

        return {
            "one-row step": run(lambda: b.step(caches[0], 42)),
            "2-row step": run(lambda: b.step_batch(caches[:2], [42] * 2)),
            "8-row step": run(lambda: b.step_batch(caches, [42] * 8)),
            "pass over 5 tokens": run(lambda: b.verify(caches[0], [42] * 5)),
            "8 rows x 3 tokens": run(lambda: b.verify_batch(caches, [[42] * 3] * 8)),
            f"{len(long_ids)}-token prompt": lambda: b.prompt(long_ids, 512),
        }

    variants = {"packed": passes(packed), "unpacked": passes(unpacked)}
    best: dict[str, dict[str, float]] = {name: {} for name in variants}
    for round_ in range(args.rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            for label, call in variants[name].items():
                runs = 5 if "prompt" in label else 20
                seconds = _median(call, runs)
                best[name][label] = min(best[name].get(label, seconds), seconds)
    print(f"SmolLM2 lean backend on CPU, float32, {torch.get_num_threads()} threads, best of "
          f"{args.rounds} rounds (each the median of its calls)")
    print(f"{'pass':24s} {'unpacked ms':>12s} {'packed ms':>10s} {'packed / unpacked':>18s}")
    for label in best["packed"]:
        before, after = best["unpacked"][label], best["packed"][label]
        print(f"{label:24s} {before * 1e3:12.2f} {after * 1e3:10.2f} {after / before:18.2f}")


def _median(call: Callable[[], object], runs: int) -> float:
    for _ in range(2):
        call()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


if __name__ == "__main__":
    main()
