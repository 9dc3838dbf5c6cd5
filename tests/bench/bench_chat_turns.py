"""A conversation's turns on SmolLM2 (lean backend, CPU, greedy), with kept prompt prefixes
(the default) and without (``LLMCLI_LOCAL_PREFIX_CACHE=0``): time to first token of each
turn, whose prompt carries the whole conversation so far. Each setting runs in its own
subprocess through the Python API (``model.conversation()``, the path of ``llmcli chat``),
the two alternating over ``--rounds``; best per turn, and whether the two wrote the same
reply (from their first round). Not a pytest test.

    python tests/bench/bench_chat_turns.py [--turns 6] [--max-tokens 120] [--rounds 2]
                                           [--quantize none]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

MESSAGES = [
    "Tell me about the history of Rome in a few sentences.",
    "And what about ancient Greece?",
    "Which of the two lasted longer, and why?",
    "Name three famous buildings from each.",
    "Which of those can still be visited today?",
    "Summarise our whole conversation in two lines.",
    "Now write a haiku about both.",
    "Thanks. One more fact about each, please.",
]


def _turns(args: argparse.Namespace) -> list[dict[str, Any]]:
    import time

    import llmcli

    model = llmcli.get_model("smollm2")
    conversation = model.conversation()
    rows = []
    for text in MESSAGES[:args.turns]:
        start = time.perf_counter()
        response = conversation.prompt(text, keep_alive=0, quantize=args.quantize,
                                       max_tokens=args.max_tokens)
        first = None
        for _ in response:
            if first is None:
                first = time.perf_counter() - start
        rows.append({"first": first or 0.0, "total": time.perf_counter() - start,
                     "input": float(response.usage().input_tokens or 0),
                     "text": response.text()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_turns(args)))
        return

    user = tempfile.mkdtemp(prefix="llmcli-bench-")
    best: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for name, kept in (("kept", None), ("off", "0")):
            env = {**os.environ, "LLMCLI_USER_PATH": user}
            env.pop("LLMCLI_LOCAL_PREFIX_CACHE", None)
            if kept is not None:
                env["LLMCLI_LOCAL_PREFIX_CACHE"] = kept
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--turns", str(args.turns),
                 "--max-tokens", str(args.max_tokens), "--quantize", args.quantize],
                env=env, capture_output=True, text=True, check=True)
            rows = json.loads(out.stdout.strip().splitlines()[-1])
            if name not in best:
                best[name] = rows
            else:
                best[name] = [{k: a[k] if k == "text" else min(a[k], b[k]) for k in a}
                              for a, b in zip(best[name], rows, strict=True)]
    print(f"{'turn':>4} {'prompt tok':>10} {'first, off':>11} {'first, kept':>12} "
          f"{'× off':>6}  same text")
    for turn, (off, kept) in enumerate(zip(best["off"], best["kept"], strict=True), 1):
        print(f"{turn:>4} {int(kept['input']):>10} {off['first']:>10.3f}s "
              f"{kept['first']:>11.3f}s {kept['first'] / off['first']:>6.2f}  "
              f"{'yes' if kept['text'] == off['text'] else 'NO'}")


if __name__ == "__main__":
    main()
