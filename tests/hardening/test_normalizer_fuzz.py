"""The normalizer's invariants under many more examples than the unit tests use, for all
four capabilities, including replies built from pieces of the prefill itself (the inputs
most likely to confuse echo and preamble detection)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcli import PrefillSupport
from llmcli.normalize import PrefillNormalizer, normalize_text

ALL = list(PrefillSupport)
alphabet = st.sampled_from(list('ab ["\n:é✓\t') + ["Sure", "Here", "```", "\r\n"])


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, str, PrefillSupport, str | None, list[int]]:
    prefill = "".join(draw(st.lists(alphabet, max_size=6)))
    pieces = st.one_of(alphabet, st.just(prefill), st.just(prefill.strip()),
                       st.just(prefill[: len(prefill) // 2]))
    reply = "".join(draw(st.lists(pieces, max_size=10)))
    support = draw(st.sampled_from(ALL))
    if support is PrefillSupport.UNSUPPORTED:
        prefill = ""  # the API refuses a prefill before the normalizer could see it
    sent = draw(st.sampled_from([None, prefill.rstrip()]))
    cuts = sorted(draw(st.lists(st.integers(0, len(reply)), max_size=10)))
    return prefill, reply, support, sent, cuts


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(cases())
def test_invariants(case: tuple[str, str, PrefillSupport, str | None, list[int]]) -> None:
    prefill, reply, support, sent, cuts = case
    normalizer = PrefillNormalizer(prefill, support, sent)
    out, last = [], 0
    for cut in [*cuts, len(reply)]:
        out.append(normalizer.feed(reply[last:cut]))
        last = cut
    out.append(normalizer.finish())
    text = "".join(out)
    assert text == normalize_text(reply, prefill, support, sent)  # chunking-independent
    assert text.startswith(prefill)
    if support is PrefillSupport.EATS_PREFIX and sent in (None, prefill):
        assert text == prefill + reply
    if support is PrefillSupport.ECHOES_PREFIX and reply.startswith(prefill) and sent is None:
        assert text == reply
    if not prefill:
        assert text == reply
