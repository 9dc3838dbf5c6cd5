"""Token healing decisions on a small hand-made vocabulary (pure Python)."""

from __future__ import annotations

from typing import Any

from llmcli_local.healing import Vocab, plan_healing, token_bytes_from_tokenizer

PIECES = [b"The", b" URL", b" is", b" http", b":", b"://", b"//", b"/", b"www",
          b"[\"", b"Cal", b"California", b"ifornia", b"if", b"C", b"al", b" ", b" a",
          b"def", b" quick", b"sor", b"sort", b"t", b".", b"\n"]
SPECIAL = 90
ATOMIC = 91


def _vocab() -> Vocab:
    token_bytes: list[bytes | None] = list(PIECES) + [None] * (100 - len(PIECES))
    token_bytes[ATOMIC] = b"<think>"
    return Vocab(token_bytes, atomic={ATOMIC})


def _ids(*pieces: bytes) -> list[int]:
    return [SPECIAL] + [PIECES.index(p) for p in pieces]


def test_backs_off_a_colon_that_could_start_a_longer_token() -> None:
    vocab = _vocab()
    plan = plan_healing(_ids(b"The", b" URL", b" is", b" http", b":"), "The URL is http:", vocab)
    assert plan.backed_off == 1 and plan.removed == b":"


def test_backs_off_a_word_fragment() -> None:
    vocab = _vocab()
    plan = plan_healing(_ids(b"[\"", b"Cal"), '["Cal', vocab)
    assert plan.removed == b"Cal"
    plan = plan_healing(_ids(b"def", b" quick", b"sor"), "def quicksor", vocab)
    assert plan.removed == b"sor"


def test_trailing_space_is_healed() -> None:
    plan = plan_healing(_ids(b"The", b" is", b" a", b" "), "The is a ", _vocab())
    assert plan.removed == b" "


def test_nothing_backed_off_when_no_token_extends_the_tail() -> None:
    assert plan_healing(_ids(b"California"), "California", _vocab()).backed_off == 0
    assert plan_healing(_ids(b"\n"), "\n", _vocab()).backed_off == 0


def test_never_backs_into_the_template_or_through_special_tokens() -> None:
    vocab = _vocab()
    # The prefill is only ":"; the token before it belongs to the template.
    assert plan_healing(_ids(b" http", b":"), ":", vocab).removed == b":"
    assert plan_healing([SPECIAL, ATOMIC], "<think>", vocab).backed_off == 0
    assert plan_healing(_ids(b"Cal"), "", vocab).backed_off == 0


def test_allowed_tokens_start_with_or_are_prefixes_of_the_pending_bytes() -> None:
    vocab = _vocab()
    allowed = {vocab.bytes_of(i) for i in vocab.allowed(b"Cal")}
    assert allowed == {b"Cal", b"California", b"C"}
    allowed = {vocab.bytes_of(i) for i in vocab.allowed(b":")}
    assert allowed == {b":", b"://"}
    assert ATOMIC not in vocab.allowed(b"<")


def test_token_bytes_round_trip_the_text(tiny: Any) -> None:
    token_bytes, _ = token_bytes_from_tokenizer(tiny.tokenizer)
    for text in ["Héllo wörld 日本語 🙂", "def quicksort(arr):\n", '["Cal']:
        ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(token_bytes[i] or b"" for i in ids) == text.encode()
    assert token_bytes[tiny.tokenizer.eos_token_id] is None
