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


def test_token_bytes_round_trip_the_text(tiny_any: Any) -> None:
    tiny = tiny_any
    token_bytes, _ = token_bytes_from_tokenizer(tiny.tokenizer)
    for text in ["Héllo wörld 日本語 🙂", "def quicksort(arr):\n", '["Cal']:
        ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(token_bytes[i] or b"" for i in ids) == text.encode()
    assert token_bytes[tiny.tokenizer.eos_token_id] is None


def _sentencepiece_style_tokenizer() -> Any:
    """A Llama-2-style tokenizer: ▁ for spaces, <0xXX> byte fallback in the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    pieces += ["▁", *"abcdefghijklmnopqrstuvwxyzTURL:/.", "ht", "htt", "http", ":/", "://",
               "▁T", "he", "▁The"]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = [("h", "t"), ("ht", "t"), ("htt", "p"), (":", "/"), (":/", "/"), ("▁", "T"),
              ("h", "e"), ("▁T", "he")]
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True,
                               unk_token="<unk>"))
    raw.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_sentencepiece_style_token_bytes_and_healing() -> None:
    tokenizer = _sentencepiece_style_tokenizer()
    token_bytes, atomic = token_bytes_from_tokenizer(tokenizer)
    vocab = Vocab(token_bytes, atomic)
    for text in ["The URL is http:", "café 🙂 x"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        # ▁ is a space and <0xXX> a raw byte; the tokenizer prepends one ▁ to the text.
        assert b"".join(token_bytes[i] or b"" for i in ids) == b" " + text.encode()
    ids = tokenizer("The URL is http:", add_special_tokens=False)["input_ids"]
    assert plan_healing(ids, "The URL is http:", vocab).removed == b":"
    assert token_bytes[tokenizer.eos_token_id] is None
