"""A before/after pair of one benchmark: the same bench command run from two checkouts in
turns (before, after, after, before, ...: ABBA), each in a fresh process with the same
arguments; the figures the script prints are parsed and shown side by side, with the
after/before ratio of each round and their spread. Not a pytest test.

    python tests/bench/pair.py --before /work/wt-before [--after .] [--rounds 2]
        [--script-from own|after] [--env K=V ...] [--json-out FILE] [--markdown]
        -- bench_local.py --no-extras --rounds 1

Two variants of one checkout (speculation on and off, say) are a pair too: the same tree
twice, with ``--before-env``/``--after-env`` or ``--before-args``/``--after-args`` for what
differs and ``--labels off,on`` to name them.

Each checkout runs with its own ``.venv/bin/python`` (whose editable installs are that
checkout's ``llmcli`` and plugins) in its own directory. ``--script-from own`` (the default)
runs each checkout's own copy of the script; ``--script-from after`` runs the after
checkout's copy on both, for an option or a script the before checkout lacks (its code is
still the before checkout's: the interpreter's installs decide what is imported).

Rounds: round 1 runs before then after, round 2 after then before, and so on; a round's
ratio is its after figure over its before figure. The noise of a figure is the larger
relative spread ((max - min) / median) of one checkout's figures over the rounds (what the
same code gives from run to run); a figure is marked as a drop only where every round's
ratio is worse than 1 and the median ratio is worse than 1 by more than that noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"-?[\d.]+"

#: A parsed figure: its value and which way is better ("higher", "lower", or "" for a count
#: that is information, not speed).
Figures = dict[str, tuple[float, str]]


def _local(out: str) -> Figures:
    figures: Figures = {}
    for m in re.finditer(rf"^(\S+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+"
                         rf"({NUMBER})$", out, re.M):
        engine = m[1]
        figures[f"{engine}: prompt tok/s"] = (float(m[2]), "higher")
        figures[f"{engine}: decode tok/s"] = (float(m[3]), "higher")
        figures[f"{engine}: TTFT s"] = (float(m[4]), "lower")
        figures[f"{engine}: peak MB"] = (float(m[5]), "lower")
        if engine != "generate":
            figures[f"{engine}: decode × generate"] = (float(m[6]), "higher")
    if found := re.search(rf"prefill: one forward pass ({NUMBER}) s vs token by token ({NUMBER}) s",
                      out):
        figures["prefill, one pass s"] = (float(found[1]), "lower")
        figures["prefill, token by token s"] = (float(found[2]), "lower")
    if found := re.search(rf"load from the converted cache.*: ({NUMBER}) s", out):
        figures["load from the converted cache s"] = (float(found[1]), "lower")
    if found := re.search(rf": ({NUMBER}) s end to end", out):
        figures["CLI end to end s"] = (float(found[1]), "lower")
    return figures


def _local_batch(out: str) -> Figures:
    figures: Figures = {}
    for m in re.finditer(rf"^(\d+|1, plain loop)\s+(\d+)\s+({NUMBER})\s+({NUMBER})\s+\d+$",
                         out, re.M):
        label = "1 call, plain loop" if m[1] == "1, plain loop" else f"{m[1]} call(s)"
        figures[f"{label}: tok/s"] = (float(m[4]), "higher")
    if found := re.search(rf"\((\d+) vs 1\): ({NUMBER})x; \(\d+ vs 1 in the plain loop\): "
                      rf"({NUMBER})x", out):
        figures[f"{found[1]} vs 1"] = (float(found[2]), "higher")
        figures[f"{found[1]} vs 1 in the plain loop"] = (float(found[3]), "higher")
    if found := re.search(rf"peak memory: 1 call ({NUMBER}) MB, (\d+) calls ({NUMBER}) MB", out):
        figures["peak MB, 1 call"] = (float(found[1]), "lower")
        figures[f"peak MB, {found[2]} calls"] = (float(found[3]), "lower")
    return figures


def _prefill(out: str) -> Figures:
    figures: Figures = {}
    kind = ""
    for line in out.splitlines():
        if m := re.match(r"(\w+): a \d+-token prefill", line):
            kind = m[1]
        elif m := re.match(rf"\| (\w+) \| ({NUMBER}) s \| {NUMBER} \| ({NUMBER}) s \| "
                           rf"({NUMBER}) \| (\d+) \| (\d+) \|", line):
            figures[f"{kind} {m[1]}: wall s"] = (float(m[2]), "lower")
            figures[f"{kind} {m[1]}: CPU s"] = (float(m[3]), "lower")
            figures[f"{kind} {m[1]}: CPU × none"] = (float(m[4]), "lower")
            figures[f"{kind} {m[1]}: passes"] = (float(m[6]), "")
        elif m := re.match(rf"\| (\w+) \| (\d+)/20 \| (\d+)/20 \| (\d+) \| ({NUMBER}) s \|",
                           line):
            figures[f"JSON {m[1]}: valid lists /20"] = (float(m[2]), "")
            figures[f"JSON {m[1]}: with --schema /20"] = (float(m[3]), "")
            figures[f"JSON {m[1]}: schema time s"] = (float(m[5]), "lower")
        elif m := re.match(r"\| (\w+) \| (\d+)/(\d+) \|$", line):
            figures[f"boundary {m[1]}: unbroken /{m[3]}"] = (float(m[2]), "")
    return figures


def _chat_turns(out: str) -> Figures:
    figures: Figures = {}
    for m in re.finditer(rf"^\s*(\d+)\s+(\d+)\s+({NUMBER})s\s+({NUMBER})s\s+({NUMBER})\s+"
                         r"(yes|NO)$", out, re.M):
        figures[f"turn {m[1]}: first token, nothing kept s"] = (float(m[3]), "lower")
        figures[f"turn {m[1]}: first token, kept s"] = (float(m[4]), "lower")
        figures[f"turn {m[1]}: kept × nothing kept"] = (float(m[5]), "lower")
        figures[f"turn {m[1]}: same reply"] = (float(m[6] == "yes"), "")
    return figures


def _quant(out: str) -> Figures:
    figures: Figures = {}
    for m in re.finditer(rf"^(none|int8|int4|llama\.cpp)\s+({NUMBER})\s+({NUMBER}|-)\s+"
                         rf"({NUMBER}|-)\s+({NUMBER})\s+({NUMBER}|-)\s", out, re.M):
        figures[f"{m[1]}: decode tok/s"] = (float(m[2]), "higher")
        figures[f"{m[1]}: prompt tok/s"] = (float(m[5]), "higher")
        if m[3] != "-" and m[1] != "none":
            figures[f"{m[1]}: decode × fp32"] = (float(m[3]), "higher")
        if m[6] != "-" and m[1] != "none":
            figures[f"{m[1]}: max |Δlogit|"] = (float(m[6]), "")
    return figures


def _startup(out: str) -> Figures:
    return {f"{m[1]}: median s": (float(m[2]), "lower")
            for m in re.finditer(rf"^(python -c pass|llmcli .+?|llm --help)\s{{2,}}({NUMBER})\s",
                                 out, re.M)}


def _static_step(out: str) -> Figures:
    figures: Figures = {}
    for m in re.finditer(rf"^(\d+) row\(s\): (\d+) operations .*?, ({NUMBER}) ms a step",
                         out, re.M):
        figures[f"{m[1]} row(s): operations"] = (float(m[2]), "lower")
        figures[f"{m[1]} row(s): ms a step"] = (float(m[3]), "lower")
    return figures


def _batch(out: str) -> Figures:
    figures: Figures = {f"-j {m[1]} s": (float(m[2]), "lower")
                        for m in re.finditer(rf"^-j (\d+): ({NUMBER}) s", out, re.M)}
    if found := re.search(rf"ratio -j 8 / -j 1: ({NUMBER})", out):
        figures["-j 8 / -j 1"] = (float(found[1]), "lower")
    if found := re.search(r"same text in both: (\d+) of", out):
        figures["lines with the same text"] = (float(found[1]), "")
    return figures


def _serve_load(out: str) -> Figures:
    figures: Figures = {}
    if found := re.search(rf"wave 1: \d+ clients in ({NUMBER}) s.*?after it: (\d+) threads, "
                      rf"RSS (\d+) MiB", out):
        figures["wave 1 s"] = (float(found[1]), "lower")
        figures["threads after wave 1"] = (float(found[2]), "lower")
        figures["RSS after wave 1 MiB"] = (float(found[3]), "lower")
    if found := re.search(rf"exit \d+ ({NUMBER}) s after SIGTERM", out):
        figures["exit after SIGTERM s"] = (float(found[1]), "lower")
    if found := re.search(r"server peak: RSS (\d+) MiB, (\d+) threads", out):
        figures["peak RSS MiB"] = (float(found[1]), "lower")
        figures["peak threads"] = (float(found[2]), "lower")
    if found := re.search(r"upstream streams still open: (\d+)", out):
        figures["upstream streams left open"] = (float(found[1]), "")
    if found := re.search(r"logged: .* \((\d+) of (\d+) requests\)", out):
        figures["requests logged"] = (float(found[1]), "")
    return figures


def _schema(out: str) -> Figures:
    figures: Figures = {}
    for m in re.finditer(r"^\| ([\w +]+) \| (\d+)/\d+ \| (\d+)/\d+ \| (\d+) \| (\d+) \| "
                         rf"({NUMBER}) \|", out, re.M):
        figures[f"{m[1]}: conformant"] = (float(m[3]), "")
        figures[f"{m[1]}: seconds"] = (float(m[6]), "lower")
    if found := re.search(rf"median mask ({NUMBER}) ms .*?median decode step ({NUMBER}) ms", out):
        figures["mask ms"] = (float(found[1]), "lower")
        figures["decode step ms (with mask)"] = (float(found[2]), "lower")
    if found := re.search(rf"Long fixed keys: (\d+) tokens in (\d+) forward passes .*?, "
                      rf"({NUMBER}) s", out):
        figures["long keys: forward passes"] = (float(found[2]), "")
        figures["long keys: s"] = (float(found[3]), "lower")
    for m in re.finditer(rf"^(llguidance|xgrammar): .*compile ({NUMBER}) ms", out, re.M):
        figures[f"{m[1]}: compile ms"] = (float(m[2]), "lower")
    return figures


def _tools(out: str) -> Figures:
    figures: Figures = {}
    for m in re.finditer(rf"^\| ([\w ]+) \| (\d+)/\d+ \| ({NUMBER})", out, re.M):
        figures[f"{m[1]}: valid calls"] = (float(m[2]), "")
        figures[f"{m[1]}: CPU s per prompt"] = (float(m[3]), "lower")
    return figures


def _json_rows(out: str) -> Figures:
    """A ``--child`` line of JSON (bench_speculation.py): rows of tok/s, or seconds for the
    batch rows; the script's own ratios are added."""
    rows: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    figures: Figures = {name: (value, "lower" if name.startswith("batch") else "higher")
                        for name, value in rows.items()}
    pairs = (("8 at once: speculative / one step", "8 at once, speculative",
              "8 at once, one step per token", ""),
             ("1 call: speculative / plain loop", "1 call, speculative", "1 call, plain loop",
              ""),
             ("batch: -j 8 / -j 1 (wall)", "batch -j 8", "batch -j 1", ""),
             ("predictable: int8 / default", "predictable, int8", "predictable, default", ""),
             ("unpredictable: int8 / default", "unpredictable, int8",
              "unpredictable, default", ""))
    for name, top, bottom, better in pairs:
        if top in rows and bottom in rows:
            figures[name] = (rows[top] / rows[bottom], better)
    return figures


