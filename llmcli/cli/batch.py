"""``llmcli batch`` — a file of prompts through a model; the logic is :mod:`llmcli.batch`."""

from __future__ import annotations

import io
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any, Literal

import click

from llmcli.errors import BatchInputError


@click.command(name="batch")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--output", "output_path", required=True, metavar="OUT",
              type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON Lines results, one per input line, written as each ends; rerun "
                   "with the same OUT to resume ('-': standard output, no resume).")
@click.option("-m", "--model", "models", multiple=True,
              help="Model id or alias; 'a,b' or a repeated -m spreads the lines over "
                   "several endpoints.")
@click.option("-s", "--system", help="System prompt (a line's \"system\" overrides it).")
@click.option("--prefill", help="The first characters of every reply (a line's \"prefill\" "
                                "overrides it).")
@click.option("-o", "--option", "options", type=(str, str), multiple=True, metavar="KEY VALUE",
              help="A model option for every line (a line's \"options\" override it).")
@click.option("-j", "--jobs", type=click.IntRange(1, 1024),
              help="Requests at once (default: 8, or what the model takes at once).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]),
              help="Input format (default: csv for a .csv file, else jsonl).")
@click.option("-n", "--no-log", is_flag=True, help="Do not log these exchanges.")
@click.option("--key", help="API key to use, or the name of a stored key.")
def batch(
    input_path: str,
    output_path: str,
    models: tuple[str, ...],
    system: str | None,
    prefill: str | None,
    options: tuple[tuple[str, str], ...],
    jobs: int | None,
    fmt: str | None,
    no_log: bool,
    key: str | None,
) -> None:
    """Run a file of prompts through a model, concurrently and resumably.

    INPUT is JSON Lines (or CSV with a prompt column; '-' for standard input); OUT gets
    one JSON line per prompt, written as each ends.

    \b
    llmcli batch prompts.jsonl --output out.jsonl -m smollm2 --prefill '{"'
    llmcli batch humaneval.jsonl --output out.jsonl -m vllm-a,vllm-b -j 64
    Input lines: {"id": ..., "prompt": ..., "prefill": ..., "system": ..., "model": ...,
    "options": {...}, "attachments": [...]}; only "prompt" is required.
    """
    from llmcli import config
    from llmcli.batch import Batch, read_input, resume_output
    from llmcli.cli.common import parse_options

    config.mark_long_lived()
    if input_path != "-" and output_path != "-" and (
            Path(input_path).resolve() == Path(output_path).resolve()):
        raise BatchInputError("--output must not be the input file")
    kind: Literal["jsonl", "csv"] = "csv" if fmt == "csv" or (
        fmt is None and input_path.lower().endswith(".csv")) else "jsonl"
    if input_path == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        stdin = sys.stdin if buffer is None else io.TextIOWrapper(buffer, encoding="utf-8",
                                                                  newline="")
        lines = read_input(stdin, kind)
    else:
        try:
            with open(input_path, encoding="utf-8", newline="") as f:
                # A line's attachment paths are relative to the input file, as its own
                # directory holds them wherever the command is run from.
                lines = read_input(f, kind, base=str(Path(input_path).parent))
        except OSError as exc:
            raise BatchInputError(f"Cannot read {input_path}: {exc.strerror}") from None

    done: set[str] = set()
    batch_id = None
    if output_path != "-":
        done, batch_id, _ = resume_output(Path(output_path))
    run = Batch(lines, model=list(models) or None, system=system, prefill=prefill,
                options_for=lambda model: parse_options(model, options), jobs=jobs,
                done=done, batch_id=batch_id, log=not no_log, key=key)

    out: IO[str] = sys.stdout if output_path == "-" else open(  # noqa: SIM115
        output_path, "a", encoding="utf-8")
    progress = _Progress(run.total) if sys.stderr.isatty() else None
    def stop(signum: int, frame: Any) -> None:
        run.stop.set()

    # Ctrl-C and SIGTERM only raise a flag that the run checks between results, so a row
    # is never half written nor a finished line left unreported. A SIGINT ignored by the
    # shell (a background job) stays ignored.
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, stop) for signum in handled}
    try:
        warned: list[bool] = []

        def write(result: Any) -> None:
            out.write(json.dumps(result.row(run.batch_id), ensure_ascii=False) + "\n")
            out.flush()
            if progress is not None:
                progress.advance(result)
            if result.log_error and not warned:  # once; the summary counts them all
                warned.append(True)
                click.echo(f"Warning: line {result.line.number} was not logged "
                           f"({result.log_error}); its row keeps the text", err=True)

        summary = run.run(write)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if progress is not None:
            progress.stop()
        if out is not sys.stdout:
            out.close()
    click.echo(f"{summary.line()}; batch {run.batch_id} (llmcli logs --batch {run.batch_id})",
               err=True)
    if summary.interrupted:
        how = shlex.join(["llmcli", *sys.argv[1:]]) if output_path != "-" else None
        click.echo("Interrupted: completed lines are in the output and in-flight ones were "
                   "logged as partial. " + (f"Resume with: {how}" if how else
                                            "Write to a file (--output) to be able to resume."),
                   err=True)
        sys.exit(130)
    if summary.failed:
        sys.exit(1)


class _Progress:
    """done/total, failures, tokens/s and ETA on standard error (a terminal only)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.started = time.monotonic()
        self.tokens = 0
        self.failed = 0
        self.progress = Progress(
            TextColumn("batch"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"), TextColumn("{task.fields[tps]} tok/s"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )
        self.task = self.progress.add_task("batch", total=total, failed=0, tps="-")
        self.progress.start()

    def advance(self, result: Any) -> None:
        self.tokens += result.output_tokens or 0
        self.failed += result.status != "ok"
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.progress.update(self.task, advance=1, failed=self.failed,
                             tps=f"{self.tokens / elapsed:.1f}")

    def stop(self) -> None:
        self.progress.stop()
