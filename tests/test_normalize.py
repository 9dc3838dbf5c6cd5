"""The prefill contract at its heart: for every capability, any prefill and any chunking,
the text starts with the prefill exactly once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcli import PrefillSupport
from llmcli.normalize import PrefillNormalizer, normalize_stream, normalize_text

EATS = PrefillSupport.EATS_PREFIX
ECHOES = PrefillSupport.ECHOES_PREFIX
EMULATED = PrefillSupport.EMULATED

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
prefills = st.one_of(
    texts,
    st.sampled_from(['["', "```python\ndef f(", "Answer: ", "1.", " ", "\n\n", "é✓ ", "{"]),
)


@st.composite
def chunkings(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces, last = [], 0
    for cut in [*cuts, len(text)]:
        pieces.append(text[last:cut])
        last = cut
    return pieces


def run(chunks: list[str], prefill: str, support: PrefillSupport, sent: str | None = None) -> str:
    return "".join(normalize_stream(chunks, prefill, support, sent))


# -- examples a user would recognise ---------------------------------------------------------

@pytest.mark.parametrize(
    ("support", "wire", "expected"),
    [
        (EATS, 'Alabama", "Alaska"]', '["Alabama", "Alaska"]'),
        (ECHOES, '["Alabama", "Alaska"]', '["Alabama", "Alaska"]'),
        (ECHOES, 'Alabama", "Alaska"]', '["Alabama", "Alaska"]'),  # backend forgot to echo
        (EMULATED, '["Alabama", "Alaska"]', '["Alabama", "Alaska"]'),
        (EMULATED, '  \n["Alabama"]', '["Alabama"]'),
        (EMULATED, 'Alabama"]', '["Alabama"]'),
        (EMULATED, 'Sure, here it is:\n["Alabama"]', '["Alabama"]'),
        (EMULATED, 'Here is the JSON list:\n\n["Alabama"]', '["Alabama"]'),
    ],
)
def test_examples(support: PrefillSupport, wire: str, expected: str) -> None:
    assert normalize_text(wire, '["', support) == expected


def test_emulated_does_not_take_a_first_line_for_a_preamble_unless_it_looks_like_one() -> None:
    # "Apples" is the first list item, not a preamble: nothing may be dropped.
    assert normalize_text("Apples\n- Pears", "- ", EMULATED) == "- Apples\n- Pears"


def test_emulated_prefill_ending_in_space_is_not_doubled() -> None:
    assert normalize_text(" 42", "Answer: ", EMULATED) == "Answer: 42"


def test_trimmed_prefill_is_reconciled_without_doubled_whitespace() -> None:
    # Anthropic: "Answer: " goes out as "Answer:", the model continues " 42".
    assert normalize_text(" 42", "Answer: ", EATS, sent_prefill="Answer:") == "Answer: 42"
    assert normalize_text("\nfoo", "List:\n\n", EATS, sent_prefill="List:") == "List:\n\nfoo"
    assert normalize_text("42", "Answer: ", EATS, sent_prefill="Answer:") == "Answer: 42"


def test_echo_of_the_trimmed_prefill_is_stripped() -> None:
    assert normalize_text("Answer: 42", "Answer: ", ECHOES, "Answer:") == "Answer: 42"
    assert normalize_text("Answer:42", "Answer: ", ECHOES, "Answer:") == "Answer: 42"


def test_echo_cut_short_gives_the_prefill() -> None:
    assert normalize_text('["Ca', '["California', ECHOES) == '["California'


def test_empty_prefill_passes_through() -> None:
    for support in PrefillSupport:
        assert run(["a", "b"], "", support) == "ab"


def test_eats_streams_the_prefill_with_the_first_chunk() -> None:
    out = list(normalize_stream(["Ala", "bama"], '["', EATS))
    assert out == ['["Ala', "bama"]


def test_emulated_buffers_only_until_it_can_decide() -> None:
    normalizer = PrefillNormalizer('["', EMULATED)
    assert normalizer.feed('["A') == '["A'  # decided at once: the reply repeats the prefill
    assert normalizer.feed("la") == "la"


def test_sent_prefill_must_come_before_text() -> None:
    normalizer = PrefillNormalizer("a ", EATS)
    normalizer.feed("x")
    with pytest.raises(RuntimeError):
        normalizer.set_sent_prefill("a")


# -- properties -------------------------------------------------------------------------------

@settings(max_examples=300)
@given(data=st.data(), prefill=prefills, reply=texts)
def test_eats_is_prefill_plus_reply_for_any_chunking(data: st.DataObject, prefill: str,
                                                     reply: str) -> None:
    chunks = data.draw(chunkings(reply))
    assert run(chunks, prefill, EATS) == prefill + reply


@settings(max_examples=300)
@given(data=st.data(), prefill=prefills, continuation=texts)
def test_echoes_keeps_one_copy(data: st.DataObject, prefill: str, continuation: str) -> None:
    wire = prefill + continuation
    chunks = data.draw(chunkings(wire))
    assert run(chunks, prefill, ECHOES) == prefill + continuation


@settings(max_examples=300)
@given(data=st.data(), prefill=prefills, continuation=texts,
       style=st.sampled_from(["repeat", "leading-space", "preamble", "skip"]))
def test_emulated_keeps_one_copy(data: st.DataObject, prefill: str, continuation: str,
                                 style: str) -> None:
    wire = {
        "repeat": prefill + continuation,
        "leading-space": "\n " + prefill + continuation,
        "preamble": "Sure, here it is:\n" + prefill + continuation,
        "skip": continuation,
    }[style]
    out = run(data.draw(chunkings(wire)), prefill, EMULATED)
    assert out.startswith(prefill)
    if style != "skip" and prefill.strip():
        assert out == prefill + continuation


@settings(max_examples=500)
@given(data=st.data(), prefill=prefills, reply=texts,
       support=st.sampled_from([EATS, ECHOES, EMULATED]),
       trim=st.booleans())
def test_any_reply_any_chunking_same_text_starting_with_prefill(
    data: st.DataObject, prefill: str, reply: str, support: PrefillSupport, trim: bool
) -> None:
    sent = prefill.rstrip() if trim else None
    whole = normalize_text(reply, prefill, support, sent)
    chunked = run(data.draw(chunkings(reply)), prefill, support, sent)
    assert chunked == whole  # chunking never changes the text
    assert whole.startswith(prefill)
    assert len(whole) >= len(prefill)


@settings(max_examples=300)
@given(prefill=prefills, continuation=texts)
def test_trimmed_eats_starts_with_exact_prefill(prefill: str, continuation: str) -> None:
    sent = prefill.rstrip()
    removed = prefill[len(sent):]
    # The model re-types the removed whitespace: it must not appear twice.
    out = normalize_text(removed + continuation, prefill, EATS, sent)
    assert out == prefill + continuation
