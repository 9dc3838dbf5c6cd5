"""The static batch's decode step (``llmcli_local/lean/static.py``) alone: operations per step
(a proxy for the kernels a CUDA graph of it holds) and time per step, for 1 and 8 rows, on
SmolLM2's shape or a given model. Not a pytest test.

    python tests/bench/bench_static_step.py [--model DIR] [--device cpu|cuda] [--runs 50]

Operations are counted once, eagerly, with a dispatch-mode counter (views and reshapes left
out; on CPU a dtype cast to the same dtype is not an operation, on CUDA in bf16 it is). Time
is the median of ``--runs`` steps: eager on CPU; on CUDA each step replays a CUDA graph
captured as the static batch captures it, synchronised, so it is the graph's device time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_local import _source  # noqa: E402

_VIEWS = ("view", "reshape", "slice", "select", "unsqueeze", "expand", "transpose", "detach",
          "alias", "t.default", "split", "chunk", "mT")


def count_ops(run: Any) -> dict[str, int]:
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict[str, int] = {}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            name = str(func.overloadpacket)
            if not any(part in name for part in _VIEWS):
                counts[name] = counts.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return counts


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file or HF model directory (default: SmolLM2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--span", type=int, default=128)
    args = parser.parse_args()
    from llmcli_local import loader
    from llmcli_local.config import RuntimeConfig

    backend = loader.load(_source(args), RuntimeConfig.build().replace(device=args.device))
    decoder = backend.decoder
    embed = decoder.weights.embed
    layers = len(decoder.weights.layers)
    print(f"static step on {embed.device.type} ({str(embed.dtype).removeprefix('torch.')}), "
          f"{layers} layers, span {args.span}, median of {args.runs}")
    for rows in (1, 8):
        ops, seconds = _measure(decoder, rows, args.span, args.runs)
        print(f"{rows} row(s): {ops} operations ({ops / layers:.1f} a layer), "
              f"{seconds * 1e3:.2f} ms a step")


def _measure(decoder: Any, rows: int, span: int, runs: int) -> tuple[int, float]:
    """Operations in one step of ``rows`` rows, and the median seconds a step."""
    import functools

    import torch
    from llmcli_local.lean.static import static_step

    embed = decoder.weights.embed
    device, dtype = embed.device, embed.dtype
    shape = (2, rows, decoder.kv_heads, span + 1, decoder.head_dim)
    pools = [torch.zeros(shape, dtype=dtype, device=device) for _ in decoder.weights.layers]
    run = functools.partial(
        static_step, decoder, pools, torch.arange(rows, device=device) + 5,
        torch.arange(rows, device=device) * 7 + 3, torch.arange(rows, device=device),
        torch.arange(span, device=device))
    cuda = device.type == "cuda"
    with torch.inference_mode():
        run()
        ops = sum(count_ops(run).values())
        step = run
        if cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                run()
            step = graph.replay
        times = []
        for _ in range(runs):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return ops, statistics.median(times)


if __name__ == "__main__":
    main()
