"""``llmcli batch`` over a local model: its requests run concurrently (8 by default, what the
model declares) and go through the model's scheduler, which steps them together; each line's
text is the text it gets with ``-j 1``."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import make_endless_model, register_local_model

pytest.importorskip("llmcli_local")
pytest.importorskip("transformers")

MODEL = "tiny-endless"

#: One long line first, so that the short ones run while it does; prefills and a seed.
LINES = [
    {"id": "long", "prompt": "Keep going", "prefill": "def ", "options": {"max_tokens": 400}},
    {"id": "a", "prompt": "Hi", "prefill": "def quicksor", "options": {"max_tokens": 12}},
    {"id": "b", "prompt": "Give me a URL", "prefill": "The URL is http:"},
    {"id": "c", "prompt": "Héllo", "prefill": "naïve caf", "options": {"max_tokens": 10}},
    {"id": "d", "prompt": "Seeded", "prefill": "The",
     "options": {"max_tokens": 14, "temperature": 1.0, "seed": 7}},
]


@pytest.fixture
def local(user_dir: Path, tmp_path: Path, load_plugins: Callable[..., None]) -> Path:
    directory = make_endless_model(tmp_path / "tiny-endless")
    register_local_model(user_dir, MODEL, directory)
    load_plugins("llmcli-local")
    return directory


def run(jobs: int | None) -> tuple[Any, dict[str, dict[str, Any]]]:
    from llmcli.batch import Batch, read_input

    lines = read_input(io.StringIO("".join(json.dumps(line) + "\n" for line in LINES)))
    batch = Batch(lines, model=MODEL, options_for=lambda model: {"max_tokens": 16},
                  jobs=jobs, log=False)
    rows: dict[str, dict[str, Any]] = {}
    summary = batch.run(lambda result: rows.update({result.line.key: result.row("b")}))
    assert summary.ok == len(LINES), rows
    return batch, rows


def test_local_lines_run_together_with_the_text_each_gets_alone(local: Path) -> None:
    from llmcli_local import loader, scheduler

    one, alone = run(jobs=1)
    assert one.jobs == 1
    [backend] = [b for key, b in loader.loaded_models().items() if key[0] == str(local)]
    shared = scheduler.shared(backend)  # held: every run below goes to this scheduler
    assert shared.batched_steps == 0  # -j 1: one sequence at a time

    default, together = run(jobs=None)
    assert default.jobs == 8  # without -j: what the local model declares
    assert shared.batched_steps > 0 and shared.peak_batch >= 2
    assert {k: r["text"] for k, r in together.items()} == {k: r["text"] for k, r in
                                                          alone.items()}
    assert {r["usage"]["stop_reason"] for r in together.values()} == {"max_tokens"}
    assert len({r["text"] for r in together.values()}) == len(LINES)