PARSERS: dict[str, Callable[[str], Figures]] = {
    "bench_local.py": _local,
    "bench_local_batch.py": _local_batch,
    "bench_prefill.py": _prefill,
    "bench_chat_turns.py": _chat_turns,
    "bench_quant.py": _quant,
    "bench_startup.py": _startup,
    "bench_static_step.py": _static_step,
    "bench_batch.py": _batch,
    "bench_batch_local.py": _batch,
    "bench_serve_load.py": _serve_load,
    "bench_schema.py": _schema,
    "bench_tools.py": _tools,
    "bench_speculation.py": _json_rows,
}


def _commit(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "?"


def run_one(tree: Path, script: Path, argv: list[str], env: dict[str, str],
            timeout: float) -> dict[str, Any]:
    """One fresh process of ``script`` on ``tree``'s code; its figures, time and load."""
    python = tree / ".venv" / "bin" / "python"
    load = os.getloadavg()[0]
    began = time.monotonic()
    done = subprocess.run([str(python), str(script), *argv], cwd=str(tree), env=env,
                          capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - began
    if done.returncode != 0:
        tail = "\n  ".join(done.stderr.strip().splitlines()[-12:])
        raise SystemExit(f"{script.name} on {tree} failed (exit {done.returncode}):\n  {tail}")
    figures = PARSERS.get(script.name, _json_rows)(done.stdout)
    if not figures:
        raise SystemExit(f"no figures parsed from {script.name} on {tree}:\n{done.stdout}")
    return {"figures": figures, "seconds": took, "load": [load, os.getloadavg()[0]],
            "stdout": done.stdout}


def _spread(values: list[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per figure found in every run: values per round, ratios, noise, verdict."""
    names = [name for name in rounds[0]["before"]["figures"]
             if all(name in r[side]["figures"] for r in rounds for side in ("before", "after"))]
    rows = []
    for name in names:
        before = [r["before"]["figures"][name][0] for r in rounds]
        after = [r["after"]["figures"][name][0] for r in rounds]
        better = rounds[0]["before"]["figures"][name][1]
        ratios = [a / b if b else float("nan") for a, b in zip(after, before, strict=True)]
        noise = max(_spread(before), _spread(after)) if len(rounds) > 1 else 0.0
        middle = statistics.median(ratios)
        worse = {"higher": lambda r: r < 1, "lower": lambda r: r > 1}.get(better)
        drop = bool(worse and all(worse(r) for r in ratios) and abs(middle - 1) > noise)
        rows.append({"figure": name, "better": better, "before": before, "after": after,
                     "ratios": ratios, "ratio": middle, "noise": noise, "drop": drop})
    return rows


def _fmt(value: float) -> str:
    if value != value:  # nan
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def print_table(rows: list[dict[str, Any]], markdown: bool, labels: dict[str, str]) -> None:
    head = ["figure", labels["before"], labels["after"],
            f"{labels['after']}/{labels['before']} per round", "median ratio", "noise",
            "drop beyond noise"]
    lines = []
    for row in rows:
        arrow = {"higher": " ↑", "lower": " ↓"}.get(row["better"], "")
        verdict = ("**yes**" if markdown else "YES") if row["drop"] else \
            "no" if row["better"] else "(count)"
        lines.append([row["figure"] + arrow, " / ".join(_fmt(v) for v in row["before"]),
                      " / ".join(_fmt(v) for v in row["after"]),
                      " / ".join(f"{r:.3f}" for r in row["ratios"]), f"{row['ratio']:.3f}",
                      f"±{row['noise'] * 100:.0f} %", verdict])
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 2) + "---|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    for line in [head, *lines]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                     usage="%(prog)s [options] -- SCRIPT [ARGS...]")
    parser.add_argument("--before", required=True, type=Path, help="the before checkout")
    parser.add_argument("--after", type=Path, default=ROOT, help="the after checkout "
                        "(default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--script-from", choices=["own", "after"], default="own")
    parser.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="set in both runs' environment")
    parser.add_argument("--before-env", action="append", default=[], metavar="K=V")
    parser.add_argument("--after-env", action="append", default=[], metavar="K=V")
    parser.add_argument("--before-args", default="", help="more arguments, before's runs only")
    parser.add_argument("--after-args", default="", help="more arguments, after's runs only")
    parser.add_argument("--labels", default="before,after", help="the two sides' names")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    parser.add_argument("--json-out", type=Path, help="write every run's figures here")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--show-output", action="store_true",
                        help="print each run's own output as it ends")
    argv = sys.argv[1:]
    if "--" not in argv:
        parser.error("the bench command goes after --")
    cut = argv.index("--")
    args = parser.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command:
        parser.error("no bench script after --")
    name = Path(command[0]).name
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    envs = {}
    for side, extra in (("before", args.before_env), ("after", args.after_env)):
        envs[side] = dict(os.environ)
        for item in [*args.env, *extra]:
            key, _, value = item.partition("=")
            envs[side][key] = value
    more = {"before": shlex.split(args.before_args), "after": shlex.split(args.after_args)}
    labels = dict(zip(("before", "after"), args.labels.split(","), strict=True))
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(args.rounds):
        order = ("before", "after") if number % 2 == 0 else ("after", "before")
        result: dict[str, dict[str, Any]] = {}
        for side in order:
            source = trees["after" if args.script_from == "after" else side]
            script = source / "tests" / "bench" / name
            result[side] = run_one(trees[side], script, [*command[1:], *more[side]],
                                   envs[side], args.timeout)
            print(f"round {number + 1} {labels[side]:<6} {result[side]['seconds']:6.1f} s, load "
                  f"{result[side]['load'][0]:.1f} -> {result[side]['load'][1]:.1f}",
                  file=sys.stderr, flush=True)
            if args.show_output:
                print(result[side]["stdout"], file=sys.stderr, flush=True)
        rounds.append(result)
    loads = [v for r in rounds for side in r.values() for v in side["load"]]
    commits = {side: _commit(tree) for side, tree in trees.items()}
    sides = ", ".join(
        f"{labels[side]} {trees[side]} ({commits[side]}"
        f"{''.join(' ' + e for e in (args.before_env if side == 'before' else args.after_env))}"
        f"{' ' + ' '.join(more[side]) if more[side] else ''})" for side in ("before", "after"))
    print(f"{' '.join(command)}: {sides}, scripts: {args.script_from}"
          f"{', env ' + ' '.join(args.env) if args.env else ''}; {args.rounds} rounds, "
          f"{' '.join('BA' if n % 2 == 0 else 'AB' for n in range(args.rounds))}; "
          f"load average {min(loads):.1f}–{max(loads):.1f}")
    rows = summarise(rounds)
    print_table(rows, args.markdown, labels)
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "command": command, "trees": {k: str(v) for k, v in trees.items()},
            "commits": commits, "script_from": args.script_from, "env": args.env,
            "labels": labels, "more": more,
            "rounds": rounds, "rows": rows}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
