"""End to end on the real SmolLM2-135M-Instruct (slow: converted once per run, then shared)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.local.conftest import configured

pytestmark = pytest.mark.slow


US_STATES = {
    "Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Connecticut",
    "Delaware", "Florida", "Georgia", "Hawaii", "Idaho", "Illinois", "Indiana", "Iowa", "Kansas",
    "Kentucky", "Louisiana", "Maine", "Maryland", "Massachusetts", "Michigan", "Minnesota",
    "Mississippi", "Missouri", "Montana", "Nebraska", "Nevada", "New Hampshire", "New Jersey",
    "New Mexico", "New York", "North Carolina", "North Dakota", "Ohio", "Oklahoma", "Oregon",
    "Pennsylvania", "Rhode Island", "South Carolina", "South Dakota", "Tennessee", "Texas", "Utah",
    "Vermont", "Virginia", "Washington", "West Virginia", "Wisconsin", "Wyoming",
}


def test_readme_main_job_gives_state_names(smollm2: Any) -> None:
    """The README's `make run` job (the Makefile's PROMPT and PREFILL, default options, so
    character-level prefill): a complete JSON array of US state names, starting with the prefill."""
    import re
    from pathlib import Path

    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    question = re.search(r"^PROMPT\s*\?=\s*(.+)$", makefile, re.M).group(1)  # type: ignore[union-attr]
    prefill = re.search(r"^PREFILL\s*\?=\s*(.+)$", makefile, re.M).group(1)  # type: ignore[union-attr]
    response = smollm2.prompt(question, prefill=prefill, log=False)
    text = response.text()
    assert text.startswith(prefill) and response.usage().details["prefill_mode"] == "chars"
    states = json.loads(text)
    assert len(states) == 3 and set(states) <= US_STATES, states


@pytest.mark.parametrize("mode", ["chars", "heal"])
def test_json_list_prefill_gives_a_list_of_strings(smollm2: Any, mode: str) -> None:
    """`["` under the default (character level: `["` is a whole pre-token, and the
    likeliest cover is the tokenizer's own token) and in heal mode continues as a list of
    strings. (In forced mode SmolLM2's own split of `["` opens a Python docstring, as grammar
    forcing gives; see docs/prefill.md and test_exact_smollm2.)"""
    response = smollm2.prompt(
        "Give a JSON array of 5 US states. Reply with the JSON only.", prefill='["',
        max_tokens=40, log=False, prefill_mode=mode,
    )
    text = response.text()
    assert text.startswith('["') and not text.startswith('[""')
    continuation = response.continuation
    assert continuation.strip()
    items = json.loads(text[: text.rindex('"') + 1] + "]")
    assert isinstance(items, list) and items and all(isinstance(i, str) and i for i in items)
    assert response.usage().stop_reason in ("end_turn", "max_tokens")


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
    loader.load(smollm2.source(), configured(device="cpu"))
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


def test_lean_backend_matches_transformers_on_smollm2(
    smollm2: Any, recorded_tokens: list[int]
) -> None:
    """The default (lean) backend and the transformers backend: same prompt, token ids, token
    bytes, end-of-turn ids, close logits and the same greedy tokens."""
    import torch
    from llmcli_local import decode, loader

    from llmcli.models import Usage

    tokens = recorded_tokens  # speculative decoding off: every token is sampled
    source = smollm2.source()
    reference = loader.load(source, configured(device="cpu", engine="transformers"))
    fast = loader.load(source, configured(device="cpu"))
    assert fast.name == "lean" and reference.name == "transformers"
    assert fast.vocab.token_bytes == reference.vocab.token_bytes
    assert fast.vocab.atomic == reference.vocab.atomic
    assert fast.eos_ids == reference.eos_ids
    cases = [
        ([{"role": "user", "content": "Name three US states."}], "1."),
        ([{"role": "system", "content": "You are terse."},
          {"role": "user", "content": "What is the URL of Google's homepage?"}],
         "The URL is http:"),
        ([{"role": "user", "content": "Write a quicksort in Python."}], "```python\ndef quack"),
        ([{"role": "user", "content": "Écris une phrase en français. 日本語も。"}], ""),
    ]
    for messages, prefill in cases:
        settings = decode.GenerationSettings(max_tokens=30)
        assert decode.render(fast, messages, prefill, {}) == \
            decode.render(reference, messages, prefill, {})
        prompt = decode.build_prompt(fast, messages, prefill, settings)
        assert prompt == decode.build_prompt(reference, messages, prefill, settings)
        with torch.inference_mode():
            ours, _ = fast.prompt(prompt.ids, len(prompt.ids) + 1)
            theirs = reference.model(input_ids=torch.tensor([prompt.ids])).logits[0, -1]
        assert torch.allclose(ours, theirs.float(), atol=1e-3, rtol=1e-3)

        def greedy(loaded: Any, messages: Any = messages, prefill: str = prefill,
                   settings: Any = settings) -> tuple[list[int], str, Any]:
            tokens.clear()
            events = list(decode.generate(loaded, messages, prefill, settings))
            usage = events[-1]
            assert isinstance(usage, Usage)
            return list(tokens), "".join(e for e in events[:-1] if isinstance(e, str)), \
                (usage.output_tokens, usage.stop_reason, usage.details["healed"])

        assert greedy(fast) == greedy(reference)


def test_async_model_end_to_end(smollm2: Any, user_dir: Path) -> None:
    """get_async_model("smollm2"): the real model through the default execute_async (one
    worker thread, bridged), streamed on the loop; the reply begins with the prefill once and
    is logged like a synchronous one."""
    import asyncio
    import sqlite3

    import llmcli

    async def main() -> tuple[list[str], llmcli.AsyncResponse]:
        response = llmcli.get_async_model("smollm2").prompt(
            "Name a US state.", prefill="The state of", max_tokens=6)
        return [chunk async for chunk in response], response

    chunks, response = asyncio.run(main())
    text = "".join(chunks)
    assert text.startswith("The state of") and text.count("The state of") == 1
    assert response.status == "complete" and response.text_so_far() == text
    with sqlite3.connect(user_dir / "logs.db") as db:
        [(status, logged)] = db.execute("select status, text from responses").fetchall()
    assert (status, logged) == ("complete", text)
