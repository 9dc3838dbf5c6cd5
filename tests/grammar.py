"""Whether a grammar takes a text whole, checked by llguidance (the library behind llama.cpp's
and vLLM's constrained decoding) with one token per byte, so no model's tokenizer is needed.

The fakes of the OpenAI-compatible servers answer a grammar request only where this accepts
their reply, as a real server's constrained decoding would; the tests of ``llmcli.tooltext``
and of the local runtime's tools read their grammars with it."""

from __future__ import annotations

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark


class _Bytes:
    """One token per byte, and an end-of-sequence token."""

    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids = [256]
    eos_token_id = 256
    bos_token_id = None

    def __call__(self, text: str) -> list[int]:
        return list(text.encode())


def accepts(grammar: str, text: str, *, notation: str = "gbnf") -> bool:
    """Whether ``grammar`` (``gbnf`` as llama.cpp and vLLM take it, or ``lark`` as
    llguidance and the local runtime take it) matches ``text`` whole."""
    if notation not in ("gbnf", "lark"):
        raise ValueError(f"unknown grammar notation {notation!r}")
    source = gbnf_to_lark(grammar) if notation == "gbnf" else grammar
    tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(source))
    ok = matcher.consume_tokens(list(text.encode()))
    return bool(ok) and not matcher.is_error() and matcher.is_accepting()
