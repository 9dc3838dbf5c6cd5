"""UTF-8-safe incremental decoding and stop sequences (pure Python)."""

from __future__ import annotations

import itertools

from llmcli_local.streaming import StopFilter, TextStream

TEXT = "Héllo wörld 日本語 🙂🚀 done"


def _feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    chunks = [stream.feed(p) for p in pieces]
    chunks.append(stream.finish())
    return [c for c in chunks if c]


def test_multibyte_characters_split_across_tokens_are_never_garbled() -> None:
    data = TEXT.encode()
    for size in (1, 2, 3, 5):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        chunks = _feed_all(TextStream(), pieces)
        assert "".join(chunks) == TEXT
        assert not any("\ufffd" in c for c in chunks)


def test_healed_bytes_are_dropped_even_across_tokens() -> None:
    stream = TextStream(skip=b"Cal")
    chunks = _feed_all(stream, [b"C", b"alif", b"ornia"])
    assert "".join(chunks) == "ifornia"


def test_stop_sequence_is_never_emitted_even_in_part() -> None:
    text = "one two ###three"
    for cut in range(1, len(text)):
        stop = StopFilter(["###"])
        out = stop.feed(text[:cut])
        assert "#" not in out
        out += stop.feed(text[cut:])
        assert out == "one two "
        assert stop.stopped
        assert stop.flush() == ""


def test_any_chunking_with_stops_gives_the_text_up_to_the_stop() -> None:
    text = "abcab<END>ignored"
    for a, b in itertools.combinations(range(1, len(text)), 2):
        stop = StopFilter(["<END>", "zz"])
        emitted = [stop.feed(text[:a]), stop.feed(text[a:b]), stop.feed(text[b:])]
        assert "".join(emitted) + stop.flush() == "abcab"
        assert all("<" not in e for e in emitted)


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    stop = StopFilter(["###"])
    assert stop.feed("a #") == "a "
    assert stop.feed("#b") == "##b"
    assert stop.feed("c#") == "c"
    assert stop.flush() == "#"
    assert not stop.stopped
