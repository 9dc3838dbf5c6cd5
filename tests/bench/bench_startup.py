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


def timed(cmd: list[str], env: dict[str, str], runs: int) -> float:
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ensure_llm(venv: Path) -> Path | None:
    llm = venv / "bin" / "llm"
    if llm.exists():
        return llm
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "llm"], check=True,
                       timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"could not install llm for the comparison: {exc}", file=sys.stderr)
        return None
    return llm if llm.exists() else None


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
    # One logged response so `logs -n 1` reads a real database.
    from llmcli.log import open_db

    os.environ["LLMCLI_USER_PATH"] = user
    open_db()

    rows: list[tuple[str, float]] = [
        ("python -c pass", timed([sys.executable, "-c", "pass"], env, args.runs)),
        ("llmcli --help", timed([llmcli, "--help"], env, args.runs)),
        ("llmcli models", timed([llmcli, "models"], env, args.runs)),
        ("llmcli logs -n 1", timed([llmcli, "logs", "-n", "1"], env, args.runs)),
    ]
    llm = ensure_llm(Path(args.llm_venv))
    if llm is not None:
        rows.append(("llm --help", timed([str(llm), "--help"], env, args.runs)))

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
