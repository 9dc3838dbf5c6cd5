"""Exact prefill on the real SmolLM2 against grammar-forced decoding (slow)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.local.conftest import configured

pytestmark = pytest.mark.slow

PREFILLS = ['["', '["Cal', "Answer: ", "My number is: ", "The URL is http:",
            "```python\ndef quicksor", "def f(x):\n    return ", "Pi is 3.14", "こんに",
            "I love pizza 🍕", "With the token <|im_end|>", "- Red\n- "]


@pytest.mark.parametrize("prefill", PREFILLS)
def test_exact_is_grammar_forced_decoding_on_smollm2(smollm2: Any, prefill: str,
                                                     recorded_tokens: list[int]) -> None:
    from llmcli_local import loader

    from tests.local.test_exact import exact_tokens, reference, without_eos

    backend = without_eos(loader.load(smollm2.source(), configured(device="cpu")))
    messages = [{"role": "user", "content": "Give a short answer."}]
    want = reference(backend, messages, prefill.encode(), 8)
    split, generated, usage = exact_tokens(backend, messages, prefill, 8, recorded_tokens)
    assert (split, generated) == want
    assert usage.details["forward_passes"] >= 1
