"""End to end on the real SmolLM2-135M-Instruct (slow: converted once per run, then shared)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow


def test_json_list_prefill(smollm2: Any) -> None:
    response = smollm2.prompt(
        "Give a JSON array of 5 US states. Reply with the JSON only.", prefill='["',
        max_tokens=40, log=False,
    )
    text = response.text()
    assert text.startswith('["') and not text.startswith('[""')
    continuation = response.continuation
    assert continuation.strip()
    items = json.loads(text[: text.rindex('"') + 1] + "]")
    assert isinstance(items, list) and items and all(isinstance(i, str) and i for i in items)
    assert response.usage().stop_reason in ("stop", "max_tokens")


def test_code_prefill_and_healing(smollm2: Any) -> None:
    response = smollm2.prompt("Write a quicksort in Python.",
                              prefill="```python\ndef quacksort(", max_tokens=30, log=False)
    text = response.text()
    assert text.startswith("```python\ndef quacksort(")
    assert response.continuation.strip()
    assert "arr" in response.continuation or ")" in response.continuation
    url = smollm2.prompt("What is the URL of Google's homepage?", prefill="The URL is http:",
                         max_tokens=12, log=False)
    # Healing lets the model pick '://' instead of continuing after a lone ':'.
    assert url.text().startswith("The URL is http://")
    assert url.usage().details["healed"] == ":"


def test_cache_is_reused_and_loads_fast(smollm2: Any, shared_local_cache: Path) -> None:
    from llmcli_local import loader

    smollm2.prompt("Hi", max_tokens=1, log=False).text()  # ensure converted
    converted = list(shared_local_cache.glob("*/llmcli-local.json"))
    assert len(converted) == 1
    loader.unload_all()
    started = time.perf_counter()
    loader.load(smollm2.source(), device="cpu")
    # Reading the safetensors cache, not dequantizing the GGUF again (that takes ~15 s).
    assert time.perf_counter() - started < 5
    assert list(shared_local_cache.glob("*/llmcli-local.json")) == converted


def test_cli_with_prefill_is_logged(smollm2: Any) -> None:
    from llmcli.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["-m", "smollm2", "Name three US states.", "--prefill", "1.",
                                 "-o", "max_tokens", "30"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1.")
    assert len(result.stdout.strip()) > 3
    logged = runner.invoke(cli, ["logs", "list", "-n", "1", "--json"])
    assert logged.exit_code == 0, logged.output
    rows = json.loads(logged.output)
    assert rows and rows[0]["model"] == "smollm2" and rows[0]["prefill"] == "1."
    assert rows[0]["text"] == result.stdout.rstrip("\n")
    assert rows[0]["status"] == "complete"
