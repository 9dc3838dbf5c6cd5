"""The HumanEval-style example of docs/batch.md, run exactly as printed there, on the bundled
SmolLM2 (slow: it loads the real weights)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.script import SCRIPT, env_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_humaneval_example_on_the_bundled_model(user_dir: Path, tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    pytest.importorskip("llmcli_local")
    doc = (ROOT / "docs" / "batch.md").read_text()
    (line,) = re.findall(r"^llmcli batch docs/examples/humaneval-mini\.jsonl .*$", doc, re.M)
    args = shlex.split(line)
    out = tmp_path / "humaneval-out.jsonl"
    args[args.index("--output") + 1] = str(out)
    # Converting the GGUF takes a while: reuse a cache given from outside, else make one.
    cache = os.environ.get("LLMCLI_LOCAL_CACHE") or str(tmp_path_factory.mktemp("cache"))
    env = env_for(user_dir, LLMCLI_LOAD_PLUGINS="llmcli-local", LLMCLI_LOCAL_CACHE=cache)
    result = subprocess.run([str(SCRIPT), *args[1:]], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    source = [json.loads(x) for x in (ROOT / "docs/examples/humaneval-mini.jsonl")
              .read_text().splitlines()]
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {s["id"] for s in source}
    for item in source:
        row = rows[item["id"]]
        assert row["status"] == "ok" and row["model"] == "smollm2"
        assert row["text"].startswith(item["prefill"])  # the signature, exactly once
        assert not row["text"][len(item["prefill"]):].startswith(item["prefill"])
        assert len(row["text"]) > len(item["prefill"])
