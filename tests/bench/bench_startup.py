"""Start-up benchmark: whole-process wall time of llmcli commands against `llm --help`
(simonw's llm, installed into a separate venv here if the registry has it) and against
`python -c pass` as the floor. Prints medians and ratios; not a pytest test.

    python tests/bench/bench_startup.py [--runs 15] [--llm-venv /tmp/llm-bench-venv]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall time of each command; the commands take turns, run after run, so that
    load from elsewhere on the machine falls on all of them alike.

    Without PYTHONDONTWRITEBYTECODE: pip compiles an installed package's modules, but an
    editable checkout run under it would compile every module of llmcli and its plugins on
    every run (≈ 55 ms here), which no user's call does. The warm-up run writes them."""
    env = {name: value for name, value in env.items() if name != "PYTHONDONTWRITEBYTECODE"}
    for cmd in commands.values():
        subprocess.run(cmd, env=env, capture_output=True, check=True)  # warm the page cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def ensure_llm(venv: Path, *plugins: str) -> Path | None:
    """simonw's `llm` (and these of its plugins) in ``venv``, installed there if missing."""
    llm = venv / "bin" / "llm"
    if llm.exists():
        return llm
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "llm", *plugins],
                       check=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"could not install llm {' '.join(plugins)} for the comparison: {exc}",
              file=sys.stderr)
        return None
    return llm if llm.exists() else None


def log_one_response() -> None:
    from collections.abc import Iterator

    from llmcli import Model, PrefillSupport
    from llmcli.models import Chunk, Request

    class Echo(Model):
        model_id = "bench-echo"
        prefill_support = PrefillSupport.EATS_PREFIX

        def execute(self, request: Request) -> Iterator[Chunk]:
            yield " world"

    assert Echo().prompt("Say hello", prefill="Hello").text() == "Hello world"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--llm-venv", default=str(Path(tempfile.gettempdir()) / "llm-bench-venv"))
    args = parser.parse_args()

    user = tempfile.mkdtemp(prefix="llmcli-bench-")
    env = {**os.environ, "LLMCLI_USER_PATH": user, "LLM_USER_PATH": user}
    env.pop("LLMCLI_LOAD_PLUGINS", None)  # every installed plugin loads, as for a user
    llmcli = str(BIN / "llmcli")
    subprocess.run([llmcli, "logs", "on"], env=env, capture_output=True, check=True)
    # A migrated database with one logged response, so that `logs -n 1` reads real data.
    os.environ["LLMCLI_USER_PATH"] = user
    log_one_response()

    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "llmcli --help": [llmcli, "--help"],
        "llmcli models": [llmcli, "models"],
        "llmcli logs -n 1": [llmcli, "logs", "-n", "1"],
    }
    llm = ensure_llm(Path(args.llm_venv))
    if llm is not None:
        commands["llm --help"] = [str(llm), "--help"]
    rows = list(timed(commands, env, args.runs).items())

    floor = rows[0][1]
    llm_help = dict(rows).get("llm --help")
    print(f"{'command':<20} {'median s':>9} {'× floor':>8} {'× llm --help':>13}")
    for name, seconds in rows:
        vs_llm = f"{seconds / llm_help:13.2f}" if llm_help else f"{'-':>13}"
        print(f"{name:<20} {seconds:9.3f} {seconds / floor:8.2f} {vs_llm}")
    if llm_help:
        ratio = dict(rows)["llmcli --help"] / llm_help
        verdict = "meets" if ratio <= 0.1 else "misses"
        print(f"\nllmcli --help / llm --help = {ratio:.3f} ({verdict} the 0.1× target)")


if __name__ == "__main__":
    main()
