"""``llmcli batch`` end to end through the installed command: prefills per line and global
for each capability, bad lines, standard input and CSV, resume after SIGINT/SIGTERM,
progress only on a terminal, the log's batch tag."""

from __future__ import annotations

import json
import os
import pty
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.script import SCRIPT, env_for


def run_batch(user_dir: Path, *args: str, input: str | None = None,
              plugins: str = "llmcli-testmodels", timeout: float = 120) -> Any:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS=plugins)
    return subprocess.run([str(SCRIPT), "batch", *args], env=env, capture_output=True,
                          text=True, input=input, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def write_jsonl(path: Path, *lines: dict[str, Any] | str) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


def rows(path: Path) -> dict[Any, dict[str, Any]]:
    found = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {row["id"]: row for row in found}
    assert len(by_id) == len(found), "one row per id"
    return by_id


def logged(user_dir: Path, sql: str = "select * from responses") -> list[dict[str, Any]]:
    conn = sqlite3.connect(user_dir / "logs.db")
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute(sql)]


def test_prefills_per_line_and_global_for_each_capability(user_dir: Path, tmp_path: Path
                                                           ) -> None:
    reply = {"reply": 'Ohio"]'}
    source = write_jsonl(
        tmp_path / "in.jsonl",
        {"id": "eats", "prompt": "states", "model": "test-eats", "options": reply},
        {"id": "echoes", "prompt": "states", "model": "test-echoes", "options": reply},
        {"id": "emulated", "prompt": "states", "model": "test-emulated",
         "options": {**reply, "style": "preamble"}},
        {"id": "own", "prompt": "states", "model": "test-echoes", "prefill": "1.",
         "options": {"reply": " Ohio", "chunk_size": 1}},
        {"id": "none", "prompt": "states", "model": "test-eats", "prefill": "",
         "options": reply},
        {"id": "default-model", "prompt": "states"},
    )
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(source), "--output", str(out), "--prefill", '["',
                       "-m", "test-eats", "-o", "chunk_size", "2")
    assert result.returncode == 0, result.stderr
    got = rows(out)
    assert {k: v["text"] for k, v in got.items()} == {
        "eats": '["Ohio"]', "echoes": '["Ohio"]', "emulated": '["Ohio"]', "own": "1. Ohio",
        "none": 'Ohio"]', "default-model": '["reply to: states'}
    assert got["default-model"]["model"] == "test-eats"
    assert got["own"]["prefill"] == "1." and got["eats"]["prefill"] == '["'
    assert all(row["status"] == "ok" and row["error"] is None for row in got.values())
    assert got["eats"]["usage"]["output_tokens"] == 3  # '["' then 'Oh', 'io', '"]' chunks
    assert result.stderr.startswith("6 ok, 0 failed in ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_lines_become_error_rows_and_the_rest_still_runs(user_dir: Path, tmp_path: Path
                                                             ) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        {"id": "good", "prompt": "fine"},
        "{not json",
        {"id": "no-prompt"},
        {"id": "typo", "promt": "x"},
        {"id": "model", "prompt": "x", "model": "no-such-model"},
        {"id": "option", "prompt": "x", "options": {"bogus": 1}},
        {"id": "value", "prompt": "x", "options": {"chunk_size": "many"}},
        {"id": "prefill", "prompt": "x", "model": "test-unsupported", "prefill": "{"},
        {"id": "number", "prompt": 5},
        "",
        {"id": "fails", "prompt": "x", "options": {"fail_after": 0, "max_tokens": 5}},
        {"id": 12, "prompt": "also fine", "extra": "ignored"},
    )
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(source), "--output", str(out), "-m", "test-eats")
    assert result.returncode == 1
    found = [json.loads(line) for line in out.read_text().splitlines()]
    errors = {row["line"]: row["error"] for row in found if row["status"] == "error"}
    assert errors[2].startswith("line 2: invalid JSON")
    assert errors[3] == 'line 3: missing "prompt"'
    assert errors[4] == "line 4: unknown field 'promt' (did you mean 'prompt'?)"
    assert errors[5].startswith("line 5: Unknown model: 'no-such-model'")
    assert errors[6].startswith("line 6: Unknown option 'bogus' for test-eats")
    assert errors[7].startswith("line 7: Option 'chunk_size' for test-eats")
    assert errors[8].startswith("line 8: Model 'test-unsupported' does not support prefill")
    assert errors[9] == 'line 9: "prompt" must be a non-empty string'
    assert errors[11].startswith("line 11: test provider: connection reset")
    assert all("\n" not in e for e in errors.values())
    assert {row["id"] for row in found if row["status"] == "ok"} == {12, "good"}
    assert len(found) == 11  # every non-blank line has a row
    assert result.stderr.startswith("2 ok, 9 failed in ")
    # The transport failure was retried (3 attempts, each logged), nothing else was sent.
    attempts = logged(user_dir, "select status from responses where prompt = 'x'")
    assert [a["status"] for a in attempts] == ["error"] * 3


