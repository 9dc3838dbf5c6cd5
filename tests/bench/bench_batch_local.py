"""Local batch benchmark: 8 prompts through `llmcli batch -m smollm2` (the bundled model, on
this machine's CPU), with -j 1 and with -j 8, in one run; prints the wall times and their
ratio (target: -j 8 <= 0.35x -j 1). Not a pytest test.

    python tests/bench/bench_batch_local.py [--prompts 8] [--max-tokens 128] [--runs 2]
    LLMCLI_LOCAL_THREADS=1 python tests/bench/bench_batch_local.py     # on a loaded machine

Whole processes, as a user runs them: each run is a fresh `llmcli batch` with `--no-log` and
`-o keep_alive 0` (the model loads in the batch's own process, so both runs pay the same
start-up: importing torch and loading SmolLM2 from the converted cache, which the first run
fills if it is empty). Greedy decoding; the prompts ask for long answers, so most lines run
to `--max-tokens`. With -j 1 the lines run one after another; with -j 8 all eight go to the
model's scheduler at once, which steps them in one batch. Each line's text must be the same
in both runs (the script checks it). The two alternate over --runs rounds and each keeps its
best time: on a shared machine other processes only ever slow a run down.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.script import SCRIPT, env_for  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe a day in the life of a honeybee.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain why the seasons change.",
    "Write a recipe for a vegetable soup, with every step.",
    "Describe how a city changes from morning to night.",
    "Tell the history of the printing press.",
]


def run(user: Path, source: Path, jobs: int, max_tokens: int) -> tuple[float, dict[str, str]]:
    out = user / f"out-{jobs}-{time.monotonic_ns()}.jsonl"
    # LLMCLI_LOCAL_THREADS goes through: on a machine others load, one torch thread per
    # process keeps OpenMP from spinning against them (see the figures in benchmarks.md).
    # LLMCLI_LOCAL_DRAFT=none too, to measure the same runs without speculation.
    threads = {k: os.environ[k] for k in ("LLMCLI_LOCAL_THREADS", "LLMCLI_LOCAL_DRAFT")
               if k in os.environ}
    env = env_for(user, LLMCLI_LOAD_PLUGINS="llmcli-local", **threads)
    env.pop("LLMCLI_LOCAL_KEEP_ALIVE", None)  # -o keep_alive 0 says it on the command line
    began = time.monotonic()
    subprocess.run([str(SCRIPT), "batch", str(source), "--output", str(out), "-m", "smollm2",
                    "-o", "max_tokens", str(max_tokens), "-o", "keep_alive", "0",
                    "-j", str(jobs), "--no-log"], env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    took = time.monotonic() - began
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == source.read_text().count("\n"), "every prompt answered"
    assert all(row["status"] == "ok" for row in rows), rows
    return took, {str(row["id"]): row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    user = Path(tempfile.mkdtemp(prefix="llmcli-bench-batch-local-"))
    source = user / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)]}) + "\n"
                              for i in range(args.prompts)))
    run(user, source, 8, 1)  # warm-up: the converted cache, the page cache
    best: dict[int, float] = {}
    texts: dict[int, dict[str, str]] = {}
    tokens = 0
    for _ in range(args.runs):
        for jobs in (1, 8):
            took, rows = run(user, source, jobs, args.max_tokens)
            best[jobs] = min(best.get(jobs, took), took)
            texts[jobs] = {key: row["text"] for key, row in rows.items()}
            tokens = sum(row["usage"]["output_tokens"] or 0 for row in rows.values())
    same = sum(texts[1][key] == texts[8][key] for key in texts[1])
    print(f"{args.prompts} prompts to smollm2, greedy, max_tokens {args.max_tokens} "
          f"({tokens} tokens written per run), best of {args.runs}; cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}, LLMCLI_LOCAL_THREADS "
          f"{os.environ.get('LLMCLI_LOCAL_THREADS', 'unset')}")
    print(f"-j 1: {best[1]:.2f} s")
    print(f"-j 8: {best[8]:.2f} s")
    print(f"ratio -j 8 / -j 1: {best[8] / best[1]:.3f} (target <= 0.35)")
    print(f"lines with the same text in both: {same} of {len(texts[1])}")


if __name__ == "__main__":
    main()
