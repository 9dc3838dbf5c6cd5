"""Continuous-batching benchmark: SmolLM2 (lean backend, fp32) through the scheduler, 8
concurrent sequences against one, in tokens per second and in peak memory. Not a pytest test.

    python tests/bench/bench_local_batch.py [--batch 8] [--tokens 64] [--runs 3]
                                            [--device auto|cpu|cuda] [--model PATH]

Throughput: one process; each run submits ``--batch`` short calls at once (different
questions, greedy, end of turn ignored so that each writes exactly ``--tokens``) and times
until the last ends, then one call alone through the scheduler (``--speculative on``, the
default: with the model's draft where it has one, as a user's lone call runs), then one call
through the plain decode loop (``decode.generate``: ``Decoder.step`` per token, no scheduler,
no graph, no draft);
tokens/s = tokens written / wall time, prompt passes included. The best of ``--runs`` for
each, the three alternating, so all see the same machine.

On CUDA the lean backend steps batches through its static batch (``llmcli_local/lean/static.py``:
a preallocated KV pool and a CUDA graph per batch-size bucket; a lone call takes the one-row
graph); ``LLMCLI_LOCAL_STATIC_BATCH=0`` in the environment measures the dynamic path instead.
The static batch's counters (graphs captured, replays, fallbacks) are printed with the rows.

Peak memory: two fresh processes, one running a single call and one ``--batch`` calls at once
(each after a warm-up call of its own kind); peak RSS (VmHWM) on CPU, peak allocated memory on
CUDA, model load included: what a user's process holds at its worst.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_local import _peak_memory_mb, _source  # noqa: E402

QUESTIONS = [
    "Name three US states.", "What is the capital of France?", "Write a haiku about rain.",
    "Give me a JSON list of four fruits.", "Explain recursion in one sentence.",
    "What is 12 times 12?", "Suggest a name for a cat.", "Why is the sky blue?",
    "List three prime numbers.", "Translate 'good morning' into Spanish.",
    "What does a CPU do?", "Describe the sea in five words.",
    "Who wrote Hamlet?", "What is the boiling point of water?", "Name a primary colour.",
    "Recommend a book.",
]


def _load(args: argparse.Namespace) -> Any:
    from llmcli_local import loader
    from llmcli_local.config import RuntimeConfig

    config = RuntimeConfig.build().replace(device=args.device)
    backend = loader.load(_source(args), config, show_progress=True)
    # No end-of-turn: every call writes exactly the tokens asked for.
    return dataclasses.replace(backend, eos_ids=frozenset())


def _run(scheduler: Any, backend: Any, count: int, tokens: int,
         speculative: bool = True) -> tuple[float, int, int]:
    """Submit ``count`` calls at once; wall seconds until all end, tokens written, and the
    most that ran together."""
    from llmcli_local.decode import GenerationSettings

    settings = GenerationSettings(max_tokens=tokens, speculative=speculative)
    scheduler.peak_batch = 0
    start = time.perf_counter()
    handles = [scheduler.submit([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                "", settings, backend) for i in range(count)]
    written = 0
    for handle in handles:
        for chunk in handle:
            if not isinstance(chunk, str):
                written += chunk.output_tokens
    return time.perf_counter() - start, written, scheduler.peak_batch


def _plain(backend: Any, tokens: int) -> tuple[float, int, int]:
    """One call through the plain decode loop (``decode.generate``, no scheduler: one
    ``Decoder.step`` per token, never a graph, no draft); as :func:`_run` measures."""
    from llmcli_local.decode import GenerationSettings, generate

    start = time.perf_counter()
    written = 0
    for chunk in generate(backend, [{"role": "user", "content": QUESTIONS[0]}], "",
                          GenerationSettings(max_tokens=tokens, speculative=False)):
        if not isinstance(chunk, str):
            written += chunk.output_tokens
    return time.perf_counter() - start, written, 1


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from llmcli_local.scheduler import Scheduler

    backend = _load(args)
    scheduler = Scheduler(backend, max_batch=args.batch)
    for count in (args.batch, 1):  # warm-up (and, on CUDA, the graphs' captures)
        _run(scheduler, backend, count, 8)
    _plain(backend, 8)
    best: dict[str, tuple[float, int, int]] = {}
    for _ in range(args.runs):
        for row in (str(args.batch), "1", "plain"):
            result = (_plain(backend, args.tokens) if row == "plain" else
                      _run(scheduler, backend, int(row), args.tokens,
                           args.speculative == "on"))
            if row not in best or result[1] / result[0] > best[row][1] / best[row][0]:
                best[row] = result
    pool = getattr(backend, "static", None)
    static = None if pool is None else {
        "graphs": sum(1 for r in pool._runners.values() if r.graphed),
        "captured": [list(key) for key in pool.captured], "replays": pool.replays,
        "fallbacks": pool.fallbacks, "slots": pool.slots, "length": pool.length}
    return {"device": backend.device, "threads": torch.get_num_threads(),
            "dtype": str(backend.dtype).removeprefix("torch."), "static": static,
            "rows": {row: {"seconds": s, "tokens": n, "peak_batch": p}
                     for row, (s, n, p) in best.items()}}


def memory(args: argparse.Namespace, count: int) -> dict[str, Any]:
    from llmcli_local.scheduler import Scheduler

    backend = _load(args)
    loaded = _peak_memory_mb(backend.device)
    scheduler = Scheduler(backend, max_batch=args.batch)
    _run(scheduler, backend, count, 4)  # warm-up of its own kind
    seconds, written, peak = _run(scheduler, backend, count, args.tokens)
    return {"count": count, "peak_mb": _peak_memory_mb(backend.device), "loaded_mb": loaded,
            "peak_batch": peak, "tokens": written}


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Where a batched call's time goes on the scheduler's thread: wall seconds in the prompt
    passes (joins), the batched step (``StaticBatch.step`` or ``Decoder.step_batch``), the
    per-row choice of a token (which waits for the GPU: it reads the logits) and the rest of
    the per-row work (advance, text, hand-off), for ``--batch`` calls and for one. Then the
    batched step alone, synchronised before and after, for its device time."""
    import torch
    from llmcli_local import decode
    from llmcli_local.scheduler import Scheduler

    backend = _load(args)
    scheduler = Scheduler(backend, max_batch=args.batch)
    cuda = backend.device == "cuda"
    spent: dict[str, float] = {}
    counts: dict[str, int] = {}
    synced = False

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            if synced and cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                if synced and cuda:
                    torch.cuda.synchronize()
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
                counts[label] = counts.get(label, 0) + 1

        setattr(owner, name, wrapper)

    timed(Scheduler, "_join", "join (prompt pass)")
    timed(Scheduler, "_step", "step, all of it")
    timed(decode.Decoding, "choose", "choose (reads logits)")
    timed(decode.Decoding, "advance_run", "advance (text, stops)")
    pool = getattr(backend, "static", None)
    if pool is not None:
        timed(pool, "step", "batched step (static)")
    else:
        timed(backend.decoder, "step_batch", "batched step (dynamic)")
    report: dict[str, Any] = {"device": backend.device}
    for count in (args.batch, 1):
        _run(scheduler, backend, count, 8)  # warm-up, captures
        for mode in ("async", "synced"):
            synced = mode == "synced"
            spent.clear()
            counts.clear()
            seconds, written, _ = _run(scheduler, backend, count, args.tokens)
            report[f"{count} {mode}"] = {"seconds": seconds, "tokens": written,
                                         "spent": dict(spent), "counts": dict(counts)}
    return report