def test_standard_input_and_csv(user_dir: Path, tmp_path: Path) -> None:
    lines = json.dumps({"prompt": "from stdin", "id": "s"}) + "\n"
    result = run_batch(user_dir, "-", "--output", "-", "-m", "test-eats", "--prefill", "A:",
                       input=lines)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["text"] == "A:reply to: from stdin"

    source = tmp_path / "in.csv"
    source.write_text('id,prompt,prefill\nx,"one, with a comma",P1\ny,two,\n')
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(source), "--output", str(out), "-m", "test-echoes",
                       "--prefill", "G")
    assert result.returncode == 0, result.stderr
    got = rows(out)
    assert got["x"]["text"] == "P1reply to: one, with a comma"
    assert got["y"]["text"] == "Greply to: two"

    missing = tmp_path / "bad.csv"
    missing.write_text("question\nx\n")
    result = run_batch(user_dir, str(missing), "--output", str(out))
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: CSV input needs a 'prompt' column (found: "
                                     "question)")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_requests_nothing_twice(user_dir: Path, tmp_path: Path,
                                                      sig: signal.Signals) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", *(
        {"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(12)))
    out = tmp_path / "out.jsonl"
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    args = [str(SCRIPT), "batch", str(source), "--output", str(out), "-m", "test-eats",
            "-j", "3", "-o", "delay", "0.15", "--prefill", "Re:"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Resume with: llmcli batch" in err
    first = rows(out)
    assert 3 <= len(first) < 12
    assert all(row["status"] == "ok" for row in first.values())
    partial = logged(user_dir, "select * from responses where status = 'partial'")
    assert partial and all(r["error"] == "interrupted" for r in partial)
    assert all(r["text"].startswith("Re:") for r in partial)

    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert f"({len(first)} already ok, skipped)" in result.stderr
    final = rows(out)
    assert set(final) == {f"p{i}" for i in range(12)}
    assert all(final[k] == v for k, v in first.items())  # completed rows kept as they were
    complete = logged(user_dir, "select prompt, batch_id from responses "
                                "where status = 'complete'")
    prompts = [r["prompt"] for r in complete]
    assert sorted(prompts) == sorted(f"prompt {i}" for i in range(12))  # each exactly once
    assert len({r["batch_id"] for r in complete}) == 1  # a resumed run keeps the batch id


def test_logs_filter_one_batch(user_dir: Path, tmp_path: Path) -> None:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    subprocess.run([str(SCRIPT), "-m", "test-eats", "not in a batch"], env=env, check=True,
                   capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    source = write_jsonl(tmp_path / "in.jsonl", {"prompt": "a"}, {"prompt": "b"})
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(source), "--output", str(out), "-m", "test-eats")
    batch_id = next(iter(rows(out).values()))["batch_id"]
    assert f"llmcli logs --batch {batch_id}" in result.stderr
    shown = subprocess.run([str(SCRIPT), "logs", "--batch", batch_id, "-n", "0", "--json"],
                           env=env, capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(shown.stdout)
    assert sorted(r["prompt"] for r in found) == ["a", "b"]
    assert {r["batch_id"] for r in found} == {batch_id}
    assert {r["id"] for r in found} == {r["response_id"] for r in rows(out).values()}
    (single,) = logged(user_dir, "select batch_id from responses where prompt = "
                                 "'not in a batch'")
    assert single["batch_id"] is None
    result = run_batch(user_dir, str(source), "--output", str(tmp_path / "o2.jsonl"),
                       "-m", "test-eats", "--no-log")
    assert len(logged(user_dir)) == 3


def _stderr_on_a_terminal(user_dir: Path, args: list[str]) -> tuple[int, str]:
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels", COLUMNS="100")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(SCRIPT), "batch", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_progress_only_on_a_terminal(user_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", *({"prompt": f"p{i}"} for i in range(4)))
    args = [str(source), "-m", "test-eats", "-o", "delay", "0.2", "-j", "1"]
    code, seen = _stderr_on_a_terminal(user_dir, [*args, "--output", str(tmp_path / "t.jsonl")])
    assert code == 0
    assert "/4" in seen and "tok/s" in seen and "failed" in seen
    assert "4 ok, 0 failed in " in seen
    piped = run_batch(user_dir, *args, "--output", str(tmp_path / "p.jsonl"))
    assert piped.returncode == 0
    assert piped.stderr.startswith("4 ok, 0 failed in ")
    assert len(piped.stderr.splitlines()) == 1 and "tok/s" not in piped.stderr


def test_output_must_not_be_the_input(user_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", {"prompt": "a"})
    result = run_batch(user_dir, str(source), "--output", str(source))
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: --output must not be the input file"


def test_duplicate_ids_are_refused_before_anything_runs(user_dir: Path, tmp_path: Path
                                                        ) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        {"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}, "{broken",
        {"id": "a", "prompt": "three"}, {"id": 7, "prompt": "four"}, {"id": "7", "prompt": "5"},
        {"id": "a", "prompt": "six"},
    )
    out = tmp_path / "out.jsonl"
    result = run_batch(user_dir, str(source), "--output", str(out), "-m", "test-eats")
    assert result.returncode == 1
    assert result.stderr == ("Error: Duplicate id 'a' on lines 1, 4 and 7 (and 1 more "
                             "duplicated id); ids must be unique (resume goes by them): "
                             "nothing was run\n")
    assert not out.exists() or out.read_text() == ""
    assert not (user_dir / "logs.db").exists() or logged(user_dir) == []


#: Each line's system prompt is too big for the log under the file size limit below.
BIG_SYSTEM = "lorem ipsum " * 60_000


def test_a_reply_the_log_cannot_take_is_an_ok_row_that_says_so(user_dir: Path,
                                                               tmp_path: Path) -> None:
    import resource

    run_batch(user_dir, str(write_jsonl(tmp_path / "first.jsonl", {"prompt": "first"})),
              "--output", str(tmp_path / "first-out.jsonl"), "-m", "test-eats")
    limit = (user_dir / "logs.db").stat().st_size + 256 * 1024
    source = write_jsonl(tmp_path / "in.jsonl", *(
        {"id": f"big{i}", "prompt": f"big {i}", "system": BIG_SYSTEM} for i in range(3)),
        {"id": "small", "prompt": "small"})
    out = tmp_path / "out.jsonl"
    args = [str(SCRIPT), "batch", str(source), "--output", str(out), "-m", "test-eats",
            "-j", "1"]
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                  (limit, limit)))
    assert result.returncode == 0, result.stderr
    got = rows(out)
    assert {k: (v["status"], v["text"], v["logged"]) for k, v in got.items()} == {
        "big0": ("ok", "reply to: big 0", False), "big1": ("ok", "reply to: big 1", False),
        "big2": ("ok", "reply to: big 2", False), "small": ("ok", "reply to: small", True)}
    assert all("disk I/O error" in got[f"big{i}"]["log_error"] for i in range(3))
    assert got["small"]["log_error"] is None
    warning, summary = result.stderr.splitlines()
    assert warning.startswith("Warning: line 1 was not logged (Log database ")
    assert warning.endswith("disk I/O error); its row keeps the text")
    assert summary.startswith("4 ok, 0 failed in ") and "; 3 not logged" in summary
    assert "Traceback" not in result.stderr
    # Resumed, nothing is asked again: each line is done, logged or not.
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    assert again.returncode == 0 and "(4 already ok, skipped)" in again.stderr
    assert [r["prompt"] for r in logged(user_dir)] == ["first", "small"]


def test_a_line_logged_complete_but_missing_from_the_output_is_not_asked_again(
        user_dir: Path, tmp_path: Path) -> None:
    """The state a crash between logging a reply and writing its row leaves: the resumed
    run takes the reply from the log."""
    source = write_jsonl(tmp_path / "in.jsonl", *(
        {"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(6)),
        {"id": 6, "prompt": "prompt 6"})
    out = tmp_path / "out.jsonl"
    args = (str(source), "--output", str(out), "-m", "test-eats", "-j", "2",
            "--prefill", "Re:")
    assert run_batch(user_dir, *args).returncode == 0
    complete = rows(out)
    kept = out.read_text().splitlines()[:2]
    out.write_text("\n".join(kept) + '\n{"id": "p5", "line": 6, "sta')  # and a cut-off row
    result = run_batch(user_dir, *args)
    assert result.returncode == 0, result.stderr
    assert "(2 already ok, skipped)" in result.stderr
    assert "(5 finished before a crash, taken from the log)" in result.stderr
    assert rows(out) == complete  # the same rows, whether written then or recovered now
    prompts = [r["prompt"] for r in logged(user_dir)]
    assert sorted(prompts) == sorted(f"prompt {i}" for i in range(7))  # each asked once


def test_rows_carry_the_reasoning_where_the_model_returned_some(user_dir: Path,
                                                                tmp_path: Path) -> None:
    """A line whose model thinks has its reasoning in ``reasoning``, apart from ``text``
    (as ``--json`` shows it); a line that did not think has no such field. A row recovered
    from the log on resume has it too."""
    thought = "They want a state. Ohio is one."
    source = write_jsonl(
        tmp_path / "in.jsonl",
        {"id": "thinks", "prompt": "states", "options": {"thinking": thought}},
        {"id": "plain", "prompt": "states"})
    out = tmp_path / "out.jsonl"
    args = (str(source), "--output", str(out), "-m", "test-eats", "--prefill", "Re:")
    result = run_batch(user_dir, *args)
    assert result.returncode == 0, result.stderr
    got = rows(out)
    assert got["thinks"]["reasoning"] == thought
    assert got["thinks"]["text"] == got["plain"]["text"] == "Re:reply to: states"
    assert "reasoning" not in got["plain"]
    assert {r["batch_line"]: r["reasoning"] for r in logged(user_dir)} == {
        "thinks": thought, "plain": None}
    # A crash after logging "thinks" and before its row: the resumed run takes it from the
    # log, reasoning included.
    out.write_text(json.dumps(got["plain"]) + "\n")
    result = run_batch(user_dir, *args)
    assert "(1 finished before a crash, taken from the log)" in result.stderr
    assert rows(out) == got


def test_resume_after_sigkill_never_asks_a_finished_line_again(user_dir: Path,
                                                               tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", *(
        {"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(12)))
    out = tmp_path / "out.jsonl"
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-testmodels")
    args = [str(SCRIPT), "batch", str(source), "--output", str(out), "-m", "test-eats",
            "-j", "3", "-o", "delay", "0.15"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.02)
    proc.kill()
    proc.wait(30)
    before = len(out.read_text().splitlines())
    assert 3 <= before < 12
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    final = rows(out)
    assert set(final) == {f"p{i}" for i in range(12)}
    assert all(row["status"] == "ok" for row in final.values())
    complete = [r["prompt"] for r in logged(user_dir) if r["status"] == "complete"]
    assert sorted(complete) == sorted(f"prompt {i}" for i in range(12))  # each exactly once
    conn = sqlite3.connect(user_dir / "logs.db")
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
