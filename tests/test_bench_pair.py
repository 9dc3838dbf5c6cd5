"""tests/bench/pair.py: the before/after driver docs/benchmarks.md's #27 pair was measured
with. Its verdict (a drop beyond noise) and its order of runs are what the page relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

PAIR = Path(__file__).parent / "bench" / "pair.py"
spec = importlib.util.spec_from_file_location("bench_pair", PAIR)
assert spec is not None and spec.loader is not None
pair = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pair)


def _rounds(figure: str, better: str, values: list[tuple[float, float]]
            ) -> list[dict[str, Any]]:
    return [{"before": {"figures": {figure: (b, better)}},
             "after": {"figures": {figure: (a, better)}}} for b, a in values]


def test_a_drop_needs_every_round_worse_and_beyond_the_same_codes_spread() -> None:
    # Slower in both rounds by far more than either side's own spread: a drop.
    row, = pair.summarise(_rounds("tok/s", "higher", [(10.0, 8.0), (10.4, 8.2)]))
    assert row["drop"] and row["ratios"] == [0.8, 8.2 / 10.4]
    # One round faster: not a drop, however slow the other.
    row, = pair.summarise(_rounds("tok/s", "higher", [(10.0, 6.0), (10.0, 10.5)]))
    assert not row["drop"]
    # Slower in both rounds, but within what the same code scatters by (10 → 13).
    row, = pair.summarise(_rounds("tok/s", "higher", [(10.0, 9.5), (13.0, 12.5)]))
    assert not row["drop"] and abs(row["noise"] - 3 / 11) < 1e-9  # after: 9.5 → 12.5
    # Lower is better: a longer time in both rounds is the drop.
    row, = pair.summarise(_rounds("s", "lower", [(1.0, 1.3), (1.0, 1.25)]))
    assert row["drop"]
    # A count is information, never a drop.
    row, = pair.summarise(_rounds("passes", "", [(1.0, 5.0), (1.0, 5.0)]))
    assert not row["drop"]


def test_two_checkouts_run_in_turns_and_their_figures_are_paired(tmp_path: Path) -> None:
    """Two stand-in checkouts whose bench_batch.py prints the real script's lines: the runs
    go before, after, after, before, each in its own checkout with the shared and its own
    environment, and the table pairs each round's figures."""
    log = tmp_path / "order.log"
    for name, seconds in (("old", 10.0), ("new", 12.0)):
        tree = tmp_path / name
        (tree / ".venv" / "bin").mkdir(parents=True)
        (tree / ".venv" / "bin" / "python").symlink_to(sys.executable)
        (tree / "tests" / "bench").mkdir(parents=True)
        (tree / "tests" / "bench" / "bench_batch.py").write_text(textwrap.dedent(f"""
            import os, sys
            with open({str(log)!r}, "a") as f:
                f.write(os.path.basename(os.getcwd()) + " " + os.environ["SHARED"] + " "
                        + os.environ.get("MINE", "-") + " " + " ".join(sys.argv[1:]) + "\\n")
            print("-j 1: {seconds:.2f} s")
            print("-j 8: 2.00 s")
            print("ratio -j 8 / -j 1: {2 / seconds:.3f} (target <= 0.2)")
        """))
    out = tmp_path / "pair.json"
    done = subprocess.run(
        [sys.executable, str(PAIR), "--before", str(tmp_path / "old"), "--after",
         str(tmp_path / "new"), "--rounds", "2", "--env", "SHARED=yes", "--after-env",
         "MINE=after", "--json-out", str(out), "--", "bench_batch.py", "--runs", "1"],
        capture_output=True, text=True, env={**os.environ, "MINE": "-"}, check=True)
    assert log.read_text().splitlines() == [
        "old yes - --runs 1", "new yes after --runs 1", "new yes after --runs 1",
        "old yes - --runs 1"]
    rows = {row["figure"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["-j 1 s"]["before"] == [10.0, 10.0] and rows["-j 1 s"]["after"] == [12.0, 12.0]
    assert rows["-j 1 s"]["drop"]  # 1.2x the time in both rounds, the same code exact
    assert not rows["-j 8 s"]["drop"]
    assert "-j 1 s ↓" in done.stdout and "1.200 / 1.200" in done.stdout
