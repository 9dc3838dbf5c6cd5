"""Batch benchmark: 16 slow-streaming requests through `llmcli batch` against a fake
OpenAI-compatible (vLLM-style) server, with -j 1 and with -j 8, in one run; prints the wall
times and their ratio (target: -j 8 <= 0.2x -j 1). Not a pytest test.

    python tests/bench/bench_batch.py [--requests 16] [--chunk-delay 0.1] [--runs 2]

Each request streams 11 events (role, 7 text pieces, finish, usage, [DONE]) with
--chunk-delay seconds before each, so one request takes about 1.1 s of server time (11 events); the
ratio is what concurrency buys once the process start-up (the same for both) is counted.
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

from tests.fakes.batch import BatchServer, write_servers  # noqa: E402
from tests.script import SCRIPT, env_for  # noqa: E402


def run(user: Path, source: Path, jobs: int) -> float:
    out = user / f"out-{jobs}-{time.monotonic_ns()}.jsonl"
    env = env_for(user, LLMCLI_LOAD_PLUGINS="llmcli-openai")
    began = time.monotonic()
    subprocess.run([str(SCRIPT), "batch", str(source), "--output", str(out), "-m", "vllm",
                    "--prefill", '{"', "-j", str(jobs), "--no-log"], env=env, check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    took = time.monotonic() - began
    lines = out.read_text().splitlines()
    assert len(lines) == source.read_text().count("\n"), "every request answered"
    assert all(json.loads(line)["status"] == "ok" for line in lines)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--chunk-delay", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    user = Path(tempfile.mkdtemp(prefix="llmcli-bench-batch-"))
    source = user / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n"
                              for i in range(args.requests)))
    with BatchServer(chunk_delay=args.chunk_delay, chunk_size=4) as server:
        write_servers(user / "openai-servers.json", vllm=server)
        best: dict[int, float] = {}
        for _ in range(args.runs):  # alternate; keep each one's best (others only slow it)
            for jobs in (1, 8):
                took = run(user, source, jobs)
                best[jobs] = min(best.get(jobs, took), took)
    print(f"{args.requests} requests, {args.chunk_delay:.3f} s per streamed event, "
          f"best of {args.runs}; cpu count {os.cpu_count()}")
    print(f"-j 1: {best[1]:.2f} s")
    print(f"-j 8: {best[8]:.2f} s")
    print(f"ratio -j 8 / -j 1: {best[8] / best[1]:.3f} (target <= 0.2)")


if __name__ == "__main__":
    main()