def _child(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--batch", str(args.batch), "--tokens",
               str(args.tokens), "--runs", str(args.runs), "--device", args.device,
               "--speculative", args.speculative, *extra]
    if args.model:
        command += ["--model", args.model]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None)
    parser.add_argument("--speculative", choices=["on", "off"], default="on",
                        help="on (the default, as for a user): a lone call decodes "
                             "speculatively where the model has a draft (CPU, full "
                             "precision); off: one step per token in every row")
    parser.add_argument("--child", choices=["throughput", "memory-1", "memory-n"])
    parser.add_argument("--profile", action="store_true",
                        help="only: where the scheduler's time goes (prompt passes, steps, "
                             "per-row work), for --batch calls and for one")
    args = parser.parse_args()
    if args.profile:
        report = profile(args)
        print(f"Where the scheduler's time goes on {report.pop('device')}, "
              f"{args.tokens} tokens per call (wall ms; 'synced' waits for the device "
              "around each timed part)")
        for run, row in report.items():
            print(f"{run}: {row['seconds'] * 1e3:.0f} ms for {row['tokens']} tokens")
            for label, took in row["spent"].items():
                calls = row["counts"][label]
                print(f"    {label:<26} {took * 1e3:8.1f} ms in {calls:5} calls, "
                      f"{took / calls * 1e6:8.0f} us each")
        return
    if args.child == "throughput":
        print(json.dumps(throughput(args)))
        return
    if args.child is not None:
        print(json.dumps(memory(args, 1 if args.child == "memory-1" else args.batch)))
        return

    speed = _child(args, "--child", "throughput")
    one, many = speed["rows"]["1"], speed["rows"][str(args.batch)]
    rate_one = one["tokens"] / one["seconds"]
    rate_many = many["tokens"] / many["seconds"]
    mem_one = _child(args, "--child", "memory-1")
    mem_many = _child(args, "--child", "memory-n")
    print(f"SmolLM2 through the scheduler on {speed['device']} ({speed['dtype']}, "
          f"{speed['threads']} threads), {args.tokens} tokens per call, best of {args.runs}, "
          f"speculative decoding {args.speculative} (the plain loop: off)")
    static = speed["static"]
    if static is None:
        print("static batch: off (batched steps: Decoder.step_batch, attention per row)")
    else:
        print(f"static batch: {static['slots']} slots x {static['length']} positions; "
              f"{static['graphs']} CUDA graphs of {len(static['captured'])} buckets "
              f"(rows, span) {static['captured']}; {static['replays']} steps, "
              f"{static['fallbacks']} fallbacks")
    plain = speed["rows"]["plain"]
    rate_plain = plain["tokens"] / plain["seconds"]
    print(f"{'calls at once':<20} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'ran together':>13}")
    for label, row, rate in ((f"{args.batch}", many, rate_many), ("1", one, rate_one),
                             ("1, plain loop", plain, rate_plain)):
        print(f"{label:<20} {row['tokens']:>7} {row['seconds']:>8.2f} {rate:>8.1f} "
              f"{row['peak_batch']:>13}")
    print(f"throughput ratio ({args.batch} vs 1): {rate_many / rate_one:.2f}x; "
          f"({args.batch} vs 1 in the plain loop): {rate_many / rate_plain:.2f}x")
    print(f"peak memory: 1 call {mem_one['peak_mb']:.0f} MB, {args.batch} calls "
          f"{mem_many['peak_mb']:.0f} MB (after loading: {mem_one['loaded_mb']:.0f} / "
          f"{mem_many['loaded_mb']:.0f} MB); ratio {mem_many['peak_mb'] / mem_one['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
